"""A method defined outside the package, as a user would write one: ``vi-enum`` with a KL
warm-up on the global latents (the weight β of their KL rises from 1/W to 1 over W steps).

Importing this module registers it as ``"vi-enum-warmup"``; the tests run it through
``fit()``, ``compare()`` and ``pyro-attention compare gmm --import <this file>``.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import TraceEnum_ELBO
from pyro.poutine.messenger import Messenger

from pyro_attention.infer import VIEnum, register_method


class scale_globals(Messenger):
    """Multiply the log-density of every latent site outside all plates by ``beta``."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not msg["cond_indep_stack"]:
            msg["scale"] = msg["scale"] * self.beta


class WarmupEnum_ELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` whose global KL is weighted by β = min(1, step / warmup_steps)."""

    def __init__(self, warmup_steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmup_steps = warmup_steps
        self.step = 0

    def beta(self) -> float:
        return min(1.0, (self.step + 1) / self.warmup_steps)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        handler = scale_globals(self.beta())
        self.step += 1
        return super().loss_and_grads(handler(model), handler(guide), *args, **kwargs)


class VIEnumWarmup(VIEnum):
    """``vi-enum`` with a KL warm-up of the globals over ``warmup_steps`` steps."""

    name = "vi-enum-warmup"

    def __init__(self, warmup_steps: int = 20) -> None:
        self.warmup_steps = warmup_steps

    def loss(self, max_plate_nesting: int | None = None) -> WarmupEnum_ELBO:
        nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
        return WarmupEnum_ELBO(self.warmup_steps, max_plate_nesting=nesting)


register_method("vi-enum-warmup", VIEnumWarmup, replace=True)
