"""Early stopping of proxy trainings (``search.early_stop``): probes of the hold-out score
during a trial, a rule fixed when the step starts, and trials that really stop (a real
search). The rule inside the loop and exact resume with it: test_search_rules.py."""
import json
import os

import pytest

from asl.search.early_stop import probe_plan
from asl.search.settings import EARLY_STOP_DEFAULTS, SearchConfigError, parse_search_section
from asl.search.state import StepRecord, TrialRecord, settled_reward


def test_probe_plan_fixes_iterations_and_thresholds():
    hist = [[dict(iter=10, score=s), dict(iter=20, score=s + 0.1)] for s in (0.1, 0.2, 0.4)]
    plan = probe_plan(30, [1 / 3, 2 / 3], hist, 0.5, 3)
    assert plan == dict(iters=[10, 20], thresholds=[pytest.approx(0.2), pytest.approx(0.3)])
    # too little history: no rule yet (the first step)
    assert probe_plan(30, [1 / 3, 2 / 3], hist[:2], 0.5, 3)['thresholds'] == [None, None]
    assert probe_plan(30, [1 / 3], [], 0.5, 1) == dict(iters=[10], thresholds=[None])
    # a shorter list of probes counts where it has them; the quantile is the rule
    plan = probe_plan(30, [1 / 3, 2 / 3], hist + [[dict(iter=10, score=0.0)]], 0.25, 3)
    assert plan['thresholds'][0] == pytest.approx(0.075)
    assert plan['thresholds'][1] == pytest.approx(0.25)


def test_early_stop_settings_are_checked():
    s = parse_search_section(dict(early_stop=dict(at=[0.5])))
    assert s.early_stop == dict(EARLY_STOP_DEFAULTS, at=[0.5])
    for bad, word in ((dict(at=[0.6, 0.3]), 'increasing'), (dict(at=[1.0]), 'increasing'),
                      (dict(quantile=1), 'quantile'), (dict(min_trials=0), 'min_trials'),
                      (dict(rule='median'), 'keys among')):
        with pytest.raises(SearchConfigError, match=word):
            parse_search_section(dict(early_stop=bad))


def test_settled_reward_is_below_the_lowest_full_length_reward():
    rec = StepRecord(mu=[], candidates=[[0.1]] * 3)
    rec.trials = {0: TrialRecord(reward=0.4), 1: TrialRecord(reward=0.3),
                  2: TrialRecord(stopped=dict(score=0.1, threshold=0.2))}
    assert settled_reward(rec, 2, [0.4, 0.3]) == pytest.approx(0.15)
    assert settled_reward(rec, 2, []) is None
    rec.trials[2] = TrialRecord(rejected=True)
    rec.screened = dict(scores=[1.0, 1.0, 0.3], threshold=0.5, reference=1.0)
    assert settled_reward(rec, 2, [0.4, 0.3]) == pytest.approx(0.18)


# ------------------------------------------------------------------ real searches
# What a trial scores depends on the CPU's floating-point arithmetic (the trainings'
# results differ between processors), so these searches do not rely on a trial happening
# to score low: tests/asl_search_hooks.py's CollapseHook makes step 1's two sampled
# candidates learn nothing, and they score far below every step-0 trial at each probe;
# the policy mean (candidate 0) is never probed, and step 0 has no rule yet.
pytest.importorskip('mmseg')
from search_fixtures import (CONFIG, ITERS, env, journal, run, search_cmd, tail,  # noqa: E402
                             trajectory)

EARLY = ['search.early_stop.min_trials=3', 'search.reevaluate=None']
COLLAPSED = ('step01/cand01', 'step01/cand02')
RETRAIN = os.path.join(os.path.dirname(os.path.dirname(CONFIG)), '..', 'retrain', 'demo',
                       'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')


def _collapse_config(tmp):
    path = os.path.join(str(tmp), 'collapse.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = {CONFIG!r}\n"
                "custom_imports = dict(imports=['asl.mmseg', 'asl_search_hooks'], "
                "allow_failed_imports=False)\n"
                f"custom_hooks = [dict(type='CollapseHook', trials={list(COLLAPSED)!r})]\n"
                f"search = dict(retrain_config={RETRAIN!r})\n")
    return path


def _cmd(work, options):
    cmd = search_cmd(work, options=options)
    cmd[2] = _collapse_config(os.path.dirname(str(work)))
    return cmd


def _env(**extra):
    tests = os.path.dirname(os.path.abspath(__file__))
    return env(PYTHONPATH=os.pathsep.join([tests, os.environ.get('PYTHONPATH', '')]), **extra)


def _events(work, kind):
    return [e for e in journal(work) if e['event'] == kind]


@pytest.fixture(scope='module')
def early_reference(tmp_path_factory):
    """The tiny search with early stopping, uninterrupted."""
    work = tmp_path_factory.mktemp('early') / 'ref'
    out = run(_cmd(work, EARLY), env=_env())
    assert out.returncode == 0, tail(out)
    return work


def test_trials_below_the_rule_really_stop(reference_search, early_reference):
    work = early_reference
    # probing only observes: the first step (no rule yet) trains exactly like the reference
    # search, whose trials are not probed
    assert trajectory(work)['steps'][0]['rewards'] == \
        trajectory(reference_search[0])['steps'][0]['rewards']
    launched = _events(work, 'trial_launched')
    plans = {(e['step'], e['index']): e['probes'] for e in launched}
    assert plans[(0, 1)] == dict(iters=[10, 20], thresholds=[None, None])  # no history yet
    assert all(t is not None for t in plans[(1, 1)]['thresholds'])
    assert plans[(1, 0)]['thresholds'] == [None, None]  # never the policy mean
    stopped = _events(work, 'trial_stopped')
    # the collapsed candidates stop at the first probe; nothing else is forced
    assert {(e['step'], e['index'], e['iter']) for e in stopped} >= {(1, 1, 10), (1, 2, 10)}
    assert all(e['step'] == 1 and e['index'] != 0 for e in stopped)
    for e in stopped:
        assert e['score'] < e['threshold'] and e['iter'] in (10, 20)
        trial = os.path.join(work, 'trials', 'step01', f'cand{e["index"]:02d}', 'attempt1')
        log = open(os.path.join(trial, 'stdout.log')).read()
        # the process stopped right after the probe: no further training iteration
        assert f'Iter(train) [{e["iter"]}/{ITERS}]' in log
        assert f'Iter(train) [{e["iter"] + 1}/{ITERS}]' not in log
        assert not os.path.exists(os.path.join(trial, 'result.json'))
        assert json.load(open(os.path.join(trial, 'stopped.json')))['iter'] == e['iter']
        assert len(e['probes']) == [10, 20].index(e['iter']) + 1
    finished = _events(work, 'trial_finished')
    assert all(len(e['probes']) == 2 for e in finished)
    upd = _events(work, 'policy_updated')[1]
    full = [e['reward'] for e in finished if e['step'] == 1]
    for e in stopped:
        assert upd['rewards'][e['index']] == pytest.approx(
            min(full) * e['score'] / e['threshold'], abs=1e-12)
    assert sorted(upd['summary']['stopped']) == sorted(e['index'] for e in stopped)
    best = json.load(open(work / 'best.json'))
    assert set(best['steps'][1]['stopped']) == {str(e['index']) for e in stopped}
