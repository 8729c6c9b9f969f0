"""Pre-screening (``search.prescreen``): candidates scored by optimising free logits with
their surrogate, hopeless ones rejected before any proxy training."""
import json
import os

import pytest
import torch

from asl import ExactMetrics, Surrogate
from asl.data.demo import ensure_demo_data
from asl.presets import PAPER_PRESETS
from asl.search.prescreen import PRESCREEN_DEFAULTS, rejected, screen_score, screening_labels
from asl.search.settings import SearchConfigError, parse_search_section

# a curve that stays near 0 until x = 0.99, and one that is near 1 from x = 0.01 on: both
# flat where the probabilities are, so the loss gives the logits almost no gradient
FLAT_LOW = [0.99, 0.0, 0.5, 0.0, 0.5, 0.0] * 2
FLAT_HIGH = [0.0, 0.99, 0.0, 0.99, 0.0, 0.99] * 2


@pytest.fixture(scope='module')
def labels(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('d') / 'asl_demo')
    ensure_demo_data(root, seed=0, num_train=12, num_val=2, num_holdout=3)
    ds = dict(type='BaseSegDataset', data_root=root, ann_file='splits/train_proxy.txt',
              data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'))
    return screening_labels(ds, 4)


def _score(labels, steps=10, **kw):
    sur = Surrogate('mIoU', num_pieces=2, **kw)
    return screen_score(sur, labels, 5, ExactMetrics(['mIoU'], 5), steps,
                        PRESCREEN_DEFAULTS['lr'])


def test_screening_labels_come_from_the_proxy_split(labels):
    assert labels.shape == (4, 64, 64) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_useful_surrogates_pass_and_flat_ones_fail(labels):
    identity = _score(labels)
    published = _score(labels, theta=PAPER_PRESETS['mIoU']['theta'])
    flat_low = _score(labels, raw_theta=FLAT_LOW)
    flat_high = _score(labels, raw_theta=FLAT_HIGH)
    assert identity > 0.9 and published > 0.9
    # both fall below the default rule: threshold x the score of a useful surrogate
    cut = PRESCREEN_DEFAULTS['threshold'] * identity
    assert flat_low < cut and flat_high < cut, (flat_low, flat_high)
    scores = [identity, published, flat_low, flat_high]
    assert rejected(scores, identity, 0.5) == [2, 3]
    assert rejected(scores, flat_low, 0.5, keep=[2]) == []
    # deterministic: the same score twice
    assert _score(labels, raw_theta=FLAT_HIGH) == flat_high


def test_prescreen_settings_are_checked():
    s = parse_search_section(dict(prescreen=dict(threshold=0.7)))
    assert s.prescreen == dict(PRESCREEN_DEFAULTS, threshold=0.7)
    assert parse_search_section(dict()).prescreen is None
    for bad, word in ((dict(images=0), 'images'), (dict(threshold=1.5), 'threshold'),
                      (dict(lr=-1), 'lr'), (dict(step=3), 'keys among')):
        with pytest.raises(SearchConfigError, match=word):
            parse_search_section(dict(prescreen=bad))


# ------------------------------------------------------------------ a real search
pytest.importorskip('mmseg')
from search_fixtures import journal, run, search_cmd, tail, trajectory  # noqa: E402

# threshold 1: a candidate that does any worse than the policy mean after two steps of
# screening is rejected (with the demo's 10 steps every candidate of this search passes)
SCREEN = ['search.prescreen.threshold=1.0', 'search.prescreen.steps=2',
          'search.reevaluate=None']


def _screened(work):
    return [e for e in journal(work) if e['event'] == 'step_screened']


def test_rejected_candidates_are_not_trained_and_take_a_reward_below_the_lowest(tmp_path):
    work = tmp_path / 'search'
    out = run(search_cmd(work, options=SCREEN))
    assert out.returncode == 0, tail(out)
    screened = _screened(work)
    assert [e['step'] for e in screened] == [0, 1]
    events = journal(work)
    all_rejected = [(e['step'], i) for e in screened for i in e['rejected']]
    assert all_rejected, [e['scores'] for e in screened]  # this seed rejects one at least
    for e in screened:
        assert 0 not in e['rejected'] and e['reference'] == e['scores'][0]
        for i in e['rejected']:
            assert e['scores'][i] < e['threshold'] * e['reference']
        # screened before any trial of its step was launched
        first = min(x['seq'] for x in events if x['event'] == 'trial_launched'
                    and x['step'] == e['step'])
        assert e['seq'] < first
    launched = {(e['step'], e['index']) for e in events if e['event'] == 'trial_launched'}
    assert not launched & set(all_rejected)
    for upd in (e for e in events if e['event'] == 'policy_updated'):
        trained = [e['reward'] for e in events if e['event'] == 'trial_finished'
                   and e['step'] == upd['step']]
        scr = next(e for e in screened if e['step'] == upd['step'])
        for step, i in all_rejected:
            if step == upd['step']:  # below every trained reward, by how far it fell short
                ratio = scr['scores'][i] / (scr['threshold'] * scr['reference'])
                assert upd['rewards'][i] == pytest.approx(min(trained) * ratio, abs=1e-12)
                assert upd['rewards'][i] < min(trained)
                assert i in upd['summary']['rejected']
    best = json.load(open(work / 'best.json'))
    for step, i in all_rejected:
        assert best['steps'][step]['rewards'][i] is None
        assert i in best['steps'][step]['rejected']


def test_killed_after_screening_resumes_with_the_same_search(tmp_path):
    ref = tmp_path / 'ref'
    out = run(search_cmd(ref, options=SCREEN))
    assert out.returncode == 0, tail(out)
    work = tmp_path / 'killed'
    from search_fixtures import env
    out = run(search_cmd(work, options=SCREEN),
              env=env(ASL_SEARCH_KILL_AT='after:step_screened:2'))
    assert out.returncode != 0 and len(_screened(work)) == 2
    out = run(search_cmd(work, options=SCREEN))
    assert out.returncode == 0, tail(out)
    assert [e['scores'] for e in _screened(work)] == [e['scores'] for e in _screened(ref)]
    a, b = trajectory(work), trajectory(ref)
    assert a['steps'] == b['steps'] and a['best'] == b['best']
    assert os.path.isfile(work / 'retrain_config.py')


def test_equivalence_reuses_the_reward_of_an_equal_surrogate(tmp_path):
    """Every step's candidate 0 is the policy mean; with a policy that does not move
    (lr tiny, clipping on) and a permissive cosine threshold, candidates of step 2 match
    trained candidates of step 1 and take their rewards, untrained (the check alone:
    pre-screening, on in the demo config, is turned off)."""
    work = tmp_path / 'search'
    out = run(search_cmd(work, options=['search.reevaluate=None', 'search.prescreen=None',
                                        'search.equivalence.threshold=0.99']))
    assert out.returncode == 0, tail(out)
    screened = _screened(work)
    assert [e['step'] for e in screened] == [0, 1]
    assert screened[0]['reused'] == {} and screened[0]['scores'] is None
    reused = screened[1]['reused']
    assert reused, 'expected at least one equivalent candidate'
    finished = {(e['step'], e['index']): e['reward'] for e in journal(work)
                if e['event'] == 'trial_finished'}
    launched = {(e['step'], e['index']) for e in journal(work)
                if e['event'] == 'trial_launched'}
    upd = [e for e in journal(work) if e['event'] == 'policy_updated'][1]
    for i, src in reused.items():
        assert src['cosine'] >= 0.99 and src['step'] == 0
        assert src['reward'] == finished[(0, src['index'])]
        assert (1, int(i)) not in launched
        assert upd['rewards'][int(i)] == src['reward']
    best = json.load(open(work / 'best.json'))
    assert best['steps'][1]['reused'] == reused
