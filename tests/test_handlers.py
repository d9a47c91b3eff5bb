"""Handlers rewrite alignment sites: soft, relax, dirichlet."""

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_attention import alignment
from pyro_attention.handlers import dirichlet, relax, soft


def _trace(handler, logits):
    return poutine.trace(handler(lambda: alignment("z", logits))).get_trace().nodes["z"]


def test_soft_is_prior_mean_and_deterministic(device):
    logits = torch.randn(6, 4, device=device)
    site = _trace(soft(), logits)
    torch.testing.assert_close(site["value"], torch.softmax(logits, -1))
    assert site["is_observed"]
    assert torch.all(site["fn"].log_prob(site["value"]) == 0)


def test_relax_straight_through_keeps_discrete_model(device):
    site = _trace(relax(0.5), torch.randn(3, 4, device=device))
    assert isinstance(site["fn"], dist.OneHotCategorical)
    assert torch.all(site["value"].sum(-1) == 1)


def test_concrete_samples_approach_one_hot(device):
    """Gumbel-softmax samples lie on the simplex and concentrate on corners as τ falls."""
    logits = torch.zeros(4000, 5, device=device, dtype=torch.float64)
    means = []
    for temperature in (1.0, 0.3, 0.05):
        site = _trace(relax(temperature, straight_through=False), logits)
        assert isinstance(site["fn"], dist.RelaxedOneHotCategorical)
        ones = torch.ones(4000, device=device, dtype=torch.float64)
        torch.testing.assert_close(site["value"].sum(-1), ones)
        means.append(site["value"].max(-1).values.mean().item())
    assert means[0] < means[1] < means[2]
    assert means[2] > 0.97


def test_dirichlet_centred_on_prior(device):
    logits = torch.tensor([1.0, 0.0, -1.0], device=device, dtype=torch.float64)
    site = _trace(dirichlet(2.0), logits.expand(20000, 3))
    assert isinstance(site["fn"], dist.Dirichlet)
    torch.testing.assert_close(site["value"].mean(0), torch.softmax(logits, -1), atol=0.01, rtol=0)


def test_observed_alignment_is_not_rewritten(device):
    def model():
        alignment("z", torch.zeros(3, device=device), obs=torch.tensor(1, device=device))

    with pytest.raises(ValueError, match="observed"):
        poutine.trace(soft()(model)).get_trace()


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_nonpositive_parameters_refused(bad):
    with pytest.raises(ValueError, match="temperature"):
        relax(bad)
    with pytest.raises(ValueError, match="concentration"):
        dirichlet(bad)
