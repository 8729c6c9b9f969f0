"""An append-only JSON-lines journal of typed search events.

Every event is one line ``{"seq": n, "time": t, "event": kind, ...}``, written with a
single ``write`` call, flushed and fsync'd before the caller goes on. Reading replays
the lines in order; a last line without its newline, or one that does not parse (a
write torn by a crash), is reported and ignored, and the next append first truncates
the file back to the last complete line. Nothing is pickled: every value is JSON.

Event kinds: :data:`EVENT_KINDS` (:mod:`asl.search.state` lists their fields and is what
makes a search's state of them).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['Journal', 'JournalError', 'EVENT_KINDS']

EVENT_KINDS = ('search_started', 'warm_start_failed', 'warm_start_finished', 'step_started',
               'step_screened', 'trial_launched',
               'trial_paused', 'rung_decided',
               'trial_finished', 'trial_failed', 'trial_stopped', 'policy_updated',
               'reeval_started',
               'reeval_finished', 'search_finished')


class JournalError(RuntimeError):
    """The journal is unreadable in a way that is not a torn last line."""


class Journal:
    """Append-only event log at ``path``.

    Args:
        path (str): the ``.jsonl`` file (created on first append).
    """

    def __init__(self, path: str):
        self.path = path
        self.torn: Optional[str] = None  # description of an ignored torn tail
        self._valid_size: Optional[int] = None
        self._seq = 0

    def read(self) -> List[Dict[str, Any]]:
        """Replay the journal: all complete events, in order.

        Raises:
            JournalError: a line other than the last one is not valid JSON, or an
                event has an unknown kind.
        """
        events, self._valid_size, self.torn = self._scan()
        self._seq = events[-1]['seq'] + 1 if events else 0
        return events

    def _scan(self) -> Tuple[List[Dict[str, Any]], int, Optional[str]]:
        if not os.path.exists(self.path):
            return [], 0, None
        with open(self.path, 'rb') as f:
            data = f.read()
        events: List[Dict[str, Any]] = []
        pos = 0
        lineno = 0
        torn = None
        while pos < len(data):
            end = data.find(b'\n', pos)
            lineno += 1
            if end < 0:  # no newline: the last write did not complete
                torn = f'line {lineno}: {len(data) - pos} bytes without a newline'
                break
            line = data[pos:end]
            try:
                ev = json.loads(line.decode('utf-8'))
                if not isinstance(ev, dict) or 'event' not in ev:
                    raise ValueError('not an event object')
            except (ValueError, UnicodeDecodeError) as e:
                if end + 1 >= len(data):  # the last line: torn
                    torn = f'line {lineno}: unparsable last line ({e})'
                    break
                raise JournalError(f'{self.path}: line {lineno} is corrupt ({e}); only a '
                                   f'torn last line can be ignored') from None
            if ev['event'] not in EVENT_KINDS:
                raise JournalError(f'{self.path}: line {lineno} has unknown event kind '
                                   f'{ev["event"]!r}')
            events.append(ev)
            pos = end + 1
        return events, pos, torn

    def append(self, event: str, **fields: Any) -> Dict[str, Any]:
        """Append one event durably and return it."""
        if event not in EVENT_KINDS:
            raise ValueError(f'unknown event kind {event!r}; expected one of {EVENT_KINDS}')
        if self._valid_size is None:
            self.read()
        record = dict(seq=self._seq, time=time.time(), event=event, **fields)
        line = (json.dumps(record, allow_nan=False, separators=(',', ':')) + '\n').encode()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size != self._valid_size:  # drop a torn tail before appending
                os.ftruncate(fd, self._valid_size)
            os.lseek(fd, self._valid_size, os.SEEK_SET)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._valid_size += len(line)
        self._seq += 1
        self.torn = None
        return record
