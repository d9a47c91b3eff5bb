"""The embedded binarized 8×8 digits: shapes, values, split, and agreement with its script."""

import numpy as np
import torch
from conftest import require

from pyro_attention.data import load_digits_binary
from pyro_attention.data.digits import digits_metadata
from pyro_attention.data.digits import read_shipped_npz as _read_npz


def test_shapes_values_labels():
    data = load_digits_binary()
    assert data.image_shape == (8, 8)
    assert data.train.shape == (1297, 64) and data.test.shape == (500, 64)
    assert data.train_labels.shape == (1297,) and data.test_labels.shape == (500,)
    for x in (data.train, data.test):
        assert x.dtype == torch.float32
        assert ((x == 0) | (x == 1)).all()
        assert 0 < x.mean() < 1
    for y in (data.train_labels, data.test_labels):
        assert y.dtype == torch.long
        assert set(y.tolist()) == set(range(10))


def test_split_disjoint_and_complete():
    arrays = _read_npz()
    train, test = arrays["train_index"], arrays["test_index"]
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))


def test_dtype_device_honoured():
    data = load_digits_binary(dtype=torch.float64, device="cpu")
    assert data.train.dtype == torch.float64 and data.test.dtype == torch.float64
    assert data.train.device.type == "cpu" and data.train_labels.device.type == "cpu"
    assert torch.equal(data.train, load_digits_binary().train.double())


def test_metadata():
    meta = digits_metadata()
    assert meta["licence"] == "CC BY 4.0"
    assert meta["threshold"] == 8 and meta["seed"] == 0


def test_matches_fresh_binarization_of_sklearn():
    datasets = require("sklearn.datasets")
    digits = datasets.load_digits()
    threshold = digits_metadata()["threshold"]
    pixels = torch.as_tensor((digits.data > threshold).astype(np.float32))
    labels = torch.as_tensor(digits.target.astype(np.int64))
    arrays = _read_npz()
    data = load_digits_binary()
    for split, x, y in (
        ("train", data.train, data.train_labels),
        ("test", data.test, data.test_labels),
    ):
        index = torch.as_tensor(arrays[f"{split}_index"])
        assert torch.equal(x, pixels[index])
        assert torch.equal(y, labels[index])
