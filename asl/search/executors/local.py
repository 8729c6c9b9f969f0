"""Trials as child processes of this machine (see :class:`LocalExecutor`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from typing import Dict, List, Optional, Tuple

from ...protocol import LAUNCH_TIME_ENV, STDOUT_LOG, TRIAL_ID_ENV
from ...utils import die_with_parent, usable_cores
from ..trial import TrialSpec, train_command, trial_args
from .base import Completion, Executor

__all__ = ['LocalExecutor', 'LAUNCH_MODES']

LAUNCH_MODES = ('auto', 'fork', 'spawn')


def _proc_start_ticks(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (None if it does not exist)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
        return int(stat.rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None



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
    there are ``workers`` slots, each trial with ``threads_per_trial`` CPU threads.
    Each slot runs up to ``trials_per_gpu`` trials at once (packing: several small proxy
    trainings share one GPU), each its own process, with its own work directory, time
    limit and failure: a trial that crashes or runs out of memory fails alone.
    Trials are stopped (SIGTERM, then SIGKILL) at their time limit. Children die with
    the controller; a resumed controller kills any leftover process group of an
    in-flight trial before launching it again.

    Single-process trials are forked from a pre-warmed launcher
    (:mod:`asl.search.executors.prefork`, ``launch='fork'``), which imports torch and MMSeg once
    for the whole search instead of once per trial; each trial is still its own process
    running ``tools/train.py``'s code with the same arguments, in its own session, with
    its own ``stdout.log``. ``launch='spawn'`` starts ``tools/train.py`` afresh for
    every trial. ``'auto'`` (default) forks CPU trials and spawns GPU trials (forking
    for GPU trials is possible with ``'fork'``: the launcher checks CUDA through NVML and
    never initialises it; if it did all the same, forking is given up, and a forked GPU
    trial that finds CUDA touched restarts itself as a fresh process).
    Trials with several GPUs always run under torchrun. If the launcher cannot start
    or dies, the executor falls back to spawning and says so.

    Args:
        workers (int): CPU slots (ignored with GPUs). Default: 1.
        gpus (int, optional): GPUs to use (default: all visible; 0 forces CPU).
        gpus_per_trial (int): GPUs per trial. Default: 1.
        trials_per_gpu (int): trials at once per slot (GPU, or CPU worker); only with
            ``gpus_per_trial=1``. Default: 1.
        threads_per_trial (int, optional): OMP/MKL threads per trial (default: the cores
            this process may run on, its CPU affinity, divided by the number of trials
            that run at once).
        python (str, optional): interpreter for the trials (default: this one).
        env (dict, optional): extra environment variables.
        launch (str): ``'auto'``, ``'fork'`` or ``'spawn'`` (see above).
        log_dir (str, optional): where the launcher writes ``launcher.log`` (the search
            sets its work directory; default: the first trial's parent directory).
    """

    name = 'local'

    def __init__(self, workers: int = 1, gpus: Optional[int] = None, gpus_per_trial: int = 1,
                 threads_per_trial: Optional[int] = None, python: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, launch: str = 'auto',
                 log_dir: Optional[str] = None, trials_per_gpu: int = 1):
        if launch not in LAUNCH_MODES:
            raise ValueError(f'launch must be one of {LAUNCH_MODES}, got {launch!r}')
        if workers < 1:
            raise ValueError(f'workers must be at least 1, got {workers}')
        if gpus_per_trial < 1:
            raise ValueError(f'gpus_per_trial must be at least 1, got {gpus_per_trial}')
        if trials_per_gpu < 1:
            raise ValueError(f'trials_per_gpu must be at least 1, got {trials_per_gpu}')
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
        if trials_per_gpu > 1 and self.gpu_slots and gpus_per_trial > 1:
            raise ValueError(f'trials_per_gpu={trials_per_gpu} packs single-GPU trials; it '
                             f'cannot be combined with gpus_per_trial={gpus_per_trial}')
        self.workers = workers
        self.gpus_per_trial = gpus_per_trial
        self.trials_per_gpu = trials_per_gpu
        self.num_slots = len(self.gpu_slots) or workers
        cores = usable_cores()
        self.threads = threads_per_trial or max(cores // (self.num_slots * trials_per_gpu), 1)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self._running: Dict[str, Dict] = {}  # trial_id -> state
        self._adopted: Dict[str, Dict] = {}
        self._load = [0] * self.num_slots  # trials running in each slot
        self.launch_mode = launch
        self.log_dir = log_dir
        self._server = None  # PreforkServer, started at the first forked trial
        self._fork_broken = ''  # why forking was given up, if it was
        self._restarted = False

    @property
    def capacity(self) -> int:
        return self.num_slots * self.trials_per_gpu

    def describe(self) -> str:
        mode = 'forked from a pre-warmed launcher' if self._wants_fork() else \
            'a new process each'
        packed = (f' ({self.trials_per_gpu} per {"GPU" if self.gpu_slots else "worker"})'
                  if self.trials_per_gpu > 1 else '')
        if self.gpu_slots:
            return (f'local, {self.capacity} trial(s) at once{packed} on GPUs '
                    f'{self.gpu_slots}, {mode}')
        return (f'local, {self.capacity} CPU trial(s) at once{packed}, {self.threads} '
                f'thread(s) each, {mode}')

    def _wants_fork(self) -> bool:
        """Whether trials are forked (every slot has ``gpus_per_trial`` GPUs; one process
        per trial on CPU)."""
        nproc = self.gpus_per_trial if self.gpu_slots else 1
        if nproc > 1 or self.launch_mode == 'spawn' or self._fork_broken:
            return False
        return self.launch_mode == 'fork' or not self.gpu_slots

    def prepare(self, work_dir: str) -> None:
        """Start the pre-warmed launcher in the background (if trials will be forked)."""
        if self.log_dir is None:
            self.log_dir = work_dir
        if self._wants_fork():
            self._start_launcher(self.log_dir, wait=False)

    def _start_launcher(self, log_dir: str, wait: bool):
        from .prefork import PreforkError, PreforkServer
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault('OMP_NUM_THREADS', str(self.threads))
        env.setdefault('MKL_NUM_THREADS', str(self.threads))
        if not self.gpu_slots:
            env['CUDA_VISIBLE_DEVICES'] = ''
        self._server = PreforkServer(self.python, env, os.path.join(log_dir, 'launcher.log'))
        try:
            self._server.start(wait=wait)
        except (PreforkError, OSError) as e:
            self._server = None
            self._give_up_fork(str(e))

    def _launcher(self, spec: TrialSpec):
        """The pre-warmed launcher, ready (None: fall back to spawning)."""
        from .prefork import PreforkError
        if self._server is not None and not self._server.alive():
            self._server.close()  # it died: start it once more, then give up forking
            self._server = None
            if self._restarted:
                self._give_up_fork('the trial launcher died twice')
                return None
            self._restarted = True
        if self._server is None:
            self._start_launcher(self.log_dir or os.path.dirname(spec.work_dir), wait=False)
            if self._server is None:
                return None
        try:
            info = self._server.wait_ready()
        except PreforkError as e:
            self._server = None
            self._give_up_fork(str(e))
            return None
        touched = [k for k in ('cuda_initialized', 'cuda_driver_loaded') if info.get(k)]
        if touched and self.gpu_slots:
            self.close()
            self._give_up_fork(f'the trial launcher touched CUDA while importing '
                               f'({", ".join(touched)}), so forked trials could not use it')
            return None
        return self._server

    def _give_up_fork(self, why: str) -> None:
        self._fork_broken = why
        print(f'[asl.search] warning: {why}; starting every trial as a new process instead',
              file=sys.stderr, flush=True)

    def launch(self, spec: TrialSpec) -> Dict:
        if len(self._running) >= self.capacity:
            raise RuntimeError('no free trial slot')
        os.makedirs(spec.work_dir, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        env[TRIAL_ID_ENV] = spec.trial_id
        env['PYTHONUNBUFFERED'] = '1'
        slot = self._load.index(min(self._load))  # the least loaded slot
        self._load[slot] += 1
        if self.gpu_slots:
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
        log_path = os.path.join(spec.work_dir, STDOUT_LOG)
        t0 = time.time()
        server = self._launcher(spec) if self._wants_fork() else None
        waited = time.time() - t0  # for the launcher's warm-up (first trial only)
        start = time.time()
        env[LAUNCH_TIME_ENV] = repr(start)
        proc = None
        try:
            if server is not None:
                from .prefork import PreforkError
                try:
                    pid = server.fork(trial_args(spec), self._trial_env(env), log_path,
                                      cwd=os.getcwd(), threads=self.threads)
                except PreforkError as e:  # the launcher died under us: spawn this one
                    self._give_up_fork(str(e))
                    server = None
            if server is None:
                with open(log_path, 'ab') as log:
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True,
                                            preexec_fn=die_with_parent)
                pid = proc.pid
        except BaseException:
            self._load[slot] -= 1
            raise
        self._running[spec.trial_id] = dict(spec=spec, proc=proc, pid=pid, start=start,
                                            slot=slot, server=server)
        info = dict(pid=pid, pgid=pid, start_ticks=_proc_start_ticks(pid), command=cmd,
                    host=os.uname().nodename, launch='fork' if server is not None else 'spawn')
        if server is not None and waited > 0.05:
            info['waited_for_launcher_s'] = round(waited, 3)
        return info

    @staticmethod
    def _trial_env(env: Dict[str, str]) -> Dict[str, str]:
        """What a forked trial sets on top of the launcher's environment."""
        own = {k: v for k, v in env.items() if os.environ.get(k) != v}
        for k in (LAUNCH_TIME_ENV, TRIAL_ID_ENV, 'CUDA_VISIBLE_DEVICES'):
            own[k] = env[k]
        return own

    def running(self) -> List[TrialSpec]:
        return [r['spec'] for r in self._running.values()]

    def _exit_status(self, r: Dict, wait: float = 0.0):
        """(ended, exit status, reason) of a running trial."""
        if r['proc'] is not None:
            if wait:
                try:
                    return True, r['proc'].wait(timeout=wait), ''
                except subprocess.TimeoutExpired:
                    return False, None, ''
            code = r['proc'].poll()
            return code is not None, code, ''
        server = r['server']
        code = server.wait(r['pid'], wait) if wait else server.exit_code(r['pid'])
        if code is not None:
            return True, code, ''
        if not server.alive():  # its children got SIGKILL with it
            try:
                os.killpg(r['pid'], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return True, None, 'the trial launcher died'
        return False, None, ''

    def poll(self) -> List[Tuple[TrialSpec, Completion]]:
        done = []
        now = time.time()
        for tid, r in list(self._running.items()):
            ended, code, why = self._exit_status(r)
            timed_out = False
            if not ended and now - r['start'] > r['spec'].time_limit:
                _kill_group(r['pid'])
                ended, code, why = self._exit_status(r, wait=30.0)
                ended, timed_out = True, True
            if not ended:
                continue
            try:  # leftovers of the group (torchrun workers)
                os.killpg(r['pid'], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            del self._running[tid]
            self._load[r['slot']] -= 1
            reason = f'exceeded the time limit of {r["spec"].time_limit:g} s' if timed_out else why
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
            _kill_group(r['pid'], grace=3.0)
            self._exit_status(r, wait=10.0)
        self._running.clear()
        self._load = [0] * self.num_slots
        self.close()

    def close(self) -> None:
        """Stop the pre-warmed launcher (a later forked trial starts a new one)."""
        if self._server is not None:
            self._server.close()
            self._server = None
