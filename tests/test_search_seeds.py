"""Tests of ``tools/analysis/search_seeds.py``: its reading of a search (hand-made journals)
and its report on hand-made results (no training)."""
import argparse
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from search_fixtures import load_tool  # noqa: E402

ss = load_tool('search_seeds')

from asl.search.analysis import load_search, spearman  # noqa: E402


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ties take the average rank: ranks (0.5, 0.5, 2) against (0, 1, 2)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert spearman([1, 2], [1, 2]) is None  # too few
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # no variation
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


def _policy(dim):
    return dict(u=[0.0] * dim, exp_avg=[0.0] * dim, exp_avg_sq=[0.0] * dim, adam_step=0)


def _search(tmp_path, steps, dim=2, best=None):
    """A search's journal: per step its candidates' rewards (None: failed) and whether the
    policy was rolled back after it."""
    events = [dict(event='search_started', rng={}, policy=_policy(dim), fingerprint=dict(
        config='hand-made', settings={}, seed=3, searcher='ppo', dim=dim, reward_key='mIoU'))]
    for k, (rewards, rollback) in enumerate(steps):
        events.append(dict(event='step_started', step=k, mu=[0.5] * dim, rng={},
                           candidates=[[0.5] * dim for _ in rewards]))
        for i, r in enumerate(rewards):
            if r is None:
                events.append(dict(event='trial_failed', step=k, index=i, attempt=1,
                                   kind='crash', reason='exit status 1', final=True))
            else:
                events.append(dict(event='trial_finished', step=k, index=i, attempt=1,
                                   reward=r, metrics={}, timing={}))
        stats = dict(rollback=dict(to_step=0)) if rollback else {}
        events.append(dict(event='policy_updated', step=k, policy=_policy(dim),
                           mu=[0.5] * dim, rewards=rewards, stats=stats, summary=''))
    work = tmp_path / 'search'
    work.mkdir()
    (work / 'journal.jsonl').write_text(''.join(
        json.dumps(dict(seq=n, time=float(n), **e)) + '\n' for n, e in enumerate(events)))
    if best is not None:
        (work / 'best.json').write_text(json.dumps(best))
    return load_search(str(work))


def test_step_rows_from_the_journal(tmp_path):
    run = _search(tmp_path, [([0.3, 0.1, 0.2], False), ([None, 0.4, 0.2], True)])
    assert ss.step_rows(run) == [
        dict(step=1, own=0.3, mean=pytest.approx(0.2), rollback=False),
        # the policy mean (candidate 0) failed: the step's mean stands for it
        dict(step=2, own=pytest.approx(0.3), mean=pytest.approx(0.3), rollback=True)]


def test_loss_config_of_other_parameters(tmp_path):
    """The re-training config of a re-evaluated result: the search's own re-training
    base, its settings and the given raw parameters (nothing faked about the search)."""
    pytest.importorskip('mmengine')
    from asl.search.settings import parse_search_section
    from asl.search.trial import check_surrogate, settings_surrogate
    settings = parse_search_section({})
    _, identity = check_surrogate(settings)
    raw = [min(0.9, x + 0.05) for x in identity]
    base = os.path.join(ROOT, 'configs', 'retrain', 'demo',
                        'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')
    run = _search(tmp_path, [([0.3, 0.1], False)], dim=len(identity),
                  best=dict(config='/somewhere/hand-made.py', retrain_base=base))
    info = run.info()
    assert (info.name, info.seed, info.searcher, info.retrain_base) == \
        ('hand-made', 3, 'ppo', base)
    from asl.search.analysis import write_retrain_config
    out = write_retrain_config(run, raw, str(tmp_path / 'retrain_config.py'))
    text = open(out).read()
    assert f'_base_ = {base!r}' in text and "type='AutoSegLoss'" in text
    assert 'search hand-made (seed 3, ppo)' in text
    from mmengine.config import Config
    loss = Config.fromfile(out).model.decode_head.loss_decode
    assert list(loss.theta) == pytest.approx(settings_surrogate(settings, raw).coordinates(),
                                             abs=1e-7)


def _row(seed, own, means, chosen, ce, lovasz=50.0, reeval=(), rollback_at=()):
    steps = [dict(step=i + 1, own=o, mean=m, rollback=(i + 1) in rollback_at)
             for i, (o, m) in enumerate(zip(own, means))]
    return dict(seed=seed, steps=steps,
                selection=f'policy mean of step {len(own)}: the best average',
                chosen=dict(mIoU=chosen), ce=dict(mIoU=ce), lovasz=dict(mIoU=lovasz),
                reeval=[dict(source=f'policy mean of step {k}', proxy=p, miou=m)
                        for k, p, m in reeval])


ARGS = argparse.Namespace(searcher='ppo', steps=3)


def test_render_passes_and_correlations():
    rows = [_row(1, [0.30, 0.40, 0.35], [0.30, 0.36, 0.34], 58.0, 45.0,
                 reeval=[(2, 0.41, 58.0), (3, 0.39, 56.0), (1, 0.30, 50.0)]),
            _row(2, [0.30, 0.31, 0.32], [0.30, 0.31, 0.32], 57.0, 46.0,
                 reeval=[(3, 0.40, 55.0), (2, 0.39, 57.0), (1, 0.38, 59.0)])]
    pairs = [(e['proxy'], e['miou']) for r in rows for e in r['reeval']]
    text = ss.render(rows, pairs, ARGS)
    assert text.count('PASS') == 3 and 'FAIL' not in text
    assert '| 1 | 0.300 0.400 0.350 | policy mean of step 3 | 58.00 | 45.00 | 50.00 | +13.00 |' \
        in text
    assert 'Mean over seeds: chosen 57.50, cross-entropy 45.50' in text
    assert 'Within each seed (the choice is made among these): seed 1 1.00, seed 2 -1.00' in text
    assert f'over 6 re-evaluated results: {spearman(*zip(*pairs)):.2f}' in text


def test_render_flags_a_collapse_and_a_loss_below_cross_entropy():
    # step 3's own reward 0.14 is below half of the best step mean so far (0.30)
    rows = [_row(1, [0.30, 0.31, 0.14], [0.30, 0.28, 0.20], 44.0, 45.0, lovasz=60.0,
                 rollback_at=(3,))]
    text = ss.render(rows, [], ARGS)
    assert '0.140R' in text
    assert 'FAIL: the policy mean\'s reward never falls below half of the best step mean seen ' \
        'so far (below: [(1, 3, 0.14, 0.3)])' in text
    assert 'FAIL: every chosen loss re-trains above cross-entropy on mIoU (not for seeds [1])' \
        in text
    assert 'FAIL: the mean over seeds (44.00)' in text
    assert 'Within each seed' not in text
