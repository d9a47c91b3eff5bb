"""The Bernoulli mixture: exact marginal, MAP EM, the generic methods, bad input."""

import itertools

import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer import fit
from pyro_attention.infer.evaluate import pointwise_log_likelihood
from pyro_attention.models import BernoulliMixture


def binary_data(device, n=60, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.9] * 3 + [0.1] * 3, [0.1] * 3 + [0.9] * 3], dtype=torch.float64)
    labels = torch.randint(0, 2, (n,), generator=generator)
    data = torch.bernoulli(centres[labels][:, :dim], generator=generator)
    return data.to(device), labels


def test_log_likelihood_equals_brute_force(device):
    data, _ = binary_data(device, n=5)
    model = BernoulliMixture(3, 6)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, device=device)
    probs = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    probs = probs.to(device)
    ll = pointwise_log_likelihood(
        model.model, {"weights": weights[None], "probs": probs[None]}, data, max_plate_nesting=1
    )
    for n in range(5):
        expected = torch.logsumexp(
            torch.stack(
                [
                    weights[k].log()
                    + torch.distributions.Bernoulli(probs=probs[k]).log_prob(data[n]).sum()
                    for k in range(3)
                ]
            ),
            0,
        )
        assert ll[0, n].item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(
        model.log_joint_terms(data, weights, probs).logsumexp(-1), ll[0], rtol=1e-12
    )


def test_map_em_never_decreases_its_objective_and_finds_the_clusters(device):
    data, labels = binary_data(device, n=200)
    model = BernoulliMixture(2, 6)
    result = model.em(data, max_iter=100, tol=1e-10)
    trace = torch.tensor(result.objective_trace)
    assert torch.all(trace[1:] >= trace[:-1] - 1e-10)
    assignments = result.responsibilities.argmax(-1).cpu()
    agreement = max((assignments == labels).float().mean(), (assignments != labels).float().mean())
    assert agreement > 0.95
    assert torch.all((result.probs > 0) & (result.probs < 1))


@pytest.mark.parametrize("method", ["em", "enum", "gumbel", "reinforce"])
def test_methods_fit_the_mixture(device, method):
    data, _ = binary_data(device, n=120)
    model = BernoulliMixture(2, 6)
    steps = {"num_steps": 150, "lr": 0.05} if method != "em" else {}
    result = fit(model.double(), data, method, progress=False, **steps)
    draws = result.draws(10)
    ll = pointwise_log_likelihood(model.model, draws.samples, data, max_plate_nesting=1)
    one_cluster = torch.distributions.Bernoulli(probs=data.mean(0)).log_prob(data).sum(-1).mean()
    # a two-component fit explains the data better than one product of Bernoullis
    assert ll.logsumexp(0).mean() - torch.log(torch.tensor(float(ll.shape[0]))) > one_cluster


def test_enumerated_marginal_matches_brute_force_over_joint_assignments(device):
    data, _ = binary_data(device, n=3)
    model = BernoulliMixture(2, 6)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64, device=device)
    probs = torch.full((2, 6), 0.3, dtype=torch.float64, device=device)
    probs[1] = 0.8
    from pyro import poutine

    conditioned = poutine.condition(model.model, {"weights": weights, "probs": probs})
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(
        enumerate_alignments(conditioned), lambda data: None, data
    )
    total = []
    for z in itertools.product(range(2), repeat=3):
        total.append(
            sum(
                weights[k].log() + torch.distributions.Bernoulli(probs=probs[k]).log_prob(x).sum()
                for k, x in zip(z, data, strict=True)
            )
        )
    prior = torch.distributions.Dirichlet(torch.ones(2, dtype=torch.float64)).log_prob(weights)
    prior = (
        prior
        + torch.distributions.Beta(torch.tensor(2.0).double(), torch.tensor(2.0).double())
        .log_prob(probs.cpu())
        .sum()
    )
    assert -loss == pytest.approx((torch.stack(total).logsumexp(0).cpu() + prior).item(), rel=1e-9)


def test_bad_input_is_refused():
    model = BernoulliMixture(2, 4)
    with pytest.raises(ValueError, match="binary"):
        model.check_data(torch.full((5, 4), 0.5))
    with pytest.raises(ValueError, match="components"):
        model.check_data(torch.ones(1, 4))
    with pytest.raises(ValueError, match="positive"):
        BernoulliMixture(2, 4, weight_concentration=0.0)
