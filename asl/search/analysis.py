"""Read a search's work directory (finished or running) through its journal.

The measurement scripts (``tools/analysis/``) and the tests read searches through this
module only, never by parsing the journal or guessing the trial folders themselves::

    from asl.search.analysis import load_search
    run = load_search('work_dirs/search/my_search')
    run.state.steps[0].rewards()          # the replayed state (asl.search.state)
    run.settings.num_samples              # the search's settings, from its fingerprint
    for t in run.trials():                # every trial's journal record and folder
        print(t.step, t.index, t.reward, t.work_dir)

Nothing here starts, changes or trains anything; a search that is still running is read
as far as its journal goes (a torn last line is ignored).
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

from ..protocol import RESULT_FILE
from ..utils import read_json_or_none
from .journal import Journal
from .settings import SearchSettings, parse_search_section
from .state import REEVAL, SearchState, TrialRecord, replay

__all__ = ['SearchRun', 'TrialView', 'load_search', 'spearman', 'JOURNAL']

#: The journal's file name in a search's work directory.
JOURNAL = 'journal.jsonl'


@dataclass
class TrialView:
    """One candidate of one step (``step`` is -1 for the re-evaluation) as the journal
    left it: its record, its raw parameters, and the folder of its last launched attempt
    (None if it was never launched: rejected by pre-screening). ``launch`` is that
    attempt's ``trial_launched`` event (its ``trial_id``, ``time``, executor ``info``)."""

    step: int
    index: int
    raw: List[float]
    record: TrialRecord
    work_dir: Optional[str]
    launches: int
    launch: Optional[Dict] = None

    @property
    def reward(self) -> Optional[float]:
        return self.record.reward

    @property
    def trial_id(self) -> Optional[str]:
        """The last launched attempt's id (``s00-c01-a1``), None if never launched."""
        return None if self.launch is None else self.launch.get('trial_id')

    def result(self) -> Optional[Dict]:
        """The trial's ``result.json`` (None if missing): its metrics and timings."""
        if self.work_dir is None:
            return None
        return read_json_or_none(os.path.join(self.work_dir, RESULT_FILE))


class SearchRun:
    """A search's work directory, read through its journal.

    Attributes:
        work_dir (str): the directory.
        events (list): the journal's complete events, in order.
        state (SearchState): the state they make (:func:`asl.search.state.replay`).
        settings (SearchSettings): the search's settings (from ``search_started``).
        fingerprint (dict): the whole fingerprint (config name, seed, searcher...).
        torn (str or None): what was ignored at the journal's end, if anything.
    """

    def __init__(self, work_dir: str):
        self.work_dir = os.path.abspath(work_dir)
        path = os.path.join(self.work_dir, JOURNAL)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{work_dir!r} holds no search (no {JOURNAL})')
        journal = Journal(path)
        self.events: List[Dict] = journal.read()
        self.torn = journal.torn
        self.state: SearchState = replay(self.events)
        if self.state.fingerprint is None:
            raise ValueError(f'{path}: the search has not started (no search_started event)')
        self.fingerprint: Dict = self.state.fingerprint
        settings = dict(self.fingerprint['settings'])
        if settings.get('equivalence', 0) is None:  # searches from before its removal
            settings.pop('equivalence')
        self.settings: SearchSettings = parse_search_section(settings, path)

    # ------------------------------------------------------------------ views
    @property
    def seed(self) -> int:
        return int(self.fingerprint['seed'])

    @property
    def searcher(self) -> str:
        return self.fingerprint['searcher']

    @property
    def reward_key(self) -> str:
        return self.fingerprint['reward_key']

    @property
    def finished(self) -> bool:
        return self.state.finished is not None

    def of_kind(self, kind: str) -> List[Dict]:
        """The journal's events of one kind, in order."""
        return [e for e in self.events if e['event'] == kind]

    def trials(self, reeval: bool = False) -> Iterator[TrialView]:
        """Every candidate of every step, in order (``reeval``: the re-evaluation's too,
        after them)."""
        launched: Dict[tuple, List[Dict]] = {}
        for e in self.of_kind('trial_launched'):
            step = REEVAL if e.get('phase') == 'reeval' else e['step']
            launched.setdefault((step, e['index']), []).append(e)
        owners = sorted(self.state.steps.items())
        if reeval and self.state.reeval is not None:
            owners.append((REEVAL, self.state.reeval))
        for step, rec in owners:
            for i, raw in enumerate(rec.candidates):
                ls = launched.get((step, i), [])
                yield TrialView(step=step, index=i, raw=raw, record=rec.trial(i),
                                work_dir=ls[-1]['work_dir'] if ls else None, launches=len(ls),
                                launch=ls[-1] if ls else None)

    def trial_config_path(self) -> Optional[str]:
        """The config of the first launched trial (the proxy training as the search ran
        it: its data split, schedule and model), or None before any launch."""
        first = next(iter(self.of_kind('trial_launched')), None)
        return None if first is None else os.path.join(first['work_dir'], 'config.py')

    def trial_config(self):
        """That config, loaded (MMEngine's ``Config``)."""
        from mmengine.config import Config
        path = self.trial_config_path()
        if path is None:
            raise ValueError(f'{self.work_dir}: no trial was launched yet')
        return Config.fromfile(path)

    def best(self) -> Optional[Dict]:
        """``best.json`` of a finished search (None if not written yet)."""
        return read_json_or_none(os.path.join(self.work_dir, 'best.json'))

    def info(self):
        """What the search's outputs know about it (:class:`asl.search.report.SearchInfo`,
        e.g. for :func:`~asl.search.report.retrain_config_text`): name, seed, searcher,
        reward key and settings from the fingerprint; the config's path and the re-training
        base from ``best.json`` (None before the search finished)."""
        from .report import SearchInfo
        best = self.best() or {}
        return SearchInfo(name=self.fingerprint['config'], config_path=best.get('config'),
                          work_dir=self.work_dir, seed=self.seed, searcher=self.searcher,
                          reward_key=self.reward_key, settings=self.settings,
                          retrain_base=best.get('retrain_base'))


def reevaluated(run: SearchRun) -> List[Dict]:
    """The results the search ``run`` re-evaluated (``search.reevaluate``), in the order of
    its ``reeval_finished`` event: ``dict(n=, source=, step=, proxy=, rewards=, raw=,
    chosen=)`` each, ``proxy`` the mean of its hold-out ``rewards`` over its proxy
    trainings, ``chosen`` whether the search chose it; results whose proxy trainings all
    failed are left out."""
    done = run.state.reeval_done or {}
    return [dict(n=n, source=sc.get('source', f'result {n}'), step=sc.get('step'),
                 proxy=sc['mean'], rewards=list(sc.get('rewards') or []), raw=sc['raw'],
                 chosen=n == done.get('chosen'))
            for n, sc in enumerate(done.get('scores') or []) if sc.get('mean') is not None]


def write_retrain_config(run: SearchRun, raw: List[float], path: str) -> str:
    """Write to ``path`` (and return it) a re-training config of the search ``run`` with
    its loss at the raw parameters ``raw``, as the search writes its own
    ``retrain_config.py`` (the same base, settings and terms beside the searched loss):
    for re-training results other than the chosen one, e.g. the re-evaluated ones."""
    from .report import retrain_config_text
    from .trial import settings_surrogate
    info = run.info()
    sur = settings_surrogate(run.settings, raw)
    text = retrain_config_text(info, info.retrain_base, sur.coordinates(), sur.num_pieces,
                               dict(selection=f'raw parameters {list(raw)}'))
    with open(path, 'w') as f:
        f.write(text)
    return path


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation of ``x`` and ``y`` (average ranks for ties); None for
    fewer than 3 pairs or when either has no variation."""
    if len(x) != len(y):
        raise ValueError(f'spearman needs pairs, got {len(x)} and {len(y)} values')
    if len(x) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r

    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else None


def load_search(work_dir: str) -> SearchRun:
    """The search in ``work_dir`` (:class:`SearchRun`).

    Raises:
        FileNotFoundError: no journal there.
        ValueError: the journal holds no started search.
    """
    return SearchRun(work_dir)
