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

__all__ = ["FitResult", "NonFiniteLossError", "ParamState", "PosteriorDraws", "own_param_store"]


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

    @contextlib.contextmanager
    def scope(self) -> Iterator[ParamState]:
        """Run the block with this fit's param store (every fit has its own)."""
        with pyro.get_param_store().scope(self.params) as state:
            yield state

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


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or a parameter becomes NaN/inf; the last good state is kept.

    :ivar result: the :class:`FitResult` up to the last good step.
    """

    def __init__(self, message: str, result: FitResult) -> None:
        super().__init__(message)
        self.result = result
