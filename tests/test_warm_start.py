"""``search.warm_start``: the proxies start from a checkpoint the search trains once with
cross-entropy. The settings and configs; the loop on the in-process seam (``search_sim``)
with failures, kills around its journal points and a changed checkpoint; a real tiny
search whose proxies load the warm start's weights."""
import json
import os

import pytest

pytest.importorskip('mmseg')

from search_fixtures import run, search_cmd  # noqa: E402
from search_sim import Killed, SimExecutor, decisions, events, kill_at, sim_search  # noqa: E402

from asl.search.controller import WarmStartError  # noqa: E402
from asl.search.settings import SearchConfigError, parse_search_section  # noqa: E402
from asl.utils import sha256_file  # noqa: E402

WARM = {'search.num_steps': 2, 'search.warm_start': dict(iters=12),
        'search.reevaluate': dict(top=1, seeds=1)}


def _config(path):
    from mmengine.config import Config
    return Config.fromfile(path)


def _trial_configs(work):
    return {e['trial_id']: _config(os.path.join(e['work_dir'], 'config.py'))
            for e in events(work, 'trial_launched')}


# --------------------------------------------------------------- settings, configs
def test_warm_start_settings_are_checked():
    s = parse_search_section(dict(warm_start=dict()))
    assert s.warm_start == dict(iters=None)
    assert parse_search_section(dict(warm_start=dict(iters=50))).warm_start == dict(iters=50)
    assert parse_search_section(dict()).warm_start is None
    for bad, word in [(dict(iters=0), 'warm_start.iters'), (dict(iters=1.5), '1.5'),
                      (dict(steps=3), "'steps'"), ('ce', "'ce'")]:
        with pytest.raises(SearchConfigError, match=word):
            parse_search_section(dict(warm_start=bad))


def test_the_warm_start_trains_cross_entropy_and_the_proxies_load_its_weights(tmp_path):
    from search_sim import CONFIG

    from asl.search.controller import load_search_config
    from asl.search.trial import make_trial_config, make_warm_start_config
    cfg, s = load_search_config(CONFIG, {'search.warm_start': dict(iters=7),
                                         'search.ce_weight': 0.5})
    ds = dict(type='X', data_root='d')
    w = make_warm_start_config(cfg, s, ds, ds, 'mIoU')
    assert w.model.decode_head.loss_decode == dict(type='CrossEntropyLoss', use_sigmoid=False,
                                                   loss_weight=1.0)
    aux = w.model.auxiliary_head
    for head in (aux if isinstance(aux, (list, tuple)) else [aux]):
        assert head.loss_decode['loss_weight'] == pytest.approx(s.aux_weight)
    assert w.train_cfg.max_iters == 7 and w.train_cfg.val_interval == 7
    assert w.default_hooks.checkpoint['interval'] == 7
    assert not w.get('load_from')
    t = make_trial_config(cfg, s, [0.5] * 4, ds, ds, 'mIoU', warm_from='/w/iter_7.pth')
    assert (t.load_from, t.resume) == ('/w/iter_7.pth', False)
    # a halving continuation resumes its own rung checkpoint, not the warm start
    t = make_trial_config(cfg, s, [0.5] * 4, ds, ds, 'mIoU', warm_from='/w/iter_7.pth',
                          resume_from='/r/rung.pth')
    assert (t.load_from, t.resume) == ('/r/rung.pth', True)
    # the proxy's own length when iters is left out
    cfg, s = load_search_config(CONFIG, {'search.warm_start': dict()})
    assert make_warm_start_config(cfg, s, ds, ds, 'mIoU').train_cfg.max_iters == \
        cfg.train_cfg.max_iters


def test_warm_start_and_a_configs_load_from_are_refused_together(tmp_path):
    with pytest.raises(SearchConfigError, match='load_from'):
        sim_search(tmp_path / 's', {**WARM, 'load_from': '/some/ckpt.pth'})


# ----------------------------------------------------------------- the loop (seam)
def test_the_warm_start_runs_once_first_and_every_proxy_starts_from_it(tmp_path):
    work = tmp_path / 's'
    ex = SimExecutor(capacity=2)
    search = sim_search(work, WARM, executor=ex)
    best = search.run()
    assert ex.launched[0] == 'warm-a1' and ex.launched.count('warm-a1') == 1
    kinds = [e['event'] for e in events(work)]
    assert kinds.index('warm_start_finished') < kinds.index('step_started')
    w = events(work, 'warm_start_finished')[0]
    assert w['iters'] == 12 and w['reward'] == pytest.approx(0.3)
    assert w['checkpoint'] == str(work / 'warm_start' / 'attempt1' / 'iter_12.pth')
    assert w['sha256'] == sha256_file(w['checkpoint'])
    cfgs = _trial_configs(work)
    assert len(cfgs) == 2 * 4 + 1  # both steps and the re-evaluation
    assert all(c.load_from == w['checkpoint'] and not c.resume for c in cfgs.values())
    warm_cfg = _config(str(work / 'warm_start' / 'attempt1' / 'config.py'))
    assert warm_cfg.model.decode_head.loss_decode['type'] == 'CrossEntropyLoss'
    assert 'warm_start' in search.fingerprint()['settings']
    assert best['warm_start'] == {k: w[k] for k in ('checkpoint', 'sha256', 'iters', 'reward')}
    # off: nothing of it, and an old search keeps its identity
    plain = sim_search(tmp_path / 'p', {'search.num_steps': 1})
    plain.run()
    assert 'warm_start' not in plain.fingerprint()['settings']
    assert events(tmp_path / 'p', 'warm_start_finished') == []
    assert json.load(open(tmp_path / 'p' / 'best.json'))['warm_start'] is None
    assert all(not c.get('load_from') for c in _trial_configs(tmp_path / 'p').values())


def _warm_outcome(fails):
    from search_sim import peak_reward

    def outcome(spec, raw):
        if raw is None:
            return 'crash' if spec.attempt <= fails else 0.3
        return peak_reward(raw)
    return outcome


def test_a_failed_warm_start_is_retried_and_one_failing_for_good_stops_the_search(tmp_path):
    work = tmp_path / 's'
    ex = SimExecutor(outcome=_warm_outcome(1))
    sim_search(work, {**WARM, 'search.max_retries': 1}, executor=ex).run()
    assert ex.launched[:2] == ['warm-a1', 'warm-a2']
    assert [e['attempt'] for e in events(work, 'warm_start_failed')] == [1]
    assert events(work, 'warm_start_finished')[0]['checkpoint'].endswith(
        os.path.join('attempt2', 'iter_12.pth'))
    # failing every attempt: a clear error naming the failures, and no trial launched
    work = tmp_path / 'f'
    ex = SimExecutor(outcome=_warm_outcome(9))
    with pytest.raises(WarmStartError, match=r'failed 2 times: attempt 1: \[crash\]'):
        sim_search(work, {**WARM, 'search.max_retries': 1}, executor=ex).run()
    assert ex.launched == ['warm-a1', 'warm-a2']
    assert events(work, 'step_started') == []


@pytest.fixture(scope='module')
def warm_reference(tmp_path_factory):
    work = tmp_path_factory.mktemp('warm') / 's'
    sim_search(work, {**WARM, 'search.max_retries': 1},
               executor=SimExecutor(delay=2, outcome=_warm_outcome(1))).run()
    return work


POINTS = [('before', 'warm_start_failed', 1), ('after', 'warm_start_failed', 1),
          ('before', 'warm_start_finished', 1), ('torn', 'warm_start_finished', 1),
          ('after', 'warm_start_finished', 1)]


@pytest.mark.parametrize('when,kind,n', POINTS, ids=[f'{w}:{k}:{n}' for w, k, n in POINTS])
def test_killed_around_the_warm_start_then_resumed_gives_the_same_search(
        warm_reference, tmp_path, when, kind, n):
    work = tmp_path / 's'

    def make():
        return sim_search(work, {**WARM, 'search.max_retries': 1},
                          executor=SimExecutor(delay=2, outcome=_warm_outcome(1)))
    with pytest.raises(Killed):
        kill_at(make(), when, kind, n).run()
    make().run()
    assert decisions(work) == decisions(warm_reference)
    ours, ref = events(work, 'warm_start_finished'), events(warm_reference, 'warm_start_finished')
    assert len(ours) == 1 and ours[0]['attempt'] == ref[0]['attempt'] == 2
    assert [e['attempt'] for e in events(work, 'warm_start_failed')] == [1]
    assert {c.load_from for c in _trial_configs(work).values()} == {ours[0]['checkpoint']}


def test_a_changed_or_lost_warm_start_checkpoint_stops_the_resume(tmp_path):
    work = tmp_path / 's'
    with pytest.raises(Killed):
        kill_at(sim_search(work, WARM), 'after', 'trial_finished', 2).run()
    ckpt = events(work, 'warm_start_finished')[0]['checkpoint']
    with open(ckpt, 'a') as f:
        f.write(' ')
    with pytest.raises(WarmStartError, match='changed since'):
        sim_search(work, WARM).run()
    os.remove(ckpt)
    with pytest.raises(WarmStartError, match='is gone'):
        sim_search(work, WARM).run()


# ------------------------------------------------------------------ a real search
def test_a_real_search_trains_the_warm_start_once_and_its_proxies_load_it(tmp_path):
    work = tmp_path / 's'
    out = run(search_cmd(work, options=['search.num_steps=1', 'search.num_samples=2',
                                        'search.reevaluate=None', 'search.warm_start.iters=6']))
    assert out.returncode == 0, out.stderr[-3000:]
    w = events(work, 'warm_start_finished')[0]
    assert w['iters'] == 6 and 0.0 <= w['reward'] <= 1.0
    assert os.path.isfile(w['checkpoint']) and w['sha256'] == sha256_file(w['checkpoint'])
    wd = os.path.dirname(w['checkpoint'])
    assert json.load(open(os.path.join(wd, 'result.json')))['iter'] == 6
    import torch
    state = torch.load(w['checkpoint'], map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 6 and 'optimizer' not in state
    launched = events(work, 'trial_launched')
    assert len(launched) == 2
    for e in launched:
        assert _config(os.path.join(e['work_dir'], 'config.py')).load_from == w['checkpoint']
        logs = [os.path.join(r, f) for r, _, fs in os.walk(e['work_dir']) for f in fs
                if f.endswith('.log')]
        text = ''.join(open(p).read() for p in logs)
        assert f'Load checkpoint from {w["checkpoint"]}' in text
        assert 'missing keys' not in text and 'unexpected key' not in text
    assert 'warm start: done' in open(work / 'search.log').read()
