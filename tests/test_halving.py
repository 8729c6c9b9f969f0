"""Successive halving inside a step (``search.halving``): the rules on hand-made scores,
the loop on the in-process seam (``search_sim``: outcomes forced by construction) with a
kill at each of its journal points, and a real tiny search whose promoted candidates
resume their rung checkpoints and end exactly where an uninterrupted training ends."""
import json
import os

import pytest

pytest.importorskip('mmseg')

from search_sim import (Killed, SimExecutor, decisions, events, kill_at,  # noqa: E402
                        probe_score, sim_search)

from asl.search.halving import (decide, halted_rewards, iterations_fraction,  # noqa: E402
                                planned_counts, rung_iters)
from asl.search.settings import SearchConfigError, parse_search_section  # noqa: E402


# ------------------------------------------------------------------------- the rules
def test_rung_iterations_are_fractions_of_the_proxy_inside_it():
    assert rung_iters(150, [0.2, 0.4]) == [30, 60]
    assert rung_iters(30, [1 / 3, 2 / 3]) == [10, 20]
    assert rung_iters(10, [0.01, 0.02, 0.99]) == [1, 9]  # clipped into [1, 9], merged


def test_the_best_ceil_n_over_eta_are_promoted_the_mean_among_them():
    scores = [0.30, 0.50, 0.10, 0.40, None, 0.20]  # candidate 4 did not reach the rung
    d = decide(scores, 2, mean_index=0)  # 5 scored: keep 3, the mean takes one place
    assert d == dict(promoted=[0, 1, 3], stopped=[2, 5], cut=0.40, keep=3)
    low_mean = [0.05, 0.50, 0.10, 0.40, None, 0.20]
    assert decide(low_mean, 2, mean_index=0) == dict(promoted=[0, 1, 3], stopped=[2, 5],
                                                     cut=0.40, keep=3)
    assert decide(low_mean, 2, mean_index=None) == dict(promoted=[1, 3, 5], stopped=[0, 2],
                                                        cut=0.20, keep=3)
    # the mean failed: the others by rank; ties go to the lower index
    assert decide([None, 0.3, 0.3, 0.3, 0.1], 3, mean_index=0) == dict(
        promoted=[1, 2], stopped=[3, 4], cut=0.3, keep=2)
    # only the mean goes on: the cut is the best stopped score
    assert decide([0.1, 0.4, 0.2], 3, mean_index=0) == dict(promoted=[0], stopped=[1, 2],
                                                            cut=0.4, keep=1)
    assert decide([None, None], 2, mean_index=0) == dict(promoted=[], stopped=[], cut=None,
                                                        keep=0)


def test_stopped_candidates_take_rewards_below_the_lowest_full_length_one_in_order():
    decisions_ = {
        0: dict(scores=[0.3, 0.1, 0.2, 0.4, 0.25, 0.35], stopped=[1, 2, 4], cut=0.3),
        1: dict(scores=[0.5, None, None, 0.4, None, 0.45], stopped=[3], cut=0.45),
    }
    full = [0.6, 0.5]  # candidates 0 and 5 trained to the end
    r = halted_rewards(decisions_, full)
    assert r[3] == pytest.approx(0.5 * 0.4 / 0.45)  # last rung: the lowest full x ratio
    for i, s in ((1, 0.1), (2, 0.2), (4, 0.25)):  # rung 0: under the lowest of rung 1
        assert r[i] == pytest.approx(r[3] * s / 0.3)
    assert max(r.values()) <= min(full)
    assert r[1] < r[2] < r[4] < r[3]  # rung, then score order kept
    assert halted_rewards(decisions_, []) == {}  # nothing trained in full: left out
    # nobody stopped at the last rung: rung 0's bar is the lowest full-length reward
    only0 = {0: decisions_[0], 1: dict(scores=[0.5, None, None, 0.4, None, 0.45],
                                       stopped=[], cut=None)}
    assert halted_rewards(only0, full)[4] == pytest.approx(0.5 * 0.25 / 0.3)


def test_halving_settings_are_checked():
    s = parse_search_section(dict(halving=dict(eta=3)))
    assert s.halving == dict(rungs=[pytest.approx(1 / 3)], eta=3)
    for bad, what in ((dict(rungs=[0.5, 0.2]), 'rungs'), (dict(rungs=[0.2, 1.0]), 'rungs'),
                      (dict(rungs=[]), 'rungs'), (dict(eta=1), 'eta'),
                      (dict(eta='2'), 'eta'), (dict(rung=[0.2]), 'keys')):
        with pytest.raises(SearchConfigError, match=what):
            parse_search_section(dict(halving=bad))
    with pytest.raises(SearchConfigError, match='early_stop'):
        parse_search_section(dict(halving={}, early_stop={}))


def test_the_planned_budget_at_the_papers_shape_of_a_step():
    assert planned_counts(16, 2, 2) == [16, 8, 4]
    assert iterations_fraction([16, 8, 4], [0.2, 0.4], 16) == pytest.approx(0.45)
    assert iterations_fraction(planned_counts(32, 2, 2), [0.2, 0.4], 32) == pytest.approx(0.45)
    assert iterations_fraction([4], [], 4) == 1.0


# --------------------------------------------------------------------------- the seam
#: 2 steps x 6 candidates of a 30-iteration proxy, rungs at 6 and 15, eta 2: 6 -> 3 -> 2
HALF = {'search.num_steps': 2, 'search.num_samples': 6,
        'search.halving': dict(rungs=[0.2, 0.5], eta=2)}


def _legs(work):
    return [(e['step'], e['index'], e.get('leg', 0)) for e in events(work, 'trial_launched')]


def test_each_rung_keeps_the_best_and_the_promoted_resume_their_checkpoints(tmp_path):
    work = tmp_path / 's'
    ex = SimExecutor(capacity=3)
    sim_search(work, HALF, executor=ex).run()
    legs = _legs(work)
    for step in (0, 1):
        paused = {(e['rung'], e['index']): e for e in events(work, 'trial_paused')
                  if e['step'] == step}
        decided = {e['rung']: e for e in events(work, 'rung_decided') if e['step'] == step}
        assert sorted(decided) == [0, 1] and [decided[k]['iter'] for k in (0, 1)] == [6, 15]
        # each decision is the rule applied to the journaled scores
        for k, d in decided.items():
            scores = [paused[(k, i)]['score'] if (k, i) in paused else None for i in range(6)]
            assert d['scores'] == scores
            assert {x: d[x] for x in ('promoted', 'stopped', 'cut', 'keep')} == \
                decide(scores, 2, mean_index=0)
        assert len(decided[0]['promoted']) == 3 and len(decided[1]['promoted']) == 2
        assert 0 in decided[1]['promoted']  # the mean goes to the end
        assert [i for s, i, g in legs if s == step and g == 0] == list(range(6))
        assert sorted(i for s, i, g in legs if s == step and g == 1) == decided[0]['promoted']
        assert sorted(i for s, i, g in legs if s == step and g == 2) == decided[1]['promoted']
        # a continuation resumed its own previous rung's checkpoint, nothing else
        for e in events(work, 'trial_launched'):
            if e['step'] == step and e.get('leg'):
                assert e['resume_from'] == paused[(e['leg'] - 1, e['index'])]['checkpoint']
        finished = {e['index']: e['reward'] for e in events(work, 'trial_finished')
                    if e['step'] == step}
        assert sorted(finished) == decided[1]['promoted']
        rewards = next(e for e in events(work, 'policy_updated') if e['step'] == step)['rewards']
        expect = halted_rewards(decided, list(finished.values()))
        for i in range(6):
            assert rewards[i] == pytest.approx(finished[i] if i in finished else expect[i])
        # the rung checkpoints are removed once the step is updated
        assert not any(os.path.exists(p['checkpoint']) for p in paused.values())
    assert ex.resumed == [(tid, 6 if '-r1-' in tid else 15) for tid, _ in ex.resumed]
    assert len(ex.resumed) == 2 * (3 + 2)
    best = json.load(open(work / 'best.json'))
    assert [r['promoted'] for r in best['steps'][0]['rungs']] == \
        [e['promoted'] for e in events(work, 'rung_decided') if e['step'] == 0]


def test_a_rung_on_a_plateau_is_decided_by_index_and_says_so(tmp_path, caplog):
    # at the first rung every candidate scores the same (a plateau: they all predict the
    # dominant class), at the second they differ: the first promotes by index and warns
    plateau = lambda spec, reward, it, n: 0.163 if it == 6 else probe_score(reward, it, n)
    work = tmp_path / 's'
    with caplog.at_level('WARNING'):
        sim_search(work, HALF, executor=SimExecutor(capacity=3, rung_score=plateau)).run()
    first = [e for e in events(work, 'rung_decided') if e['rung'] == 0]
    assert [d['promoted'] for d in first] == [[0, 1, 2]] * 2  # the mean, then by index
    warned = [r.getMessage() for r in caplog.records if 'tie rule' in r.getMessage()]
    assert len(warned) == 2 and all('rung 1 (iteration 6)' in m and '[3, 4, 5]' in m
                                    for m in warned)
    assert not any('rung 2' in m for m in warned)  # the second rung ranked


def test_halving_is_off_by_default_and_out_of_an_old_search_identity(tmp_path):
    search = sim_search(tmp_path / 's', {'search.num_steps': 1})
    search.run()
    assert 'halving' not in search.fingerprint()['settings']
    assert events(tmp_path / 's', 'trial_paused') == []
    assert all('leg' not in e for e in events(tmp_path / 's', 'trial_launched'))


def _crash_a_continuation(spec, raw):
    from search_sim import peak_reward
    return 'crash' if spec.trial_id == 's00-c00-r1-a1' else peak_reward(raw)


#: 4 candidates (4 -> 2 -> 1), a crash of a continuation (retried from the same
#: checkpoint) and a re-evaluation
FULL_H = dict(HALF, **{'search.num_samples': 4, 'search.max_retries': 1,
                       'search.reevaluate': dict(top=1, seeds=1)})

#: the new journal points (and the continuation in flight): (when, kind, n)
POINTS = [('before', 'trial_paused', 1), ('torn', 'trial_paused', 3),
          ('after', 'trial_paused', 4),  # every candidate at rung 1, not yet decided
          ('before', 'rung_decided', 1), ('torn', 'rung_decided', 2),
          ('after', 'rung_decided', 1), ('after', 'trial_launched', 5),  # leg 1 in flight
          ('after', 'trial_failed', 1), ('before', 'trial_finished', 2),
          ('after', 'rung_decided', 3), ('before', 'policy_updated', 2)]


def _run_full(work):
    return sim_search(work, FULL_H, executor=SimExecutor(capacity=2, delay=2,
                                                         outcome=_crash_a_continuation))


@pytest.fixture(scope='module')
def halving_reference(tmp_path_factory):
    work = tmp_path_factory.mktemp('halving') / 's'
    _run_full(work).run()
    kinds = [e['event'] for e in events(work)]
    for when, kind, n in POINTS:
        assert kinds.count(kind) >= n, (kind, n)
    launched = events(work, 'trial_launched')
    assert launched[4].get('leg') == 1  # the 5th launch is a continuation
    assert [e['trial_id'] for e in events(work, 'trial_failed')] == ['s00-c00-r1-a1']
    retry = next(e for e in launched if e['trial_id'] == 's00-c00-r1-a2')
    first = next(e for e in launched if e['trial_id'] == 's00-c00-r1-a1')
    assert retry['resume_from'] == first['resume_from']  # the same checkpoint again
    return work


@pytest.mark.parametrize('when,kind,n', POINTS, ids=[f'{w}:{k}:{n}' for w, k, n in POINTS])
def test_killed_at_a_halving_journal_point_then_resumed_gives_the_same_search(
        halving_reference, tmp_path, when, kind, n):
    work = tmp_path / 's'
    with pytest.raises(Killed):
        kill_at(_run_full(work), when, kind, n).run()
    best = _run_full(work).run()
    assert decisions(work) == decisions(halving_reference)
    assert best['raw_theta'] == json.load(open(halving_reference / 'best.json'))['raw_theta']
    ends = [(e['step'], e['index'], e['attempt'], e.get('rung')) for e in events(work)
            if e['event'] in ('trial_finished', 'trial_failed', 'trial_paused')]
    assert len(ends) == len(set(ends))  # nothing journaled is trained again


def test_a_resume_that_decides_a_rung_otherwise_is_caught(halving_reference, tmp_path,
                                                          monkeypatch):
    """The comparison above fails when a resumed search decides a rung by another rule
    (here: the worst promoted instead of the best), between the scores and the decision."""
    work = tmp_path / 's'
    with pytest.raises(Killed):
        kill_at(_run_full(work), 'before', 'rung_decided', 1).run()
    import asl.search.controller as controller

    def inverted(scores, eta, mean_index):
        return decide([None if s is None else -s for s in scores], eta, mean_index)

    monkeypatch.setattr(controller, 'decide', inverted)
    _run_full(work).run()
    assert decisions(work) != decisions(halving_reference)


# ------------------------------------------------------------------ real trainings
def test_halving_compare_runs_both_searches_and_the_promoted_end_as_uninterrupted(tmp_path):
    """``tools/analysis/halving_compare.py`` on a real tiny search (1 step x 4 candidates of
    30 iterations, rungs at 6 and 12): plain PPO trains every candidate in full (probing
    the hold-out at the rungs), halving 4 -> 2 -> 1. Same seed, same candidates: every rung
    score of the halving search equals the plain trial's probe at that iteration, and every
    promoted candidate's full-length reward equals its plain reward, although it was
    trained in three processes resuming each other's checkpoints (exact resume; without
    the random state in the checkpoint the mean's reward differs: checked by hand)."""
    import sys

    from search_fixtures import ROOT, env, run
    run_dir = tmp_path / 'h'
    out = run([sys.executable, os.path.join(ROOT, 'tools', 'analysis', 'halving_compare.py'),
               '--run-dir', str(run_dir), '--seeds', '1',
               '--steps', '1', '--samples', '4', '--iters', '30', '--rungs', '0.2', '0.4',
               '--eta', '2', '--workers', '1', '--no-retrain',
               '--search-options', 'search.holdout.num=16',
               'optim_wrapper.optimizer.type=RMSprop', 'optim_wrapper.optimizer.lr=0.001',
               'default_hooks.logger.interval=1'], env=env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    plain, half = run_dir / 'ppo' / 'seed1', run_dir / 'halving' / 'seed1'
    reward = {w: {e['index']: e['reward'] for e in events(w, 'trial_finished')}
              for w in (plain, half)}
    assert sorted(reward[plain]) == [0, 1, 2, 3]
    decided = events(half, 'rung_decided')
    assert [d['iter'] for d in decided] == [6, 12]
    assert len(decided[0]['promoted']) == 2 and decided[1]['promoted'] == [0]
    assert sorted(reward[half]) == [0]
    assert reward[half][0] == reward[plain][0]
    assert len(set(reward[plain].values())) > 1  # not degenerate: the rewards differ
    probes = {e['index']: {p['iter']: p['score'] for p in e['probes']}
              for e in events(plain, 'trial_finished')}
    for p in events(half, 'trial_paused'):
        assert p['score'] == probes[p['index']][p['iter']]
    # no iteration trained twice: each continuation resumed at its rung and trained on
    for e in events(half, 'trial_launched'):
        if e.get('leg'):
            logs = [os.path.join(r, f) for r, _, fs in os.walk(e['work_dir']) for f in fs
                    if f.endswith('.log') and f != 'stdout.log']
            text = open(logs[0]).read()
            start = [6, 12][e['leg'] - 1]
            assert f'resumed epoch: 0, iter: {start}' in text
            first = text.index('Iter(train) [')
            assert text[first:first + 20].startswith(f'Iter(train) [{start + 1:2d}/30]')
    # the table: iterations spent as the journals say
    data = json.load(open(run_dir / 'halving.json'))['results']
    assert data['ppo']['1']['iterations'] == 4 * 30
    assert data['halving']['1']['iterations'] == 4 * 6 + 2 * 6 + 1 * 18
    assert data['halving']['1']['leg_counts'] == [[4, 2, 1]]
    text = open(run_dir / 'halving.md').read()
    assert '| halving | 54 | 0.45x |' in text and 'Projection' in text
    assert 'iteration 6 (20%): seed 1' in text
    # what the step-choice rules read: every candidate's first-rung score in both
    # variants (the plain trials' probes), the full-length rewards the journals hold
    p_step, h_step = data['ppo']['1']['steps'][0], data['halving']['1']['steps'][0]
    assert p_step['first_rung_n'] == h_step['first_rung_n'] == 4
    assert h_step['first_rung_mean'] == pytest.approx(p_step['first_rung_mean'])
    assert p_step['mean_full'] == pytest.approx(sum(reward[plain].values()) / 4)
    assert h_step['mean_full'] == h_step['mu_reward'] == reward[half][0]
    assert h_step['mean_update'] <= h_step['mean_full']  # stopped ones never above it


def test_packed_trials_pause_and_resume_and_the_mean_ends_as_in_the_reference(
        reference_search, tmp_path):
    """Three trials packed on one worker (``--trials-per-gpu 3``), one step with rungs at 9
    and 18: every leg runs in the packed worker, and the policy mean, trained in three
    legs, ends with the reward the reference search's uninterrupted training gave it."""
    from search_fixtures import run, search_cmd, tail
    ref, _ = reference_search
    work = tmp_path / 'packed'
    out = run(search_cmd(work, '--trials-per-gpu', '3', options=[
        'search.num_steps=1', 'search.reevaluate=None', 'search.halving.rungs=[0.3,0.6]',
        'search.halving.eta=2']))
    assert out.returncode == 0, tail(out)
    assert '3 CPU trial(s) at once (3 per worker)' in open(work / 'search.log').read()
    assert [e['iter'] for e in events(work, 'rung_decided')] == [9, 18]
    assert len(events(work, 'trial_paused')) == 3 + 2
    launched = events(work, 'trial_launched')
    assert [e.get('leg', 0) for e in launched] == [0, 0, 0, 1, 1, 2]
    finished = events(work, 'trial_finished')
    assert [(e['index'], e['reward']) for e in finished] == [
        (0, next(e['reward'] for e in events(ref, 'trial_finished')
                 if e['step'] == 0 and e['index'] == 0))]


def test_step_choice_rules_pick_by_their_own_statistic():
    """``halving_compare --retrain-steps``: each rule picks the step its statistic ranks
    first (the first on ties, steps with nothing to read left out), and the table reports
    each rule's re-trained result beside the hindsight best."""
    from search_fixtures import load_tool
    hc = load_tool('halving_compare')

    def step(k, full, upd, own, first, retrained):
        return dict(step=k, mu=[0.0], mean_full=full, mean_update=upd, mu_reward=own,
                    first_rung_mean=first, first_rung_n=4, retrained=retrained)

    steps = [step(1, 0.30, 0.20, 0.25, 0.10, 50.0), step(2, 0.35, 0.18, None, 0.12, 52.0),
             step(3, 0.30, 0.20, 0.24, 0.11, 55.0)]
    picks = hc.rule_picks(steps)
    assert [picks[label] for label in hc.RULES] == [2, 1, 1, 2, 3]
    res = {'ppo': {1: dict(steps=steps)}, 'halving': {1: dict(steps=steps[:2])}}
    text = '\n'.join(hc.render_steps(res, [1], ['ppo', 'halving']))
    assert '| the search\'s rule (mean full-length reward) | 52.00 (52.00) | 52.00 (52.00) |' \
        in text
    assert '| last step | 55.00 (55.00) | 52.00 (52.00) |' in text
    assert '| best re-trained (hindsight) | 55.00 (55.00) | 52.00 (52.00) |' in text
    assert '| halving | 1 | 2 | 0.3500 | 0.1800 | n/a | 0.1200 | 52.00 |' in text


def test_halving_table_reports_the_same_seed_difference_with_its_standard_error():
    """The table's same-seed difference of re-trained mIoU (halving - ppo) over the seeds:
    mean, sample sd and standard error, per seed (a seed without both results left out)."""
    import argparse

    from search_fixtures import load_tool
    hc = load_tool('halving_compare')

    def r(it, retrained):
        return dict(iterations=it, retrained=retrained, best=0.3, mean=0.2,
                    leg_counts=[[4, 1]], selection='policy mean of step 1',
                    rung_pairs={'10': [(0.1, 0.2), (0.2, 0.3), (0.3, 0.1)]})

    res = {'ppo': {1: r(120, 50.0), 2: r(120, 52.0), 3: r(120, 51.0)},
           'halving': {1: r(60, 51.0), 2: r(60, 49.0), 3: r(60, None)},
           'ce': {1: 40.0, 2: 41.0, 3: 40.5}}
    args = argparse.Namespace(steps=1, samples=4, iters=30, rungs=[1 / 3], eta=4.0, name='h')
    text = hc.render(res, [1, 2, 3], args, [10])
    assert ('h - ppo on the same seed: -1.00 (sd 2.83, standard error 2.00, 2 seeds; per seed '
            '+1.00, -3.00)') in text
    assert '| h | 60 | 0.50x |' in text
