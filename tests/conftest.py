"""Shared test options: ``--device`` runs the whole suite on another device (``cuda``); and
:func:`require`, the import of a dev-extra dependency that fails when it is missing."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pyro
import pytest
import torch

#: set to 1 to skip, instead of fail, the tests whose dev-extra dependency is not installed
ALLOW_MISSING_DEV = "PYRO_ATTENTION_ALLOW_MISSING_DEV"


def require(module_name: str) -> ModuleType:
    """Import ``module_name``, a dependency of the dev extra (scikit-learn, nbformat, ...).

    A missing module fails the test (or the collection of a module that calls this at import),
    so a CI job with the dev extra installed cannot pass by skipping the reference checks; with
    ``PYRO_ATTENTION_ALLOW_MISSING_DEV=1`` it skips instead. A module that is installed but
    fails to import always fails.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if not (module_name == missing or module_name.startswith(f"{missing}.")):
            raise  # the module is there but one of its own imports is not: a broken install
        message = f"{module_name} is not installed; install the dev extra: pip install -e '.[dev]'"
        if os.environ.get(ALLOW_MISSING_DEV) == "1":
            pytest.skip(f"{message} ({ALLOW_MISSING_DEV}=1)", allow_module_level=True)
        pytest.fail(f"{message} (or set {ALLOW_MISSING_DEV}=1 to skip)", pytrace=False)


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device the tests put their tensors on (cpu or cuda)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # one intra-op thread: these models are small, and on a busy 2-core machine torch's default
    # threads fighting each other made steps many times slower (PYRO_ATTENTION_TEST_THREADS=N
    # to change it)
    torch.set_num_threads(int(os.environ.get("PYRO_ATTENTION_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wants_cuda = config.getoption("--device").startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda was given but torch.cuda.is_available() is False")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device given by ``--device`` (default cpu)."""
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _fresh_pyro_state() -> None:
    """Each test starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
