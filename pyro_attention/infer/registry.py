"""Names of the inference methods, for the CLI and ``compare(methods=[...])``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro_attention.infer import methods as m

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
    "cavi": m.CAVI,
    "em": m.EM,
    "nuts": m.NUTS,
}


def method_names() -> list[str]:
    """All registered method names."""
    return list(_REGISTRY)


def register_method(name: str, factory: Callable[..., m.InferenceMethod]) -> None:
    """Register a new method under ``name`` (it must not exist yet)."""
    if name in _REGISTRY:
        raise ValueError(f"a method named {name!r} is already registered")
    _REGISTRY[name] = factory


def get_method(method: str | m.InferenceMethod, **options: Any) -> m.InferenceMethod:
    """The method object for a name (default settings, or ``options`` for its constructor).

    A method object passes through unchanged.
    """
    if isinstance(method, m.InferenceMethod):
        if options:
            raise ValueError("options are only for method names, not method objects")
        return method
    if method not in _REGISTRY:
        raise ValueError(f"unknown inference method {method!r}; choose from {method_names()}")
    return _REGISTRY[method](**options)
