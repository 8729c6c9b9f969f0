"""Tests of the report of ``tools/search_seeds.py`` on hand-made results (no training)."""
import argparse

import pytest

from search_fixtures import load_tool

ss = load_tool('search_seeds')


def test_spearman():
    assert ss.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert ss.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ties take the average rank: ranks (0.5, 0.5, 2) against (0, 1, 2)
    assert ss.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert ss.spearman([1, 2], [1, 2]) is None  # too few
    assert ss.spearman([1, 1, 1], [1, 2, 3]) is None  # no variation


def _row(seed, own, means, chosen, ce, lovasz=50.0, reeval=(), rollback_at=()):
    steps = [dict(step=i + 1, rewards=[o, 0.1], mean=m, rollback=(i + 1) in rollback_at)
             for i, (o, m) in enumerate(zip(own, means))]
    best = dict(steps=steps, selection=f'policy mean of step {len(own)}: the best average')
    return dict(seed=seed, best=best, own=ss.own_rewards(best), chosen=dict(mIoU=chosen),
                ce=dict(mIoU=ce), lovasz=dict(mIoU=lovasz),
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
    assert f'over 6 re-evaluated results: {ss.spearman(*zip(*pairs)):.2f}' in text


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
