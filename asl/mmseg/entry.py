"""The one entry through which other parts of asl run a training: the search's pre-warmed
trial launcher imports this module once (it imports MMSeg's models and datasets) and calls
:func:`run_training` with exactly the arguments ``tools/train.py`` gets (spawned trials run
``tools/train.py`` itself, which calls the same function)."""
from typing import Sequence

from . import cli

__all__ = ['run_training', 'exit_process']


def run_training(argv: Sequence[str]) -> int:
    """Train as ``tools/train.py ARGV`` does; return its exit status."""
    return cli.train_main(list(argv))


def exit_process(code: int) -> None:
    """End the process now with ``code``, after flushing the logs (no interpreter
    teardown: what a one-shot training process does when it is done)."""
    cli.quick_exit(code)
