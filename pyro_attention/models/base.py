"""What every model of the library provides to the inference methods and the evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_sample, init_to_value
from pyro.nn import PyroModule

from pyro_attention.guides import AutoAlignmentGuide

#: methods any model written with ``alignment`` sites gets from the autoguide
GENERIC_METHODS = (
    "enum",
    "exact",
    "vi-enum",
    "vi-sample",
    "reinforce",
    "rws",
    "gumbel",
    "dirichlet",
    "soft",
    "hard",
    "hard-enum",
    "hard-sample",
    "nuts",
)


class AlignmentModel(PyroModule):
    """Base class: a Pyro model with ``alignment`` sites and the guide for each method.

    Subclasses write ``model(data, *, subsample_size=None)`` with a data plate named
    :attr:`data_plate` and may override :attr:`supported_methods`, :meth:`initialize`,
    :meth:`local_features` and :meth:`check_data`. They define ``create_plates(*args)`` when the
    plate sizes change between calls (mini-batches of sequences) and ``local_mask(name, *args)``
    when the model masks its alignment sites. Closed-form methods are methods named after them
    (``cavi(data, ...)``, ``em(data, ...)``).
    """

    #: short name used in outputs and the CLI
    name: ClassVar[str] = "model"
    #: number of nested plates the model uses
    max_plate_nesting: ClassVar[int] = 1
    #: the plate over independent data points
    data_plate: ClassVar[str] = "data"

    def __init__(self) -> None:
        super().__init__()
        self._init_values: dict[str, torch.Tensor] = {}
        self.encoder: Callable | None = None

    # ----------------------------------------------------------------- methods
    @property
    def supported_methods(self) -> tuple[str, ...]:
        """Method names that apply to this model."""
        closed = tuple(n for n in ("cavi", "em") if callable(getattr(self, n, None)))
        return GENERIC_METHODS + closed

    def unsupported_reason(self, method: str) -> str:
        """Why ``method`` does not apply (used in the error message)."""
        if method in ("cavi", "em"):
            return f"{method} needs closed-form updates, which only conjugate models provide"
        return "the model does not declare it"

    def guide(self, method: Any) -> AutoAlignmentGuide:
        """The guide matching ``method`` (a method object or name)."""
        return AutoAlignmentGuide(
            self.model,
            method=method,
            init_loc_fn=self.init_loc_fn(),
            encoder=self.encoder,
            local_features=self.local_features,
            local_mask=getattr(self, "local_mask", None),
            create_plates=getattr(self, "create_plates", None),
        )

    def model(self, *args: Any, **kwargs: Any) -> None:
        """The Pyro model; every subclass writes it."""
        raise NotImplementedError(f"{type(self).__name__} does not define model()")

    # ----------------------------------------------------------------- data
    def check_data(self, data: Any) -> Any:
        """Validate ``data`` (refuse NaN, wrong shape, dtype, device) and return it."""
        return data

    def num_points(self, data: Any) -> int:
        """Number of independent data points (units of the held-out metric)."""
        return len(data)

    def initialize(self, data: Any) -> None:
        """Compute data-dependent initial values of the globals (see :meth:`init_loc_fn`)."""

    def init_loc_fn(self) -> Callable:
        """Initialisation for guides and NUTS: :meth:`initialize`'s values, else prior draws."""
        return init_to_value(values=dict(self._init_values), fallback=init_to_sample)

    def local_features(self, plates: dict, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Per-data-point features (inputs of neural baselines and encoders)."""
        raise NotImplementedError(f"{type(self).__name__} defines no local features")

    # ----------------------------------------------------------------- outputs
    def arviz_dims(self) -> dict[str, list[str]]:
        """Names of the non-sample dims of each site, for the ArviZ bridge."""
        return {}


class PointMixtureModel(AlignmentModel):
    """A mixture over the rows of one data tensor ``(N, D)``: one ``alignment`` per point inside
    the plate :attr:`data_plate` at ``dim=-1``, and ``model(data, *, subsample_size=None)``.

    Its guide builds that plate from each call's ``data`` (:meth:`create_plates`), so
    ``fit(..., batches=...)`` may step on mini-batches of any size."""

    def num_points(self, data: torch.Tensor) -> int:
        return data.shape[0]

    def create_plates(
        self, data: torch.Tensor, *, subsample_size: int | None = None, **kwargs: Any
    ) -> pyro.plate:
        """The data plate of this call's ``data`` (subsampled if ``subsample_size``)."""
        return pyro.plate(self.data_plate, data.shape[0], subsample_size=subsample_size, dim=-1)

    def local_features(self, plates: dict, data: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The points of the current subsample, ``(B, D)``."""
        return data.index_select(0, plates[self.data_plate].indices)
