"""The interface every trial executor implements, and what it reports.

An executor launches :class:`~asl.search.trial.TrialSpec` s, reports them when they
end (as :class:`Completion` s: exit status, time-out, scheduler reason; the
controller reads the trial's files to decide the outcome), can re-attach to a trial
launched by an earlier controller process, and stops everything it launched. Local
processes (:mod:`.local`), Slurm jobs (:mod:`.slurm`) and the tests' in-process stand-in
are interchangeable behind it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..trial import TrialSpec

__all__ = ['Completion', 'Executor']


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

    def launch_many(self, specs: List[TrialSpec]) -> List[Dict]:
        """Start several trials (at most the free capacity); their journal infos, in order.
        An executor that packs trials (several in one Slurm job) overrides this."""
        return [self.launch(spec) for spec in specs]

    def release(self, specs: List[TrialSpec]) -> None:
        """Called before ``specs`` are (re)launched and their directories reset: make sure
        nothing left by an earlier controller still runs them (e.g. a job submitted just
        before the controller was killed, or a packed job of which only some trials were
        re-attached)."""

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

    def prepare(self, work_dir: str) -> None:
        """Called once when a search starts, before its data preparation: a chance to
        start slow things in the background (``work_dir``: the search's directory)."""

    def close(self) -> None:
        """Release what the executor holds between trials (called when a search ends)."""

    def describe(self) -> str:
        return self.name
