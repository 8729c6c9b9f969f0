"""How trials run: the :class:`Executor` interface (:mod:`.base`), child processes of this
machine (:mod:`.local`, with the pre-warmed launcher of :mod:`.prefork`), Slurm jobs
(:mod:`.slurm` over the command-line wrapper :mod:`.slurm_cli`, several trials in one job
through :mod:`.pack`).

Nothing here imports torch or MMSeg: a trial's own process does.
"""
from .base import Completion, Executor
from .local import LAUNCH_MODES, LocalExecutor

__all__ = ['Completion', 'Executor', 'LocalExecutor', 'LAUNCH_MODES']
