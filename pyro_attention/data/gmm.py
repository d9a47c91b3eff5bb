"""The embedded 2-D mixture data set of ``pyro-attention compare gmm``.

Four anisotropic Gaussian clusters, standardised; 800 training and 400 test points with the
true component of each. Built by ``scripts/make_gmm_data.py`` (synthetic, MIT licence).
"""

from __future__ import annotations

import csv
from importlib import resources
from typing import NamedTuple

import torch


class MixtureData(NamedTuple):
    """Train/test points ``(N, D)`` and their true components ``(N,)``."""

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor


def load_gmm2d(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> MixtureData:
    """Load the embedded data set on ``device`` with ``dtype``."""
    rows: dict[str, tuple[list[list[float]], list[int]]] = {"train": ([], []), "test": ([], [])}
    with resources.files(__package__).joinpath("gmm2d.csv").open() as f:
        for row in csv.DictReader(f):
            points, labels = rows[row["split"]]
            points.append([float(row["x1"]), float(row["x2"])])
            labels.append(int(row["component"]))

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        points, labels = rows[split]
        return (
            torch.tensor(points, dtype=dtype, device=device),
            torch.tensor(labels, device=device),
        )

    (train, train_labels), (test, test_labels) = tensors("train"), tensors("test")
    return MixtureData(train, test, train_labels, test_labels)
