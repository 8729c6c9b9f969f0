"""Tests of ``tools/search_compare.py`` (``benchmark_search.py --compare``) on hand-made
journals: the iterations counted, the equal-budget rewards and the table (no training)."""
import json

import pytest

from search_fixtures import load_tool

sc = load_tool('search_compare')


def _search(tmp_path, name, trials, stopped=(), rejected=(), reused=0, iters=300):
    """``trials``: (step, index, reward) finished in that order; ``stopped``: (step, index,
    iteration); ``rejected``: (step, index)."""
    work = tmp_path / name
    events = [dict(event='search_started')]
    for step in sorted({t[0] for t in trials}):
        events.append(dict(event='step_screened', step=step,
                           rejected=[i for s, i in rejected if s == step],
                           reused={str(k): {} for k in range(reused)} if step == 0 else {}))
        for s, i, r in [t for t in trials if t[0] == step]:
            d = work / 'trials' / f'step{s:02d}' / f'cand{i:02d}' / 'attempt1'
            d.mkdir(parents=True)
            (d / 'result.json').write_text(json.dumps(dict(max_iters=iters)))
            events.append(dict(event='trial_finished', step=s, index=i, attempt=1, reward=r))
        for s, i, it in [t for t in stopped if t[0] == step]:
            events.append(dict(event='trial_stopped', step=s, index=i, iter=it))
    # a re-evaluation trial is not part of the search's budget
    events.append(dict(event='trial_finished', step=9, index=0, attempt=1, reward=0.99,
                       phase='reeval'))
    (work / 'journal.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events)
                                        + '{"event": "torn')  # a torn last line is skipped
    return str(work)


def test_analyse_counts_iterations_and_rewards(tmp_path):
    work = _search(tmp_path, 'a', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.3), (1, 2, 0.5)],
                   stopped=[(1, 1, 100)], rejected=[(1, 3)], reused=1)
    r = sc.analyse(work)
    assert r['iterations'] == 4 * 300 + 100  # a stopped trial counts what it ran
    assert r['best'] == 0.5 and r['mean'] == pytest.approx(0.35)
    assert r['rejected'] == [(1, 3)] and r['stopped'] == 1 and r['reused'] == 1
    assert r['step_medians'] == {0: pytest.approx(0.3), 1: pytest.approx(0.4)}
    assert r['curve'] == [(300, 0.2), (600, 0.4), (900, 0.4), (1200, 0.5), (1300, 0.5)]
    assert sc.best_within(r['curve'], 1199) == 0.4
    assert sc.best_within(r['curve'], 1200) == 0.5
    assert sc.best_within(r['curve'], 299) is None


def test_render_equal_budget_table(tmp_path):
    ppo = sc.analyse(_search(tmp_path, 'ppo', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.3),
                                               (1, 1, 0.6)]))
    pre = sc.analyse(_search(tmp_path, 'pre', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.3)],
                             rejected=[(1, 1)]))
    stop = sc.analyse(_search(tmp_path, 'stop', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.5)],
                              stopped=[(1, 1, 100)]))
    results = {'ppo': {1: ppo}, 'prescreen': {1: pre}, 'prescreen+stop': {1: stop}}
    for r in results.values():  # as compare() does: the cheapest variant's budget
        r[1]['best_within'] = sc.best_within(r[1]['curve'], 900)
    checks = [dict(variant='prescreen', seed=1, step=1, index=1, reward=0.7, step_median=0.3,
                   false=True)]
    text = sc.render(results, [1], checks, steps=2, samples=2)
    assert '| ppo | 1200 | 1.00x | 0.6000 | 0.3750 | 0.4000 | 0 | 0 | 0 |' in text
    assert '| prescreen | 900 | 0.75x | 0.4000 | 0.3000 | 0.4000 | 1 | 0 | 0 |' in text
    assert '| prescreen+stop | 1000 | 0.83x | 0.5000 | 0.3667 | 0.5000 | 0 | 1 | 0 |' in text
    assert 'False rejections: 1 of 1 rejected candidates trained anyway beat their step\'s ' \
        'median (1 rejected in all).' in text
    results['prescreen'][1] = ppo
    assert 'False rejections: no candidate was rejected.' in sc.render(results, [1], [], 2, 2)
