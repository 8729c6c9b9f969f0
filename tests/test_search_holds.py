"""The search's safeguards on hand-made numbers: the exact KL limit and the mean-change
cap of an update, reward normalization, the rollback rule, the re-evaluation's choice
of what to train again, and their settings."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from asl.search.policy import PolicyState, ppo_update, truncnorm_kl
from asl.search.settings import SearchConfigError, parse_search_section
from asl.search.state import StepRecord, TrialRecord, reeval_entries, rollback_to



def _tn(m, s):
    return stats.truncnorm(-m / s, (1 - m) / s, loc=m, scale=s)


@pytest.mark.parametrize('mp,mq,sigma', [(0.5, 0.6, 0.2), (0.05, 0.9, 0.2), (0.99, 0.01, 0.1),
                                         (0.25, 0.3, 0.5), (0.7, 0.7, 0.2)])
def test_truncnorm_kl_is_exact(mp, mq, sigma):
    p, q = _tn(mp, sigma), _tn(mq, sigma)
    ref = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), 0, 1, limit=200)[0]
    assert truncnorm_kl([mp], [mq], sigma) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # a product of truncated normals: the sum over the coordinates
    assert truncnorm_kl([mp, mq], [mq, mp], sigma) == pytest.approx(
        ref + truncnorm_kl([mq], [mp], sigma), rel=1e-12)


def _update(**kw):
    rng = np.random.default_rng(0)
    mu = [0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5] * 2
    samples = [mu] + np.clip(rng.normal(mu, 0.2, (3, 12)), 0, 1).tolist()
    rewards = kw.pop('rewards', [0.30, 0.36, 0.28, 0.31])
    args = dict(sigma=0.2, lr=0.2, epochs=60, clip_eps=0.2, baseline='mu')
    args.update(kw)
    state = PolicyState.from_mu(mu)
    new, st = ppo_update(state, samples, rewards, **args)
    return state, new, st


def test_paper_update_moves_the_mean_far():
    """The paper's settings: 60 Adam epochs at lr 0.2 move a coordinate of the mean by
    almost a sigma on four scored samples (what collapsed the longer demo search)."""
    old, new, st = _update()
    assert st.epochs == 60 and st.stopped == ''
    assert st.mu_change > 0.15
    assert st.kl == pytest.approx(truncnorm_kl(old.mu, new.mu, 0.2))
    assert st.kl > 1


@pytest.mark.parametrize('target', [0.05, 0.5, 2.0])
def test_target_kl_bounds_the_whole_distribution(target):
    old, new, st = _update(target_kl=target)
    assert st.kl <= target
    assert truncnorm_kl(old.mu, new.mu, 0.2) == pytest.approx(st.kl)
    assert st.epochs < 60 and f'target_kl {target:g} reached after {st.epochs}' in st.stopped
    assert new.adam_step == st.epochs  # the undone epoch left no trace in Adam's state
    # one more epoch would have crossed it: the same update with epochs + 1 and no limit
    _, over, _ = _update(epochs=st.epochs + 1)
    assert truncnorm_kl(old.mu, over.mu, 0.2) > target


def test_max_mu_change_caps_every_coordinate():
    old, new, st = _update(max_mu_change=0.05, lr=1.0)
    assert st.mu_change <= 0.05 + 1e-12
    assert max(abs(a - b) for a, b in zip(old.mu, new.mu)) <= 0.05 + 1e-12
    assert st.mu_change > 0.04  # it moved, up to the cap


def test_normalized_advantages_ignore_the_reward_scale():
    rewards = [0.30, 0.36, 0.28, 0.31]
    _, a, _ = _update(normalize=True, rewards=rewards)
    _, b, _ = _update(normalize=True, rewards=[5 + 10 * r for r in rewards])
    assert np.allclose(a.u, b.u, rtol=0, atol=1e-9)
    _, c, st = _update(normalize=True, rewards=[0.3] * 4)  # all equal: nothing to learn
    assert c.u == pytest.approx(PolicyState.from_mu(c.mu).u)
    assert st.objective == 0


@pytest.mark.parametrize('earlier,own,expect', [
    ([(0, 0.30), (1, 0.40)], 0.19, dict(to_step=1, reward=0.19, best=0.40)),
    ([(0, 0.30), (1, 0.40)], 0.20, None),  # exactly half is not below half
    ([(0, 0.40), (1, None), (2, 0.40)], 0.1, dict(to_step=0, reward=0.1, best=0.40)),  # ties
    ([], 0.01, None),  # nothing to go back to
    ([(0, 0.4)], None, None),  # the mean's trial failed: no evidence
])
def test_rollback_rule(earlier, own, expect):
    assert rollback_to(earlier, own, 0.5) == expect


def _step(mu, cands, rewards):
    st = StepRecord(mu=mu, candidates=cands)
    for i, r in enumerate(rewards):
        st.trials[i] = TrialRecord(reward=r, final_failure=None if r is not None else 'x')
    return st


def test_reeval_entries_rank_steps_and_pool_equal_means():
    a, b, c = [0.1] * 2, [0.2] * 2, [0.3] * 2
    steps = {0: _step(a, [a, b], [0.30, 0.20]),    # mean 0.25
             1: _step(b, [b, c], [0.40, 0.36]),    # mean 0.38
             2: _step(a, [a, c], [0.31, 0.35]),    # mean 0.33 (the same mean as step 0)
             3: _step(c, [c, a], [None, None])}    # no reward
    e = reeval_entries(steps, 'ppo', 'mu', 2)
    assert [x['source'] for x in e] == ['policy mean of step 2',
                                        'policy mean of step 3, policy mean of step 1']
    assert [x['raw'] for x in e] == [b, a]
    assert e[0]['rewards'] == [0.40] and e[1]['rewards'] == [0.31, 0.30]
    assert [x['step'] for x in e] == [1, 2]
    assert reeval_entries(steps, 'ppo', 'mean', 1)[0]['rewards'] == []  # mu not sampled
    r = reeval_entries(steps, 'random', 'mu', 3)  # the best candidates, equal ones pooled
    assert [(x['raw'], x['step'], x['rewards']) for x in r] == [
        (b, 1, [0.40, 0.20]), (c, 1, [0.36, 0.35]), (a, 2, [0.31, 0.30])]


@pytest.mark.parametrize('key,value,match', [
    ('target_kl', 0, 'search.target_kl must be a positive number or None, got 0'),
    ('max_mu_change', 1.5, 'search.max_mu_change must be below 1, got 1.5'),
    ('rollback', 1.0, 'search.rollback must be a fraction below 1, got 1.0'),
    ('normalize_advantages', 'yes', "normalize_advantages must be True or False, got 'yes'"),
    ('reevaluate', dict(top=0, seeds=2), r'search.reevaluate must be dict\(top=<positive int>'),
    ('reevaluate', dict(top=2), r'search.reevaluate must be dict'),
])
def test_bad_settings_are_named(key, value, match):
    with pytest.raises(SearchConfigError, match=match):
        parse_search_section({key: value})


def test_defaults_and_the_papers_settings():
    d = parse_search_section({})
    assert (d.target_kl, d.max_mu_change, d.normalize_advantages, d.rollback) == (1.0, 0.1,
                                                                                   True, 0.5)
    assert d.reevaluate == dict(top=3, seeds=2)
    paper = parse_search_section(dict(target_kl=None, max_mu_change=None,
                                      normalize_advantages=False, rollback=None,
                                      reevaluate=None))
    assert paper.target_kl is None and paper.reevaluate is None
    assert math.isclose(paper.lr, 0.2) and paper.ppo_epochs == 60
