"""``tools/search.py``: run or resume a loss search (see ``--help``)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

__all__ = ['search_main', 'build_executor']


def _parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(
        description='Search the parameters of a metric surrogate loss with PPO2 (or random '
                    'search), one real MMSeg proxy training per candidate. Running the same '
                    'command again on the same work directory resumes the search.')
    p.add_argument('config', help='search config (a proxy training config plus `search`)')
    p.add_argument('--work-dir', help='default: work_dirs/search/<config name>')
    p.add_argument('--seed', type=int, default=1, help='search seed (default: 1)')
    p.add_argument('--searcher', choices=('ppo', 'random'), default='ppo',
                   help="'ppo' (default) or the paper's 'random' baseline, same budget")
    p.add_argument('--executor', choices=('local', 'slurm'), default='local',
                   help='where trials run (default: local processes)')
    p.add_argument('--workers', type=int, default=1,
                   help='local CPU trials at once when there is no GPU (default: 1)')
    p.add_argument('--gpus', type=int, default=None,
                   help='local GPUs to use (default: all visible)')
    p.add_argument('--threads-per-trial', type=int, default=None,
                   help='CPU threads per local trial (default: the cores this process may run '
                   'on / trials at once)')
    p.add_argument('--trials-per-gpu', type=int, default=None,
                   help='trials at once on each GPU (each its own process), on each CPU '
                        'worker without GPUs, or per Slurm job (default: '
                        'search.trials_per_gpu, 1 unless the config sets it)')
    p.add_argument('--launch', choices=('auto', 'fork', 'spawn'), default='auto',
                   help="how local trials start: 'fork' them from a launcher that has "
                        "imported torch and MMSeg once, or 'spawn' tools/train.py afresh; "
                        "'auto' (default) forks CPU trials and spawns GPU trials")
    p.add_argument('--retrain-config',
                   help='config the final re-training config inherits (default: the search '
                        'config itself)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. search.num_steps=2 '
                        'train_cfg.max_iters=50')
    g = p.add_argument_group('Slurm (--executor slurm)')
    g.add_argument('--partition', default=os.environ.get('PARTITION'),
                   help='Slurm partition (default: $PARTITION or the cluster default)')
    g.add_argument('--gpus-per-trial', type=int, default=None,
                   help='GPUs per trial (default: search.gpus_per_trial, 0 without GPUs)')
    g.add_argument('--cpus-per-task', type=int,
                   default=int(os.environ['CPUS_PER_TASK']) if os.environ.get('CPUS_PER_TASK')
                   else None, help='CPUs per task (default: $CPUS_PER_TASK or Slurm\'s)')
    g.add_argument('--srun-args', default=os.environ.get('SRUN_ARGS', ''),
                   help='extra sbatch/srun arguments (default: $SRUN_ARGS)')
    g.add_argument('--max-jobs', type=int, default=8,
                   help='trials queued or running at once (default: 8)')
    return p


def build_executor(args, settings):
    """The executor the command line asks for."""
    from .settings import SearchConfigError
    packed = args.trials_per_gpu if args.trials_per_gpu is not None else settings.trials_per_gpu
    if packed < 1:
        raise SearchConfigError(f'--trials-per-gpu must be at least 1, got {packed}')
    if args.executor == 'slurm':
        from .executors.slurm import SlurmExecutor
        gpus = args.gpus_per_trial
        if gpus is None:
            gpus = settings.gpus_per_trial if _cluster_has_gpus() else 0
        _check_amp(settings, gpus)
        try:
            return SlurmExecutor(max_jobs=args.max_jobs, partition=args.partition,
                                 gpus_per_trial=gpus, cpus_per_task=args.cpus_per_task,
                                 extra_args=shlex.split(args.srun_args or ''),
                                 trials_per_job=packed)
        except ValueError as e:
            raise SearchConfigError(str(e)) from e
    from .executors import LocalExecutor
    try:
        ex = LocalExecutor(workers=args.workers, gpus=args.gpus,
                           gpus_per_trial=args.gpus_per_trial or settings.gpus_per_trial,
                           threads_per_trial=args.threads_per_trial, launch=args.launch,
                           trials_per_gpu=packed)
    except ValueError as e:
        raise SearchConfigError(str(e)) from e
    _check_amp(settings, len(ex.gpu_slots))
    return ex


def _check_amp(settings, gpus: int) -> None:
    """AMP proxy trainings need CUDA (MMEngine's AmpOptimWrapper)."""
    from .settings import SearchConfigError
    if settings.amp and not gpus:
        raise SearchConfigError(f'search.amp={settings.amp!r} needs GPUs for the proxy '
                                f'trainings (MMEngine\'s AmpOptimWrapper runs on CUDA) and '
                                f'this search has none; set search.amp=False')


def _cluster_has_gpus() -> bool:
    import subprocess
    try:
        out = subprocess.run(['sinfo', '-h', '-o', '%G'], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return 'gpu' in out


def search_main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .controller import Search, SearchInterrupted, WarmStartError, load_search_config
    from .settings import SearchConfigError
    work_dir = args.work_dir or os.path.join(
        'work_dirs', 'search', os.path.splitext(os.path.basename(args.config))[0])
    try:
        import asl.mmseg  # noqa: F401  (registers the modules)
        cfg, settings = load_search_config(args.config, args.cfg_options)
        executor = build_executor(args, settings)
        search = Search(args.config, work_dir, seed=args.seed, searcher=args.searcher,
                        executor=executor, retrain_config=args.retrain_config,
                        loaded=(cfg, settings))
        best = search.run()
    except SearchConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except SearchInterrupted as e:
        print(f'{e}; run the same command again to resume', file=sys.stderr)
        return 130
    except WarmStartError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'best {best["reward_key"]} parameters (step {best["best_step"]}): '
          f'{os.path.join(work_dir, "best.json")}')
    print(f're-training config: {best["retrain_config"]}')
    return 0
