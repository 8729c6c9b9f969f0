"""Command lines behind ``tools/train.py`` and ``tools/test.py`` (MMSeg style).

Both take a config path, ``--work-dir``, ``--cfg-options`` and ``--launcher
none|pytorch|slurm``; see :mod:`asl.mmseg.launch` for how the process group is made
on machines with or without CUDA. A config with a ``demo_data`` entry (the demo
configs) gets its dataset generated first when it is missing.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from ..protocol import EXIT_NONFINITE, EXIT_STOPPED
from .launch import LAUNCHERS, adapt_config, setup_distributed

__all__ = ['train_main', 'test_main', 'load_config', 'prepare_demo_data',
           'skip_config_formatting', 'quick_exit', 'EXIT_NONFINITE']



def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--work-dir', help='directory for logs, checkpoints and results')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value (e.g. train_cfg.max_iters=100)')
    p.add_argument('--launcher', choices=LAUNCHERS, default='none',
                   help="'pytorch' under torchrun, 'slurm' under srun (default: none)")
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def load_config(path: str, cfg_options=None, work_dir: Optional[str] = None) -> Config:
    """Load a config, apply ``--cfg-options`` and resolve ``work_dir`` like MMSeg.

    The work directory is, in order: ``work_dir``, the config's own ``work_dir``,
    ``work_dirs/<config name>``.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path!r}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def prepare_demo_data(cfg: Config) -> None:
    """Generate the demo dataset named by ``cfg.demo_data`` (if any) when it is missing
    (:func:`asl.data.demo.prepare_demo_data`)."""
    from ..data.demo import prepare_demo_data as prepare
    prepare(cfg)


def _enable_amp(cfg: Config) -> None:
    if not torch.cuda.is_available():
        raise SystemExit('error: --amp needs a CUDA device (MMEngine\'s AmpOptimWrapper does '
                         'not run on CPU); drop --amp')
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
    elif wrapper != 'OptimWrapper':
        raise SystemExit(f'error: --amp works with optim_wrapper type OptimWrapper, the config '
                         f'has {wrapper!r}')
    else:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'


def _build_runner(cfg: Config):
    from mmengine.runner import Runner
    from mmseg.registry import RUNNERS
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def _log_notes(runner, notes: Sequence[str]) -> None:
    for note in notes:
        runner.logger.info(note)


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/train.py``: train a segmentor from a config."""
    p = argparse.ArgumentParser(description='Train a segmentor (MMSeg 1.x) with asl losses.')
    p.add_argument('config', help='train config file path')
    p.add_argument('--resume', action='store_true',
                   help='resume from the latest checkpoint in the work dir (if there is one); '
                        'a config with resume=True resumes without it (from its load_from)')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision (CUDA)')
    p.add_argument('--seed', type=int, default=None,
                   help='random seed (sets randomness.seed; default: the config\'s)')
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms (sets randomness.deterministic=True)')
    p.add_argument('--lean', action='store_true',
                   help='for short throwaway trainings (search trials): write the config dump '
                        'without yapf formatting and, in a single process, exit right after '
                        'training without interpreter teardown')
    _common_args(p)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.lean:
        skip_config_formatting()

    import asl.mmseg  # noqa: F401  (registers the modules, allows mmengine checkpoints)
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    if args.amp:
        _enable_amp(cfg)
    cfg.resume = bool(args.resume or cfg.get('resume', False))
    if args.seed is not None or args.deterministic:
        randomness = dict(cfg.get('randomness', None) or {})
        if args.seed is not None:
            randomness['seed'] = args.seed
        if args.deterministic:
            randomness['deterministic'] = True
        cfg.randomness = randomness
    notes = adapt_config(cfg, args.launcher)
    prepare_demo_data(cfg)
    setup_distributed(args.launcher)
    runner = _build_runner(cfg)
    _log_notes(runner, notes)
    from .hooks import NonFiniteLossError, TrialStoppedEarly
    code = 0
    try:
        runner.train()
    except NonFiniteLossError as e:
        runner.logger.error(f'training stopped: {e}')
        code = EXIT_NONFINITE
    except TrialStoppedEarly as e:
        runner.logger.info(f'training stopped: {e}')
        code = EXIT_STOPPED
    if args.lean and args.launcher == 'none':
        quick_exit(code)
    return code


def skip_config_formatting() -> None:
    """Make MMEngine write config dumps (work-dir copy, log, visualizer) without running
    yapf over them: the text stays valid Python, only unformatted. yapf takes about a
    second per dump on a small CPU, and a Runner dumps its config several times."""
    import mmengine.config.config as mm_config

    def _no_format(text, style_config=None, verify=None, **kwargs):
        return text, False

    mm_config.FormatCode = _no_format


def quick_exit(code: int) -> None:
    """Flush the logs and leave without interpreter teardown (no module finalisers, no
    garbage collection of the model and datasets)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/test.py``: evaluate a checkpoint on the config's test set."""
    p = argparse.ArgumentParser(description='Evaluate a segmentor checkpoint (MMSeg 1.x).')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out', help='write the metrics to this JSON file')
    _common_args(p)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if not osp.isfile(args.checkpoint):
        print(f'error: checkpoint not found: {args.checkpoint!r}', file=sys.stderr)
        return 2

    import asl.mmseg  # noqa: F401
    from mmengine.dist import get_rank
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    notes = adapt_config(cfg, args.launcher)
    prepare_demo_data(cfg)
    setup_distributed(args.launcher)
    runner = _build_runner(cfg)
    _log_notes(runner, notes)
    metrics = runner.test()
    if args.out and get_rank() == 0:
        from ..utils import atomic_write_json
        atomic_write_json(args.out, {k: float(v) for k, v in metrics.items()
                                     if isinstance(v, (int, float))})
        runner.logger.info(f'metrics written to {args.out}')
    return 0


if __name__ == '__main__':  # python -m asl.mmseg.cli {train|test} ...
    if len(sys.argv) < 2 or sys.argv[1] not in ('train', 'test'):
        print('usage: python -m asl.mmseg.cli {train|test} CONFIG ...', file=sys.stderr)
        sys.exit(2)
    sys.exit((train_main if sys.argv[1] == 'train' else test_main)(sys.argv[2:]))
