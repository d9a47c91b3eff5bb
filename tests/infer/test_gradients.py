"""Stochastic gradient estimators against exact gradients (float64).

A tiny 1-D mixture with *learnable* component means and prior logits and a mean-field categorical
guide. Its ELBO has a closed form, so the exact gradient comes from autograd; each method's
estimate must match it within Monte Carlo standard error (or, for relaxations, approach it).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_attention import alignment, attend
from pyro_attention.guides import AutoAlignmentGuide
from pyro_attention.infer import (
    RWS,
    Baseline,
    DecayingAverageBaseline,
    Gumbel,
    NeuralBaseline,
    Reinforce,
    ValueBaseline,
    VIEnum,
)

SCALE = 0.8


def make_problem(device):
    data = torch.tensor([-1.2, 0.1, 0.4, 2.2], device=device, dtype=torch.float64)

    def model(data):
        locs = pyro.param(
            "locs", torch.tensor([-1.0, 0.0, 1.5], device=device, dtype=torch.float64)
        )
        prior_logits = pyro.param(
            "prior_logits", torch.tensor([0.2, -0.3, 0.1], device=device, dtype=torch.float64)
        )
        with pyro.plate("data", len(data)):
            z = alignment("z", prior_logits)
            loc = attend(locs.unsqueeze(-1), z)[..., 0]
            pyro.sample("obs", dist.Normal(loc, SCALE), obs=data)

    return model, data


def set_guide_logits(guide, data, device):
    """Run the guide once and set its local logits to fixed, non-uniform values."""
    poutine.block(guide)(data)
    logits = torch.tensor(
        [[0.5, -0.2, 0.0], [0.1, 0.3, -0.4], [-0.3, 0.2, 0.6], [-1.0, 0.0, 0.8]],
        device=device,
        dtype=torch.float64,
    )
    name = next(n for n in pyro.get_param_store() if n.endswith("local.z"))
    with torch.no_grad():
        pyro.get_param_store()[name].copy_(logits)
    return name


def param_tensors(names):
    store = pyro.get_param_store()
    return [store[n].unconstrained() for n in names]


def exact_elbo_gradient(guide_param, data):
    """Closed-form ELBO sum_n sum_k q_nk [log p(k) + log p(x_n|k) - log q_nk] and its grads."""
    store = pyro.get_param_store()
    locs, prior_logits = store["locs"], store["prior_logits"]
    q_logits = store[guide_param]
    log_q = torch.log_softmax(q_logits, -1)
    log_joint = torch.log_softmax(prior_logits, -1) + dist.Normal(locs, SCALE).log_prob(
        data.unsqueeze(-1)
    )
    elbo = (log_q.exp() * (log_joint - log_q)).sum()
    names = ["locs", "prior_logits", guide_param]
    grads = torch.autograd.grad(-elbo, [store[n].unconstrained() for n in names])
    return names, [g.detach() for g in grads]


def estimate(loss, model, guide, data, names, num_draws):
    draws = []
    for _ in range(num_draws):
        for p in param_tensors(names):
            p.grad = None
        loss.loss_and_grads(model, guide, data)
        draws.append(torch.cat([p.grad.reshape(-1) for p in param_tensors(names)]))
    draws = torch.stack(draws)
    stderr = draws.std(0) / math.sqrt(num_draws) if num_draws > 1 else None
    return draws.mean(0), stderr, draws


def test_vi_enum_gradient_is_exact(device):
    model, data = make_problem(device)
    guide = AutoAlignmentGuide(model, VIEnum())
    name = set_guide_logits(guide, data, device)
    names, exact = exact_elbo_gradient(name, data)
    mean, _, _ = estimate(VIEnum().loss(1), model, guide, data, names, 1)
    torch.testing.assert_close(mean, torch.cat([g.reshape(-1) for g in exact]))


@pytest.mark.parametrize(
    "baseline",
    [
        Baseline(),
        DecayingAverageBaseline(0.9),
        NeuralBaseline(hidden=4),
        ValueBaseline(torch.tensor(-3.0)),
    ],
    ids=["none", "decaying", "neural", "value"],
)
def test_reinforce_unbiased(device, baseline):
    model, data = make_problem(device)
    method = Reinforce(baseline=baseline)
    guide = AutoAlignmentGuide(model, method, local_features=lambda plates, d: d.unsqueeze(-1))
    name = set_guide_logits(guide, data, device)
    names, exact = exact_elbo_gradient(name, data)
    exact = torch.cat([g.reshape(-1) for g in exact])
    mean, stderr, _ = estimate(method.loss(1), model, guide, data, names, 600)
    assert torch.all((mean - exact).abs() <= 4.5 * stderr + 1e-6), (mean - exact) / stderr


def test_baselines_reduce_variance(device):
    model, data = make_problem(device)
    variances = {}
    # a good constant: the exact expected downstream cost per point at these parameters
    for key, baseline in [
        ("none", Baseline()),
        ("decaying", DecayingAverageBaseline(0.8)),
        ("value", None),
    ]:
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        guide = AutoAlignmentGuide(model, Reinforce(baseline=Baseline()))
        name = set_guide_logits(guide, data, device)
        if baseline is None:
            store = pyro.get_param_store()
            log_q = torch.log_softmax(store[name], -1)
            log_joint = torch.log_softmax(store["prior_logits"], -1) + dist.Normal(
                store["locs"], SCALE
            ).log_prob(data.unsqueeze(-1))
            expected = (log_q.exp() * (log_joint - log_q)).sum(-1).detach()
            baseline = ValueBaseline(expected)
        method = Reinforce(baseline=baseline)
        guide.spec = method.guide_spec()
        names = [name]  # the score-function part: the guide's logits
        loss = method.loss(1)
        estimate(loss, model, guide, data, names, 50)  # warm up the running average
        _, _, draws = estimate(loss, model, guide, data, names, 300)
        variances[key] = draws.var(0).sum().item()
    assert variances["decaying"] < 0.8 * variances["none"], variances
    assert variances["value"] < 0.5 * variances["none"], variances


def test_rws_gradients_match_exact_wake_objectives(device):
    """Wake-θ ≈ -∇ log p(x); wake-φ ≈ ∇ KL(p(z|x) || q) (self-normalised, many particles)."""
    model, data = make_problem(device)
    method = RWS(num_particles=2000)
    guide = AutoAlignmentGuide(model, method)
    name = set_guide_logits(guide, data, device)
    store = pyro.get_param_store()
    locs, prior_logits, q_logits = (
        store[n].unconstrained() for n in ("locs", "prior_logits", name)
    )
    log_joint = torch.log_softmax(prior_logits, -1) + dist.Normal(locs, SCALE).log_prob(
        data.unsqueeze(-1)
    )
    log_marginal = log_joint.logsumexp(-1).sum()
    exact_theta = torch.autograd.grad(-log_marginal, [locs, prior_logits])
    posterior = torch.softmax(log_joint, -1).detach()
    kl = (posterior * (posterior.log() - torch.log_softmax(q_logits, -1))).sum()
    exact_phi = torch.autograd.grad(kl, [q_logits])[0]
    mean, stderr, _ = estimate(
        method.loss(1), model, guide, data, ["locs", "prior_logits", name], 12
    )
    exact = torch.cat([exact_theta[0], exact_theta[1], exact_phi.reshape(-1)])
    assert torch.all((mean - exact).abs() <= 5 * stderr + 0.02), mean - exact


def test_straight_through_gumbel_locs_gradient_unbiased(device):
    """With one-hot samples, the gradient for the emission parameters is exact in expectation."""
    model, data = make_problem(device)
    method = Gumbel(temperature=0.5)
    guide = AutoAlignmentGuide(model, method)
    name = set_guide_logits(guide, data, device)
    _, exact = exact_elbo_gradient(name, data)
    loss = pyro.infer.Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1)
    mean, stderr, _ = estimate(loss, method.prepare(model), guide, data, ["locs"], 12)
    assert torch.all((mean - exact[0]).abs() <= 4.5 * stderr + 1e-6)


def test_concrete_bias_shrinks_with_temperature(device):
    """Relaxed (Concrete) gradients for the means approach the exact ones as τ -> 0."""
    model, data = make_problem(device)
    biases = []
    for temperature in (2.0, 0.5, 0.1):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        method = Gumbel(temperature=temperature, straight_through=False)
        guide = AutoAlignmentGuide(model, method)
        name = set_guide_logits(guide, data, device)
        _, exact = exact_elbo_gradient(name, data)
        loss = pyro.infer.Trace_ELBO(
            num_particles=20000, vectorize_particles=True, max_plate_nesting=1
        )
        mean, _, _ = estimate(loss, method.prepare(model), guide, data, ["locs"], 1)
        biases.append((mean - exact[0]).norm().item())
    assert biases[0] > biases[1] > biases[2], biases
    assert biases[2] < 0.2 * biases[0], biases
