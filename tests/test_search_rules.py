"""The rules of the search loop, on the in-process test seam (``search_sim``): every
outcome here is forced by construction (the "trainings" return rewards chosen by the
test), so nothing depends on a CPU's floating-point arithmetic, and each test takes
seconds. The real searches (``test_search*.py``) check what only real trainings show."""
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip('mmseg')

from search_sim import (ROOT, Killed, SimExecutor, decisions, events, kill_at,  # noqa: E402
                        peak_reward, probe_score, sim_search)

from asl.search.settings import SearchConfigError  # noqa: E402


def _rewards(work, step):
    return next(e for e in events(work, 'policy_updated') if e['step'] == step)['rewards']


def _by_trial(table, default=None):
    """An outcome function: ``table`` maps trial-id prefixes (``'s01-c02'``, ``'re-'``) to
    a reward or a failure kind; other trials get ``default`` (None: :func:`peak_reward`)."""
    def outcome(spec, raw):
        for prefix, value in table.items():
            if spec.trial_id.startswith(prefix):
                return value(raw) if callable(value) else value
        return peak_reward(raw) if default is None else default
    return outcome


# ------------------------------------------------------------------------ plain loop
def test_a_search_trains_every_candidate_and_updates_the_policy_each_step(tmp_path):
    ex = SimExecutor(capacity=3)
    best = sim_search(tmp_path / 's', executor=ex).run()
    started = events(tmp_path / 's', 'step_started')
    assert [e['step'] for e in started] == [0, 1, 2]
    assert len(ex.launched) == 12 and len(set(ex.launched)) == 12
    for e in started:
        rewards = _rewards(tmp_path / 's', e['step'])
        assert rewards == pytest.approx([peak_reward(c) for c in e['candidates']], abs=1e-12)
        assert e['candidates'][0] == e['mu']  # baseline 'mu': candidate 0 is the mean
    ups = events(tmp_path / 's', 'policy_updated')
    # each step samples around the mean the previous update produced
    assert [u['mu'] for u in ups[:2]] == [e['mu'] for e in started[1:]]
    assert best['best_step'] in (1, 2, 3) and os.path.isfile(tmp_path / 's' / 'best.json')
    assert os.path.isfile(best['retrain_config'])


def test_capacity_bounds_the_trials_in_flight(tmp_path):
    class Watch(SimExecutor):
        most = 0

        def launch(self, spec):
            info = super().launch(spec)
            Watch.most = max(Watch.most, len(self._running))
            return info

    sim_search(tmp_path / 's', executor=Watch(capacity=2, delay=3)).run()
    assert Watch.most == 2


def test_random_search_samples_uniformly_and_reevaluates_the_best_candidates(tmp_path):
    """The paper's random-search baseline: uniform candidates from the seeded generator,
    no policy update; the two best single candidates are trained again with another seed
    and the better average wins."""
    def outcome(spec, raw):  # the re-evaluation: the second entry does worse the second time
        return peak_reward(raw) * (1.0 if spec.step >= 0 else 1.0 / (1.0 + 10 * spec.index))

    sim_search(tmp_path / 's', {'search.num_samples': 2,
                                'search.reevaluate': dict(top=2, seeds=1)},
               searcher='random', executor=SimExecutor(outcome=outcome)).run()
    rng = np.random.Generator(np.random.PCG64(1))  # the search seed
    rewards, cands = {}, {}
    started = events(tmp_path / 's', 'step_started')
    for e in started:
        k = e['step']
        assert e['candidates'] == rng.random((2, 12)).tolist()
        assert e['mu'] == started[0]['mu']  # the policy never moves
        up = next(u for u in events(tmp_path / 's', 'policy_updated') if u['step'] == k)
        assert up['stats'] == dict(skipped=True, reason='random search')
        for i, r in enumerate(up['rewards']):
            rewards[(k, i)], cands[(k, i)] = r, e['candidates'][i]
    top = sorted(rewards, key=lambda key: -rewards[key])[:2]
    start = events(tmp_path / 's', 'reeval_started')[0]
    assert [e['raw'] for e in start['entries']] == [cands[key] for key in top]
    done = events(tmp_path / 's', 'reeval_finished')[0]
    avg = [(rewards[key] + rewards[key] / (1.0 + 10 * n)) / 2 for n, key in enumerate(top)]
    assert [s['mean'] for s in done['scores']] == pytest.approx(avg)
    k, i = top[int(np.argmax(avg))]
    best = json.load(open(tmp_path / 's' / 'best.json'))
    assert best['searcher'] == 'random' and f'step {k + 1} candidate {i}' in best['selection']
    assert best['raw_theta'] == cands[(k, i)] and best['best_step'] == k + 1


def test_a_work_dir_holding_another_search_is_refused(tmp_path):
    sim_search(tmp_path / 's').run()
    with pytest.raises(SearchConfigError, match='holds another search'):
        sim_search(tmp_path / 's', options={'search.sigma': 0.123}).run()
    with pytest.raises(SearchConfigError, match='holds another search'):
        sim_search(tmp_path / 's', seed=2).run()
    # packing is not part of the search: the same search with another packing resumes
    again = sim_search(tmp_path / 's', options={'search.trials_per_gpu': 2}).run()
    assert again['raw_theta'] == json.load(open(tmp_path / 's' / 'best.json'))['raw_theta']


def test_cross_entropy_beside_the_surrogate(tmp_path):
    """search.ce_weight: every proxy training and the re-training config train
    cross-entropy beside the searched loss; the setting is part of the search's identity,
    and a search without it keeps the identity it had before the setting existed."""
    from mmengine.config import Config
    work = tmp_path / 's'
    opts = {'search.ce_weight': 0.5, 'search.num_steps': 1,
            'search.retrain_config': os.path.join(
                ROOT, 'configs', 'retrain', 'demo',
                'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')}
    search = sim_search(work, options=opts)
    best = search.run()
    assert 'ce_weight' not in sim_search(tmp_path / 'plain').fingerprint()['settings']
    assert search.fingerprint()['settings']['ce_weight'] == 0.5
    with pytest.raises(SearchConfigError, match=r"differs in \['settings'\]"):
        sim_search(work, options=dict(opts, **{'search.ce_weight': 0.0})).run()
    trial = Config.fromfile(str(work / 'trials' / 'step00' / 'cand01' / 'attempt1' /
                                'config.py'))
    for head, weight in (('decode_head', 1.0), ('auxiliary_head', 0.4)):
        asl, ce = trial.model[head].loss_decode
        assert asl['type'] == 'AutoSegLoss' and asl['loss_weight'] == weight
        assert ce == dict(type='CrossEntropyLoss', use_sigmoid=False,
                          loss_weight=pytest.approx(0.5 * weight))
    retrain = Config.fromfile(best['retrain_config'])
    for head, weight in (('decode_head', 1.0), ('auxiliary_head', 0.4)):
        asl, ce = retrain.model[head].loss_decode
        assert asl['type'] == 'AutoSegLoss' and '_delete_' not in asl
        assert list(asl['theta']) == pytest.approx(best['theta'], abs=1e-7)
        assert asl['loss_weight'] == weight
        assert ce == dict(type='CrossEntropyLoss', use_sigmoid=False,
                          loss_weight=pytest.approx(0.5 * weight))
    # the re-training config builds a model whose loss has both terms
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model = MODELS.build(retrain.model)
    names = [type(m).__name__ for m in model.decode_head.loss_decode]
    assert names == ['AutoSegLoss', 'CrossEntropyLoss']
    with pytest.raises(SearchConfigError, match='-1'):
        sim_search(tmp_path / 'bad', options={'search.ce_weight': -1})


def test_hand_designed_losses_beside_the_surrogate(tmp_path):
    """search.extra_losses: a hand-designed combination (cross-entropy from ce_weight, then
    Lovasz) trained beside the searched loss in every proxy training and in the
    re-training config, auxiliary heads at aux_weight x their weights; part of the
    search's identity; an unknown loss type or a bad weight is refused by name."""
    from mmengine.config import Config
    lovasz = dict(type='LovaszLoss', loss_type='multi_class', classes='present',
                  per_image=False, reduction='none', loss_weight=0.5)
    work = tmp_path / 's'
    opts = {'search.ce_weight': 1.0, 'search.extra_losses': [lovasz], 'search.num_steps': 1,
            'search.retrain_config': os.path.join(
                ROOT, 'configs', 'retrain', 'demo',
                'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')}
    search = sim_search(work, options=opts)
    best = search.run()
    assert search.fingerprint()['settings']['extra_losses'] == [lovasz]
    assert 'extra_losses' not in sim_search(tmp_path / 'plain').fingerprint()['settings']
    trial = Config.fromfile(str(work / 'trials' / 'step00' / 'cand01' / 'attempt1' /
                                'config.py'))
    retrain = Config.fromfile(best['retrain_config'])
    for cfg in (trial, retrain):
        for head, weight in (('decode_head', 1.0), ('auxiliary_head', 0.4)):
            asl, ce, lov = cfg.model[head].loss_decode
            assert asl['type'] == 'AutoSegLoss' and asl['loss_weight'] == weight
            assert ce['type'] == 'CrossEntropyLoss' and ce['loss_weight'] == pytest.approx(weight)
            assert dict(lov, loss_weight=None) == dict(lovasz, loss_weight=None)
            assert lov['loss_weight'] == pytest.approx(0.5 * weight)
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model = MODELS.build(retrain.model)
    names = [type(m).__name__ for m in model.decode_head.loss_decode]
    assert names == ['AutoSegLoss', 'CrossEntropyLoss', 'LovaszLoss']
    with pytest.raises(SearchConfigError, match='NoSuchLoss'):
        sim_search(tmp_path / 'bad1', options={'search.extra_losses': [dict(type='NoSuchLoss')]})
    with pytest.raises(SearchConfigError, match='loss_weight'):
        sim_search(tmp_path / 'bad2', options={
            'search.extra_losses': [dict(type='LovaszLoss', loss_weight=-1)]})
    with pytest.raises(SearchConfigError, match='extra_losses'):
        sim_search(tmp_path / 'bad3', options={'search.extra_losses': 'LovaszLoss'})


def test_a_fixed_surrogate_beside_the_searched_one(tmp_path):
    """search.extra_losses may hold an AutoSegLoss with named curves and its own log name:
    a fixed surrogate, copied unchanged (but its weight) into every proxy training and into
    the re-training config, which builds; one without curves (it would look searched) or
    under the searched loss's log name is refused, naming it."""
    from mmengine.config import Config
    fixed = dict(type='AutoSegLoss', target_metric='BF1', theta=[0.5] * 8, num_pieces=1,
                 tol=2, loss_name='loss_asl_bf1', loss_weight=0.5)
    work = tmp_path / 's'
    opts = {'search.extra_losses': [fixed], 'search.num_steps': 1,
            'search.retrain_config': os.path.join(
                ROOT, 'configs', 'retrain', 'demo',
                'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')}
    search = sim_search(work, options=opts)
    best = search.run()
    trial = Config.fromfile(str(work / 'trials' / 'step00' / 'cand01' / 'attempt1' /
                                'config.py'))
    retrain = Config.fromfile(best['retrain_config'])
    for cfg in (trial, retrain):
        for head, weight in (('decode_head', 1.0), ('auxiliary_head', 0.4)):
            searched, bf1 = cfg.model[head].loss_decode
            assert searched['target_metric'] == 'mIoU' and 'loss_name' not in searched
            assert dict(bf1, loss_weight=None) == dict(fixed, loss_weight=None)
            assert bf1['loss_weight'] == pytest.approx(0.5 * weight)
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model = MODELS.build(retrain.model)
    names = [m.loss_name for m in model.decode_head.loss_decode]
    assert names == ['loss_asl', 'loss_asl_bf1']
    unnamed = {k: v for k, v in fixed.items() if k != 'theta'}
    with pytest.raises(SearchConfigError, match='must name its curves'):
        sim_search(tmp_path / 'bad1', options={'search.extra_losses': [unnamed]})
    with pytest.raises(SearchConfigError, match="own loss_name"):
        sim_search(tmp_path / 'bad2', options={
            'search.extra_losses': [dict(fixed, loss_name='loss_asl')]})


# ------------------------------------------------------------------ failures, retries
def test_failures_are_retried_then_excluded_from_the_update(tmp_path):
    """Candidate 1 of step 1 crashes once, then trains; candidate 2 fails on every attempt
    (a non-finite loss, then a crash): with one retry it is excluded from the update. A
    time-out and a training without result.json are failures too."""
    outcome = _by_trial({'s00-c01-a1': 'crash', 's00-c02-a1': 'nonfinite',
                         's00-c02-a2': 'crash', 's01-c03-a1': 'timeout',
                         's01-c03-a2': 'noresult'})
    ex = SimExecutor(outcome=outcome)
    sim_search(tmp_path / 's', {'search.max_retries': 1}, executor=ex).run()
    failed = events(tmp_path / 's', 'trial_failed')
    got = sorted((e['step'], e['index'], e['attempt'], e['kind'], e['final']) for e in failed)
    assert got == [(0, 1, 1, 'crash', False), (0, 2, 1, 'nonfinite', False),
                   (0, 2, 2, 'crash', True), (1, 3, 1, 'timeout', False),
                   (1, 3, 2, 'noresult', True)]
    r0, r1 = _rewards(tmp_path / 's', 0), _rewards(tmp_path / 's', 1)
    assert r0[1] is not None and r0[2] is None and r1[3] is None
    up = events(tmp_path / 's', 'policy_updated')[0]
    assert up['summary']['num_failed'] == 1 and up['summary']['num_ok'] == 3
    best = json.load(open(tmp_path / 's' / 'best.json'))
    assert best['steps'][0]['failed']['2'] == [
        'attempt 1: [nonfinite] loss is nan at iteration 2', 'attempt 2: [crash] exit status 1']
    assert 'exceeded the trial time limit' in best['steps'][1]['failed']['3'][0]


def test_a_search_whose_trials_all_fail_reports_it(tmp_path):
    ex = SimExecutor(outcome=lambda spec, raw: 'crash')
    with pytest.raises(RuntimeError, match='no trial of the search produced a reward'):
        sim_search(tmp_path / 's', {'search.max_retries': 0, 'search.num_steps': 1},
                   executor=ex).run()
    up = events(tmp_path / 's', 'policy_updated')[0]
    assert up['rewards'] == [None] * 4 and up['stats']['skipped']


# --------------------------------------------------------------------- rollback, KL
def test_a_collapsed_mean_rolls_the_policy_back(tmp_path):
    """Step 2's policy mean (candidate 0) collapses: its reward is far below step 1's, so
    the policy goes back, exactly, to the state that sampled step 1's mean."""
    outcome = _by_trial({'s01-c00': 0.05})
    sim_search(tmp_path / 's', {'search.rollback': 0.8}, executor=SimExecutor(outcome=outcome)).run()
    started = {e['step']: e for e in events(tmp_path / 's', 'step_started')}
    ups = {e['step']: e for e in events(tmp_path / 's', 'policy_updated')}
    assert 'rollback' not in ups[0]['stats']
    back = ups[1]['stats']['rollback']
    assert back == dict(to_step=0, reward=0.05, best=ups[0]['rewards'][0])
    assert ups[1]['policy'] == started[0]['policy']
    assert started[2]['policy'] == started[0]['policy'] and started[2]['mu'] == started[0]['mu']
    assert 'rollback' not in ups[2]['stats']  # step 3's mean is step 1's again: no rollback


def test_the_kl_limit_stops_the_ppo_epochs(tmp_path):
    """Any Adam step moves the mean by more than a KL of 1e-12: with that limit the update
    takes no step at all (the step that crossed it is undone); without it, every epoch."""
    sim_search(tmp_path / 'a', {'search.num_steps': 1, 'search.target_kl': None}).run()
    sim_search(tmp_path / 'b', {'search.num_steps': 1, 'search.target_kl': 1e-12}).run()
    a = events(tmp_path / 'a', 'policy_updated')[0]
    b = events(tmp_path / 'b', 'policy_updated')[0]
    assert a['stats']['epochs'] > 1 and a['stats']['kl'] > 1e-12 and not a['stats']['stopped']
    assert b['stats']['epochs'] == 0 and b['stats']['stopped'].startswith('target_kl')
    assert b['mu'] == events(tmp_path / 'b', 'step_started')[0]['mu']


# ------------------------------------------------------------------- pre-screening
def _screen_by_reward(monkeypatch):
    """Screening scores that are the candidates' simulated rewards (real screening's
    scores are tested in test_prescreen.py)."""
    from asl.search import screening
    monkeypatch.setattr(screening.Screener, 'score', lambda self, raw: peak_reward(raw))


def test_rejected_candidates_are_not_trained_and_take_a_reward_below_the_lowest(
        tmp_path, monkeypatch):
    _screen_by_reward(monkeypatch)
    ex = SimExecutor()
    sim_search(tmp_path / 's', {'search.prescreen': dict(threshold=1.0)}, executor=ex).run()
    rejected_any = False
    for ev in events(tmp_path / 's', 'step_screened'):
        k, scores = ev['step'], ev['scores']
        assert ev['reference'] == scores[0] and 0 not in ev['rejected']
        assert ev['rejected'] == [i for i, s in enumerate(scores) if s < scores[0]]
        rejected_any |= bool(ev['rejected'])
        rewards = _rewards(tmp_path / 's', k)
        trained = [r for i, r in enumerate(rewards) if i not in ev['rejected']]
        for i in ev['rejected']:
            assert f's{k:02d}-c{i:02d}-a1' not in ex.launched
            assert rewards[i] == pytest.approx(min(trained) * scores[i] / scores[0])
            assert rewards[i] < min(trained)
    assert rejected_any
    evs = events(tmp_path / 's')
    best = json.load(open(tmp_path / 's' / 'best.json'))
    for ev in (e for e in evs if e['event'] == 'step_screened'):
        k = ev['step']
        # screened before any trial of its step was launched
        assert ev['seq'] < min(e['seq'] for e in evs
                               if e['event'] == 'trial_launched' and e['step'] == k)
        up = next(e for e in evs if e['event'] == 'policy_updated' and e['step'] == k)
        assert up['summary'].get('rejected', []) == ev['rejected']
        assert best['steps'][k]['rejected'] == ev['rejected']
        assert all(best['steps'][k]['rewards'][i] is None for i in ev['rejected'])


def test_real_screening_runs_once_per_step_and_follows_its_rule(tmp_path):
    """The real screening scores (Adam on free logits), in a search: the rule holds for
    whatever they are."""
    sim_search(tmp_path / 's', {'search.num_steps': 2,
                                'search.prescreen': dict(threshold=0.9, steps=3)}).run()
    screened = events(tmp_path / 's', 'step_screened')
    assert [e['step'] for e in screened] == [0, 1]
    for e in screened:
        assert len(e['scores']) == 4 and e['reference'] == e['scores'][0]
        assert e['rejected'] == [i for i, s in enumerate(e['scores'])
                                 if i != 0 and s < 0.9 * e['reference']]


# ------------------------------------------------------------------ early stopping
EARLY = {'search.early_stop': dict(at=[1 / 3, 2 / 3], quantile=0.5, min_trials=1)}


def test_trials_below_the_rule_stop_and_take_a_reward_below_the_lowest(tmp_path):
    """Step 1 trains everything (no history yet); in step 2, candidates 1 and 2 score
    far below every step-1 trial at the first probe, so they stop there; the mean
    (candidate 0) is never stopped, whatever it scores."""
    outcome = _by_trial({'s00-c00': 0.6, 's00-c01': 0.5, 's00-c02': 0.7, 's00-c03': 0.4,
                         's01-c00': 0.1, 's01-c01': 0.05, 's01-c02': 0.08, 's01-c03': 0.9},
                        default=0.5)
    ex = SimExecutor(outcome=outcome)
    sim_search(tmp_path / 's', dict(EARLY, **{'search.num_steps': 2}), executor=ex).run()
    stopped = events(tmp_path / 's', 'trial_stopped')
    assert [(e['step'], e['index'], e['iter']) for e in stopped] == [(1, 1, 10), (1, 2, 10)]
    median10 = float(np.median([probe_score(r, 10, 30) for r in (0.6, 0.5, 0.7, 0.4)]))
    for e in stopped:
        assert e['threshold'] == pytest.approx(median10) and e['score'] < e['threshold']
    launched = {e['index']: e['probes'] for e in events(tmp_path / 's', 'trial_launched')
                if e['step'] == 1}
    assert launched[0]['thresholds'] == [None, None]  # the mean: never stopped
    assert launched[1]['iters'] == [10, 20] and launched[1]['thresholds'][0] is not None
    rewards = _rewards(tmp_path / 's', 1)
    assert rewards[0] == pytest.approx(0.1) and rewards[3] == pytest.approx(0.9)
    for e in stopped:
        assert rewards[e['index']] == pytest.approx(0.1 * e['score'] / e['threshold'])
    first = events(tmp_path / 's', 'trial_launched')[0]
    assert first['step'] == 0 and first['probes']['thresholds'] == [None, None]
    best = json.load(open(tmp_path / 's' / 'best.json'))
    assert set(best['steps'][1]['stopped']) == {'1', '2'}


# ------------------------------------------------------------------ re-evaluation
def test_the_reevaluation_trains_the_best_means_again_and_chooses_by_the_average(tmp_path):
    """Step 2 has the best mean reward, but its mean does badly under the other proxy
    seed; step 1's does well: the re-evaluation chooses step 1's mean."""
    def outcome(spec, raw):
        if spec.step == -1:
            return 0.2 if raw == steps[1]['mu'] else 0.8
        return {0: 0.5, 1: 0.7, 2: 0.3}[spec.step] + 0.05 * peak_reward(raw)

    steps = {}

    class Ex(SimExecutor):
        def launch(self, spec):
            if spec.step >= 0 and spec.step not in steps:
                steps.update({e['step']: e for e in events(tmp_path / 's', 'step_started')})
            return super().launch(spec)

    best = sim_search(tmp_path / 's', {'search.reevaluate': dict(top=2, seeds=1)},
                      executor=Ex(outcome=outcome)).run()
    start = events(tmp_path / 's', 'reeval_started')[0]
    assert [e['source'] for e in start['entries']] == ['policy mean of step 2',
                                                       'policy mean of step 1']
    assert start['seeds'] == [2, 2]  # another proxy seed than the search's (1)
    done = events(tmp_path / 's', 'reeval_finished')[0]
    own = {k: _rewards(tmp_path / 's', k)[0] for k in (0, 1)}  # each mean's known reward
    assert [s['rewards'] for s in done['scores']] == [pytest.approx([own[1], 0.2]),
                                                      pytest.approx([own[0], 0.8])]
    assert done['chosen'] == 1
    assert best['raw_theta'] == steps[0]['mu'] and best['best_step'] == 1
    assert 'after re-evaluation' in best['selection']


def test_the_one_standard_error_rule_on_hand_made_scores():
    """``one_se`` returns the earliest result within one standard error of the best mean;
    the noise is pooled over the entries; with one reward each it chooses as ``best``."""
    from asl.search.state import choose_reevaluated

    def sc(step, rewards):
        return dict(step=step, rewards=rewards, mean=float(np.mean(rewards)) if rewards else None)
    # deviations +-0.01 in every entry: pooled s = sqrt(6 * 1e-4 / 6) = 0.01, se = 0.01 / sqrt(3)
    scores = [sc(2, [0.39, 0.40, 0.41]), sc(1, [0.386, 0.396, 0.406]),
              sc(0, [0.37, 0.38, 0.39])]
    assert choose_reevaluated(scores, 'best') == (0, None)
    chosen, se = choose_reevaluated(scores, 'one_se')
    assert se == pytest.approx(0.01 / np.sqrt(3)) and chosen == 1  # 0.396 within, 0.38 not
    wide = [sc(2, [0.35, 0.40, 0.45]), sc(0, [0.33, 0.38, 0.43])]  # s = 0.05: step 1 is near
    assert choose_reevaluated(wide, 'one_se')[0] == 1
    assert choose_reevaluated(wide, 'best')[0] == 0
    single = [sc(2, [0.40]), sc(0, [0.399])]                      # no estimate of the noise
    assert choose_reevaluated(single, 'one_se') == (0, None)
    assert choose_reevaluated([sc(0, [])], 'one_se') == (None, None)
    with pytest.raises(ValueError, match="'median'"):
        choose_reevaluated(scores, 'median')


def test_the_one_standard_error_rule_keeps_an_earlier_mean_within_the_noise(tmp_path):
    """Step 3's mean has the best average, step 1's is below it by less than the proxies'
    noise: ``best`` returns step 3's, ``one_se`` step 1's (journaled with its standard
    error); a bad rule is refused before anything runs."""
    def outcome(spec, raw):
        if spec.step >= 0:
            return {0: 0.51, 1: 0.40, 2: 0.52}[spec.step] + 1e-3 * peak_reward(raw)
        seed_shift = {2: -0.03, 3: 0.03}[spec.seed]  # the re-evaluation's 2 other seeds
        return (0.51 if raw == first_mu[0] else 0.52) + seed_shift  # se ~ 0.03 / sqrt(3)

    first_mu = []

    class Ex(SimExecutor):
        def launch(self, spec):
            if not first_mu:
                first_mu.append(events(tmp_path / 'r', 'step_started')[0]['mu'])
            return super().launch(spec)

    chosen = {}
    for rule in ('best', 'one_se'):
        first_mu.clear()
        best = sim_search(tmp_path / 'r', {'search.reevaluate': dict(top=2, seeds=2, rule=rule)},
                          executor=Ex(outcome=outcome)).run()
        done = events(tmp_path / 'r', 'reeval_finished')[0]
        assert [s['source'] for s in done['scores']] == ['policy mean of step 3',
                                                         'policy mean of step 1']
        chosen[rule] = (done['chosen'], best['best_step'], best['selection'])
        if rule == 'one_se':
            assert done['rule'] == 'one_se' and 0.01 < done['se'] < 0.03
        shutil.rmtree(tmp_path / 'r')
    assert chosen['best'][:2] == (0, 3)
    assert chosen['one_se'][:2] == (1, 1) and 'within one standard error' in chosen['one_se'][2]
    with pytest.raises(SearchConfigError, match="search.reevaluate.rule.*'median'"):
        sim_search(tmp_path / 'bad', {'search.reevaluate': dict(top=2, seeds=2, rule='median')})


# ------------------------------------------------------------------ exact resume
#: every journal point of a search that screens, stops trials early, retries a failure
#: and re-evaluates: (when, kind, n)
FULL = dict(EARLY, **{'search.prescreen': dict(threshold=0.99, steps=2),
                      'search.reevaluate': dict(top=2, seeds=1, rule='one_se'),
                      'search.max_retries': 1,
                      'search.rollback': 0.5})


def _full_outcome(spec, raw):
    if spec.trial_id.startswith('s00-c02-a1'):
        return 'crash'
    if spec.trial_id.startswith('s01-c01') or spec.trial_id.startswith('s02-c02'):
        return 0.01  # below every rule: stopped early
    return peak_reward(raw)


#: every kind of journal event, each killed before it is written, with half its line
#: written, or after it: 17 points of the search's 33 events (3 steps: screening, a crash
#: retried, 3 trials stopped early, 9 finished, the re-evaluation's 2 among them)
POINTS = [('before', 'search_started', 1), ('after', 'search_started', 1),
          ('torn', 'step_started', 1), ('after', 'step_screened', 2),
          ('before', 'trial_launched', 3), ('torn', 'trial_finished', 2),
          ('after', 'trial_failed', 1), ('before', 'trial_stopped', 1),
          ('torn', 'policy_updated', 1), ('after', 'trial_stopped', 2),
          ('before', 'step_started', 3), ('after', 'policy_updated', 3),
          ('torn', 'reeval_started', 1), ('before', 'trial_finished', 9),
          ('after', 'reeval_finished', 1), ('before', 'search_finished', 1),
          ('torn', 'search_finished', 1)]


@pytest.fixture(scope='module')
def full_reference(tmp_path_factory):
    work = tmp_path_factory.mktemp('full') / 's'
    sim_search(work, FULL, executor=SimExecutor(capacity=2, delay=2,
                                                outcome=_full_outcome)).run()
    kinds = [e['event'] for e in events(work)]
    for when, kind, n in POINTS:  # every point is reached
        assert kinds.count(kind) >= n, (kind, n, kinds)
    return work


@pytest.mark.parametrize('when,kind,n', POINTS, ids=[f'{w}:{k}:{n}' for w, k, n in POINTS])
def test_killed_at_a_journal_point_then_resumed_gives_the_uninterrupted_search(
        full_reference, tmp_path, when, kind, n):
    work = tmp_path / 's'
    search = kill_at(sim_search(work, FULL, executor=SimExecutor(
        capacity=2, delay=2, outcome=_full_outcome)), when, kind, n)
    with pytest.raises(Killed):
        search.run()
    seen = [e['event'] for e in events(work)].count(kind)
    assert seen == (n if when == 'after' else n - 1)
    if when == 'torn':
        with open(work / 'journal.jsonl', 'rb') as f:
            assert not f.read().endswith(b'\n')
    best = sim_search(work, FULL, executor=SimExecutor(capacity=2, delay=2,
                                                       outcome=_full_outcome)).run()
    assert decisions(work) == decisions(full_reference)
    ref_best = json.load(open(full_reference / 'best.json'))
    assert best['raw_theta'] == ref_best['raw_theta'] and best['steps'] == ref_best['steps']
    # a trial whose outcome was journaled is never trained again
    ends = [(e['step'], e['index'], e['attempt']) for e in events(work)
            if e['event'] in ('trial_finished', 'trial_failed', 'trial_stopped')]
    assert len(ends) == len(set(ends))


def test_a_resumed_search_that_decided_differently_is_caught(full_reference, tmp_path):
    """The check above can fail: a resume whose executor returns other rewards after the
    kill ends with other decisions."""
    work = tmp_path / 's'
    search = kill_at(sim_search(work, FULL, executor=SimExecutor(
        capacity=2, delay=2, outcome=_full_outcome)), 'after', 'policy_updated', 1)
    with pytest.raises(Killed):
        search.run()

    def other(spec, raw):
        out = _full_outcome(spec, raw)
        return out * 0.9 if isinstance(out, float) else out

    sim_search(work, FULL, executor=SimExecutor(capacity=2, delay=2, outcome=other)).run()
    assert decisions(work) != decisions(full_reference)
