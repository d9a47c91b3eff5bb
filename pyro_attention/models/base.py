"""What a model provides to the inference methods and the evaluation: the model half of the
contract.

A model is a :class:`AlignmentModel` (a ``PyroModule``) that writes ``model(data)``; the rest has
defaults:

=============================  ================================================================
``model(data, **kwargs)``      the Pyro model (required). Globals batch-safe: ``.to_event``,
                               constants built from ``data``, discrete indexing through
                               ``attend``/``Vindex``, so one call can be vectorized over draws.
``check_data(data)``           refuse bad data before any work; returns it (default: as is)
``num_points(data)``           units of the held-out score (default ``len(data)``)
``initialize(data)``           data-dependent initial values of the globals
``cavi(data, **options)``,     closed-form updates, returning a :class:`ClosedFormResult`; a
``em(data, **options)``        model with more names overrides :meth:`closed_form_updates`
``encoder``                    amortized ``q(z | x)`` logits for the local guides
``global_guide``               guide family of the globals (``AutoNormal`` by default;
                               ``AutoDelta``, ``AutoMultivariateNormal``,
                               ``AutoLowRankMultivariateNormal`` or a factory ``model -> guide``)
``create_plates``,             for data whose plate sizes change between calls, and for models
``local_mask``                 that mask their alignment sites
``noise_event_shape``          the event shape of a GP noise site for this call's data
=============================  ================================================================

A plain Pyro model function becomes a model with :class:`FunctionModel` (or :func:`as_model`).
What methods a model gets is derived from one trace of it
(:func:`~pyro_attention.models.structure.inspect_model`), never listed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyro
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import init_to_sample, init_to_value
from pyro.nn import PyroModule

from pyro_attention.guides import AutoAlignmentGuide, GuideSpec


@runtime_checkable
class ClosedFormResult(Protocol):
    """What a model's closed-form update (``cavi``, ``em``, ...) returns.

    :ivar n_iter: iterations run; :ivar converged: whether the stopping rule was met.
    """

    n_iter: int
    converged: bool

    def objective_per_iteration(self) -> list[float]:
        """The objective after each iteration, total nats over the data (ELBO for CAVI,
        log-likelihood for EM), which the update maximises."""
        ...

    def sample_globals(
        self, num_samples: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``({site: (S, *site_shape)}, log density (S,) or None)``: draws of the model's global
        latent sites in their constrained space (one draw and ``None`` for a point estimate)."""
        ...


#: a guide family for the globals: an autoguide class or a factory ``model -> guide``
GlobalGuide = type[AutoGuide] | Callable[[Callable], Callable]


class AlignmentModel(PyroModule):
    """Base class: a Pyro model with ``alignment`` sites and the guide for each method.

    Subclasses write ``model(data, ...)`` (see the module's table for the optional parts).
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
        self.global_guide: GlobalGuide | None = None

    # ----------------------------------------------------------------- methods
    def closed_form_updates(self) -> dict[str, Callable[..., ClosedFormResult]]:
        """The model's closed-form updates by name: ``cavi`` and ``em`` where it defines them.

        Each is called as ``update(data, max_iter=..., tol=..., seed=..., progress=...)`` and
        returns a :class:`ClosedFormResult`.
        """
        names = [name for name in ("cavi", "em") if callable(getattr(self, name, None))]
        return {name: getattr(self, name) for name in names}

    def guide(self, spec: GuideSpec | str) -> AutoAlignmentGuide:
        """The guide for ``spec`` (a :class:`~pyro_attention.guides.GuideSpec` or a kind)."""
        return AutoAlignmentGuide(
            self.model,
            spec,
            global_guide=self.global_guide,
            init_loc_fn=self.init_loc_fn(),
            encoder=self.encoder,
            local_features=self._local_features_or_none(),
            local_mask=getattr(self, "local_mask", None),
            create_plates=getattr(self, "create_plates", None),
            noise_event_shape=getattr(self, "noise_event_shape", None),
        )

    def model(self, *args: Any, **kwargs: Any) -> None:
        """The Pyro model; every subclass writes it."""
        raise NotImplementedError(f"{type(self).__name__} does not define model()")

    def accepts_subsample_size(self) -> bool:
        """Whether :meth:`model` takes ``subsample_size=`` (for mini-batches; see
        :class:`PointMixtureModel`)."""
        return _takes_keyword(self.model, "subsample_size")

    # ----------------------------------------------------------------- data
    def check_data(self, data: Any) -> Any:
        """Validate ``data`` and return it. The default refuses an empty tensor and NaN/inf in a
        floating-point one; models with more structure override it (shape, dtype, device)."""
        if isinstance(data, torch.Tensor):
            if data.dim() == 0 or data.shape[0] == 0:
                raise ValueError(
                    f"{self.name}: data of shape {tuple(data.shape)} has no data points"
                )
            if data.is_floating_point() and not torch.isfinite(data).all():
                raise ValueError(f"{self.name}: data contains NaN or inf; clean or drop them")
        return data

    def num_points(self, data: Any) -> int:
        """Number of independent data points (units of the held-out metric)."""
        return len(data)

    def split_data(self, data: Any, max_points: int) -> list[Any]:
        """Pieces of ``data`` along the model's outermost plate, at most ``max_points`` points
        each, whose pointwise log-likelihoods concatenated along that plate are those of
        ``data``: the evaluator scores them one at a time, so that its memory does not grow
        with the data. The default does not split (a model's data layout is its own)."""
        return [data]

    def initialize(self, data: Any) -> None:
        """Compute data-dependent initial values of the globals (see :meth:`init_loc_fn`)."""

    def init_loc_fn(self) -> Callable:
        """Initialisation for guides and NUTS: :meth:`initialize`'s values, else prior draws."""
        return init_to_value(values=dict(self._init_values), fallback=init_to_sample)

    def local_features(self, plates: dict, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Per-data-point features (inputs of neural baselines and encoders)."""
        raise NotImplementedError(f"{type(self).__name__} defines no local features")

    def _local_features_or_none(self) -> Callable | None:
        overridden = type(self).local_features is not AlignmentModel.local_features
        return self.local_features if overridden else None

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

    def split_data(self, data: torch.Tensor, max_points: int) -> list[torch.Tensor]:
        """Blocks of at most ``max_points`` rows (the data plate is over the rows)."""
        return list(torch.split(data, max_points))

    def create_plates(
        self, data: torch.Tensor, *, subsample_size: int | None = None, **kwargs: Any
    ) -> pyro.plate:
        """The data plate of this call's ``data`` (subsampled if ``subsample_size``)."""
        return pyro.plate(self.data_plate, data.shape[0], subsample_size=subsample_size, dim=-1)

    def local_features(self, plates: dict, data: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The points of the current subsample, ``(B, D)``."""
        return data.index_select(0, plates[self.data_plate].indices)


class FunctionModel(AlignmentModel):
    """A plain Pyro model function ``fn(data)`` as a model of the library.

    Its plate nesting is read from one trace at the first call of :meth:`check_data`.

    :param fn: the model function; its discrete choices are ``alignment`` sites.
    :param name: the name in tables and file names (default the function's name).
    :param max_plate_nesting: plates nested in the deepest site (default: read from a trace).
    :param num_points: ``data -> int``, the units of the held-out score (default ``len``).
    :param global_guide: guide family of the globals (see :class:`AlignmentModel`).

    Example::

        def poisson_mixture(counts):
            weights = pyro.sample("weights", dist.Dirichlet(counts.new_ones(3)))
            rates = pyro.sample("rates", dist.Gamma(counts.new_full((3,), 2.0), 0.5).to_event(1))
            with pyro.plate("data", len(counts)):
                z = alignment("z", weights.log())
                pyro.sample("obs", dist.Poisson(attend(rates, z, event_dim=0)), obs=counts)

        compare(FunctionModel(poisson_mixture), train, test)
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        max_plate_nesting: int | None = None,
        num_points: Callable[[Any], int] | None = None,
        global_guide: GlobalGuide | None = None,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise ValueError(f"FunctionModel needs a Pyro model function, got {fn!r}")
        self.fn = fn
        self.name = str(name or getattr(fn, "__name__", "model"))  # type: ignore[misc]
        self._nesting = max_plate_nesting
        self._num_points = num_points
        self.global_guide = global_guide

    @property
    def max_plate_nesting(self) -> int:  # type: ignore[override]  # over a class attribute
        if self._nesting is None:
            raise ValueError(
                f"the plate nesting of {self.name!r} is read from its first trace: call "
                "check_data(data) first, or pass max_plate_nesting="
            )
        return self._nesting

    def model(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def accepts_subsample_size(self) -> bool:
        return _takes_keyword(self.fn, "subsample_size")

    def check_data(self, data: Any) -> Any:
        data = super().check_data(data)
        if self._nesting is None:
            from pyro_attention.models.structure import plate_nesting, trace_model

            self._nesting = max(1, plate_nesting(trace_model(self, data)))
        return data

    def num_points(self, data: Any) -> int:
        if self._num_points is not None:
            return self._num_points(data)
        return data.shape[0] if isinstance(data, torch.Tensor) else len(data)


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def as_model(model: AlignmentModel | Callable[..., Any]) -> AlignmentModel:
    """``model`` itself if it is a library model, else the function wrapped by
    :class:`FunctionModel`; anything else is refused."""
    if isinstance(model, AlignmentModel):
        return model
    if callable(model) and not isinstance(model, torch.nn.Module):
        return FunctionModel(model)
    raise ValueError(
        f"expected a model of pyro_attention.models (a subclass of AlignmentModel) or a Pyro "
        f"model function, got {type(model).__name__}; wrap a function with FunctionModel(fn)"
    )
