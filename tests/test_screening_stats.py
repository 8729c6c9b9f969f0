"""``tools/analysis/prescreen_stats.py`` on the session's real tiny search (every candidate
trained, so each would-be rejection can be checked)."""
import importlib.util
import os
import statistics
import sys

import pytest

from search_fixtures import ROOT, SAMPLES, STEPS

from asl.search.analysis import load_search

TOOL = os.path.join(ROOT, 'tools', 'analysis', 'prescreen_stats.py')


def _tool():
    if 'prescreen_stats' not in sys.modules:
        spec = importlib.util.spec_from_file_location('prescreen_stats', TOOL)
        module = importlib.util.module_from_spec(spec)
        sys.modules['prescreen_stats'] = module
        spec.loader.exec_module(module)
    return sys.modules['prescreen_stats']


def test_prescreen_stats_counts_rejections_against_the_real_rewards(reference_search, capsys):
    prescreen_stats = _tool()
    work, out = reference_search
    assert out.returncode == 0, out.stderr[-3000:]
    rewards = {}
    for t in load_search(str(work)).trials():
        if t.reward is not None:
            rewards.setdefault(t.step, {})[t.index] = t.reward
    assert len(rewards) == STEPS
    # above their step's median: what a rejection of every non-mean candidate gets wrong
    false = sum(r > statistics.median(st.values())
                for st in rewards.values() for i, r in st.items() if i != 0)
    others = STEPS * (SAMPLES - 1)
    assert prescreen_stats.main([str(work), '--steps', '2', '--thresholds', '0', '1000']) == 0
    text = capsys.readouterr().out
    assert f'{STEPS * SAMPLES} trained candidates in {STEPS} steps' in text
    assert f'| 0 | 0/{others} | 0/0 | 0% |' in text  # nothing scores below 0
    share = f'{others / (STEPS * SAMPLES):.0%}'
    assert f'| 1000 | {others}/{others} | {false}/{others} | {share} |' in text

    scores = prescreen_stats.search_scores(str(work), [2], lr=0.5)[2]
    assert [(k, i) for k, i, *_ in scores] == \
        [(k, i) for k in sorted(rewards) for i in sorted(rewards[k])]
    for k, i, score, reward, median, reference in scores:
        assert reward == rewards[k][i]
        assert median == pytest.approx(statistics.median(rewards[k].values()))
        assert reference == next(x.score for x in scores if (x.step, x.index) == (k, 0))
        assert 0.0 <= score <= 1.0

