"""Models of your own as comparisons of the command line: ``pyro-attention compare <name>``.

A registered model is a function that builds the model and its data from the generic options
of the command line::

    from pyro_attention.models import ModelSetup, register_model


    def build(options):                      # options: a ModelOptions (device, dtype, seed, ...)
        train, test = make_counts(seed=options.seed, dtype=options.dtype)
        return ModelSetup(poisson_mixture, train, test, dataset="counts", methods=["enum", "em"])


    register_model("poisson-mixture", build, help="Poisson mixture of the counts")

and then ``pyro-attention compare poisson-mixture --plugin my_models.py --steps 500`` runs it
through :func:`~pyro_attention.infer.compare.compare` with every generic option of ``compare``
(``--methods``, ``--steps``, ``--lr``, ``--seeds``, ``--out``, ...), as ``compare gmm`` runs
the shipped mixture. The names of the shipped comparisons (:data:`SHIPPED_MODELS`) are taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "SHIPPED_MODELS",
    "ModelOptions",
    "ModelSetup",
    "RegisteredModel",
    "get_model",
    "model_names",
    "register_model",
    "unregister_model",
]

#: the comparisons the command line ships with; a registered model takes another name
SHIPPED_MODELS = ("gmm", "alignment", "digits", "sgpa")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class ModelOptions:
    """The generic options of ``pyro-attention compare`` that a model's ``build`` reads.

    :param device: where the data and the model go (``--device``).
    :param dtype: the floating-point type of the data (``--dtype``).
    :param seed: the run's seed (``--seed``; one per run of ``--seeds``), e.g. for generated data.
    :param components: ``--components``, or ``None`` when it was not given (the model's default).
    """

    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    components: int | None = None


@dataclass
class ModelSetup:
    """What a registered model's ``build(options)`` returns: the comparison to run.

    :param model: an :class:`~pyro_attention.models.AlignmentModel` or a Pyro model function,
        as :func:`~pyro_attention.infer.compare.compare` takes it.
    :param train: the training data, as the model takes it; :param test: the held-out data.
    :param dataset: the data's name (recorded in ``summary.json``).
    :param methods: the methods run when ``--methods`` is not given (default: every registered
        method that applies to the model).
    """

    model: Any
    train: Any
    test: Any
    dataset: str = "custom"
    methods: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"ModelSetup.dataset must be a non-empty name, got {self.dataset!r}")
        if self.methods is not None:
            if isinstance(self.methods, str) or not all(
                isinstance(m, str) and m for m in self.methods
            ):
                raise ValueError(
                    f"ModelSetup.methods must be a list of method names, got {self.methods!r}"
                )
            self.methods = tuple(self.methods)
            if not self.methods:
                raise ValueError("ModelSetup.methods is empty; name a method or leave it None")


@dataclass(frozen=True)
class RegisteredModel:
    """A model registered with :func:`register_model`."""

    name: str
    build: Callable[[ModelOptions], ModelSetup]
    help: str = ""

    def setup(self, options: ModelOptions) -> ModelSetup:
        """``build(options)``, checked to be a :class:`ModelSetup`."""
        setup = self.build(options)
        if not isinstance(setup, ModelSetup):
            raise ValueError(
                f"model {self.name!r}: build(options) returned {type(setup).__name__}, "
                "not a ModelSetup(model, train, test, dataset=...)"
            )
        return setup


_MODELS: dict[str, RegisteredModel] = {}


def register_model(
    name: str,
    build: Callable[[ModelOptions], ModelSetup],
    *,
    help: str = "",
    replace: bool = False,
) -> None:
    """Make ``build`` the comparison ``pyro-attention compare <name>``.

    :param build: ``build(options: ModelOptions) -> ModelSetup``, called once per run.
    :param help: one line for ``pyro-attention compare --help``.
    :param replace: allow a name registered already by another ``build`` (default: refuse it;
        registering the same ``build`` again is allowed, so a module may be imported twice).
    :raises ValueError: a bad name, a name of a shipped comparison, a taken name.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"a model name is letters, digits and _.+- (not starting with - or .), got {name!r}"
        )
    if name in SHIPPED_MODELS:
        raise ValueError(
            f"model name {name!r} is a shipped comparison ({', '.join(SHIPPED_MODELS)}); "
            "give your model another name"
        )
    if not callable(build):
        raise ValueError(f"register_model needs a function build(options), got {build!r}")
    if not isinstance(help, str):
        raise ValueError(f"help must be a string, got {help!r}")
    old = _MODELS.get(name)
    if old is not None and old.build is not build and not replace:
        raise ValueError(
            f"a model named {name!r} is already registered (by {_describe(old.build)}); "
            "give another name or pass replace=True"
        )
    _MODELS[name] = RegisteredModel(name, build, " ".join(help.split()))


def _describe(build: Callable[..., Any]) -> str:
    module = getattr(build, "__module__", None) or "?"
    return f"{module}.{getattr(build, '__qualname__', repr(build))}"


def unregister_model(name: str) -> None:
    """Remove the model registered under ``name``."""
    if name not in _MODELS:
        raise ValueError(f"no model named {name!r} is registered")
    del _MODELS[name]


def model_names() -> list[str]:
    """The registered models' names, in the order they were registered."""
    return list(_MODELS)


def get_model(name: str) -> RegisteredModel:
    """The model registered under ``name``."""
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(model_names()) or "none"
        raise ValueError(
            f"no model named {name!r} is registered (registered: {known}; add one with "
            "register_model)"
        ) from None
