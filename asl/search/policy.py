"""The search policy: independent truncated normals on [0, 1] updated with PPO2.

Li et al., *Auto Seg-Loss* (ICLR 2021), section 3.3: the policy over the raw surrogate
parameters theta in [0, 1]^d is a product of normals truncated to [0, 1] with mean
``mu = sigmoid(u)`` and a fixed standard deviation ``sigma``. At each step M
candidates are drawn (with ``baseline='mu'`` the first one is ``mu`` itself), each is
scored by a proxy training, and ``u`` is moved by Adam on the clipped PPO2 objective

    mean_m  min(rho_m * A_m, clip(rho_m, 1 - eps, 1 + eps) * A_m),
    rho_m = pdf_u(theta_m) / pdf_u_old(theta_m),   A_m = r_m - b,

for ``ppo_epochs`` iterations. Everything is float64 and deterministic, and the whole
state (``u``, Adam's moments and step count) is plain lists, so it can be journaled
as JSON and restored exactly.

Limits on one update (off in the paper's settings): the clipped objective constrains the
policy only at the M sampled points, which leave most of the d directions free, and Adam
takes full-size steps even on tiny advantages, so 60 epochs can throw the mean to the
edge of [0, 1]. Over the **whole distribution**:

* ``target_kl``: the epochs stop before the exact KL divergence between the old and the
  new policy (:func:`truncnorm_kl`, closed form for truncated normals of one sigma)
  would exceed it (the epoch that would cross it is undone);
* ``max_mu_change``: after every epoch each coordinate of the mean is kept within
  ``max_mu_change`` of the old mean;
* ``normalize``: the advantages are divided by the standard deviation of the step's
  successful rewards, so the objective's scale does not depend on how far apart the
  rewards happen to be.

Failed candidates (no reward) are excluded from the advantage and from the objective;
if the ``mu`` candidate failed, the baseline falls back to the mean of the successful
rewards; with fewer than two successful candidates the update is skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ['clipped_objective', 'truncnorm_logpdf', 'truncnorm_kl', 'sample_truncnorm',
           'PolicyState', 'ppo_update', 'logit', 'baseline_value', 'UpdateStats']

_EPS = 1e-6


def logit(p: Sequence[float]) -> List[float]:
    """Inverse sigmoid, with ``p`` clipped to ``[1e-6, 1 - 1e-6]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return (np.log(q) - np.log1p(-q)).tolist()


def truncnorm_logpdf(x: torch.Tensor, mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """Log-density of normals ``N(mu, sigma^2)`` truncated to ``[0, 1]``, elementwise.

    Args:
        x (Tensor): points in [0, 1].
        mu (Tensor): means (broadcast against ``x``).
        sigma (float): standard deviation (> 0).

    Returns:
        Tensor: ``log pdf(x)``, same shape as the broadcast of ``x`` and ``mu``.
    """
    a = (0.0 - mu) / sigma
    b = (1.0 - mu) / sigma
    # log(Phi(b) - Phi(a)); stable enough for |a|, |b| < ~30 (mu in [0,1], sigma >= 0.03).
    log_z = torch.log(torch.clamp(torch.special.ndtr(b) - torch.special.ndtr(a), min=1e-300))
    z = (x - mu) / sigma
    return -0.5 * z * z - 0.5 * math.log(2.0 * math.pi) - math.log(sigma) - log_z


def truncnorm_kl(mu_p: Sequence[float], mu_q: Sequence[float], sigma: float) -> float:
    """Exact ``KL(p || q)`` between two products of normals truncated to [0, 1] with the
    same ``sigma`` and means ``mu_p``, ``mu_q`` (summed over the coordinates).

    Per coordinate, with ``Z`` the mass of the normal on [0, 1] and ``E_p[x]`` the mean
    of the truncated ``p``: ``KL = (mu_p - mu_q) / sigma^2 * (E_p[x] - (mu_p + mu_q) / 2)
    + log Z_q - log Z_p``.
    """
    from scipy.special import log_ndtr, ndtr
    mp = np.asarray(mu_p, dtype=np.float64)
    mq = np.asarray(mu_q, dtype=np.float64)

    def log_z(m):
        a, b = -m / sigma, (1.0 - m) / sigma
        # log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - Phi(a) / Phi(b)), Phi(a) < Phi(b)
        return log_ndtr(b) + np.log1p(-np.exp(log_ndtr(a) - log_ndtr(b)))

    a, b = -mp / sigma, (1.0 - mp) / sigma
    z = ndtr(b) - ndtr(a)
    phi = lambda t: np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)  # noqa: E731
    mean_p = mp + sigma * (phi(a) - phi(b)) / z
    kl = (mp - mq) / sigma**2 * (mean_p - 0.5 * (mp + mq)) + log_z(mq) - log_z(mp)
    return float(np.sum(kl))


def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """PPO2's clipped surrogate ``mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A))``."""
    return torch.minimum(ratio * adv,
                         torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv).mean()


def sample_truncnorm(rng: np.random.Generator, mu: Sequence[float], sigma: float,
                     n: int) -> np.ndarray:
    """Draw ``n`` vectors from the truncated normals by inverse-CDF sampling.

    Uses ``rng.random`` only (one uniform per coordinate), so the stream of draws is
    reproducible from the generator state.

    Returns:
        ndarray: ``(n, len(mu))`` in [0, 1].
    """
    from scipy.special import ndtr, ndtri
    mu = np.asarray(mu, dtype=np.float64)
    a = ndtr((0.0 - mu) / sigma)
    b = ndtr((1.0 - mu) / sigma)
    u = rng.random((n, mu.size))
    q = a + u * (b - a)
    x = mu + sigma * ndtri(np.clip(q, 1e-300, 1.0 - 1e-16))
    return np.clip(x, 0.0, 1.0)


@dataclass
class PolicyState:
    """Parameters of the policy and of its Adam optimizer, as plain lists (JSON-safe).

    Attributes:
        u (list): pre-sigmoid means.
        exp_avg (list): Adam first moments.
        exp_avg_sq (list): Adam second moments.
        adam_step (int): Adam step count.
    """

    u: List[float]
    exp_avg: List[float] = field(default_factory=list)
    exp_avg_sq: List[float] = field(default_factory=list)
    adam_step: int = 0

    @classmethod
    def from_mu(cls, mu: Sequence[float]) -> 'PolicyState':
        u = logit(mu)
        return cls(u=u, exp_avg=[0.0] * len(u), exp_avg_sq=[0.0] * len(u), adam_step=0)

    @property
    def mu(self) -> List[float]:
        u = np.asarray(self.u, dtype=np.float64)
        return (1.0 / (1.0 + np.exp(-u))).tolist()

    def to_dict(self) -> Dict:
        return dict(u=list(self.u), exp_avg=list(self.exp_avg),
                    exp_avg_sq=list(self.exp_avg_sq), adam_step=int(self.adam_step))

    @classmethod
    def from_dict(cls, d: Dict) -> 'PolicyState':
        return cls(u=[float(x) for x in d['u']], exp_avg=[float(x) for x in d['exp_avg']],
                   exp_avg_sq=[float(x) for x in d['exp_avg_sq']],
                   adam_step=int(d['adam_step']))


@dataclass
class UpdateStats:
    """What one PPO2 update did (logged as ``ppo/...`` and journaled)."""

    skipped: bool
    reason: str = ''
    baseline: Optional[float] = None
    num_used: int = 0
    clip_fraction: float = 0.0
    objective: float = 0.0
    approx_kl: float = 0.0
    kl: float = 0.0  # exact KL(old || new) over the whole policy
    epochs: int = 0  # Adam steps taken
    stopped: str = ''  # why the epochs stopped early ('' if they did not)
    mu_change: float = 0.0  # largest change of a coordinate of the mean


def baseline_value(rewards: Sequence[Optional[float]], kind: str) -> Optional[float]:
    """The baseline ``b`` of the advantages.

    Args:
        rewards: one per candidate, ``None`` for a failed one; with ``kind='mu'``
            the first candidate is the policy mean.
        kind (str): ``'mu'`` (reward of the mean; the mean of the successful rewards
            if that one failed) or ``'mean'``.
    """
    ok = [r for r in rewards if r is not None]
    if not ok:
        return None
    if kind == 'mu' and rewards and rewards[0] is not None:
        return float(rewards[0])
    if kind not in ('mu', 'mean'):
        raise ValueError(f"baseline must be 'mu' or 'mean', got {kind!r}")
    return float(np.mean(ok))


def ppo_update(state: PolicyState, samples: Sequence[Sequence[float]],
               rewards: Sequence[Optional[float]], sigma: float, lr: float, epochs: int,
               clip_eps: float, baseline: str = 'mu', betas=(0.9, 0.999),
               eps: float = 1e-8, target_kl: Optional[float] = None,
               max_mu_change: Optional[float] = None,
               normalize: bool = False) -> (PolicyState, UpdateStats):
    """One PPO2 update of ``state`` from scored samples; returns the new state and stats.

    Args:
        state (PolicyState): the policy that drew ``samples`` (the "old" policy).
        samples: M parameter vectors in [0, 1].
        rewards: M rewards, ``None`` for failed candidates (excluded).
        sigma (float): policy standard deviation.
        lr (float): Adam learning rate.
        epochs (int): Adam steps on the clipped objective (at most).
        clip_eps (float): PPO clip range epsilon.
        baseline (str): ``'mu'`` or ``'mean'`` (see :func:`baseline_value`).
        betas, eps: Adam hyperparameters.
        target_kl (float, optional): stop before the exact KL(old || new) exceeds it.
        max_mu_change (float, optional): keep every coordinate of the mean within this
            distance of the old mean.
        normalize (bool): divide the advantages by the std of the successful rewards.
    """
    keep = [i for i, r in enumerate(rewards) if r is not None]
    b = baseline_value(rewards, baseline)
    if len(keep) < 2:
        return state, UpdateStats(skipped=True, baseline=b, num_used=len(keep),
                                  reason=f'only {len(keep)} successful candidate(s)')
    x = torch.tensor([samples[i] for i in keep], dtype=torch.float64)
    adv = torch.tensor([rewards[i] - b for i in keep], dtype=torch.float64)
    if normalize:
        std = float(np.std([rewards[i] for i in keep]))
        adv = adv / std if std > 0 else adv * 0.0
    u_old = torch.tensor(state.u, dtype=torch.float64)
    mu_old = torch.sigmoid(u_old)
    with torch.no_grad():
        logp_old = truncnorm_logpdf(x, mu_old, sigma).sum(1)
    if max_mu_change is not None:
        lo = torch.tensor(logit((mu_old - max_mu_change).tolist()), dtype=torch.float64)
        hi = torch.tensor(logit((mu_old + max_mu_change).tolist()), dtype=torch.float64)

    u = u_old.clone().requires_grad_(True)
    m = torch.tensor(state.exp_avg, dtype=torch.float64)
    v = torch.tensor(state.exp_avg_sq, dtype=torch.float64)
    step = state.adam_step
    b1, b2 = betas
    taken, stopped = 0, ''
    for _ in range(int(epochs)):
        logp = truncnorm_logpdf(x, torch.sigmoid(u), sigma).sum(1)
        ratio = torch.exp(logp - logp_old)
        obj = clipped_objective(ratio, adv, clip_eps)
        (grad,) = torch.autograd.grad(-obj, u)  # Adam minimises -objective
        with torch.no_grad():
            saved = (u.clone(), m.clone(), v.clone())
            m.mul_(b1).add_(grad, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            m_hat = m / (1.0 - b1 ** (step + 1))
            v_hat = v / (1.0 - b2 ** (step + 1))
            u -= lr * m_hat / (v_hat.sqrt() + eps)
            if max_mu_change is not None:
                u.copy_(torch.minimum(torch.maximum(u, lo), hi))
            if target_kl is not None and truncnorm_kl(
                    mu_old.tolist(), torch.sigmoid(u).tolist(), sigma) > target_kl:
                u.copy_(saved[0])
                m.copy_(saved[1])
                v.copy_(saved[2])
                stopped = f'target_kl {target_kl:g} reached after {taken} epoch(s)'
                break
            step += 1
            taken += 1
    with torch.no_grad():
        mu_new = torch.sigmoid(u)
        logp = truncnorm_logpdf(x, mu_new, sigma).sum(1)
        log_ratio = logp - logp_old
        ratio = torch.exp(log_ratio)
        clip_frac = float(((ratio - 1.0).abs() > clip_eps).double().mean())
        obj = clipped_objective(ratio, adv, clip_eps)
        kl = float(((ratio - 1.0) - log_ratio).mean())
    new = PolicyState(u=u.detach().tolist(), exp_avg=m.tolist(), exp_avg_sq=v.tolist(),
                      adam_step=step)
    return new, UpdateStats(skipped=False, baseline=b, num_used=len(keep),
                            clip_fraction=clip_frac, objective=float(obj), approx_kl=kl,
                            kl=truncnorm_kl(mu_old.tolist(), mu_new.tolist(), sigma),
                            epochs=taken, stopped=stopped,
                            mu_change=float((mu_new - mu_old).abs().max()))
