"""What a fit returns: draws of the globals, the fit itself, and the error of a diverged fit.

These types sit below the methods and runners: a method declares, a runner fills a
:class:`FitResult`, the evaluation reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.params.param_store import StateDict

from pyro_attention.traces import own_param_store

if TYPE_CHECKING:
    from pyro_attention.infer.methods import InferenceMethod

#: a Pyro param store state, ``{"params": {...}, "constraints": {...}}``
ParamState = StateDict

__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "ParamState",
    "PosteriorDraws",
    "clone_state",
    "own_param_store",
]


@dataclass
class PosteriorDraws:
    """Draws of the global latent sites.

    :ivar samples: ``{site: (S, *site_shape)}`` in the model's constrained space.
    :ivar log_density: ``(S,)`` log density of the approximate posterior at the draws, or
        ``None`` (point estimates, MCMC).
    :ivar point_estimate: the draws are one point (EM, MAP), not a distribution.
    """

    samples: dict[str, torch.Tensor]
    log_density: torch.Tensor | None = None
    point_estimate: bool = False


@dataclass
class FitResult:
    """What a method learned, and how long it took.

    :ivar method: the method object.
    :ivar losses: the training objective per step (negative ELBO, negative bound, ...).
    :ivar steps: optimisation steps / iterations / MCMC draws made.
    :ivar seconds: wall time of the fit.
    :ivar points_seen: data points processed (for samples per second).
    :ivar sampler: ``num_samples -> PosteriorDraws`` of the global latents.
    :ivar guide: the trained guide (gradient methods).
    :ivar state: method-specific result (closed-form result, ``SVI`` object).
    :ivar status: ``"ok"``, ``"warn: ..."`` (ran, with a diagnostic past its threshold) or why
        the run stopped early.
    :ivar chains: MCMC draws grouped ``(chain, draw, ...)``.
    :ivar params: the fit's own Pyro param store; :meth:`scope` brings it back.
    :ivar model: the fitted model; :ivar module_state: a copy of its ``state_dict`` (network
        weights, encoders) at the end of the fit, which :meth:`scope` loads back.
    """

    method: InferenceMethod
    losses: list[float]
    steps: int
    seconds: float
    points_seen: int
    sampler: Callable[[int], PosteriorDraws]
    guide: Callable | None = None
    state: Any = None
    status: str = "ok"
    chains: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    params: ParamState = field(default_factory=lambda: ParamState(params={}, constraints={}))
    model: torch.nn.Module | None = None
    module_state: dict[str, torch.Tensor] | None = None

    def keep_module_state(self, model: torch.nn.Module) -> None:
        """Remember ``model`` and a copy of its weights as this fit left them."""
        self.model = model
        self.module_state = clone_state(model)

    @contextlib.contextmanager
    def scope(self) -> Iterator[ParamState]:
        """Run the block with this fit's param store and this fit's network weights (every fit
        has its own; the model's current weights are put back afterwards)."""
        model, saved = self.model, None
        if model is not None and self.module_state is not None:
            saved = clone_state(model)
            model.load_state_dict(self.module_state)
        try:
            with pyro.get_param_store().scope(self.params) as state:
                yield state
        finally:
            if model is not None and saved is not None:
                model.load_state_dict(saved)

    def draws(self, num_samples: int) -> PosteriorDraws:
        """``num_samples`` draws of the global latents (one for point estimates)."""
        with self.scope():
            return self.sampler(num_samples)

    def chains_shape(self) -> tuple[int, int]:
        """``(num_chains, num_draws)`` of :attr:`chains`."""
        if self.chains is None:
            raise ValueError(f"{self.method.name} has no MCMC chains")
        shape = next(iter(self.chains.values())).shape
        return int(shape[0]), int(shape[1])

    @property
    def samples_per_second(self) -> float:
        return self.points_seen / self.seconds if self.seconds > 0 else float("nan")


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()``."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or a parameter becomes NaN/inf; the last good state is kept.

    :ivar result: the :class:`FitResult` up to the last good step.
    """

    def __init__(self, message: str, result: FitResult) -> None:
        super().__init__(message)
        self.result = result
