"""Shared test options: ``--device`` runs the whole suite on another device (``cuda``)."""

from __future__ import annotations

import os

import pyro
import pytest
import torch


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
