"""``SlurmExecutor``: every trial is a Slurm batch job (``--executor slurm``).

Each trial is submitted with ``sbatch`` (:mod:`asl.search.slurm`) as a job named
``asl-<search>-s<step>-c<candidate>-a<attempt>`` that runs ``tools/train.py`` through
``srun``, with the trial's time limit, its GPUs (one task per GPU, ``--launcher slurm``
when there are several) and its log in the trial's work directory. Up to ``max_jobs``
trials are queued or running at once. A job that fails, is cancelled, preempted or
times out is a failed trial whose reason is Slurm's state and reason. A resumed
search re-attaches to the jobs named in its journal instead of submitting duplicates,
and stopping the search cancels exactly the jobs it launched.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from . import slurm
from ..protocol import LAUNCH_TIME_ENV, STDOUT_LOG, TRIAL_ID_ENV
from .executors import Completion, Executor
from .trial import TrialSpec, train_command

__all__ = ['SlurmExecutor']


class SlurmExecutor(Executor):
    """Runs trials as Slurm jobs.

    Args:
        max_jobs (int): trials queued or running at once. Default: 8.
        partition (str, optional): partition (default: the cluster's default).
        gpus_per_trial (int): GPUs per trial; 0 runs CPU jobs. Default: 0.
        cpus_per_task (int, optional): CPUs per task (default: Slurm's).
        extra_args (list): more sbatch arguments (like MMSeg's ``SRUN_ARGS``).
        python (str, optional): interpreter of the trials (default: this one).
        poll_interval (float): minimum seconds between two ``squeue`` calls.
    """

    name = 'slurm'

    def __init__(self, max_jobs: int = 8, partition: Optional[str] = None,
                 gpus_per_trial: int = 0, cpus_per_task: Optional[int] = None,
                 extra_args: Sequence[str] = (), python: Optional[str] = None,
                 poll_interval: float = 1.0):
        if max_jobs < 1:
            raise ValueError(f'max_jobs must be at least 1, got {max_jobs}')
        if gpus_per_trial < 0:
            raise ValueError(f'gpus_per_trial must be >= 0, got {gpus_per_trial}')
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
        self._running: Dict[str, Dict] = {}  # job id -> dict(spec, start)
        self._last_poll = 0.0

    @property
    def capacity(self) -> int:
        return self.max_jobs

    def describe(self) -> str:
        part = self.partition or 'default partition'
        return (f'slurm ({part}), up to {self.max_jobs} job(s) at once, '
                f'{self.gpus_per_trial} GPU(s) per trial')

    def launch(self, spec: TrialSpec) -> Dict:
        ntasks = max(self.gpus_per_trial, 1)
        cmd = train_command(spec, self.python, launcher='slurm' if ntasks > 1 else 'none')
        env = {LAUNCH_TIME_ENV: repr(time.time()), TRIAL_ID_ENV: spec.trial_id,
               'PYTHONUNBUFFERED': '1'}
        if self.cpus_per_task:
            env.setdefault('OMP_NUM_THREADS', str(self.cpus_per_task))
        os.makedirs(spec.work_dir, exist_ok=True)
        job_id = slurm.submit(cmd, job_name=spec.name, workdir=spec.work_dir,
                              log_path=os.path.join(spec.work_dir, STDOUT_LOG),
                              partition=self.partition, gpus=self.gpus_per_trial,
                              cpus_per_task=self.cpus_per_task, ntasks=ntasks,
                              time_limit_s=spec.time_limit, extra_args=self.extra_args, env=env)
        self._running[job_id] = dict(spec=spec, start=time.time())
        return dict(job_id=job_id, partition=self.partition, ntasks=ntasks)

    def running(self) -> List[TrialSpec]:
        return [r['spec'] for r in self._running.values()]

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
            if info.state == 'COMPLETED':
                comp = Completion(exit_code=info.exit_code if info.exit_code is not None else 0,
                                  wall_s=wall)
            elif info.state == 'UNKNOWN':  # gone from Slurm; the trial's files decide
                comp = Completion(exit_code=None, wall_s=wall,
                                  reason=f'slurm job {job_id}: {info.reason}')
            else:
                code = info.exit_code if info.exit_code not in (None, 0) else -1
                comp = Completion(exit_code=code, timed_out=info.state == 'TIMEOUT',
                                  wall_s=wall, kind='' if info.state == 'FAILED'
                                  else f'slurm:{info.state}',
                                  reason=f'slurm job {job_id} {info.state}: {info.reason}')
            done.append((r['spec'], comp))
        return done

    def reattach(self, spec: TrialSpec, info: Dict) -> bool:
        job_id = info.get('job_id')
        if not job_id:
            return False
        # Live or finished while the controller was away: poll() reports it either way.
        self._running[str(job_id)] = dict(spec=spec, start=time.time())
        return True

    def stop(self) -> None:
        ids = list(self._running)
        if ids:
            slurm.cancel(ids, reason='the search was stopped')
        self._running.clear()
