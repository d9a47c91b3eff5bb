"""The score-function estimators of Deng et al. (2018) against exact gradients (float64).

``vi-sample`` (likelihood reward, soft-prior baseline, analytic KL) must be an unbiased estimate of
the gradient of the ELBO that ``vi-enum`` computes exactly, and ``hard-sample`` of the gradient of
the Jensen bound that ``hard-enum`` computes exactly; both exact objectives are checked against a
brute-force sum over the alignments of each target token. The model is the tiny latent alignment
seq2seq model of ``tests/models/test_seq2seq.py`` with its parameters redrawn at a larger scale, so
that the likelihood, the prior and the inference network all depend on the alignment (at the
default initialisation every ``log p(y_j | z_j = i)`` is the same to 1e-2 and the score-function
part of the gradient is nearly zero, which would make the checks blind).

Monte Carlo checks: ``copies`` copies of the batch in one pass give the mean of ``copies``
independent single-draw gradients (the rows of the batch are independent given the parameters);
``num_draws`` such passes give a mean and its standard error. Each check projects the gradient
of one parameter group (inference network, model) on its exact direction and on random
directions and requires ``|mean - exact| <= 4.5`` standard errors.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import ClippedAdam

from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.distributions import StraightThroughCategorical
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer import HardEnum, VIEnum, get_method
from pyro_attention.infer.score_function_kl import ScoreFunctionKL_ELBO
from pyro_attention.models.seq2seq import LatentAlignmentSeq2Seq

NESTING = 2  # LatentAlignmentSeq2Seq.max_plate_nesting
TOLERANCE = 4.5  # standard errors
GUIDE_PREFIX = "AutoAlignmentGuide.encoder$$$"  # the inference network
MODEL_PREFIX = "seq2seq$$$"


# ---------------------------------------------------------------------------------- set-up
def tiny(device, dtype=torch.float64):
    """The tiny model of tests/models/test_seq2seq.py (3 examples of the reverse task)."""
    task = get_task("reverse", alphabet_size=5, min_length=2, max_length=4)
    data = make_alignment_dataset(task, num_train=3, num_valid=1, num_test=1, seed=3)
    batch = data.tensors("train", device=device)
    assert batch.source.shape[0] == 3 and not batch.source_mask.all()  # padding is exercised
    assert not batch.target_mask.all()
    model = LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab), 8, 12)
    model.to(device=device, dtype=dtype)
    return model, batch


def informative_tiny(device, scale=0.8):
    """:func:`tiny` with every weight redrawn from N(0, scale²), before Pyro sees them."""
    model, batch = tiny(device)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, scale)
    return model, batch


def replicate(batch, copies):
    """The batch with its rows repeated ``copies`` times (each copy draws its own alignments)."""
    return batch._replace(
        **{
            name: value.repeat(copies, *[1] * (value.dim() - 1))
            for name, value in batch._asdict().items()
        }
    )


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def traced_params(fn, *args):
    """Run ``fn(*args)``; its result and the parameters it read, by name, each tensor once."""
    with poutine.trace(param_only=True) as capture:
        result = fn(*args)
    sites, seen = {}, set()
    for name, site in sorted(capture.trace.nodes.items()):
        tensor = site["value"].unconstrained()
        if id(tensor) not in seen:
            seen.add(id(tensor))
            sites[name] = tensor
    return result, sites


def exact_gradient(method, model, batch):
    """Loss of an enumerating method (vi-enum, hard-enum), its params and exact gradient."""
    loss_fn = method.loss(NESTING)
    loss, params = traced_params(
        loss_fn.differentiable_loss, method.prepare(model.model), method.guide(model), batch
    )
    return loss, params, flat(torch.autograd.grad(loss, list(params.values())))


def gradient_draws(loss_fn, model_fn, guide, batch, params, num_draws, copies):
    """``(num_draws, D)``: each row the mean of ``copies`` independent gradient estimates."""
    big = replicate(batch, copies)
    draws = []
    for _ in range(num_draws):
        surrogate = loss_fn.differentiable_loss(model_fn, guide, big) / copies
        draws.append(flat(torch.autograd.grad(surrogate, params)))
    return torch.stack(draws)


def groups(params, prefixes):
    """Boolean masks over the flat gradient, one per parameter-name prefix."""
    masks = {}
    for prefix in prefixes:
        masks[prefix] = torch.cat(
            [
                torch.full(
                    (value.numel(),), name.startswith(prefix), dtype=torch.bool, device=value.device
                )
                for name, value in params.items()
            ]
        )
    assert sum(masks.values()).eq(1).all(), "every parameter belongs to exactly one group"
    return masks


def assert_unbiased(draws, exact, masks, num_random=3, max_relative_stderr=0.05):
    """The mean of ``draws`` matches ``exact`` on the exact direction and random directions of
    each group, within ``TOLERANCE`` standard errors; and the check has power: along the exact
    direction the standard error is below ``max_relative_stderr`` of the gradient's norm."""
    generator = torch.Generator().manual_seed(12345)
    num_draws = draws.shape[0]
    for group, mask in masks.items():
        sub_exact = exact[mask]
        assert sub_exact.norm() > 0, f"the exact {group} gradient is zero: the check is blind"
        random = torch.randn(num_random, int(mask.sum()), generator=generator, dtype=exact.dtype)
        directions = torch.cat([(sub_exact / sub_exact.norm()).unsqueeze(0), random.to(exact)])
        projected = draws[:, mask] @ directions.T  # (num_draws, num_directions)
        target = directions @ sub_exact
        stderr = projected.std(0) / num_draws**0.5
        z = (projected.mean(0) - target) / stderr
        assert torch.all(stderr > 0), f"{group}: the estimate has no variance"
        assert torch.all(z.abs() <= TOLERANCE), (
            f"{group}: mean {projected.mean(0).tolist()} vs exact {target.tolist()} "
            f"(z = {z.tolist()})"
        )
        relative = stderr[0] / sub_exact.norm()
        assert relative < max_relative_stderr, f"{group}: stderr / |gradient| = {relative}"


def total_variance(draws, mask, copies):
    """Trace of the covariance of one single-draw gradient (rows are means of ``copies``)."""
    return draws[:, mask].var(0).sum() * copies


# ------------------------------------------------------------------ brute-force references
def per_token_pieces(model, batch):
    """``log p(z_j = i)``, ``log p(y_j | z_j = i)`` and the mask of real ``(j, i)``, each
    ``(B, T, S)``, straight from the model's networks."""
    encoder, decoder = model.encode(batch.source), model.decode(batch.target_in)
    source_mask = batch.source_mask.unsqueeze(1)  # (B, 1, S)
    prior_logits = model.prior_logits(decoder, encoder).masked_fill(~source_mask, -1e4)
    log_prior = torch.log_softmax(prior_logits, -1)
    emission = model.emission_logits(encoder.unsqueeze(1), decoder.unsqueeze(2))  # (B, T, S, V)
    log_emission = torch.log_softmax(emission, -1)
    index = batch.target[:, :, None, None].expand(*log_emission.shape[:3], 1)
    log_lik = log_emission.gather(-1, index).squeeze(-1)
    valid = batch.target_mask.unsqueeze(-1) & source_mask
    return log_prior, log_lik, valid


def brute_force_elbo(model, batch):
    """sum_{real j} sum_i q(i) [log p(i) + log p(y_j | i) - log q(i)] with the guide's q."""
    log_prior, log_lik, valid = per_token_pieces(model, batch)
    log_q = torch.log_softmax(model.encoder("alignment", None, batch), -1)
    terms = log_q.exp() * (log_prior + log_lik - log_q)
    return torch.where(valid, terms, torch.zeros_like(terms)).sum()


def brute_force_jensen(model, batch):
    """sum_{real j} sum_i p(z_j = i) log p(y_j | z_j = i), the hard-attention bound."""
    log_prior, log_lik, valid = per_token_pieces(model, batch)
    terms = log_prior.exp() * log_lik
    return torch.where(valid, terms, torch.zeros_like(terms)).sum()


# ------------------------------------------------------------------------------- vi-sample
def vi_sample_setup(device, baseline, num_particles=1):
    model, batch = informative_tiny(device)
    exact_loss, params, exact = exact_gradient(VIEnum(), model, batch)
    method = get_method("vi-sample", baseline=baseline, num_particles=num_particles)
    loss_fn = method.loss(NESTING)
    assert isinstance(loss_fn, ScoreFunctionKL_ELBO) and loss_fn.baseline == baseline
    model_fn, guide = method.prepare(model.model), method.guide(model)
    # the sampled and the enumerated guide share the inference network's parameters
    _, sampled_params = traced_params(loss_fn.differentiable_loss, model_fn, guide, batch)
    assert list(sampled_params) == list(params)
    assert all(sampled_params[n] is params[n] for n in params)
    masks = groups(params, (GUIDE_PREFIX, MODEL_PREFIX))
    return model, batch, exact_loss, params, exact, loss_fn, model_fn, guide, masks


def test_vi_enum_reference_is_the_brute_force_elbo(device):
    """The exact reference of the vi-sample checks: value and gradient of the ELBO."""
    model, batch = informative_tiny(device)
    exact_loss, params, exact = exact_gradient(VIEnum(), model, batch)
    elbo = brute_force_elbo(model, batch)
    assert -exact_loss.item() == pytest.approx(elbo.item(), rel=1e-10)
    expected = flat(torch.autograd.grad(-elbo, list(params.values())))
    assert torch.allclose(exact, expected, rtol=1e-8, atol=1e-12)
    masks = groups(params, (GUIDE_PREFIX, MODEL_PREFIX))
    assert exact[masks[GUIDE_PREFIX]].norm() > 1e-2  # the guide is far from optimal
    assert exact[masks[MODEL_PREFIX]].norm() > 1e-2


@pytest.mark.parametrize(
    "baseline, num_particles, copies",
    [("soft-prior", 1, 40), ("soft-prior", 2, 20), ("none", 1, 40)],
)
def test_vi_sample_gradient_is_unbiased(device, baseline, num_particles, copies):
    """Mean of 2000 single draws of the vi-sample gradient = exact vi-enum ELBO gradient, for
    the inference network and the model parameters."""
    setup = vi_sample_setup(device, baseline, num_particles)
    _, batch, _, params, exact, loss_fn, model_fn, guide, masks = setup
    draws = gradient_draws(loss_fn, model_fn, guide, batch, list(params.values()), 50, copies)
    assert_unbiased(draws, exact, masks)


def test_vi_sample_gradient_scales_once_with_the_data_scale(device):
    """Under ``poutine.scale`` (what subsampling does) the estimate is unbiased for the scaled
    ELBO: the reward is scaled, Pyro's score function is not, so the score-function term must
    carry the scale once (not squared)."""
    setup = vi_sample_setup(device, "soft-prior")
    _, batch, _, params, exact, loss_fn, model_fn, guide, masks = setup
    scale = 3.0
    draws = gradient_draws(
        loss_fn,
        poutine.scale(model_fn, scale=scale),
        poutine.scale(guide, scale=scale),
        batch,
        list(params.values()),
        50,
        40,
    )
    assert_unbiased(draws, scale * exact, masks)


def test_soft_prior_baseline_reduces_vi_sample_gradient_variance(device):
    """Several times less variance for the inference network (about 0.2-0.3 of it over
    seeds). The model's gradient has no score-function term, so with the same draws of ``z``
    it is the same whatever the baseline."""
    draws, masks = {}, None
    for baseline in ("soft-prior", "none"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        _, batch, _, params, _, loss_fn, model_fn, guide, masks = vi_sample_setup(device, baseline)
        pyro.set_rng_seed(1)
        draws[baseline] = gradient_draws(
            loss_fn, model_fn, guide, batch, list(params.values()), 40, 10
        )
    network, model = masks[GUIDE_PREFIX], masks[MODEL_PREFIX]
    soft, none = (total_variance(draws[b], network, 10) for b in ("soft-prior", "none"))
    assert soft < 0.5 * none, (soft, none)
    torch.testing.assert_close(
        draws["soft-prior"][:, model], draws["none"][:, model], rtol=1e-10, atol=1e-12
    )
    assert not torch.allclose(draws["soft-prior"][:, network], draws["none"][:, network])


# ----------------------------------------------------------------------------- hard-sample
def test_hard_enum_is_the_brute_force_jensen_bound(device):
    """-hard-enum loss = sum over real tokens of sum_i p(z_j = i) log p(y_j | z_j = i), with the
    same gradient, and it lies below the exact log marginal."""
    model, batch = informative_tiny(device)
    loss, params, exact = exact_gradient(HardEnum(), model, batch)
    assert all(name.startswith(MODEL_PREFIX) for name in params)  # the guide is the prior
    jensen = brute_force_jensen(model, batch)
    assert -loss.item() == pytest.approx(jensen.item(), rel=1e-10)
    expected = flat(torch.autograd.grad(-jensen, list(params.values())))
    assert torch.allclose(exact, expected, rtol=1e-8, atol=1e-12)
    log_marginal = -TraceEnum_ELBO(max_plate_nesting=NESTING).loss(
        enumerate_alignments(model.model), lambda batch: None, batch
    )
    assert jensen.item() < log_marginal - 1e-3


def hard_sample_setup(device, baseline):
    model, batch = informative_tiny(device)
    _, params, exact = exact_gradient(HardEnum(), model, batch)
    method = get_method("hard-sample", baseline=baseline)
    loss_fn = method.loss(NESTING)
    assert isinstance(loss_fn, ScoreFunctionKL_ELBO) and loss_fn.baseline == baseline
    model_fn, guide = method.prepare(model.model), method.guide(model)
    _, sampled_params = traced_params(loss_fn.differentiable_loss, model_fn, guide, batch)
    assert list(sampled_params) == list(params)
    return batch, params, exact, loss_fn, model_fn, guide


@pytest.mark.parametrize("baseline", ["soft-prior", "none"])
def test_hard_sample_gradient_is_unbiased(device, baseline):
    """Mean of 2000 draws of the hard-sample gradient = exact gradient of the Jensen bound."""
    batch, params, exact, loss_fn, model_fn, guide = hard_sample_setup(device, baseline)
    draws = gradient_draws(loss_fn, model_fn, guide, batch, list(params.values()), 50, 40)
    assert_unbiased(draws, exact, groups(params, (MODEL_PREFIX,)))


def test_soft_prior_baseline_reduces_hard_sample_gradient_variance(device):
    """Here the score ``grad log p(z)`` hits the model's parameters: less variance there."""
    variances = {}
    for baseline in ("soft-prior", "none"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        batch, params, _, loss_fn, model_fn, guide = hard_sample_setup(device, baseline)
        draws = gradient_draws(loss_fn, model_fn, guide, batch, list(params.values()), 40, 10)
        mask = groups(params, (MODEL_PREFIX,))[MODEL_PREFIX]
        variances[baseline] = total_variance(draws, mask, 10)
    # about 0.09-0.11 over seeds
    assert variances["soft-prior"] < 0.3 * variances["none"], variances


# ------------------------------------------------------------------------------ ELBO value
@pytest.mark.parametrize(
    "name, exact_method",
    [("vi-sample", VIEnum()), ("hard-sample", HardEnum())],
    ids=["vi-sample", "hard-sample"],
)
def test_elbo_estimate_matches_exact_value(device, name, exact_method):
    """The mean of ScoreFunctionKL_ELBO.loss (no gradient; 4 particles averaged per call) is
    the exact objective: the ELBO for vi-sample, the Jensen bound for hard-sample."""
    model, batch = informative_tiny(device)
    exact = exact_method.loss(NESTING).loss(
        exact_method.prepare(model.model), exact_method.guide(model), batch
    )
    method = get_method(name, num_particles=4)
    loss_fn = method.loss(NESTING)
    model_fn, guide = method.prepare(model.model), method.guide(model)
    copies, num_draws = 25, 40
    big = replicate(batch, copies)
    values = torch.tensor(
        [loss_fn.loss(model_fn, guide, big) / copies for _ in range(num_draws)],
        dtype=torch.float64,
    )
    stderr = values.std() / num_draws**0.5
    assert 0 < stderr < 0.01 * abs(exact)
    assert abs(values.mean().item() - exact) <= TOLERANCE * stderr, (values.mean(), exact, stderr)


def test_loss_and_grads_agree_with_loss_and_differentiable_loss(device):
    """With the same random draws, loss_and_grads returns loss()'s value and backpropagates
    differentiable_loss()'s gradient (what SVI uses is what the checks above test)."""
    model, batch = informative_tiny(device)
    method = get_method("vi-sample", num_particles=3)
    loss_fn = method.loss(NESTING)
    model_fn, guide = method.prepare(model.model), method.guide(model)
    _, params = traced_params(loss_fn.differentiable_loss, model_fn, guide, batch)
    params = list(params.values())
    pyro.set_rng_seed(7)
    value = loss_fn.loss(model_fn, guide, batch)
    pyro.set_rng_seed(7)
    expected = flat(
        torch.autograd.grad(loss_fn.differentiable_loss(model_fn, guide, batch), params)
    )
    for param in params:
        param.grad = None
    pyro.set_rng_seed(7)
    returned = loss_fn.loss_and_grads(model_fn, guide, batch)
    assert returned == pytest.approx(value, rel=1e-12)
    assert torch.allclose(flat([p.grad for p in params]), expected, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="baseline"):
        ScoreFunctionKL_ELBO(baseline="decaying")


# ---------------------------------------------------------------------------------- gumbel
def relaxed_alignments(model, batch, temperature, straight_through, copies=400):
    """The gumbel guide's draws for the real (b, j) cells, ``(copies, cells, S)``, and ``q``
    of those cells, ``(cells, S)``."""
    method = get_method("gumbel", temperature=temperature, straight_through=straight_through)
    guide = method.guide(model)
    big = replicate(batch, copies)
    site = poutine.trace(guide).get_trace(big).nodes["alignment"]
    expected_type = (
        StraightThroughCategorical if straight_through else dist.RelaxedOneHotCategorical
    )
    assert type(site["fn"]) is expected_type
    assert site["fn"].temperature.item() == temperature
    cells = int(batch.target_mask.sum())
    values = site["value"][big.target_mask].reshape(copies, cells, -1)
    return values, site["fn"].probs[: batch.target.shape[0]][batch.target_mask]


def test_concrete_samples_approach_one_hot_as_temperature_falls(device):
    """Mean largest coordinate of the Concrete guide's samples rises towards 1 as τ falls.

    For two equally likely items it is E[σ(|L| / τ)], L ~ Logistic(0, 1): about 1 - 0.35 τ for
    small τ (0.96 at τ = 0.1 here; 0.99 is first passed near τ = 0.03)."""
    model, batch = informative_tiny(device)
    temperatures = (2.0, 1.0, 0.5, 0.1, 0.01)
    means = []
    for temperature in temperatures:
        values, _ = relaxed_alignments(model, batch, temperature, straight_through=False)
        assert values.dtype == torch.float64
        torch.testing.assert_close(values.sum(-1), torch.ones_like(values[..., 0]))
        means.append(values.max(-1).values.mean().item())
    assert all(a < b for a, b in itertools.pairwise(means)), means
    assert means[3] > 0.94, means
    assert means[4] > 0.99, means


def test_straight_through_samples_are_one_hot_draws_of_q(device):
    """Straight-through: exact one-hot values, each cell's item chosen with the guide's
    probabilities, and gradients reach the inference network through the relaxed sample."""
    model, batch = informative_tiny(device)
    values, probs = relaxed_alignments(model, batch, 0.5, straight_through=True)
    assert torch.all((values == 0) | (values == 1)) and torch.all(values.sum(-1) == 1)
    frequencies = values.mean(0)  # (cells, S)
    stderr = (probs * (1 - probs) / values.shape[0]).sqrt()
    assert torch.all((frequencies - probs).abs() <= TOLERANCE * stderr + 1e-12)
    weights = torch.randn_like(values)
    (grad,) = torch.autograd.grad((weights * values).sum(), model.encoder.bilinear.weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------ tracegraph
def test_vi_sample_tracegraph_takes_finite_steps_and_is_unbiased(device):
    """Pyro's TraceGraph_ELBO with a neural baseline: finite steps, and (before any step) a
    gradient of the model and inference network whose mean is the exact ELBO gradient."""
    model, batch = informative_tiny(device)
    _, params, exact = exact_gradient(VIEnum(), model, batch)
    method = get_method("vi-sample", estimator="tracegraph")
    loss_fn = method.loss(NESTING)
    model_fn, guide = method.prepare(model.model), method.guide(model)
    tensors = list(params.values())
    big, copies, num_draws = replicate(batch, 40), 40, 50
    draws = []
    for _ in range(num_draws):
        for tensor in tensors:
            tensor.grad = None
        loss_fn.loss_and_grads(model_fn, guide, big)
        draws.append(flat([t.grad for t in tensors]) / copies)
    masks = groups(params, (GUIDE_PREFIX, MODEL_PREFIX))
    # an untrained neural baseline: a noisier estimate than vi-sample's
    assert_unbiased(torch.stack(draws), exact, masks, max_relative_stderr=0.1)
    # the neural baseline has registered its own parameters
    assert any(name.startswith("baseline_") for name in pyro.get_param_store())
    svi = SVI(model_fn, guide, ClippedAdam({"lr": 0.01}), loss_fn)
    losses = torch.tensor([svi.step(batch) for _ in range(3)])
    assert torch.isfinite(losses).all()


def test_categorical_kl_stays_finite_when_the_prior_underflows():
    """torch's Categorical KL is inf where p's probability underflows to 0 under q's mass; a
    peaked float32 prior (after training on the translation task) did that mid-run."""
    from pyro_attention.infer.score_function_kl import _kl

    q = dist.Categorical(logits=torch.tensor([0.0, 0.0, -3e37]))
    p = dist.Categorical(logits=torch.tensor([0.0, -200.0, -3e37]))
    assert torch.isinf(torch.distributions.kl_divergence(q, p))
    # q = (1/2, 1/2, 0), log p = (0, -200, -inf) up to exp(-200): KL = log(1/2) + 100
    assert _kl(q, p).item() == pytest.approx(100 + math.log(0.5), rel=1e-6)
    q, p = (dist.Categorical(logits=torch.randn(4, 5, dtype=torch.float64)) for _ in range(2))
    torch.testing.assert_close(_kl(q, p), torch.distributions.kl_divergence(q, p))
