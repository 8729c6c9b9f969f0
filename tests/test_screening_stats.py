"""``tools/prescreen_stats.py`` and ``tools/equivalence_stats.py`` on the session's real
tiny search (every candidate trained, so each would-be rejection can be checked)."""
import statistics

import pytest

from search_fixtures import SAMPLES, STEPS, journal, load_tool


def test_prescreen_stats_counts_rejections_against_the_real_rewards(reference_search, capsys):
    prescreen_stats = load_tool('prescreen_stats')
    work, out = reference_search
    assert out.returncode == 0, out.stderr[-3000:]
    rewards = {}
    for e in journal(work):
        if e['event'] == 'trial_finished' and e.get('phase') != 'reeval':
            rewards.setdefault(e['step'], {})[e['index']] = e['reward']
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


def test_equivalence_stats_compares_with_earlier_steps_only(reference_search, capsys):
    equivalence_stats = load_tool('equivalence_stats')
    work, _ = reference_search
    assert equivalence_stats.main([str(work), '--thresholds', '-1', '2']) == 0
    text = capsys.readouterr().out
    later = (STEPS - 1) * SAMPLES
    assert f'{later} candidates after the first step' in text
    assert f'| -1 | {later}/{later} |' in text and f'| 2 | 0/{later} | n/a | n/a |' in text
