"""Yardsticks computed the same way for every method.

* :func:`pointwise_log_likelihood` — :math:`\\log p(x_n \\mid \\theta_s)` for every posterior
  draw ``s`` and data point ``n``, with every discrete latent of the point summed out exactly by
  enumeration (the alignments never come from a guide here, so each method is judged on the
  model it learned, not on its guide).
* :func:`log_predictive_density` — held-out
  :math:`\\frac1N \\sum_n \\log \\frac1S \\sum_s p(x_n \\mid \\theta_s)`, natural log.
* :func:`importance_log_weights` — :math:`\\log p(x, \\theta_s) - \\log q(\\theta_s)` on the
  collapsed model, for PSIS k-hat of a guide's global part.
* :func:`gradient_variance` — total variance of a method's gradient estimate at fixed
  parameters over repeated draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.util import site_is_subsample

from pyro_attention.infer.fit import PosteriorDraws

_PARTICLES = "_particles"


def _site_shapes(
    model: Callable, samples: dict[str, torch.Tensor], *args: Any, **kwargs: Any
) -> dict[str, tuple[torch.Size, int]]:
    """``{site: (value_shape, batch_ndim)}`` of the latent sites of one model run.

    The run is conditioned on the first draw, so no global is sampled from the prior.
    """
    first = {name: value[0] for name, value in samples.items()}
    trace = poutine.block(poutine.trace(poutine.condition(model, first)).get_trace)(*args, **kwargs)
    return {
        name: (site["value"].shape, len(site["fn"].batch_shape))
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and (name in samples or not site["is_observed"])
    }


def _pad(samples: dict[str, torch.Tensor], shapes: dict, nesting: int) -> dict[str, torch.Tensor]:
    """Reshape ``(S, *site_shape)`` draws for a particle plate at ``dim=-(nesting + 1)``."""
    padded = {}
    for name, value in samples.items():
        if name not in shapes:
            raise ValueError(f"posterior draw {name!r} is not a latent site of the model")
        shape, batch_ndim = shapes[name]
        if tuple(value.shape[1:]) != tuple(shape):
            raise ValueError(
                f"posterior draws of {name!r} have shape {tuple(value.shape)}; expected "
                f"(num_samples, *{tuple(shape)})"
            )
        padded[name] = value.reshape((value.shape[0],) + (1,) * (nesting - batch_ndim) + shape)
    return padded


def local_log_joint(
    trace: poutine.Trace, exclude: set[str] | frozenset[str] = frozenset()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum of the log-probabilities of the observed and enumerated sites of a trace.

    Run on a trace made under ``poutine.enum`` (after ``trace.compute_log_prob()``), it is
    :math:`\\log p(x, z \\mid \\theta)` for every enumerated value of every alignment, with the
    enumeration dims on the left of the plate dims.

    :param trace: the enumerated trace.
    :param exclude: sites to leave out (e.g. the conditioned globals).
    :returns: the sum, and the union of the observed sites' masks (``None`` if unmasked).
    """
    total, keep = 0.0, None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name in exclude or site_is_subsample(site):
            continue
        if site["is_observed"] or site["infer"].get("_enumerate_dim") is not None:
            total = total + site["log_prob"]
            if site["is_observed"] and isinstance(site["mask"], torch.Tensor):
                keep = site["mask"] if keep is None else keep | site["mask"]
    return torch.as_tensor(total), keep


def pointwise_log_likelihood(
    model: Callable,
    samples: dict[str, torch.Tensor],
    *args: Any,
    max_plate_nesting: int,
    chunk_size: int = 64,
    return_log_prior: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact pointwise log-likelihood given draws of the global latents.

    The model is conditioned on each draw (vectorized over a particle plate), every discrete
    site is enumerated, and the log-probabilities of all observed and enumerated sites are
    summed and log-sum-exp'ed over the enumeration dims.

    :param model: the model function (batch-safe: globals ``.to_event``, ``Vindex`` indexing).
    :param samples: ``{site: (S, *site_shape)}``, all global latent sites (``{}`` for a model
        without global latents: one "draw").
    :param args: the model's arguments (the data).
    :param max_plate_nesting: the model's plate nesting.
    :param chunk_size: draws evaluated at once (caps memory at ``chunk × K × N``).
    :param return_log_prior: also return :math:`\\log p(\\theta_s)`, shape ``(S,)``.
    :returns: ``(S, *plate_shape)``, e.g. ``(S, N)`` for one plate of ``N`` points; entries
        that the model masks out (``poutine.mask``, e.g. padding) are 0.
    """
    shapes = _site_shapes(model, samples, *args, **kwargs)
    missing = [name for name in shapes if name not in samples]
    num = next(iter(samples.values())).shape[0] if samples else 1
    pointwise, priors = [], []
    for lo in range(0, num, chunk_size):
        chunk = {k: v[lo : lo + chunk_size] for k, v in samples.items()}
        size = min(chunk_size, num - lo)
        conditioned = poutine.condition(model, _pad(chunk, shapes, max_plate_nesting))
        enumerated = poutine.enum(
            config_enumerate(conditioned), first_available_dim=-(max_plate_nesting + 2)
        )
        with pyro.plate(_PARTICLES, size, dim=-(max_plate_nesting + 1)):
            trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
        trace.compute_log_prob()
        prior = torch.zeros(size)
        for name in chunk:
            log_prob = trace.nodes[name]["log_prob"]
            prior = prior.to(log_prob) + log_prob.reshape(size, -1).sum(-1)
        for name, site in trace.nodes.items():
            if name in missing and site["infer"].get("_enumerate_dim") is None:
                raise ValueError(
                    f"latent site {name!r} is neither enumerable nor in the posterior draws; "
                    "pointwise log-likelihood needs every local latent to be discrete"
                )
        local, keep = local_log_joint(trace, exclude=set(chunk) | {_PARTICLES})
        width = max_plate_nesting + 1
        local = local.reshape((-1,) + local.shape[-width:]).logsumexp(0)
        if keep is not None:  # masked cells sum to log K over their enumerated values: zero them
            local = local.masked_fill(~keep.expand(local.shape[1:]), 0.0)
        pointwise.append(local)
        priors.append(prior)
    out = torch.cat(pointwise)
    return (out, torch.cat(priors)) if return_log_prior else out


def log_predictive_density(pointwise: torch.Tensor, num_units: int | None = None) -> float:
    """Held-out log predictive density per unit: ``sum_n logmeanexp_s ll[s, n] / units``.

    :param pointwise: ``(S, ...)`` pointwise log-likelihoods.
    :param num_units: what to divide by (data points, target tokens); default all entries.
    """
    per_point = pointwise.logsumexp(0) - math.log(pointwise.shape[0])
    units = per_point.numel() if num_units is None else num_units
    return float(per_point.sum() / units)


def importance_log_weights(
    model: Callable,
    draws: PosteriorDraws,
    *args: Any,
    max_plate_nesting: int,
    **kwargs: Any,
) -> torch.Tensor:
    """:math:`\\log p(x, \\theta_s) - \\log q(\\theta_s)` with the alignments summed out.

    IWAE-style weights on the *collapsed* model are the valid ones for a guide over the
    globals (an enumerated model would silently draw the alignments from the prior).
    """
    if draws.log_density is None:
        raise ValueError("the draws carry no log density (point estimate or MCMC): no weights")
    pointwise, log_prior = pointwise_log_likelihood(
        model,
        draws.samples,
        *args,
        max_plate_nesting=max_plate_nesting,
        return_log_prior=True,
        **kwargs,
    )
    return pointwise.reshape(pointwise.shape[0], -1).sum(-1) + log_prior - draws.log_density


def sample_guide_globals(
    guide: Callable, model_obj: Any, data: Any, num_samples: int
) -> PosteriorDraws:
    """Draw the global latents from a guide, vectorized, with their log density ``log q``.

    Local sites the guide samples (alignments) are discarded; plate padding is stripped so the
    draws have shape ``(S, *site_shape)``.
    """
    nesting = model_obj.max_plate_nesting
    with torch.no_grad(), pyro.plate(_PARTICLES, num_samples, dim=-(nesting + 1)):
        trace = poutine.trace(guide).get_trace(data)
    trace.compute_log_prob()
    names = guide.global_site_names()
    shapes = {name: guide.prototype_trace.nodes[name]["value"].shape for name in names}
    samples = {
        name: trace.nodes[name]["value"].reshape(num_samples, *shapes[name]) for name in names
    }
    log_q = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name == _PARTICLES or site["is_observed"]:
            continue
        if site_is_subsample(site):
            continue
        frames = {f.name for f in site["cond_indep_stack"]} - {_PARTICLES}
        if frames:  # a local site of the guide (alignment)
            continue
        log_q = log_q + site["log_prob"].reshape(num_samples, -1).sum(-1)
    return PosteriorDraws(samples, torch.as_tensor(log_q))


def gradient_variance(
    model: Callable,
    guide: Callable,
    loss: Any,
    *args: Any,
    num_draws: int = 20,
    **kwargs: Any,
) -> float:
    """Total variance (trace of the covariance) of the gradient estimate over repeated draws.

    All parameters touched by ``loss.loss_and_grads`` are held fixed; only the method's own
    randomness (sampled alignments, reparameterised globals, mini-batches if ``kwargs`` ask for
    them) varies between draws.
    """
    grads = []
    for _ in range(num_draws):
        with poutine.trace(param_only=True) as capture:
            loss.loss_and_grads(model, guide, *args, **kwargs)
        params = {
            name: site["value"].unconstrained()
            for name, site in sorted(capture.trace.nodes.items())
        }
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in params.values()
        ]
        grads.append(torch.cat(flat).detach().clone())
        for p in params.values():
            p.grad = None
    stacked = torch.stack(grads)
    return float(stacked.var(0).sum())
