"""Two primitives of Gaussian-process layers written as Pyro models: reparameterised output noise,
and variational terms that belong to the ELBO but not to the likelihood.

A sparse-GP attention layer (Chen & Li 2023) outputs :math:`F = m(u) + A(u)\\,\\varepsilon` with
:math:`\\varepsilon \\sim \\mathcal N(0, I)`: the posterior of the attention output given the
inducing outputs :math:`u`, drawn by reparameterisation.

* :func:`gp_noise` makes :math:`\\varepsilon` a sample site tagged ``infer={"gp_noise": True}``.
  The library's guides draw such a site from its own prior, so :math:`\\log p(\\varepsilon) -
  \\log q(\\varepsilon) = 0` exactly and every ELBO of the model is the ELBO of the GP posterior
  (a model-only site would add :math:`\\log p(F \\mid u)` with no guide term to cancel it). The
  evaluator integrates it like any continuous local latent: the held-out likelihood is
  :math:`\\log \\frac1M \\sum_m p(y \\mid x, u, \\varepsilon_m)`, the averaged predictive.
  :class:`~pyro_attention.handlers.gp_mean` sets every noise site to 0, so the same model gives
  the point-estimate kernel attention.
* :func:`variational_term` adds a term of the ELBO that is not a log-density of the model, such
  as the KL of an amortised (per-sequence) inducing posterior, tagged
  ``infer={"variational_term": True}``: training objectives include it, held-out likelihoods
  (:func:`~pyro_attention.traces.local_log_joint`) leave it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.runtime import InferDict

#: ``infer`` key of a reparameterised standard-normal noise site (:func:`gp_noise`)
GP_NOISE = "gp_noise"
#: ``infer`` key of an ELBO term that is not part of the likelihood (:func:`variational_term`)
VARIATIONAL_TERM = "variational_term"


def gp_noise(name: str, shape: Sequence[int], like: torch.Tensor, event_dim: int) -> torch.Tensor:
    """A standard-normal noise site :math:`\\varepsilon \\sim \\mathcal N(0, I)` of ``shape``.

    :param name: the site name.
    :param shape: the full value shape, ``batch_shape + event_shape``; the batch dims are those of
        the enclosing plates.
    :param like: a tensor whose device and dtype the noise takes.
    :param event_dim: the number of right-most dims that form one draw.
    :returns: the value, shape ``shape`` (with any outer particle dims on the left).
    """
    if event_dim < 0 or event_dim > len(shape):
        raise ValueError(f"event_dim must lie in [0, {len(shape)}], got {event_dim}")
    fn = dist.Normal(like.new_zeros(()), like.new_ones(())).expand(torch.Size(shape))
    return pyro.sample(name, fn.to_event(event_dim), infer=cast(InferDict, {GP_NOISE: True}))


def variational_term(name: str, value: torch.Tensor) -> None:
    """Add ``value`` (batch-shaped like the enclosing plates) to the ELBO, not the likelihood.

    :param name: the site name.
    :param value: the term, e.g. :math:`-\\mathrm{KL}` of an amortised posterior per sequence.
    """
    unit = dist.Unit(value)
    pyro.sample(
        name,
        unit,
        obs=unit.sample(),
        infer=cast(InferDict, {"is_auxiliary": True, VARIATIONAL_TERM: True}),
    )


def is_gp_noise_site(site: Any) -> bool:
    """Whether a trace site / message was made by :func:`gp_noise`."""
    return site.get("type") == "sample" and bool((site.get("infer") or {}).get(GP_NOISE))


def is_variational_term(site: Any) -> bool:
    """Whether a trace site / message was made by :func:`variational_term`."""
    return site.get("type") == "sample" and bool((site.get("infer") or {}).get(VARIATIONAL_TERM))
