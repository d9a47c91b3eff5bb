"""The score-function ELBO of Deng et al. (2018): likelihood reward, soft-prior baseline,
analytic KL.

For an alignment :math:`z` with guide :math:`q(z)` and prior :math:`p(z)`, and observations
:math:`y` downstream of it,

.. math::

    \\mathrm{ELBO} = E_{q(z)}[\\log p(y \\mid z)] - \\mathrm{KL}(q(z) \\,\\|\\, p(z)),

    \\nabla \\mathrm{ELBO} \\approx (\\log p(y \\mid z) - b)\\, \\nabla \\log q(z)
        + \\nabla \\log p(y \\mid z) - \\nabla \\mathrm{KL}(q \\,\\|\\, p),
    \\qquad z \\sim q,

with the KL term exact (``torch.distributions.kl_divergence``) and the baseline
:math:`b = \\log p(y \\mid \\bar z)` the log-likelihood of *soft* attention under the **prior**
(:math:`\\bar z = E_{p(z)}[z]`), computed by running the model under
:class:`~pyro_attention.handlers.soft` and detached (paper Sec. 4). Unlike Pyro's
``TraceGraph_ELBO``, whose reward also holds :math:`\\log p(z) - \\log q(z)`, the reward here is the
likelihood alone; the KL's gradient is exact.

The reward of a discrete site is the log-likelihood of the observed sites summed to the site's
batch shape (one reward per plate cell: cells of a vectorized plate are independent). Latent
sites other than the discrete ones must be reparameterizable (they get pathwise gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_attention import handlers
from pyro_attention.traces import (
    guide_and_model_traces,
    observed_sites,
    site_dist,
    site_infer,
    site_value,
)

BASELINES = ("soft-prior", "none")


def sum_to_shape(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``value`` over its dims that ``shape`` lacks or holds as 1 (right-aligned)."""
    while value.dim() > len(shape):
        value = value.sum(0)
    if value.dim() == 0:
        return value
    wanted = shape[len(shape) - value.dim() :]
    dims = [
        i
        for i, (have, want) in enumerate(zip(value.shape, wanted, strict=True))
        if want == 1 and have != 1
    ]
    if dims:
        value = value.sum(dims, keepdim=True)
    return value


def _kl(q: torch.distributions.Distribution, p: torch.distributions.Distribution) -> torch.Tensor:
    """KL(q || p); for two categoricals from their logits, so that a prior probability that
    underflows to 0 where q has mass gives a large finite KL, not torch's ``inf``."""
    if isinstance(q, torch.distributions.Categorical) and isinstance(
        p, torch.distributions.Categorical
    ):
        return (q.probs * (q.logits - p.logits)).sum(-1)
    return kl_divergence(q, p)


def _site_cost(site: Message) -> torch.Tensor:
    """The site's log-probability with its scale and mask applied (Pyro's ``log_prob``)."""
    return site["log_prob"]


def _weighted(site: Message, value: torch.Tensor) -> torch.Tensor:
    """``value`` with ``site``'s mask and scale applied, as Pyro does to ``log_prob``."""
    mask = site["mask"]
    if mask is not None and mask is not True:
        value = value * mask
    return value * site["scale"]


class ScoreFunctionKL_ELBO(ELBO):
    """ELBO with analytic KL for discrete sites and a likelihood-only score-function reward.

    :param baseline: ``"soft-prior"`` (Deng et al. 2018) or ``"none"``.
    :param num_particles: samples per step (averaged).
    :param max_plate_nesting: as for Pyro's ELBOs.
    """

    def __init__(
        self,
        baseline: str = "soft-prior",
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
    ) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.baseline = baseline

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """Guide trace and the model replayed against it, log-probabilities computed."""
        return guide_and_model_traces(model, guide, args, kwargs)

    def _soft_prior_log_likelihood(
        self, model: Callable, model_trace: poutine.Trace, args: tuple, kwargs: dict
    ) -> dict[str, torch.Tensor]:
        """Per-cell log-likelihood of each observed site under soft attention with the prior,
        the continuous latent sites at their sampled values."""
        fixed = {
            name: site_value(site)
            for name, site in model_trace.iter_stochastic_nodes()
            if not site_is_subsample(site) and not site_dist(site).support.is_discrete
        }
        with torch.no_grad():
            soft_model = poutine.condition(handlers.soft()(model), fixed)
            trace = poutine.block(poutine.trace(soft_model).get_trace)(*args, **kwargs)
            trace.compute_log_prob()
        return {str(site["name"]): site["log_prob"].detach() for site in observed_sites(trace)}

    def _particle(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO estimate, surrogate whose gradient is the estimator) of one particle."""
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        observed = observed_sites(model_trace)
        elbo: torch.Tensor = sum((_site_cost(site).sum() for site in observed), torch.zeros(()))
        surrogate = elbo
        baselines = (
            self._soft_prior_log_likelihood(model, model_trace, args, kwargs)
            if self.baseline == "soft-prior"
            else {}
        )
        for name, guide_site in guide_trace.iter_stochastic_nodes():
            if site_is_subsample(guide_site):
                continue
            if site_infer(guide_site).get("is_auxiliary"):
                # an autoguide's unconstrained draw: part of log q(θ), absent from the model
                term = -guide_site["log_prob"].sum()
                elbo, surrogate = elbo + term, surrogate + term
                continue
            model_site = model_trace.nodes[name]
            if guide_site["fn"].has_rsample:
                term = _site_cost(model_site).sum() - guide_site["log_prob"].sum()
                elbo = elbo + term
                surrogate = surrogate + term
                continue
            kl = _weighted(model_site, _kl(guide_site["fn"], model_site["fn"]))
            elbo = elbo - kl.sum()
            surrogate = surrogate - kl.sum()
            shape = guide_site["fn"].batch_shape
            reward = sum(
                (sum_to_shape(_site_cost(site), shape) for site in observed), torch.zeros(())
            )
            baseline = sum(
                (sum_to_shape(value, shape) for value in baselines.values()),
                torch.zeros(()),
            )
            # log q(z) as Pyro leaves it, unscaled and unmasked: the reward and the baseline
            # carry the scale once and are 0 at masked cells
            score = guide_site["score_parts"].score_function
            surrogate = surrogate + ((reward - baseline).detach() * score).sum()
        return elbo, surrogate

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO estimate (no gradients)."""
        with torch.no_grad():
            total = sum(
                torch_item(self._particle(model, guide, args, kwargs)[0])
                for _ in range(self.num_particles)
            )
        return -total / self.num_particles

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """A surrogate loss whose gradient is the estimator (its value is not the ELBO)."""
        surrogate: torch.Tensor | float = 0.0
        for _ in range(self.num_particles):
            surrogate = surrogate + self._particle(model, guide, args, kwargs)[1]
        return torch.as_tensor(-surrogate / self.num_particles)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO estimate; backpropagates the estimator into the parameters."""
        elbo: torch.Tensor | float = 0.0
        surrogate: torch.Tensor | float = 0.0
        for _ in range(self.num_particles):
            value, sur = self._particle(model, guide, args, kwargs)
            elbo, surrogate = elbo + value, surrogate + sur
        loss = torch.as_tensor(-surrogate / self.num_particles)
        if loss.requires_grad:  # a model with nothing to train has no gradient to give
            loss.backward()
        return -torch_item(elbo) / self.num_particles
