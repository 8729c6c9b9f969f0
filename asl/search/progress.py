"""The search's one-line progress display."""
from __future__ import annotations

import math
import sys
import time
from typing import List, Optional

__all__ = ['Progress', 'fmt_time']


def fmt_time(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return '?'
    s = int(round(s))
    if s >= 3600:
        return f'{s // 3600}h{s % 3600 // 60:02d}m'
    return f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'


class Progress:
    """A one-line progress display: steps, trials running/done/failed, best, ETA.

    On a terminal the line is redrawn in place; otherwise a line is printed whenever
    the counts change.
    """

    def __init__(self, total_trials: int, capacity: int, stream=None):
        self.total = total_trials
        self.capacity = max(capacity, 1)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.t0 = time.time()
        self.durations: List[float] = []
        self.last = ''

    def show(self, step: int, num_steps: int, running: int, done: int, failed: int,
             best: Optional[float], best_at: str) -> None:
        """One progress line; ``step`` is :data:`~asl.search.state.REEVAL` (-1) during the
        re-evaluation."""
        remaining = self.total - done - failed
        if self.durations:
            avg = sum(self.durations) / len(self.durations)
            eta = avg * math.ceil(remaining / self.capacity)
        else:
            eta = None
        best_s = f'{best:.4f} ({best_at})' if best is not None else '-'
        where = 're-evaluation' if step < 0 else f'step {step + 1}/{num_steps}'
        line = (f'[search] {where} | trials: {running} running, {done} done, '
                f'{failed} failed, {self.total} total | best reward {best_s} | '
                f'elapsed {fmt_time(time.time() - self.t0)} | ETA {fmt_time(eta)}')
        key = line.rsplit('| elapsed', 1)[0]
        if self.tty:
            self.stream.write('\r' + line.ljust(len(self.last)))
            self.stream.flush()
            self.last = line
        elif key != self.last:
            self.stream.write(line + '\n')
            self.stream.flush()
            self.last = key

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write('\n')
            self.stream.flush()
