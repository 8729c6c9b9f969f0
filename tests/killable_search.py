"""``tools/search.py`` with the tests' kill switch: ``ASL_SEARCH_KILL_AT=WHEN:KIND[:N]``
makes the search SIGKILL itself at the N-th (default: first) journal event of kind KIND.
WHEN is ``before`` (the event's work is done, e.g. the policy update is computed, but the
event is not written), ``torn`` (half of its line is written, as by a crash in the middle
of the append) or ``after`` (written and fsync'd). The tests kill real searches at exact
points with it and check that resuming gives the uninterrupted result; the in-process
equivalent is ``search_sim.kill_at``.

    python tests/killable_search.py CONFIG --work-dir DIR ...   (tools/search.py's options)
"""
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from asl.search.journal import EVENT_KINDS, Journal  # noqa: E402

ENV = 'ASL_SEARCH_KILL_AT'
WHEN = ('before', 'torn', 'after')


def dying_append(append, when, kind, n, die):
    """``append`` (a :meth:`Journal.append`, unbound) wrapped to call ``die(what)`` at the
    ``n``-th event of ``kind``: ``before`` writing it, after writing half its line
    (``torn``), or ``after`` writing it. The tests' one kill switch: this script kills a
    real search with it, ``search_sim.kill_at`` an in-process one."""
    seen = [0]

    def wrapped(self, event, **fields):
        if event != kind:
            return append(self, event, **fields)
        seen[0] += 1
        if seen[0] != n:
            return append(self, event, **fields)
        what = f'{when} {kind} #{n}'
        if when == 'before':
            die(what)
        if when == 'torn':
            line = json.dumps(dict(seq=self._seq, time=time.time(), event=event, **fields))
            with open(self.path, 'a') as f:
                f.write(line[:len(line) // 2])
                f.flush()
                os.fsync(f.fileno())
            die(what)
        record = append(self, event, **fields)
        die(what)
        return record

    return wrapped


def parse(spec):
    """``(when, kind, n)`` of ``WHEN:KIND[:N]``."""
    parts = spec.split(':')
    n = parts[2] if len(parts) == 3 else '1'
    if len(parts) not in (2, 3) or parts[0] not in WHEN or parts[1] not in EVENT_KINDS or \
            not n.isdigit() or int(n) < 1:
        raise SystemExit(f'{ENV}={spec!r}: expected WHEN:KIND[:N] with WHEN one of {WHEN}, '
                         f'KIND one of {EVENT_KINDS} and N >= 1')
    return parts[0], parts[1], int(n)


def _sigkill(what):
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == '__main__':
    if os.environ.get(ENV):
        Journal.append = dying_append(Journal.append, *parse(os.environ[ENV]), _sigkill)
    from asl.search.cli import search_main
    sys.exit(search_main())
