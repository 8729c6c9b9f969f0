"""``SlurmExecutor``: every trial is a Slurm batch job (``--executor slurm``).

Each trial is submitted with ``sbatch`` (:mod:`asl.search.executors.slurm_cli`) as a job named
``asl-<search>-s<step>-c<candidate>-a<attempt>`` that runs ``tools/train.py`` through
``srun``, with the trial's time limit, its GPUs (one task per GPU, ``--launcher slurm``
when there are several) and its log in the trial's work directory. Up to ``max_jobs``
trials are queued or running at once. A job that fails, is cancelled, preempted or
times out is a failed trial whose reason is Slurm's state and reason. A resumed
search re-attaches to the jobs named in its journal instead of submitting duplicates,
and stopping the search cancels exactly the jobs it launched.

**Packed jobs** (``trials_per_job`` = ``search.trials_per_gpu`` > 1): up to that many
trials share one job and its GPU. The job, named ``asl-<search>-<id>+<id>+...``, runs
:mod:`asl.search.executors.pack`, which starts the trials at once, each its own process with its
own log and time limit, and writes each one's exit status into its work directory. Each
trial is still its own entry in the journal: one that fails is retried alone (in a job
of its own), its siblings are not affected. A packed job's trials are reported when the
job ends. A resumed search re-attaches every trial of a packed job to it; a job that
runs trials the journal does not know of (the controller was killed between submitting
it and journaling it) is cancelled before those trials are launched again, so that no
trial ever runs twice.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from . import slurm_cli as slurm
from ...protocol import LAUNCH_TIME_ENV, STDOUT_LOG, TRIAL_ID_ENV
from ...utils import atomic_write_json
from .base import Completion, Executor
from .pack import read_status
from ..trial import TrialSpec, train_command

__all__ = ['SlurmExecutor']


class SlurmExecutor(Executor):
    """Runs trials as Slurm jobs.

    Args:
        max_jobs (int): jobs queued or running at once (with packing: up to
            ``max_jobs * trials_per_job`` trials). Default: 8.
        partition (str, optional): partition (default: the cluster's default).
        gpus_per_trial (int): GPUs per trial; 0 runs CPU jobs. Default: 0.
        cpus_per_task (int, optional): CPUs per task (default: Slurm's).
        extra_args (list): more sbatch arguments (like MMSeg's ``SRUN_ARGS``).
        python (str, optional): interpreter of the trials (default: this one).
        poll_interval (float): minimum seconds between two ``squeue`` calls.
        trials_per_job (int): trials packed into one job (sharing its GPU when
            ``gpus_per_trial`` is 1); only with ``gpus_per_trial <= 1``. Default: 1.
    """

    name = 'slurm'

    def __init__(self, max_jobs: int = 8, partition: Optional[str] = None,
                 gpus_per_trial: int = 0, cpus_per_task: Optional[int] = None,
                 extra_args: Sequence[str] = (), python: Optional[str] = None,
                 poll_interval: float = 1.0, trials_per_job: int = 1):
        if max_jobs < 1:
            raise ValueError(f'max_jobs must be at least 1, got {max_jobs}')
        if gpus_per_trial < 0:
            raise ValueError(f'gpus_per_trial must be >= 0, got {gpus_per_trial}')
        if trials_per_job < 1:
            raise ValueError(f'trials_per_job must be at least 1, got {trials_per_job}')
        if trials_per_job > 1 and gpus_per_trial > 1:
            raise ValueError(f'trials_per_job={trials_per_job} packs single-GPU trials; it '
                             f'cannot be combined with gpus_per_trial={gpus_per_trial}')
        if not slurm.slurm_available():
            raise RuntimeError('--executor slurm: sbatch/squeue are not available or the Slurm '
                               'controller does not answer (sinfo failed)')
        self.max_jobs = max_jobs
        self.partition = partition or None
        self.gpus_per_trial = gpus_per_trial
        self.cpus_per_task = cpus_per_task
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.poll_interval = poll_interval
        self.trials_per_job = trials_per_job
        # job id -> dict(specs={trial_id: spec}, members=[trial ids it runs], packed, start)
        self._running: Dict[str, Dict] = {}
        self._last_poll = 0.0

    @property
    def capacity(self) -> int:
        return self.max_jobs * self.trials_per_job

    def describe(self) -> str:
        part = self.partition or 'default partition'
        packed = (f', {self.trials_per_job} trials per job'
                  if self.trials_per_job > 1 else '')
        return (f'slurm ({part}), up to {self.max_jobs} job(s) at once{packed}, '
                f'{self.gpus_per_trial} GPU(s) per trial')

    def _env(self, spec: TrialSpec) -> Dict[str, str]:
        env = {LAUNCH_TIME_ENV: repr(time.time()), TRIAL_ID_ENV: spec.trial_id,
               'PYTHONUNBUFFERED': '1'}
        if self.cpus_per_task:
            env['OMP_NUM_THREADS'] = str(self.cpus_per_task)
        return env

    def launch(self, spec: TrialSpec) -> Dict:
        ntasks = max(self.gpus_per_trial, 1)
        cmd = train_command(spec, self.python, launcher='slurm' if ntasks > 1 else 'none')
        os.makedirs(spec.work_dir, exist_ok=True)
        job_id = slurm.submit(cmd, job_name=spec.name, workdir=spec.work_dir,
                              log_path=os.path.join(spec.work_dir, STDOUT_LOG),
                              partition=self.partition, gpus=self.gpus_per_trial,
                              cpus_per_task=self.cpus_per_task, ntasks=ntasks,
                              time_limit_s=spec.time_limit, extra_args=self.extra_args,
                              env=self._env(spec))
        self._running[job_id] = dict(specs={spec.trial_id: spec}, members=[spec.trial_id],
                                     packed=False, start=time.time())
        return dict(job_id=job_id, partition=self.partition, ntasks=ntasks)

    def launch_many(self, specs: List[TrialSpec]) -> List[Dict]:
        infos: List[Dict] = []
        k = self.trials_per_job
        for i in range(0, len(specs), k):
            group = specs[i:i + k]
            infos += [self.launch(group[0])] if len(group) == 1 else self._launch_pack(group)
        return infos

    def _launch_pack(self, group: List[TrialSpec]) -> List[Dict]:
        """One job running ``group``'s trials at once (see :mod:`asl.search.executors.pack`)."""
        first = group[0]
        members = [spec.trial_id for spec in group]
        prefix = first.name[:len(first.name) - len(first.trial_id)]
        trials = []
        for spec in group:
            os.makedirs(spec.work_dir, exist_ok=True)
            trials.append(dict(trial_id=spec.trial_id, work_dir=os.path.abspath(spec.work_dir),
                               command=train_command(spec, self.python), env=self._env(spec),
                               time_limit=spec.time_limit))
        manifest = os.path.abspath(os.path.join(first.work_dir, 'pack.json'))
        atomic_write_json(manifest, dict(grace_s=30, trials=trials))
        limit = max(spec.time_limit for spec in group) + 120  # the runner stops each trial
        job_id = slurm.submit([self.python, '-m', 'asl.search.executors.pack', manifest],
                              job_name=prefix + '+'.join(members), workdir=first.work_dir,
                              log_path=os.path.join(first.work_dir, 'pack.log'),
                              partition=self.partition, gpus=self.gpus_per_trial,
                              cpus_per_task=self.cpus_per_task, ntasks=1,
                              time_limit_s=limit, extra_args=self.extra_args)
        self._running[job_id] = dict(specs={spec.trial_id: spec for spec in group},
                                     members=members, packed=True, start=time.time())
        return [dict(job_id=job_id, partition=self.partition, ntasks=1, pack=members)
                for _ in group]

    def release(self, specs: List[TrialSpec]) -> None:
        """Cancel jobs that still run any of ``specs`` without this executor knowing it:
        a job of a killed controller that never reached the journal, or a packed job
        some of whose trials were re-attached but not these. Waits until they ended."""
        if not specs:
            return
        wanted = {spec.trial_id for spec in specs}
        first = specs[0]
        prefix = first.name[:len(first.name) - len(first.trial_id)]
        stale = set()
        for job_id, r in self._running.items():
            if wanted & (set(r['members']) - set(r['specs'])):
                stale.add(job_id)
        try:
            live = slurm.list_jobs(prefix)
        except slurm.SlurmError as e:
            print(f'[asl.search] warning: could not list the search\'s jobs ({e}); a job '
                  f'left by a killed controller may still run', file=sys.stderr, flush=True)
            live = {}
        # this search's jobs only: another search of the same config has the same names
        root = os.path.abspath(first.work_dir).split(os.sep + 'trials' + os.sep)[0] + os.sep
        for job_id, info in live.items():
            if job_id not in self._running and info.work_dir.startswith(root) and \
                    wanted & set(info.name[len(prefix):].split('+')):
                stale.add(job_id)
        if not stale:
            return
        stale_ids = sorted(stale)
        print(f'[asl.search] cancelling job(s) {", ".join(stale_ids)}: they run trials that '
              f'are launched again', file=sys.stderr, flush=True)
        slurm.cancel(stale_ids, reason='its trials are launched again by a resumed search')
        deadline = time.time() + 120
        while time.time() < deadline:
            if all(i.finished for i in slurm.query(stale_ids).values()):
                break
            time.sleep(0.5)

    def running(self) -> List[TrialSpec]:
        return [spec for r in self._running.values() for spec in r['specs'].values()]

    def poll(self) -> List[Tuple[TrialSpec, Completion]]:
        if not self._running or time.time() - self._last_poll < self.poll_interval:
            return []
        self._last_poll = time.time()
        infos = slurm.query(list(self._running))
        done = []
        for job_id, info in infos.items():
            if not info.finished or job_id not in self._running:
                continue
            r = self._running.pop(job_id)
            wall = time.time() - r['start']
            for spec in r['specs'].values():
                status = read_status(spec.work_dir) if r['packed'] else None
                if status is not None:  # the pack runner saw the trial end
                    comp = Completion(exit_code=status.get('exit_code'),
                                      timed_out=bool(status.get('timed_out')),
                                      wall_s=status.get('wall_s', wall),
                                      reason=(status.get('reason', '')
                                              if status.get('timed_out') else ''))
                else:
                    comp = self._job_completion(job_id, info, wall, r['packed'])
                done.append((spec, comp))
        return done

    @staticmethod
    def _job_completion(job_id: str, info, wall: float, packed: bool) -> Completion:
        """A trial's completion from its job's Slurm state."""
        if info.state == 'COMPLETED' and not packed:
            return Completion(exit_code=info.exit_code if info.exit_code is not None else 0,
                              wall_s=wall)
        if info.state == 'COMPLETED':  # a packed job ended without this trial's status
            return Completion(exit_code=None, wall_s=wall,
                              reason=f'slurm job {job_id} ended without a status for the '
                                     f'trial')
        if info.state == 'UNKNOWN':  # gone from Slurm; the trial's files decide
            return Completion(exit_code=None, wall_s=wall,
                              reason=f'slurm job {job_id}: {info.reason}')
        code = info.exit_code if info.exit_code not in (None, 0) else -1
        return Completion(exit_code=code, timed_out=info.state == 'TIMEOUT', wall_s=wall,
                          kind='' if info.state == 'FAILED' else f'slurm:{info.state}',
                          reason=f'slurm job {job_id} {info.state}: {info.reason}')

    def reattach(self, spec: TrialSpec, info: Dict) -> bool:
        job_id = info.get('job_id')
        if not job_id:
            return False
        # Live or finished while the controller was away: poll() reports it either way.
        r = self._running.setdefault(str(job_id), dict(
            specs={}, members=list(info.get('pack') or [spec.trial_id]),
            packed=bool(info.get('pack')), start=time.time()))
        r['specs'][spec.trial_id] = spec
        return True

    def stop(self) -> None:
        ids = list(self._running)
        if ids:
            slurm.cancel(ids, reason='the search was stopped')
        self._running.clear()
