"""Yardsticks computed the same way for every method.

* :func:`pointwise_log_likelihood` — :math:`\\log p(x_n \\mid \\theta_s)` for every posterior
  draw ``s`` and data point ``n``, with every discrete latent of the point summed out exactly by
  enumeration (the alignments never come from a guide here, so each method is judged on the
  model it learned, not on its guide); continuous local latents by importance sampling.
* :func:`check_model` — the model check: can the evaluator score this model?
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
from typing import Any, Literal, overload

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.util import site_is_subsample

from pyro_attention.infer.results import PosteriorDraws
from pyro_attention.models.base import AlignmentModel
from pyro_attention.models.structure import (
    ModelStructure,
    check_nesting,
    inspect_model,
    trace_model,
)
from pyro_attention.traces import local_log_joint, own_param_store, site_dist, site_value

_PARTICLES = "_particles"


def _site_shapes(
    model: Callable, samples: dict[str, torch.Tensor], *args: Any, **kwargs: Any
) -> dict[str, tuple[torch.Size, int, bool]]:
    """``{site: (value_shape, batch_ndim, is_discrete)}`` of the latent sites of one model run.

    The run is conditioned on the first draw, so no global is sampled from the prior.
    """
    first = {name: value[0] for name, value in samples.items()}
    trace = poutine.block(poutine.trace(poutine.condition(model, first)).get_trace)(*args, **kwargs)
    return {
        name: (
            site_value(site).shape,
            len(site_dist(site).batch_shape),
            bool(site_dist(site).support.is_discrete),
        )
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
        shape, batch_ndim, _ = shapes[name]
        if tuple(value.shape[1:]) != tuple(shape):
            raise ValueError(
                f"posterior draws of {name!r} have shape {tuple(value.shape)}; expected "
                f"(num_samples, *{tuple(shape)})"
            )
        padded[name] = value.reshape((value.shape[0],) + (1,) * (nesting - batch_ndim) + shape)
    return padded


@overload
def pointwise_log_likelihood(
    model: Callable,
    samples: dict[str, torch.Tensor],
    *args: Any,
    max_plate_nesting: int,
    chunk_size: int = ...,
    return_log_prior: Literal[False] = ...,
    local_draws: int = ...,
    **kwargs: Any,
) -> torch.Tensor: ...


@overload
def pointwise_log_likelihood(
    model: Callable,
    samples: dict[str, torch.Tensor],
    *args: Any,
    max_plate_nesting: int,
    chunk_size: int = ...,
    return_log_prior: Literal[True],
    local_draws: int = ...,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def pointwise_log_likelihood(
    model: Callable,
    samples: dict[str, torch.Tensor],
    *args: Any,
    max_plate_nesting: int,
    chunk_size: int = 64,
    return_log_prior: bool = False,
    local_draws: int = 64,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pointwise log-likelihood given draws of the global latents.

    The model is conditioned on each draw (vectorized over a particle plate), every discrete
    site is enumerated, and the log-probabilities of all observed and enumerated sites are
    summed and log-sum-exp'ed over the enumeration dims: exact for discrete local latents.
    Continuous local latents :math:`u_n` (inside a plate, not in ``samples``) are integrated
    by importance sampling with their prior as proposal,
    :math:`\\log \\frac1M \\sum_m p(x_n \\mid u_n^{(m)}, \\theta_s)`,
    :math:`u_n^{(m)} \\sim p(u_n \\mid \\theta_s)`, with ``M = local_draws``: a consistent
    estimate whose expectation is a lower bound on :math:`\\log p(x_n \\mid \\theta_s)`.

    :param model: the model function (batch-safe: globals ``.to_event``, ``Vindex`` indexing).
    :param samples: ``{site: (S, *site_shape)}``, all global latent sites (``{}`` for a model
        without global latents: one "draw").
    :param args: the model's arguments (the data).
    :param max_plate_nesting: the model's plate nesting.
    :param chunk_size: draws evaluated at once (caps memory at ``chunk × K × N``).
    :param return_log_prior: also return :math:`\\log p(\\theta_s)`, shape ``(S,)``.
    :param local_draws: ``M``, prior draws per continuous local latent (unused without them).
    :returns: ``(S, *plate_shape)``, e.g. ``(S, N)`` for one plate of ``N`` points; entries
        that the model masks out (``poutine.mask``, e.g. padding) are 0.
    """
    shapes = _site_shapes(model, samples, *args, **kwargs)
    missing = [name for name in shapes if name not in samples]
    continuous = [name for name in missing if not shapes[name][2]]
    repeats = local_draws if continuous else 1
    if repeats < 1:
        raise ValueError(f"local_draws must be >= 1, got {local_draws}")
    num = next(iter(samples.values())).shape[0] if samples else 1
    pointwise, priors = [], []
    for lo in range(0, num, chunk_size):
        chunk = {k: v[lo : lo + chunk_size] for k, v in samples.items()}
        size = min(chunk_size, num - lo)
        conditioned = poutine.condition(model, _pad(chunk, shapes, max_plate_nesting))
        enumerated = poutine.enum(
            config_enumerate(conditioned),
            first_available_dim=-(max_plate_nesting + 2),
        )
        draws, prior = [], torch.zeros(size)
        for _ in range(repeats):
            with pyro.plate(_PARTICLES, size, dim=-(max_plate_nesting + 1)):
                trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
            trace.compute_log_prob()
            prior = torch.zeros(size)
            for name in chunk:
                log_prob = trace.nodes[name]["log_prob"]
                prior = prior.to(log_prob) + log_prob.reshape(size, -1).sum(-1)
            _refuse_recycled_dims(trace)
            for name in missing:
                if shapes[name][2] and trace.nodes[name]["infer"].get("_enumerate_dim") is None:
                    raise ValueError(
                        f"discrete latent site {name!r} is neither enumerable nor in the "
                        "posterior draws; write it with alignment() or mark it "
                        "infer={'enumerate': 'parallel'}"
                    )
            local, keep = local_log_joint(trace, exclude=set(chunk) | {_PARTICLES})
            width = max_plate_nesting + 1
            local = local.reshape((-1,) + local.shape[-width:]).logsumexp(0)
            if keep is not None:  # masked cells sum to log K over their enumerated values
                local = local.masked_fill(~keep.expand(local.shape[1:]), 0.0)
            draws.append(local)
        local = torch.stack(draws).logsumexp(0) - math.log(repeats)
        pointwise.append(local)
        priors.append(prior)
    out = torch.cat(pointwise)
    return (out, torch.cat(priors)) if return_log_prior else out


def exact_chain(model_obj: Any) -> Callable[[Any], Any] | None:
    """The model's ``alignment_chain(data)`` (its exact
    :class:`~pyro_attention.alignment_chain.AlignmentChain`) when its alignments form a chain
    (``model_obj.chained``), else None."""
    chain = getattr(model_obj, "alignment_chain", None)
    return chain if getattr(model_obj, "chained", False) and callable(chain) else None


def _refuse_recycled_dims(trace: Any) -> None:
    """Refuse a trace where two enumerated sites share a dim (``pyro.markov`` recycles dims
    along a chain): summing their log-probabilities cell by cell would not be the chain's sum."""
    seen: dict[int, str] = {}
    for name, site in trace.nodes.items():
        dim = site["infer"].get("_enumerate_dim") if site["type"] == "sample" else None
        if dim is None:
            continue
        if dim in seen:
            raise ValueError(
                f"enumerated sites {seen[dim]!r} and {name!r} share an enumeration dim (a chain "
                "in pyro.markov); the evaluator cannot sum a chain cell by cell: give the model "
                "chained = True and an alignment_chain(data) method returning the exact "
                "pyro_attention.alignment_chain.AlignmentChain of the data"
            )
        seen[dim] = name


#: points scored at once by :func:`model_log_likelihood`: with 64 draws at a time and K
#: components the enumerated log-probabilities of a piece are 64 x K x 8192 numbers
EVAL_POINTS = 8192


def model_log_likelihood(
    model_obj: AlignmentModel,
    model: Callable,
    samples: dict[str, torch.Tensor],
    data: Any,
    *,
    return_log_prior: bool = False,
    max_points: int = EVAL_POINTS,
    local_draws: int = 64,
) -> Any:
    """:func:`pointwise_log_likelihood` of ``model`` (``model_obj``'s model function, as a method
    prepares it) on ``data``, a piece of ``model_obj.split_data(data, max_points)`` at a time,
    concatenated along the outermost plate (dim 1): memory is capped by ``max_points``, not by
    the size of the data. ``(pointwise, log_prior)`` with ``return_log_prior``.

    A model whose alignments form a chain (``model_obj.chained``) is scored by its exact
    ``alignment_chain(piece).log_marginal()`` (the forward algorithm), one value per sequence,
    when ``model`` is the model itself (a method that changes the model, such as soft
    attention, is scored through ``model``)."""
    chain = exact_chain(model_obj)
    if chain is not None and model == model_obj.model:
        if samples:
            raise ValueError("a chain of alignments is scored exactly only without global latents")
        with torch.no_grad():
            parts = [
                chain(piece).log_marginal() for piece in model_obj.split_data(data, max_points)
            ]
        pointwise = torch.cat(parts)[None]
        log_prior = torch.zeros(1, dtype=pointwise.dtype, device=pointwise.device)
        return (pointwise, log_prior) if return_log_prior else pointwise
    pieces, prior = [], None
    for piece in model_obj.split_data(data, max_points):
        part, prior = pointwise_log_likelihood(
            model,
            samples,
            piece,
            max_plate_nesting=model_obj.max_plate_nesting,
            return_log_prior=True,
            local_draws=local_draws,
        )
        pieces.append(part)
    pointwise = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)
    return (pointwise, prior) if return_log_prior else pointwise


def _size_not_in(trace: Any) -> int:
    """The smallest size >= 2 that no dim of a site of ``trace`` has."""
    sizes = {
        size
        for site in trace.nodes.values()
        if site["type"] == "sample" and isinstance(site["value"], torch.Tensor)
        for size in site["value"].shape
    }
    return next(n for n in range(2, max(sizes, default=0) + 3) if n not in sizes)


def check_model(model_obj: AlignmentModel, data: Any) -> ModelStructure:
    """The model check: trace ``model_obj`` on ``data``, then score a few prior draws of its
    globals the way the evaluator does (vectorized over a draw dimension whose size no dim of
    the model has); refuse what the evaluator cannot score, naming the fix. Returns the model's
    structure.
    """
    data = model_obj.check_data(data)
    structure = inspect_model(model_obj, data)
    check_nesting(model_obj, structure)
    if structure.chained_alignments:
        if exact_chain(model_obj) is None:
            raise ValueError(
                f"{structure.model}: its alignments form a chain (an alignment's prior depends "
                "on another alignment), which the evaluator scores only through the model's "
                "exact chain: set chained = True on the model and define alignment_chain(data) "
                "returning the pyro_attention.alignment_chain.AlignmentChain of the data"
            )
        if structure.global_sites or structure.local_sites:
            raise ValueError(
                f"{structure.model}: its alignments form a chain and it has continuous latent "
                f"sites ({', '.join(structure.global_sites + structure.local_sites)}); the "
                "evaluator scores a chain exactly only without them"
            )
        model_log_likelihood(model_obj, model_obj.model, {}, data)
        return structure
    first = trace_model(model_obj, data, log_prob=True)  # bad data is blamed on the data
    num = _size_not_in(first)  # a draw dimension no dim of the model can be mistaken for
    draws = [first] + [trace_model(model_obj, data) for _ in range(num - 1)]
    samples = {
        name: torch.stack([site_value(trace.nodes[name]) for trace in draws])
        for name in structure.global_sites
    }
    try:
        with torch.no_grad(), own_param_store():
            ll = pointwise_log_likelihood(
                model_obj.model,
                samples,
                data,
                max_plate_nesting=model_obj.max_plate_nesting,
                local_draws=2,
            )
    except Exception as err:  # any failure here is a model the evaluator cannot score
        raise ValueError(
            f"{structure.model}: the evaluator cannot score this model with its globals "
            f"vectorized over draws ({type(err).__name__}: {str(err).splitlines()[0]}). Write "
            "the globals batch-safe: declare them outside every plate with .to_event(...), "
            "build constants from the data (data.new_tensor, torch.zeros_like), index with "
            "attend()/Vindex, and leave the left-most dims free (see 'Your own model' in the "
            "README)"
        ) from err
    leading = ll.shape[0] if ll.dim() else 0
    if leading != (num if samples else 1):  # without global latents: one "draw"
        raise ValueError(
            f"{structure.model}: its pointwise log-likelihood has shape {tuple(ll.shape)}, "
            "not (draws, ...): declare the data plate(s) with an explicit dim= and keep the "
            "globals batch-safe (.to_event(...))"
        )
    return structure


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
    guide: Any, model_obj: AlignmentModel, data: Any, num_samples: int
) -> PosteriorDraws:
    """Draw the global latents from a guide, vectorized, with their log density ``log q``.

    Local sites the guide samples (alignments, continuous locals) are discarded; plate padding
    is stripped so the draws have shape ``(S, *site_shape)``. A guide whose globals are an
    ``AutoDelta`` gives one draw, marked as a point estimate.
    """
    point = isinstance(getattr(guide, "global_guide", None), AutoDelta)
    num_samples = 1 if point else num_samples
    nesting = model_obj.max_plate_nesting
    with torch.no_grad(), pyro.plate(_PARTICLES, num_samples, dim=-(nesting + 1)):
        trace = poutine.trace(guide).get_trace(data)
    trace.compute_log_prob()
    global_names = guide.global_site_names()
    prototype = guide.prototype_trace.nodes if global_names else {}
    names = [
        name
        for name in global_names
        if not any(frame.vectorized for frame in prototype[name]["cond_indep_stack"])
    ]
    shapes = {name: site_value(prototype[name]).shape for name in names}
    samples = {
        name: site_value(trace.nodes[name]).reshape(num_samples, *shapes[name]) for name in names
    }
    if point:  # an AutoDelta: one point, no density
        return PosteriorDraws(samples, None, point_estimate=True)
    log_q: torch.Tensor | float = 0.0
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
    them) varies between draws. A model and guide without parameters have none: 0.
    """
    grads = []
    for _ in range(num_draws):
        with poutine.trace(param_only=True) as capture:
            loss.loss_and_grads(model, guide, *args, **kwargs)
        params = {
            name: site_value(site).unconstrained()  # type: ignore[attr-defined]
            for name, site in sorted(capture.trace.nodes.items())
        }
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in params.values()
        ]
        if not flat:
            return 0.0
        grads.append(torch.cat(flat).detach().clone())
        for p in params.values():
            p.grad = None
    stacked = torch.stack(grads)
    return float(stacked.var(0).sum())
