"""The search's pieces on their own: policy, PPO2 update, journal, replay, hold-out, settings."""
import json
import os

import numpy as np
import pytest
import torch
from scipy import stats

from asl.search.state import replay
from asl.data.holdout import HoldoutError, carve_holdout, split_dataset_config
from asl.search.journal import Journal, JournalError
from asl.search.policy import (PolicyState, baseline_value, clipped_objective, ppo_update,
                               sample_truncnorm, truncnorm_logpdf)
from asl.search.settings import SearchConfigError, parse_search_section


# ----------------------------------------------------------------------------- policy
@pytest.mark.parametrize('mu,sigma', [(0.5, 0.2), (0.05, 0.2), (0.97, 0.1), (0.3, 0.6)])
def test_truncnorm_logpdf_matches_scipy(mu, sigma):
    x = np.linspace(0, 1, 23)
    ref = stats.truncnorm.logpdf(x, (0 - mu) / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)
    ours = truncnorm_logpdf(torch.tensor(x, dtype=torch.float64),
                            torch.tensor(mu, dtype=torch.float64), sigma)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_truncnorm_samples_follow_the_distribution():
    rng = np.random.Generator(np.random.PCG64(0))
    mu = [0.1, 0.5, 0.9]
    x = sample_truncnorm(rng, mu, 0.2, 4000)
    assert x.shape == (4000, 3) and x.min() >= 0 and x.max() <= 1
    for j, m in enumerate(mu):
        dist = stats.truncnorm((0 - m) / 0.2, (1 - m) / 0.2, loc=m, scale=0.2)
        assert stats.kstest(x[:, j], dist.cdf).pvalue > 1e-3
    # the same generator state gives the same draws
    a = sample_truncnorm(np.random.Generator(np.random.PCG64(5)), mu, 0.2, 3)
    b = sample_truncnorm(np.random.Generator(np.random.PCG64(5)), mu, 0.2, 3)
    np.testing.assert_array_equal(a, b)


def test_clipped_objective_by_hand():
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.5, 0.5], dtype=torch.float64)
    adv = torch.tensor([1.0, 2.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    # min(r*A, clip(r, .8, 1.2)*A): 0.5, 2.0, 1.2, -1.5, -0.8
    expected = (0.5 + 2.0 + 1.2 - 1.5 - 0.8) / 5
    assert float(clipped_objective(ratio, adv, 0.2)) == pytest.approx(expected)


def test_baseline_by_hand():
    assert baseline_value([0.5, 0.7, 0.3], 'mu') == 0.5
    assert baseline_value([0.5, 0.7, 0.3], 'mean') == pytest.approx(0.5)
    assert baseline_value([None, 0.7, 0.3], 'mu') == pytest.approx(0.5)  # mu failed
    assert baseline_value([None, None], 'mu') is None
    with pytest.raises(ValueError, match="'median'"):
        baseline_value([0.1, 0.2], 'median')


@pytest.mark.parametrize('baseline', ['mu', 'mean'])
def test_update_moves_the_mean_toward_the_better_sample(baseline):
    state = PolicyState.from_mu([0.5, 0.5])
    samples = [[0.5, 0.5], [0.7, 0.3], [0.3, 0.7]]
    rewards = [0.5, 0.6, 0.4]  # (0.7, 0.3) is better, (0.3, 0.7) worse
    new, st = ppo_update(state, samples, rewards, sigma=0.2, lr=0.2, epochs=60, clip_eps=0.2,
                         baseline=baseline)
    assert not st.skipped and st.num_used == 3
    assert new.mu[0] > 0.5 and new.mu[1] < 0.5
    assert new.adam_step == 60
    _check_stats(state, new, st, samples, rewards, baseline)
    # the state round-trips through JSON exactly
    again = PolicyState.from_dict(json.loads(json.dumps(new.to_dict())))
    assert again == new


def _check_stats(state, new, st, samples, rewards, baseline):
    """The reported statistics, recomputed with scipy's truncated normal: the ratios of
    the new to the old density at the samples, the share outside [0.8, 1.2], the clipped
    objective and the KL estimate."""
    def pdf(mu, x):
        return np.prod([stats.truncnorm.pdf(xj, -m / 0.2, (1 - m) / 0.2, loc=m, scale=0.2)
                        for xj, m in zip(x, mu)])

    ratio = np.array([pdf(new.mu, x) / pdf(state.mu, x) for x in samples])
    b = rewards[0] if baseline == 'mu' else np.mean(rewards)
    adv = np.array(rewards) - b
    assert st.baseline == pytest.approx(b)
    assert st.clip_fraction == np.mean(np.abs(ratio - 1) > 0.2)
    assert st.objective == pytest.approx(
        np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)), rel=1e-9)
    assert st.approx_kl == pytest.approx(np.mean(ratio - 1 - np.log(ratio)), rel=1e-9)
    return ratio


@pytest.mark.parametrize('epochs,lr,clipped', [(3, 0.1, 2), (5, 0.1, 3)])
def test_update_statistics_with_some_ratios_clipped(epochs, lr, clipped):
    state = PolicyState.from_mu([0.5, 0.5])
    samples = [[0.5, 0.5], [0.7, 0.3], [0.3, 0.7], [0.55, 0.6], [0.45, 0.52]]
    rewards = [0.5, 0.6, 0.4, 0.52, 0.49]
    new, st = ppo_update(state, samples, rewards, sigma=0.2, lr=lr, epochs=epochs,
                         clip_eps=0.2)
    ratio = _check_stats(state, new, st, samples, rewards, 'mu')
    # some ratios inside the clip range, some outside, none near its edges
    assert (np.abs(ratio - 1) > 0.2).sum() == clipped
    assert np.all(np.abs(np.abs(ratio - 1) - 0.2) > 0.01), ratio


def test_update_excludes_failed_candidates_and_skips_with_too_few():
    state = PolicyState.from_mu([0.5])
    a, _ = ppo_update(state, [[0.5], [0.8], [0.2]], [0.5, 0.9, None], 0.2, 0.2, 10, 0.2)
    b, _ = ppo_update(state, [[0.5], [0.8]], [0.5, 0.9], 0.2, 0.2, 10, 0.2)
    assert a == b  # the failed candidate changes nothing
    c, st = ppo_update(state, [[0.5], [0.8]], [0.5, None], 0.2, 0.2, 10, 0.2)
    assert st.skipped and c == state


# ---------------------------------------------------------------------------- journal
def test_journal_replays_in_order(tmp_path):
    j = Journal(str(tmp_path / 'j.jsonl'))
    j.append('search_started', fingerprint={}, policy={}, rng={})
    j.append('step_started', step=0, mu=[0.5], candidates=[[0.5]], rng={})
    events = Journal(str(tmp_path / 'j.jsonl')).read()
    assert [e['event'] for e in events] == ['search_started', 'step_started']
    assert [e['seq'] for e in events] == [0, 1]
    with pytest.raises(ValueError, match='unknown event kind'):
        j.append('trial_exploded')


@pytest.mark.parametrize('tail', [b'{"seq":2,"event":"trial_lau', b'{"seq": 2, "ev\n'])
def test_journal_torn_last_line_is_ignored_and_overwritten(tmp_path, tail):
    path = tmp_path / 'j.jsonl'
    j = Journal(str(path))
    j.append('search_started', fingerprint={}, policy={}, rng={})
    j.append('step_started', step=0, mu=[0.5], candidates=[[0.5]], rng={})
    with open(path, 'ab') as f:
        f.write(tail)
    j2 = Journal(str(path))
    assert len(j2.read()) == 2 and j2.torn
    j2.append('trial_launched', step=0, index=0, attempt=1, trial_id='x', work_dir='w',
              executor='local', info={})
    events = Journal(str(path)).read()
    assert [e['event'] for e in events] == ['search_started', 'step_started', 'trial_launched']
    assert path.read_bytes().count(b'\n') == 3


def test_journal_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / 'j.jsonl'
    path.write_text('{"seq":0,"event":"search_started"}\nGARBAGE\n'
                    '{"seq":2,"event":"search_finished"}\n')
    with pytest.raises(JournalError, match='line 2'):
        Journal(str(path)).read()


def _events():
    pol = PolicyState.from_mu([0.5, 0.5]).to_dict()
    pol2 = PolicyState.from_mu([0.6, 0.4]).to_dict()
    return [
        dict(event='search_started', fingerprint={'a': 1}, policy=pol, rng={'r': 0}),
        dict(event='step_started', step=0, mu=[0.5, 0.5], candidates=[[0.5, 0.5], [0.7, 0.3]],
             rng={'r': 1}),
        dict(event='trial_launched', step=0, index=0, attempt=1, info={'pid': 1}),
        dict(event='trial_launched', step=0, index=1, attempt=1, info={'pid': 2}),
        dict(event='trial_finished', step=0, index=0, attempt=1, reward=0.5, metrics={},
             timing={}),
        dict(event='trial_failed', step=0, index=1, attempt=1, kind='crash', reason='boom',
             final=False),
        dict(event='trial_launched', step=0, index=1, attempt=2, info={'pid': 3}),
        dict(event='trial_finished', step=0, index=1, attempt=2, reward=0.6, metrics={},
             timing={}),
        dict(event='policy_updated', step=0, policy=pol2, mu=[0.6, 0.4], rewards=[0.5, 0.6],
             stats={}),
        dict(event='search_finished', best={}),
    ]


@pytest.mark.parametrize('n', range(1, 11))
def test_replay_after_each_kind_of_event(n):
    """The state after any prefix of the journal: what a resumed search starts from."""
    st = replay(_events()[:n])
    assert st.fingerprint == {'a': 1}
    if n == 1:
        assert not st.steps and st.rng == {'r': 0}
        return
    step = st.steps[0]
    assert st.rng == {'r': 1} and len(step.candidates) == 2
    t0, t1 = step.trials.get(0), step.trials.get(1)
    if n == 3:  # trial 0 launched, no outcome: in flight (relaunched on resume)
        assert t0.in_flight['attempt'] == 1 and not t0.done and t1 is None
    if n >= 5:  # trial 0 finished: never rerun
        assert t0.done and t0.reward == 0.5 and t0.in_flight is None
    if n == 6:  # trial 1 failed once, a retry is due (attempt 2)
        assert t1.attempts_failed == 1 and not t1.done and t1.in_flight is None
    if n == 7:
        assert t1.in_flight['attempt'] == 2
    if n >= 8:
        assert t1.reward == 0.6 and step.rewards() == [0.5, 0.6]
    if n < 9:
        assert step.update is None and st.policy.mu == pytest.approx([0.5, 0.5])
    else:
        assert step.update is not None and st.policy.mu == pytest.approx([0.6, 0.4])
    assert (st.finished is not None) == (n == 10)


# ---------------------------------------------------------------------------- hold-out
def test_carve_holdout_is_seeded_and_order_free():
    names = [f'img{i:03d}' for i in range(50)]
    a = carve_holdout(names, 10, seed=3)
    assert a == carve_holdout(list(reversed(names)) + names[:5], 10, seed=3)
    assert a != carve_holdout(names, 10, seed=4)
    assert len(set(a)) == 10 and set(a) <= set(names)
    with pytest.raises(HoldoutError, match='50'):
        carve_holdout(names, 50, seed=0)


def test_split_concat_dataset(tmp_path):
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'a.txt').write_text(''.join(f'n{i}\n' for i in range(0, 30)))
    (root / 'b.txt').write_text(''.join(f'n{i}\n' for i in range(20, 60)))  # overlaps a
    ds = dict(type='ConcatDataset', datasets=[
        dict(type='X', data_root=str(root), ann_file='a.txt', pipeline=['train']),
        dict(type='X', data_root=str(root), ann_file='b.txt', pipeline=['train'])])
    train, hold, held = split_dataset_config(ds, ['val'], 12, 0, str(tmp_path / 'out'))
    assert len(held) == 12
    train_names = set()
    for sub in train['datasets']:
        train_names |= set(open(sub['ann_file']).read().split())
        assert sub['pipeline'] == ['train']
    assert not train_names & set(held)
    assert train_names | set(held) == {f'n{i}' for i in range(60)}
    parts = hold['datasets'] if hold['type'] == 'ConcatDataset' else [hold]
    hold_names = [n for p in parts for n in open(p['ann_file']).read().split()]
    assert sorted(hold_names) == sorted(held)  # each hold-out image exactly once
    assert all(p['pipeline'] == ['val'] for p in parts)
    with pytest.raises(HoldoutError, match='ann_file'):
        split_dataset_config(dict(type='X', data_root=str(root)), ['val'], 3, 0, str(tmp_path))


# ---------------------------------------------------------------------------- settings
def test_settings_errors_name_the_bad_value():
    with pytest.raises(SearchConfigError, match='no `search` section'):
        parse_search_section(None, 'x.py')
    with pytest.raises(SearchConfigError, match="'sigmaa'"):
        parse_search_section(dict(sigmaa=0.1))
    with pytest.raises(SearchConfigError, match="'median'"):
        parse_search_section(dict(baseline='median'))
    with pytest.raises(SearchConfigError, match='-3'):
        parse_search_section(dict(num_samples=-3))
    with pytest.raises(SearchConfigError, match='1.5'):
        parse_search_section(dict(init_mu=[0.2, 1.5]))
    s = parse_search_section(dict(num_samples=4, holdout=dict(num=10)))
    assert s.num_samples == 4 and s.holdout == dict(num=10, seed=0)
