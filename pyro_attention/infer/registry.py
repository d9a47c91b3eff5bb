"""Names of the inference methods, for the CLI and ``compare(methods=[...])``.

A method defined outside the package joins by name::

    class IWEnum(InferenceMethod):
        name = "iw-enum"
        ...

    register_method("iw-enum", IWEnum)
    compare(model, train, test, ["enum", "iw-enum"])      # or --methods enum,iw-enum

and runs on every model that meets its :attr:`~InferenceMethod.requires`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro_attention.infer import methods as m
from pyro_attention.models.structure import ModelStructure

_REGISTRY: dict[str, Callable[..., m.InferenceMethod]] = {
    "soft": m.Soft,
    "enum": m.Enum,
    "exact": m.Exact,
    "hard": m.Hard,
    "hard-enum": m.HardEnum,
    "hard-sample": m.HardSample,
    "reinforce": m.Reinforce,
    "vi-enum": m.VIEnum,
    "vi-sample": m.VISample,
    "rws": m.RWS,
    "gumbel": m.Gumbel,
    "dirichlet": m.Dirichlet,
    "svi": m.ReparamSVI,
    "svi-kl": m.MeanFieldSVI,
    "map": m.MAP,
    "cavi": m.CAVI,
    "em": m.EM,
    "nuts": m.NUTS,
}


def method_names() -> list[str]:
    """All registered method names."""
    return list(_REGISTRY)


def register_method(
    name: str, factory: Callable[..., m.InferenceMethod], *, replace: bool = False
) -> None:
    """Register ``factory`` (a method class, or a function returning a method) under ``name``.

    :param replace: allow a name that is registered already (default: refuse it).
    """
    if not isinstance(name, str) or not name or "," in name or any(c.isspace() for c in name):
        raise ValueError(
            f"a method name must be a non-empty string without commas or spaces, got {name!r}"
        )
    if name in _REGISTRY and not replace:
        raise ValueError(f"a method named {name!r} is already registered; pass replace=True")
    if not callable(factory):
        raise ValueError(f"register_method needs a method class or factory, got {factory!r}")
    method = factory()
    if not isinstance(method, m.InferenceMethod):
        raise ValueError(
            f"{factory!r}() returned {type(method).__name__}, not an InferenceMethod subclass"
        )
    if method.runner not in m.RUNNERS:
        raise ValueError(
            f"method {name!r} declares runner={method.runner!r}; expected one of {m.RUNNERS}"
        )
    _REGISTRY[name] = factory


def unregister_method(name: str) -> None:
    """Remove the method registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"no method named {name!r} is registered")
    del _REGISTRY[name]


def get_method(method: str | m.InferenceMethod, **options: Any) -> m.InferenceMethod:
    """The method object for a name (default settings, or ``options`` for its constructor).

    A method object passes through unchanged.
    """
    if isinstance(method, m.InferenceMethod):
        if options:
            raise ValueError("options are only for method names, not method objects")
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(
            f"unknown inference method {method!r}; choose from {', '.join(method_names())} "
            "(or add one with register_method)"
        )
    try:
        return _REGISTRY[method](**options)
    except TypeError as err:
        raise ValueError(f"bad options for method {method!r}: {err}") from None


def applicable_methods(structure: ModelStructure, subsample_size: int | None = None) -> list[str]:
    """The registered methods (default settings) whose requirements ``structure`` meets; with
    ``subsample_size``, only those that can train on mini-batches."""
    return [
        name
        for name in _REGISTRY
        if not get_method(name).unmet(structure)
        and (subsample_size is None or get_method(name).supports_subsampling)
    ]
