"""Re-trainings for the tools' result tables: one real training process per run, resumable.

A run trains a config with a seed in its own work directory; the training validates
once at its end and :class:`~asl.mmseg.hooks.ASLTrialHook` writes that validation's
metrics to ``result.json`` (see :mod:`asl.protocol`). ``run.json`` records what the run
is (config path and content digest, seed, options, command); a run whose ``result.json``
is complete and whose ``run.json`` matches is reused, not retrained, so a table's command
can be run again after an interruption, from a moved checkout too (the config is matched
by content, :func:`config_digest`). A killed training continues from its last checkpoint
(``--resume``). A folder holding a finished run of other settings is moved aside
(``<folder>.superseded<N>``), never deleted. No MMSeg import here: the training is a
subprocess.

The demo's re-trainings (``tools/demo.py``, ``tools/analysis/search_seeds.py``) train and
then test the last checkpoint (:func:`retrain_and_test`, metrics in ``metrics.json``);
:func:`run_or_exit` runs one of their stages and stops the tool when it fails.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..protocol import FAILURE_FILE, RESULT_FILE
from ..utils import (REPO_ROOT, atomic_write_json, atomic_write_text, read_json,
                     read_json_or_none, train_entry)

__all__ = ['RunResult', 'run_training', 'completed_run', 'training_command', 'config_digest',
           'wrapper_config_text', 'run_logged', 'mean_sd', 'METRICS', 'RUN_FILE', 'RUN_CONFIG',
           'RUN_LOG', 'DEMO_SEARCH_CONFIG', 'demo_retrain_config', 'run_or_exit',
           'retrain_and_test']

#: The six metrics every re-training config evaluates.
METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')
RUN_FILE = 'run.json'
RUN_CONFIG = 'run_config.py'
RUN_LOG = 'train.log'

#: The demo's search config (the embedded demo data, 3 steps x 4 proxy trainings).
DEMO_SEARCH_CONFIG = os.path.join(
    REPO_ROOT, 'configs', 'search', 'demo',
    'deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_asldemo-64x64.py')


def demo_retrain_config(loss: str) -> str:
    """The demo model's re-training config of ``loss`` (``ce``, ``lovasz``, ``asl-miou``...,
    the names of ``configs/retrain/demo/``)."""
    return os.path.join(REPO_ROOT, 'configs', 'retrain', 'demo',
                        f'deeplabv3plus_r18tiny-d8_{loss}_1xb8-1200_asldemo-64x64.py')


@dataclass
class RunResult:
    """Outcome of one run.

    Attributes:
        status (str): ``'ok'`` or ``'failed'``.
        metrics (dict): metric -> value in percent (empty unless ``'ok'``).
        reason (str): why a run failed.
        wall_s (float, optional): the training's wall time.
        reused (bool): the result was there already (not trained by this call).
    """

    status: str
    metrics: Dict[str, float] = field(default_factory=dict)
    reason: str = ''
    wall_s: Optional[float] = None
    reused: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 'ok'


def wrapper_config_text(config: str) -> str:
    """A config inheriting ``config`` with :class:`ASLTrialHook` writing ``result.json``
    (MMEngine's ``--cfg-options`` cannot add a hook to a list)."""
    return (f'_base_ = {os.path.abspath(config)!r}\n'
            f"custom_hooks = [dict(type='ASLTrialHook', result_file={RESULT_FILE!r}, "
            f'failure_file={FAILURE_FILE!r})]\n')


def training_command(config: str, work_dir: str, seed: int, options: Sequence[str] = (),
                     python: Optional[str] = None, nproc: int = 1,
                     master_port: int = 29500) -> List[str]:
    """The command line of a run: ``tools/train.py`` (under torchrun for ``nproc > 1``)
    with ``--resume`` and ``options`` as ``--cfg-options``."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f'nproc must be a positive integer, got {nproc!r}')
    python = python or sys.executable
    args = [config, '--work-dir', work_dir, '--seed', str(seed), '--resume', '--lean',
            '--launcher', 'pytorch' if nproc > 1 else 'none']
    if options:
        args += ['--cfg-options', *options]
    if nproc > 1:
        return [python, '-m', 'torch.distributed.run', '--nnodes=1',
                f'--nproc_per_node={nproc}', f'--master_port={master_port}',
                *train_entry(), *args]
    return [python, *train_entry(), *args]


def run_logged(cmd: Sequence[str], log_file: Optional[str],
               env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
               heartbeat: Optional[Callable[[float], None]] = None,
               heartbeat_s: float = 30.0) -> Tuple[int, float]:
    """Run ``cmd`` to its end with its output appended to ``log_file`` (None: this
    process's output); (exit status, wall seconds). ``heartbeat(elapsed seconds)`` is
    called every ``heartbeat_s`` seconds while it runs. An exception in the caller
    (Ctrl-C, a SIGTERM handler's exit) stops the process too: SIGTERM (a search then stops
    its trials), SIGKILL after 30 s."""
    if log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    t0 = time.time()
    out = open(log_file, 'ab') if log_file is not None else None
    try:
        proc = subprocess.Popen(list(cmd), stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None,
                                env=env, cwd=cwd)
        try:
            while True:
                try:
                    code = proc.wait(timeout=heartbeat_s if heartbeat else None)
                    break
                except subprocess.TimeoutExpired:
                    heartbeat(time.time() - t0)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    finally:
        if out is not None:
            out.close()
    return code, time.time() - t0


def _base_files(tree: ast.Module, path: str) -> Tuple[List[str], List[ast.stmt]]:
    """The ``_base_`` entries of a parsed config (resolved against its folder when they are
    plain paths) and the config's other statements."""
    bases: List[str] = []
    rest: List[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in stmt.targets):
            values = stmt.value.elts if isinstance(stmt.value, (ast.List, ast.Tuple)) \
                else [stmt.value]
            for v in values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    name = v.value
                    bases.append(name if '::' in name else
                                 os.path.normpath(os.path.join(os.path.dirname(path), name)))
                else:  # not a literal: kept as written
                    bases.append(ast.dump(v))
        else:
            rest.append(stmt)
    return bases, rest


def config_digest(config: str, _seen: Optional[Set[str]] = None) -> str:
    """A digest of what ``config`` defines: its statements (comments and layout aside) and,
    in place of its ``_base_`` paths, the digests of those files, recursively. Two copies of
    a config tree at different places (a moved checkout) have the same digest; an edit to
    the config or to any of its bases changes it. The file is parsed, never run."""
    path = os.path.abspath(config)
    seen = set() if _seen is None else _seen
    if path in seen:  # a cycle: MMEngine refuses it; the digest only needs to end
        return 'cycle:' + os.path.basename(path)
    seen = seen | {path}
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return 'missing:' + os.path.basename(path)
    try:
        tree = ast.parse(data, filename=path)
    except (SyntaxError, ValueError):  # not Python (a YAML or JSON config): its bytes
        return hashlib.sha256(data).hexdigest()
    bases, rest = _base_files(tree, path)
    parts = [ast.dump(ast.Module(body=rest, type_ignores=[]))]
    parts += [config_digest(b, seen) if os.path.isabs(b) else b for b in bases]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _describe(config: str, seed: int, options: Sequence[str], nproc: int) -> Dict:
    return dict(config=os.path.abspath(config), config_digest=config_digest(config),
                seed=int(seed), options=list(options), nproc=int(nproc))


def _same_run(previous, desc: Dict) -> bool:
    """Whether ``run.json``'s ``previous`` describes the run ``desc``: the same seed, options
    and processes, and the same config by content (a run recorded before the digest
    existed: by path)."""
    if not isinstance(previous, dict):
        return False
    if any(previous.get(k) != desc[k] for k in ('seed', 'options', 'nproc')):
        return False
    if previous.get('config_digest') is not None:
        return previous['config_digest'] == desc['config_digest']
    return previous.get('config') == desc['config']


def _difference(previous, desc: Dict) -> str:
    """What differs between a recorded run and ``desc``, for a message."""
    if not isinstance(previous, dict):
        return f'no readable {RUN_FILE}'
    keys = [k for k in ('config', 'config_digest', 'seed', 'options', 'nproc')
            if previous.get(k) != desc[k]]
    return ', '.join(f'{k} {previous.get(k)!r} -> {desc[k]!r}' for k in keys
                     if k != 'config_digest') or \
        ('the config\'s content' if 'config_digest' in keys else 'unknown')


def _set_aside(work_dir: str) -> str:
    """Move ``work_dir`` to the first free ``<work_dir>.superseded<N>``; the new name."""
    n = 1
    while os.path.exists(f'{work_dir}.superseded{n}'):
        n += 1
    dest = f'{work_dir}.superseded{n}'
    os.rename(work_dir, dest)
    return dest


def _complete(work_dir: str) -> Optional[Dict[str, float]]:
    """The metrics of a finished run (its last validation at its last iteration)."""
    result = read_json_or_none(os.path.join(work_dir, RESULT_FILE))
    if not isinstance(result, dict) or result.get('iter') is None or \
            result.get('iter') != result.get('max_iters'):
        return None
    metrics = result.get('metrics') or {}
    if not all(isinstance(metrics.get(m), (int, float)) for m in METRICS):
        return None
    return {m: float(metrics[m]) for m in METRICS}


def _last_error(log_file: str) -> str:
    try:
        with open(log_file, errors='replace') as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ''
    for ln in reversed(lines):
        if 'Error' in ln.split(':')[0] or ln.startswith('error:'):
            return ln[:300]
    return lines[-1][:300] if lines else ''


def completed_run(config: str, work_dir: str, seed: int, options: Sequence[str] = (),
                  nproc: int = 1) -> Optional[RunResult]:
    """The result of the run of ``config`` with ``seed`` and ``options`` in ``work_dir`` if
    it is done (:func:`run_training` would reuse it), else None."""
    work_dir = os.path.abspath(work_dir)
    desc = _describe(config, seed, options, nproc)
    previous = read_json_or_none(os.path.join(work_dir, RUN_FILE))
    if not _same_run(previous, desc):
        return None
    metrics = _complete(work_dir)
    if metrics is None:
        return None
    return RunResult('ok', metrics, wall_s=previous.get('wall_s'), reused=True)


def run_training(config: str, work_dir: str, seed: int, options: Sequence[str] = (),
                 python: Optional[str] = None, nproc: int = 1, env: Optional[Dict] = None,
                 master_port: int = 29500,
                 heartbeat: Optional[Callable[[float, str], None]] = None,
                 heartbeat_s: float = 30.0) -> RunResult:
    """Train ``config`` with ``seed`` in ``work_dir`` unless that run is done already.

    The run is the same when its seed, options, processes and config content
    (:func:`config_digest`) are; an unfinished one continues from its checkpoint. A folder
    holding a finished run of other settings is moved to ``<work_dir>.superseded<N>`` (with
    a line on stderr), an unfinished one's leftovers are removed.

    Args:
        config (str): the config to train (its validation must run at the end).
        work_dir (str): the run's directory (created).
        seed (int): random seed.
        options (list[str]): ``--cfg-options`` entries (``key=value``).
        python (str, optional): interpreter. Default: the current one.
        nproc (int): training processes (torchrun, ``--launcher pytorch``). Default: 1.
        env (dict, optional): environment of the training. Default: this one.
        master_port (int): torchrun's port when ``nproc > 1``.
        heartbeat (callable, optional): ``heartbeat(elapsed seconds, log file)``, called
            every ``heartbeat_s`` seconds while the training runs (e.g. to show progress).

    Returns:
        RunResult: the six metrics, or ``'failed'`` with a reason (exit status, the
        hook's ``failure.json`` or the last error line of ``train.log``).
    """
    work_dir = os.path.abspath(work_dir)
    done = completed_run(config, work_dir, seed, options, nproc)
    if done is not None:
        return done
    desc = _describe(config, seed, options, nproc)
    previous = read_json_or_none(os.path.join(work_dir, RUN_FILE))
    if not _same_run(previous, desc) and os.path.isdir(work_dir):
        # another run's folder (other config, seed, options...): a finished one is kept
        # aside, never deleted; an unfinished one's leftovers are removed
        if _complete(work_dir) is not None:
            dest = _set_aside(work_dir)
            print(f'{work_dir} held a finished run of other settings '
                  f'({_difference(previous, desc)}); moved to {dest}', file=sys.stderr,
                  flush=True)
        else:
            shutil.rmtree(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    wrapper = os.path.join(work_dir, RUN_CONFIG)
    atomic_write_text(wrapper, wrapper_config_text(config))
    cmd = training_command(wrapper, work_dir, seed, options, python, nproc, master_port)
    atomic_write_json(os.path.join(work_dir, RUN_FILE), dict(desc, command=cmd))
    for stale in (RESULT_FILE, FAILURE_FILE):
        if os.path.exists(os.path.join(work_dir, stale)):
            os.remove(os.path.join(work_dir, stale))
    log_file = os.path.join(work_dir, RUN_LOG)
    beat = None if heartbeat is None else (lambda elapsed: heartbeat(elapsed, log_file))
    code, wall = run_logged(cmd, log_file, env=env, heartbeat=beat, heartbeat_s=heartbeat_s)
    atomic_write_json(os.path.join(work_dir, RUN_FILE),
                      dict(desc, command=cmd, returncode=code, wall_s=wall))
    metrics = _complete(work_dir)
    if code == 0 and metrics is not None:
        return RunResult('ok', metrics, wall_s=wall)
    failure = read_json_or_none(os.path.join(work_dir, FAILURE_FILE))
    why = failure.get('reason') if isinstance(failure, dict) else None
    why = why or _last_error(log_file) or f'no complete {RESULT_FILE}'
    head = f'killed by signal {-code}' if code < 0 else f'exit status {code}'
    return RunResult('failed', reason=f'{head}: {why}', wall_s=wall)


def mean_sd(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        raise ValueError('mean_sd needs at least one value')
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


# ------------------------------------------------------------- the demo's re-trainings
def _tool_entry(name: str) -> List[str]:
    """What follows the interpreter to run ``tools/<name>.py`` (train, test): the script of
    a source checkout, else the installed package's entry."""
    if name == 'train':
        return train_entry()
    script = os.path.join(REPO_ROOT, 'tools', f'{name}.py')
    return [script] if os.path.isfile(script) else ['-m', 'asl.mmseg.cli', name]


def run_or_exit(cmd: Sequence[str], log: Optional[str] = None) -> float:
    """Run one stage of a tool (``cmd``, from the repository root, its output appended to
    ``log`` or shown); its wall seconds. A failure stops the tool (``SystemExit`` naming
    the exit status and the log)."""
    print('$ ' + ' '.join(cmd), flush=True)
    code, wall = run_logged(cmd, log, cwd=REPO_ROOT)
    if code != 0:
        where = f' (log: {log})' if log else ''
        raise SystemExit(f'error: command failed with exit status {code}{where}')
    return wall


def retrain_and_test(name: str, config: str, work_dir: str, seed: int,
                     options: Sequence[str] = (), tag: str = 'demo') -> Dict[str, float]:
    """Train ``config`` with ``seed`` in ``work_dir`` (resumed from its last checkpoint if
    interrupted), then test the last checkpoint; the test's metrics (``metrics.json``,
    percent). Skipped when ``metrics.json`` exists. ``options``: ``--cfg-options`` of both;
    ``name`` and ``tag`` label the progress lines (``[tag] name: ...``)."""
    out = os.path.join(work_dir, 'metrics.json')
    if os.path.isfile(out):
        print(f'[{tag}] {name}: already trained and evaluated ({out})')
        return read_json(out)
    print(f'[{tag}] {name}: training (log: {work_dir}/train.log) ...', flush=True)
    opts = ['--cfg-options', *options] if options else []
    dt = run_or_exit([sys.executable, *_tool_entry('train'), config, '--work-dir', work_dir,
                      '--seed', str(seed), '--resume', *opts],
                     log=os.path.join(work_dir, 'train.log'))
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    run_or_exit([sys.executable, *_tool_entry('test'), config, ckpt, '--work-dir', work_dir,
                 '--out', out, *opts], log=os.path.join(work_dir, 'test.log'))
    print(f'[{tag}] {name}: done in {dt / 60:.1f} min')
    return read_json(out)
