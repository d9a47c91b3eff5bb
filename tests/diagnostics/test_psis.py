"""PSIS k-hat of raw log importance weights."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from arviz_stats.base import array_stats
from pyro.infer.importance import psis_diagnostic, vectorized_importance_weights

from pyro_attention.diagnostics import psis_khat


def _normal_log_weights(scale: float, num: int, generator: torch.Generator) -> torch.Tensor:
    """Draws from N(0, 1), target N(0, scale^2): the weights' tail has k = 1 - 1/scale^2."""
    x = torch.randn(num, generator=generator, dtype=torch.float64)
    return dist.Normal(0.0, scale).log_prob(x) - dist.Normal(0.0, 1.0).log_prob(x)


def test_equal_weights_are_good(device: torch.device) -> None:
    assert psis_khat(torch.zeros(1000, device=device)) == -math.inf
    g = torch.Generator().manual_seed(0)
    near_equal = 1e-6 * torch.randn(4000, generator=g)
    assert psis_khat(near_equal.to(device)) < 0.5
    # proposal N(0, 1), target N(0.05, 1): nearly the same distribution
    x = torch.randn(4000, generator=g, dtype=torch.float64)
    log_w = dist.Normal(0.05, 1.0).log_prob(x) - dist.Normal(0.0, 1.0).log_prob(x)
    assert psis_khat(log_w.numpy()) < 0.5


def test_light_tailed_proposal_is_unreliable() -> None:
    g = torch.Generator().manual_seed(1)
    # N(0, 1) proposal for a N(0, 3^2) target: true k = 8/9. One k-hat is noisy (sd ~ 0.08 at
    # 10,000 draws), so average a few independent batches.
    khats = [psis_khat(_normal_log_weights(3.0, 10_000, g)) for _ in range(8)]
    assert np.mean(khats) > 0.7
    # N(0, 1) proposal for a Cauchy target: weights with infinite variance
    x = torch.randn(10_000, generator=g, dtype=torch.float64)
    log_w = dist.Cauchy(0.0, 1.0).log_prob(x) - dist.Normal(0.0, 1.0).log_prob(x)
    assert psis_khat(log_w) > 0.5


@pytest.mark.parametrize("rate", [0.7, 0.4, 0.1])
def test_recovers_exact_pareto_shape(rate: float) -> None:
    """x ~ Exp(1), target Exp(rate): w = exp((1 - rate) x) is exactly Pareto with k = 1 - rate."""
    g = torch.Generator().manual_seed(2)
    khats = []
    for _ in range(8):
        x = torch.empty(4000, dtype=torch.float64).exponential_(1.0, generator=g)
        log_w = dist.Exponential(rate).log_prob(x) - dist.Exponential(1.0).log_prob(x)
        khats.append(psis_khat(log_w))
    assert np.mean(khats) == pytest.approx(1.0 - rate, abs=0.1)


def test_matches_pyro_psis_diagnostic() -> None:
    def model() -> None:
        pyro.sample("x", dist.Normal(0.0, 1.5))

    def guide() -> None:
        pyro.sample("x", dist.Normal(0.0, 1.0))

    for seed in range(3):
        pyro.set_rng_seed(seed)
        expected = psis_diagnostic(model, guide, num_particles=2000)
        pyro.set_rng_seed(seed)
        log_w, _, _ = vectorized_importance_weights(
            model, guide, num_samples=2000, max_plate_nesting=7
        )
        # same weights, same estimator; Pyro's weights are float32, ours are cast to float64
        assert psis_khat(log_w) == pytest.approx(expected, abs=1e-5)


def test_agrees_with_arviz_stats_psis() -> None:
    """arviz-stats' PSIS (for log-likelihoods, weights exp(-ary)) is an independent code path;
    its tail holds floor(3 sqrt(S)) weights instead of ceil, so the estimates differ slightly."""
    g = torch.Generator().manual_seed(3)
    for scale in (1.2, 2.0, 3.0):
        log_w = _normal_log_weights(scale, 4000, g)
        _, khat = array_stats.psislw(-log_w.numpy(), r_eff=1.0)
        assert psis_khat(log_w) == pytest.approx(float(khat), abs=0.05)


def test_infinite_and_zero_weights(device: torch.device) -> None:
    g = torch.Generator().manual_seed(4)
    log_w = _normal_log_weights(1.2, 1000, g)
    with_inf = log_w.clone()
    with_inf[10] = math.inf
    assert psis_khat(with_inf.to(device)) == math.inf
    # zero weights (-inf) in place of the smallest ones leave the tail, and k-hat, unchanged
    with_zeros = log_w.clone()
    with_zeros[log_w.argsort()[:50]] = -math.inf
    assert psis_khat(with_zeros.to(device)) == pytest.approx(psis_khat(log_w), abs=1e-12)


def test_refuses_bad_input(device: torch.device) -> None:
    with pytest.raises(ValueError, match="NaN"):
        log_w = torch.zeros(100, device=device)
        log_w[3] = math.nan
        psis_khat(log_w)
    with pytest.raises(ValueError, match="at least 25"):
        psis_khat(torch.zeros(20, device=device))
    with pytest.raises(ValueError, match="1-D"):
        psis_khat(torch.zeros(10, 10, device=device))
    with pytest.raises(ValueError, match="-inf"):
        psis_khat(torch.full((100,), -math.inf, device=device))
    with pytest.raises(TypeError, match="real numbers"):
        psis_khat(np.array(["a"] * 100))
