"""Grey digits as patch sequences: file, patches, low-data split, OOD sets, refused options."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

from pyro_attention.data import (
    ClassificationData,
    digits_patch_task,
    image_patches,
    load_digits_binary,
    load_digits_grey,
    patches_to_images,
)
from pyro_attention.data.digits import read_shipped_npz as read_binary_npz
from pyro_attention.data.digits_patches import _read_npz, digits_grey_metadata

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SHIPPED = Path(__file__).resolve().parents[2] / "pyro_attention" / "data" / "digits8x8_grey.npz"


@pytest.fixture(scope="module")
def task():
    return digits_patch_task()


def test_grey_file_shapes_values_and_split():
    data = load_digits_grey()
    assert data.train_images.shape == (1297, 8, 8) and data.test_images.shape == (500, 8, 8)
    assert data.train_images.dtype == torch.float32 and data.train_labels.dtype == torch.long
    for x in (data.train_images, data.test_images):
        assert x.min() == 0 and x.max() == 1
        assert torch.equal(x * 16, (x * 16).round())  # grey levels 0..16
    arrays, binary = _read_npz(), read_binary_npz()
    assert arrays["train_x"].dtype == np.uint8 and arrays["train_x"].max() == 16
    for split in ("train", "test"):  # the split of the binary file
        assert np.array_equal(arrays[f"{split}_index"], binary[f"{split}_index"])
    bits = load_digits_binary()
    assert torch.equal((data.test_images * 16 > 8).float().reshape(500, 64), bits.test)
    meta = digits_grey_metadata()
    assert meta["licence"] == "CC BY 4.0" and meta["seed"] == 0


def test_dtype_device_honoured(device):
    data = load_digits_grey(dtype=torch.float64, device=device)
    assert data.train_images.dtype == torch.float64 and data.test_labels.device.type == device.type
    task = digits_patch_task(num_train=20, num_val=10, dtype=torch.float64, device=device)
    for part in (task.train, task.val, task.test, *task.ood.values()):
        assert part.inputs.dtype == torch.float64 and part.inputs.device.type == device.type
        assert part.labels.device.type == device.type and part.mask.device.type == device.type


def test_script_rebuilds_the_shipped_file_byte_for_byte(tmp_path, monkeypatch):
    require("sklearn.datasets")
    monkeypatch.syspath_prepend(str(SCRIPTS))
    script = importlib.import_module("make_digits_grey_data")
    out = tmp_path / "digits8x8_grey.npz"
    script.save_npz(out, script.make())
    assert out.read_bytes() == SHIPPED.read_bytes()


def _naive_patches(images, p):
    n, h, w = images.shape
    tokens = [
        images[:, r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(n, p * p)
        for r in range(h // p)
        for c in range(w // p)
    ]
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_patches_match_naive_cut_and_reassemble(patch):
    images = load_digits_grey().test_images[:7]
    tokens = image_patches(images, patch)
    assert tokens.shape == (7, (8 // patch) ** 2, patch * patch)
    assert torch.equal(tokens, _naive_patches(images, patch))
    assert torch.equal(patches_to_images(tokens, patch), images)


def test_task_shapes_and_types(task):
    assert task.patch == 2 and task.classes == tuple(range(10))
    sizes = {"train": 300, "val": 200, "test": 500}
    for name, n in sizes.items():
        part = getattr(task, name)
        assert isinstance(part, ClassificationData)
        assert part.inputs.shape == (n, 16, 4) and part.inputs.dtype == torch.float32
        assert part.mask.all() and part.num_classes == 10 and part.vocab_size is None
        assert part.labels.dtype == torch.long and part.true_probs is None
    assert sorted(task.ood) == ["noise", "rotated"]
    for part in task.ood.values():
        assert part.inputs.shape == (500, 16, 4) and part.num_classes == 10


def test_train_val_test_are_the_right_images(task):
    data = load_digits_grey()
    flat = data.train_images.reshape(1297, 64)
    position = {tuple(row.tolist()): i for i, row in enumerate(flat)}

    def rows(part):
        images = patches_to_images(part.inputs, 2).reshape(len(part), 64)
        return [position.get(tuple(row.tolist())) for row in images]

    train, val = rows(task.train), rows(task.val)
    assert None not in train and None not in val
    # duplicate images among the 1297 could map two rows to one position; there are none here
    assert len(set(train)) == 300 and len(set(val)) == 200 and not set(train) & set(val)
    assert torch.equal(task.train.labels, data.train_labels[train])
    assert torch.equal(task.val.labels, data.train_labels[val])
    assert torch.equal(patches_to_images(task.test.inputs, 2), data.test_images)
    assert torch.equal(task.test.labels, data.test_labels)


def test_low_data_split_is_stratified(task):
    sizes = torch.bincount(load_digits_grey().train_labels, minlength=10).double()
    for part, n in ((task.train, 300), (task.val, 200)):
        counts = torch.bincount(part.labels, minlength=10).double()
        assert counts.sum() == n
        assert (counts - n * sizes / sizes.sum()).abs().max() < 1.5
    small = digits_patch_task(num_train=10, num_val=0)
    assert torch.equal(torch.bincount(small.train.labels, minlength=10), torch.ones(10).long())
    assert small.val is None


def test_rotated_is_a_rotation_of_test(task):
    test = patches_to_images(task.test.inputs, 2)
    rotated = patches_to_images(task.ood["rotated"].inputs, 2)
    assert torch.equal(rotated, torch.rot90(test, 1, (-2, -1)))
    assert torch.equal(torch.rot90(rotated, -1, (-2, -1)), test)
    assert torch.equal(task.ood["rotated"].labels, task.test.labels)


def test_noise_matches_test_intensities(task):
    noise = task.ood["noise"]
    assert (noise.labels == 0).all()
    x = noise.inputs
    assert x.min() >= 0 and x.max() <= 1
    means = x.mean(dim=(1, 2))
    test_means = task.test.inputs.mean(dim=(1, 2))
    # every noise image has the exact mean intensity of some test image
    gap = (means[:, None] - test_means[None, :]).abs().min(dim=1).values
    assert gap.max() < 1e-5
    # it is noise: neighbouring pixels are uncorrelated, unlike digits
    images = patches_to_images(x, 2) - means[:, None, None]
    corr = (images[:, :, 1:] * images[:, :, :-1]).mean() / images.pow(2).mean()
    assert corr.abs() < 0.05


def test_heldout_classes_are_removed_and_relabelled():
    task = digits_patch_task(num_train=80, num_val=40, heldout_classes=(7, 3), patch=4, seed=1)
    data = load_digits_grey()
    assert task.classes == (0, 1, 2, 4, 5, 6, 8, 9)
    for part in (task.train, task.val, task.test, task.ood["rotated"]):
        assert part.num_classes == 8 and part.inputs.shape[1:] == (4, 16)
        assert set(part.labels.tolist()) == set(range(8))
    kept = (data.test_labels != 7) & (data.test_labels != 3)
    digits = torch.tensor(task.classes)[task.test.labels]
    assert torch.equal(digits, data.test_labels[kept])
    assert torch.equal(patches_to_images(task.test.inputs, 4), data.test_images[kept])
    held = task.ood["heldout"]
    assert torch.equal(patches_to_images(held.inputs, 4), data.test_images[~kept])
    assert len(held) == int((~kept).sum()) and (held.labels == 0).all()
    assert len(task.ood["noise"]) == len(task.test)
    train_digits = torch.tensor(task.classes)[task.train.labels]
    assert not torch.isin(train_digits, torch.tensor([3, 7])).any()


def test_seeds_reproduce_and_differ(task):
    again = digits_patch_task()
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(task, name).inputs, getattr(again, name).inputs)
    assert torch.equal(task.ood["noise"].inputs, again.ood["noise"].inputs)
    other = digits_patch_task(seed=1)
    assert not torch.equal(task.train.inputs, other.train.inputs)
    assert not torch.equal(task.ood["noise"].inputs, other.ood["noise"].inputs)
    assert torch.equal(task.test.inputs, other.test.inputs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch": 3}, "patch"),
        ({"patch": 0}, "patch"),
        ({"patch": 2.0}, "patch"),
        ({"num_train": 9}, "num_train"),
        ({"num_train": 3, "heldout_classes": range(6)}, "num_train"),
        ({"num_train": 1200, "num_val": 200}, "num_train"),
        ({"num_train": 1298, "num_val": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"heldout_classes": (10,)}, "heldout_classes"),
        ({"heldout_classes": (-1,)}, "heldout_classes"),
        ({"heldout_classes": (1, 1)}, "heldout_classes"),
        ({"heldout_classes": range(9)}, "heldout_classes"),
        ({"heldout_classes": 3}, "heldout_classes"),
        ({"seed": "0"}, "seed"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        digits_patch_task(**kwargs)


def test_patch_helpers_refuse_bad_shapes():
    with pytest.raises(ValueError, match="images"):
        image_patches(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="patch"):
        image_patches(torch.zeros(1, 8, 8), 3)
    with pytest.raises(ValueError, match="patches"):
        patches_to_images(torch.zeros(1, 16, 3), 2)
