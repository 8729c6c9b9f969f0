"""Several trials in one Slurm job: ``python -m asl.search.executors.pack MANIFEST``.

A packed job (``search.trials_per_gpu > 1`` with ``--executor slurm``) holds its GPU and
runs this module, which starts every trial of the manifest at once, each its own process
(in its own session, with its own environment, ``stdout.log`` and time limit), and
writes :data:`PACK_STATUS_FILE` into a trial's work directory when that trial ends:
``exit_code`` (``-N``: killed by signal N), ``timed_out``, ``wall_s`` and ``reason``. A
trial that crashes or runs out of memory ends alone; its siblings go on.

When the job itself is stopped (``scancel``, preemption, the job's time limit) every
trial still running gets SIGTERM, then SIGKILL, and gets no status file: the executor
then reports the job's Slurm state for it. The runner exits 0 once every trial has a
status, so that a job's state says whether the job ran to its end, not whether its
trials succeeded.

The manifest (JSON, written by :class:`~asl.search.executors.slurm.SlurmExecutor`)::

    {"grace_s": 30,
     "trials": [{"trial_id": "s00-c01-a1", "work_dir": "/abs/dir", "command": [...],
                 "env": {"NAME": "value"}, "time_limit": 3600.0}, ...]}

Standard library only (with :mod:`asl.protocol` and :mod:`asl.utils`, which are too): the
job's runner imports neither torch nor MMSeg.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List

from ...protocol import STDOUT_LOG
from ...utils import atomic_write_json, die_with_parent

__all__ = ['PACK_STATUS_FILE', 'read_status', 'run_pack']

#: What the runner writes into a trial's work directory when the trial has ended.
PACK_STATUS_FILE = 'pack_status.json'


def read_status(work_dir: str):
    """The status a packed trial's runner wrote (None if it wrote none)."""
    try:
        with open(os.path.join(work_dir, PACK_STATUS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(procs: List[Dict], grace: float) -> None:
    """SIGTERM to each trial's process group, then SIGKILL after ``grace`` seconds."""
    for p in procs:
        _signal_group(p['proc'].pid, signal.SIGTERM)
    deadline = time.time() + grace
    for p in procs:
        try:
            p['proc'].wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        _signal_group(p['proc'].pid, signal.SIGKILL)
        p['proc'].wait()


def run_pack(manifest: Dict, poll: float = 0.2) -> int:
    """Run the manifest's trials at once; return 0 when each has a status file."""
    grace = float(manifest.get('grace_s', 30))
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running: List[Dict] = []
    for t in manifest['trials']:
        os.makedirs(t['work_dir'], exist_ok=True)
        env = dict(os.environ)
        env.update({k: str(v) for k, v in t.get('env', {}).items()})
        with open(os.path.join(t['work_dir'], STDOUT_LOG), 'ab') as log:
            proc = subprocess.Popen(t['command'], stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=t['work_dir'], start_new_session=True,
                                    preexec_fn=die_with_parent)
        running.append(dict(trial=t, proc=proc, start=time.time()))
        print(f'[pack] {t["trial_id"]}: started (pid {proc.pid})', flush=True)
    while running:
        if stopping:
            print(f'[pack] signal {stopping[0]}: stopping {len(running)} trial(s) without '
                  f'a status', flush=True)
            _stop(running, grace)
            return 128 + stopping[0]
        for p in list(running):
            t, proc = p['trial'], p['proc']
            timed_out = False
            code = proc.poll()
            if code is None and time.time() - p['start'] > float(t['time_limit']):
                _stop([p], grace)
                code, timed_out = proc.returncode, True
            if code is None:
                continue
            _signal_group(proc.pid, signal.SIGKILL)  # leftovers of its group
            running.remove(p)
            wall = time.time() - p['start']
            reason = (f'exceeded the time limit of {float(t["time_limit"]):g} s' if timed_out
                      else f'exit status {code}')
            atomic_write_json(os.path.join(t['work_dir'], PACK_STATUS_FILE),
                        dict(trial_id=t['trial_id'], exit_code=code, timed_out=timed_out,
                             wall_s=wall, reason=reason))
            print(f'[pack] {t["trial_id"]}: {reason} after {wall:.1f} s', flush=True)
        time.sleep(poll)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print('usage: python -m asl.search.executors.pack MANIFEST.json', file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        manifest = json.load(f)
    return run_pack(manifest)


if __name__ == '__main__':
    sys.exit(main())
