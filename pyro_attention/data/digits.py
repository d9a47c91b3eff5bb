"""The embedded binarized 8×8 handwritten digits.

The 1797 images of the UCI "Optical Recognition of Handwritten Digits" collection
(E. Alpaydin and C. Kaynak, 1998, UCI Machine Learning Repository, doi:10.24432/C50P49;
licence CC BY 4.0), taken from scikit-learn's bundled copy, binarized as ``intensity > 8``
(of 0..16) and split stratified by class into 1297 training and 500 test images. Built by
``scripts/make_digits_data.py``; see ``DIGITS_LICENSE.md``. Reads the shipped file with numpy
only (scikit-learn is not needed).
"""

from __future__ import annotations

import io
import json
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import torch

FILENAME = "digits8x8.npz"


class DigitsData(NamedTuple):
    """Train/test images ``(N, 64)`` of 0/1 values (row-major 8×8) and their labels ``(N,)``."""

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    image_shape: tuple[int, int] = (8, 8)


def read_shipped_npz(filename: str = FILENAME) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file shipped in this package (no pickles)."""
    data = resources.files(__package__).joinpath(filename).read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def digits_metadata() -> dict[str, Any]:
    """Source, licence, threshold and seed with which the shipped file was built."""
    return json.loads(str(read_shipped_npz()["metadata"]))


def load_digits_binary(
    *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> DigitsData:
    """Load the embedded binarized digits on ``device``, pixels with ``dtype``."""
    arrays = read_shipped_npz()

    def pixels(split: str) -> torch.Tensor:
        bits = np.unpackbits(arrays[f"{split}_x"], axis=1, count=64)
        return torch.as_tensor(bits, device=device).to(dtype)

    def labels(split: str) -> torch.Tensor:
        return torch.as_tensor(arrays[f"{split}_y"].astype(np.int64), device=device)

    return DigitsData(pixels("train"), pixels("test"), labels("train"), labels("test"))
