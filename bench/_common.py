"""Shared by the benchmark scripts: the environment behind the figures, and writing them."""

from __future__ import annotations

import os
import platform

import pyro
import torch

from pyro_attention._io import write_json


def environment() -> dict[str, object]:
    """Versions, threads and cores, stored with every set of figures."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }


def save_figures(figures: dict, path: str | None) -> dict:
    """Write ``figures`` as JSON to ``path`` (if given) and return them."""
    if path:
        write_json(path, figures)
        print(f"wrote {path}")
    return figures
