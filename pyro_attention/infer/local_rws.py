"""Reweighted wake-sleep with one importance weight per alignment (per plate cell).

Pyro's ``ReweightedWakeSleep`` weighs whole traces: with a few particles and hundreds of
alignments per batch, one particle takes all the weight and ``q`` learns from almost nothing
(on the seq2seq model it never moved from uniform). When the alignments :math:`z_c` of the
cells :math:`c` of a plate are independent given the data (no global latents), the weights
factorise, and with :math:`K` samples :math:`z_c^{(k)} \\sim q(z_c)` per cell

.. math::

    \\log w_c^{(k)} = \\log p(y_c \\mid z_c^{(k)}) + \\log p(z_c^{(k)}) - \\log q(z_c^{(k)}),

    \\text{wake-}\\theta:\\ \\sum_c \\log \\frac1K \\sum_k w_c^{(k)},
    \\qquad
    \\text{wake-}\\phi:\\ \\sum_c \\sum_k \\bar w_c^{(k)} \\log q(z_c^{(k)}),

with :math:`\\bar w_c` the self-normalised weights (detached): the importance-weighted bound of
each cell trains the model, the per-cell wake-φ update the guide (Bornschein & Bengio 2015;
Le et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample

from pyro_attention.infer.score_function_kl import sum_to_shape
from pyro_attention.traces import guide_and_model_traces, observed_sites


class LocalReweightedWakeSleep(ELBO):
    """Reweighted wake-sleep with per-cell importance weights, for models whose only latent
    sites are discrete and independent across plate cells (e.g. the seq2seq alignments).

    :param num_particles: samples per alignment (vectorized).
    :param max_plate_nesting: the model's plate nesting.
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        return guide_and_model_traces(model, guide, args, kwargs)

    def _objectives(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(wake-θ bound with log q detached, wake-φ objective with weights detached)."""
        kwargs = {k: v for k, v in kwargs.items() if k != "observations"}
        model_trace, guide_trace = next(iter(self._get_traces(model, guide, args, kwargs)))
        observed = observed_sites(model_trace)
        latent = [
            (name, site)
            for name, site in guide_trace.iter_stochastic_nodes()
            if not site_is_subsample(site)
        ]
        if not latent or any(site["fn"].has_rsample for _, site in latent):
            raise ValueError(
                "local reweighted wake-sleep needs a guide whose latent sites are all discrete "
                "(alignments) and independent across plate cells; use RWS(local=False) for "
                "models with continuous or global latent sites"
            )
        if len(latent) > 1:
            raise ValueError(
                f"local reweighted wake-sleep takes one alignment site, found "
                f"{[name for name, _ in latent]}; use RWS(local=False)"
            )
        name, guide_site = latent[0]
        shape = guide_site["fn"].batch_shape
        log_q = guide_site["log_prob"]
        log_w = (
            sum(sum_to_shape(site["log_prob"], shape) for site in observed)
            + model_trace.nodes[name]["log_prob"]
            - log_q.detach()
        )
        if self.num_particles == 1:  # Pyro adds no particle plate for a single particle
            log_w, log_q = log_w.unsqueeze(0), log_q.unsqueeze(0)
        particle_dim = 0  # the vectorized particle plate is the leftmost dim
        bound = log_w.logsumexp(particle_dim) - math.log(self.num_particles)
        weights = torch.softmax(log_w.detach(), particle_dim)
        return bound.sum(), (weights * log_q).sum()

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Minus the per-cell importance-weighted bound (no gradients)."""
        with torch.no_grad():
            return -torch_item(self._objectives(model, guide, args, kwargs)[0])

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Minus the bound; backpropagates wake-θ into the model and wake-φ into the guide."""
        wake_theta, wake_phi = self._objectives(model, guide, args, kwargs)
        (-(wake_theta + wake_phi)).backward()
        return -torch_item(wake_theta)
