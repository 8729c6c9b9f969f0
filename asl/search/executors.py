"""Trial execution behind a small interface, so that local processes and Slurm jobs (and
other engines) are interchangeable.

An executor launches :class:`~asl.search.trial.TrialSpec` s, reports them when they
end (as :class:`Completion` s: exit status, time-out, scheduler reason; the
controller reads the trial's files to decide the outcome), can re-attach to a trial
launched by an earlier controller process, and stops everything it launched.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .trial import TrialSpec, train_command

__all__ = ['Completion', 'Executor', 'LocalExecutor', 'LAUNCH_TIME_ENV', 'TRIAL_ID_ENV']

LAUNCH_TIME_ENV = 'ASL_TRIAL_LAUNCH_TIME'  # read by asl.mmseg.hooks.ASLTrialHook
TRIAL_ID_ENV = 'ASL_TRIAL_ID'  # read by asl.mmseg.hooks.ASLFaultInjectionHook


@dataclass
class Completion:
    """How a trial's process (or job) ended, as the executor saw it.

    Attributes:
        exit_code: exit status (None if unknown, e.g. killed by the scheduler).
        timed_out: stopped for exceeding its time limit.
        wall_s: seconds from launch to end.
        reason: extra reason from the scheduler (Slurm state and reason).
        kind: failure kind forced by the executor (e.g. ``'slurm:CANCELLED'``), or ''.
    """

    exit_code: Optional[int]
    timed_out: bool = False
    wall_s: Optional[float] = None
    reason: str = ''
    kind: str = ''


class Executor:
    """Interface of trial executors."""

    name = 'base'

    @property
    def capacity(self) -> int:
        """How many trials may run at once."""
        raise NotImplementedError

    def launch(self, spec: TrialSpec) -> Dict:
        """Start a trial; return JSON-able info to journal (pid, job id...)."""
        raise NotImplementedError

    def poll(self) -> List[Tuple[TrialSpec, Completion]]:
        """Trials that ended since the last call."""
        raise NotImplementedError

    def running(self) -> List[TrialSpec]:
        """Trials launched (or re-attached) and not yet reported by :meth:`poll`."""
        raise NotImplementedError

    def reattach(self, spec: TrialSpec, info: Dict) -> bool:
        """Resume: adopt a trial launched by an earlier controller (``info`` from
        :meth:`launch`). Return True if it is still running (it will be reported by
        :meth:`poll`), False if it must be launched again."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every trial this executor launched or adopted (and nothing else)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def _proc_start_ticks(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (None if it does not exist)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
        return int(stat.rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the controller dies (Linux), new session."""
    try:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_group(pgid: int, grace: float = 5.0) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _visible_gpus() -> List[str]:
    env = os.environ.get('CUDA_VISIBLE_DEVICES')
    if env is not None:
        return [x for x in env.split(',') if x.strip() != '']
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        return []


class LocalExecutor(Executor):
    """Runs every trial as a child process on this machine.

    With CUDA devices, ``gpus`` devices (default: all visible) are split into slots of
    ``gpus_per_trial``; a trial with several GPUs runs under torchrun. Without CUDA,
    ``workers`` trials run at once, each with ``threads_per_trial`` CPU threads.
    Trials are stopped (SIGTERM, then SIGKILL) at their time limit. Children die with
    the controller; a resumed controller kills any leftover process group of an
    in-flight trial before launching it again.

    Args:
        workers (int): concurrent CPU trials (ignored with GPUs). Default: 1.
        gpus (int, optional): GPUs to use (default: all visible; 0 forces CPU).
        gpus_per_trial (int): GPUs per trial. Default: 1.
        threads_per_trial (int, optional): OMP/MKL threads per CPU trial (default:
            cores // workers).
        python (str, optional): interpreter for the trials (default: this one).
        env (dict, optional): extra environment variables.
    """

    name = 'local'

    def __init__(self, workers: int = 1, gpus: Optional[int] = None, gpus_per_trial: int = 1,
                 threads_per_trial: Optional[int] = None, python: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None):
        if workers < 1:
            raise ValueError(f'workers must be at least 1, got {workers}')
        if gpus_per_trial < 1:
            raise ValueError(f'gpus_per_trial must be at least 1, got {gpus_per_trial}')
        visible = _visible_gpus()
        if gpus is not None:
            if gpus > len(visible):
                raise ValueError(f'{gpus} GPUs requested but {len(visible)} are visible')
            visible = visible[:gpus]
        self.gpu_slots: List[List[str]] = []
        if visible:
            if gpus_per_trial > len(visible):
                raise ValueError(f'gpus_per_trial={gpus_per_trial} but only {len(visible)} '
                                 f'GPU(s) are available')
            n = len(visible) // gpus_per_trial
            self.gpu_slots = [visible[i * gpus_per_trial:(i + 1) * gpus_per_trial]
                              for i in range(n)]
        self.workers = workers
        self.gpus_per_trial = gpus_per_trial
        cores = os.cpu_count() or 1
        self.threads = threads_per_trial or max(cores // (len(self.gpu_slots) or workers), 1)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self._running: Dict[str, Dict] = {}  # trial_id -> state
        self._adopted: Dict[str, Dict] = {}
        self._free_slots = list(range(len(self.gpu_slots)))

    @property
    def capacity(self) -> int:
        return len(self.gpu_slots) or self.workers

    def describe(self) -> str:
        if self.gpu_slots:
            return (f'local, {len(self.gpu_slots)} trial(s) at once on GPUs '
                    f'{self.gpu_slots}')
        return f'local, {self.workers} CPU trial(s) at once, {self.threads} thread(s) each'

    def launch(self, spec: TrialSpec) -> Dict:
        if len(self._running) >= self.capacity:
            raise RuntimeError('no free trial slot')
        os.makedirs(spec.work_dir, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        env[LAUNCH_TIME_ENV] = repr(time.time())
        env[TRIAL_ID_ENV] = spec.trial_id
        env['PYTHONUNBUFFERED'] = '1'
        slot = None
        if self.gpu_slots:
            slot = self._free_slots.pop(0)
            gpus = self.gpu_slots[slot]
            env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
            nproc = len(gpus)
        else:
            env['CUDA_VISIBLE_DEVICES'] = ''
            nproc = 1
        env.setdefault('OMP_NUM_THREADS', str(self.threads))
        env.setdefault('MKL_NUM_THREADS', str(self.threads))
        port = 29500 + zlib.crc32(spec.trial_id.encode()) % 10000
        cmd = train_command(spec, self.python, launcher='pytorch' if nproc > 1 else 'none',
                            nproc=nproc, master_port=port)
        log = open(os.path.join(spec.work_dir, 'stdout.log'), 'ab')
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        except BaseException:
            if slot is not None:
                self._free_slots.insert(0, slot)
            raise
        finally:
            log.close()
        start = time.time()
        self._running[spec.trial_id] = dict(spec=spec, proc=proc, start=start, slot=slot)
        return dict(pid=proc.pid, pgid=proc.pid, start_ticks=_proc_start_ticks(proc.pid),
                    command=cmd, host=os.uname().nodename)

    def running(self) -> List[TrialSpec]:
        return [r['spec'] for r in self._running.values()]

    def poll(self) -> List[Tuple[TrialSpec, Completion]]:
        done = []
        now = time.time()
        for tid, r in list(self._running.items()):
            code = r['proc'].poll()
            timed_out = False
            if code is None and now - r['start'] > r['spec'].time_limit:
                _kill_group(r['proc'].pid)
                code = r['proc'].wait()
                timed_out = True
            if code is None:
                continue
            try:  # leftovers of the group (torchrun workers)
                os.killpg(r['proc'].pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            del self._running[tid]
            if r['slot'] is not None:
                self._free_slots.append(r['slot'])
            reason = f'exceeded the time limit of {r["spec"].time_limit:g} s' if timed_out else ''
            done.append((r['spec'], Completion(exit_code=code, timed_out=timed_out,
                                               wall_s=time.time() - r['start'],
                                               reason=reason)))
        return done

    def reattach(self, spec: TrialSpec, info: Dict) -> bool:
        pgid = info.get('pgid')
        if pgid and info.get('host', os.uname().nodename) == os.uname().nodename:
            ticks = _proc_start_ticks(pgid)
            if ticks is not None and ticks == info.get('start_ticks'):
                _kill_group(pgid, grace=2.0)  # an orphan of the dead controller
            else:
                try:  # the leader is gone; members of its group may remain
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        return False

    def stop(self) -> None:
        for r in list(self._running.values()):
            _kill_group(r['proc'].pid, grace=3.0)
            r['proc'].wait()
        self._running.clear()
        self._free_slots = list(range(len(self.gpu_slots)))
