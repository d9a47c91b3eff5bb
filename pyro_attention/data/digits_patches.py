r"""Grey 8×8 digits as sequences of patches: a low-data classification task with OOD sets.

Data. The 1797 images of the UCI "Optical Recognition of Handwritten Digits" collection
(E. Alpaydin and C. Kaynak, 1998, UCI Machine Learning Repository, doi:10.24432/C50P49; licence
CC BY 4.0), in scikit-learn's bundled copy, with their grey levels :math:`0..16` kept and split,
stratified by class, into 1297 training and 500 test images (the split of ``digits8x8.npz``).
Built by ``scripts/make_digits_grey_data.py`` into ``digits8x8_grey.npz``; see
``DIGITS_LICENSE.md``. :func:`load_digits_grey` reads the shipped file with numpy only and scales
the intensities to :math:`[0, 1]` (divided by 16).

Tokens. An image :math:`X \in [0, 1]^{8 \times 8}` is cut into non-overlapping
:math:`p \times p` patches (:math:`p` divides 8) taken in row-major order; patch
:math:`t = r \cdot (8/p) + c` is the token

.. math:: x_t = \operatorname{vec}\bigl(X[rp : (r+1)p,\; cp : (c+1)p]\bigr) \in [0, 1]^{p^2},

so a sequence has shape ``(T, F) = ((8/p)², p²)`` and every token is real (mask all ``True``).

Task (:func:`digits_patch_task`), a low-data regime in which softmax attention tends to be
over-confident. Let :math:`\mathcal{C}` be the kept classes (all ten digits minus
``heldout_classes``), relabelled :math:`0..C'-1` in increasing order of the digit
(``task.classes[k]`` is the digit of label ``k``). From the training images of the kept classes:

* ``train``: ``num_train`` images drawn stratified by class: each class gets one image, and the
  other ``num_train − C'`` are shared in proportion to the class sizes (largest remainders),
  drawn uniformly within each class;
* ``val``: ``num_val`` images of the remaining training images, stratified in proportion to
  what remains (``None`` when ``num_val == 0``);
* ``test``: the test images of the kept classes (all 500 without held-out classes).

Out-of-distribution sets, ``task.ood``:

* ``"rotated"``: every ``test`` image rotated by 90° counter-clockwise
  (``torch.rot90(X, 1, (-2, -1))``), labels kept;
* ``"noise"``: as many images as ``test``, each of i.i.d. :math:`u_{ij} \sim U(0, 1)` pixels
  mapped affinely onto the mean intensity :math:`m` of a uniformly drawn test image,
  :math:`x = u\, m / \bar u` when :math:`m \le \bar u`, else
  :math:`x = 1 - (1 - u)(1 - m)/(1 - \bar u)` (so the mean is exactly :math:`m` and
  :math:`x \in [0, 1]`); labels 0 (meaningless);
* ``"heldout"`` (only with ``heldout_classes``): the test images of the held-out digits; their
  labels are 0 (meaningless: those digits have no label in the task).

All randomness comes from CPU :class:`torch.Generator`\ s seeded from ``seed`` (one per draw,
so the noise images do not depend on the split sizes); the same options give the same data on
every device, moved to ``device`` and ``dtype`` at the end.

>>> task = digits_patch_task(num_train=100, num_val=50, patch=2, seed=0)
>>> task.train.inputs.shape, task.test.inputs.shape, task.train.num_classes
(torch.Size([100, 16, 4]), torch.Size([500, 16, 4]), 10)
>>> sorted(task.ood)
['noise', 'rotated']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch

from pyro_attention.data.classification import ClassificationData
from pyro_attention.data.digits import read_shipped_npz

__all__ = [
    "DigitsGrey",
    "DigitsPatchTask",
    "digits_grey_metadata",
    "digits_patch_task",
    "image_patches",
    "load_digits_grey",
    "patches_to_images",
]

FILENAME = "digits8x8_grey.npz"
IMAGE_SIZE = 8
NUM_DIGITS = 10


class DigitsGrey(NamedTuple):
    """Train/test grey images ``(N, 8, 8)`` in :math:`[0, 1]` and their digits ``(N,)``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


class DigitsPatchTask(NamedTuple):
    """Patch sequences of grey digits: in-distribution splits and OOD sets."""

    train: ClassificationData
    """``num_train`` training sequences ``(N, T, F)``."""
    val: ClassificationData | None
    """``num_val`` validation sequences (``None`` when ``num_val == 0``)."""
    test: ClassificationData
    """The test images of the kept classes."""
    ood: dict[str, ClassificationData]
    """``"rotated"``, ``"noise"`` and, with held-out classes, ``"heldout"``."""
    classes: tuple[int, ...]
    """``classes[k]`` is the digit of label ``k``."""
    patch: int
    """The patch side ``p``."""


def _read_npz() -> dict[str, np.ndarray]:
    return read_shipped_npz(FILENAME)


def digits_grey_metadata() -> dict[str, Any]:
    """Source, licence and seed with which the shipped grey file was built."""
    return json.loads(str(_read_npz()["metadata"]))


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype}")
    return dtype


def load_digits_grey(
    *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> DigitsGrey:
    """Load the embedded grey digits on ``device``: intensities / 16 with ``dtype``."""
    dtype = _check_dtype(dtype)
    arrays = _read_npz()

    def images(split: str) -> torch.Tensor:
        x = torch.as_tensor(arrays[f"{split}_x"].astype(np.int64), device=device)
        return x.to(dtype) / 16

    def labels(split: str) -> torch.Tensor:
        return torch.as_tensor(arrays[f"{split}_y"].astype(np.int64), device=device)

    return DigitsGrey(images("train"), labels("train"), images("test"), labels("test"))


def _check_patch(patch: object, size: int = IMAGE_SIZE) -> int:
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or size % patch:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        raise ValueError(f"patch must be a positive divisor of {size} ({divisors}), got {patch!r}")
    return patch


def image_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut ``(N, H, W)`` images into row-major ``patch``×``patch`` tokens ``(N, T, patch²)``.

    ``T = (H/patch)(W/patch)``; token ``t = r·(W/patch) + c`` holds the pixels of block row ``r``
    and block column ``c``, themselves in row-major order. Inverse: :func:`patches_to_images`.
    """
    if images.dim() != 3:
        raise ValueError(f"images must be (N, H, W), got shape {tuple(images.shape)}")
    n, h, w = images.shape
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch must be a positive divisor of H={h} and W={w}, got {patch!r}")
    blocks = images.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    return blocks.reshape(n, (h // patch) * (w // patch), patch * patch)


def patches_to_images(patches: torch.Tensor, patch: int, height: int = IMAGE_SIZE) -> torch.Tensor:
    """Reassemble ``(N, T, patch²)`` tokens of :func:`image_patches` into ``(N, H, W)`` images."""
    if patches.dim() != 3 or patches.shape[2] != patch * patch:
        raise ValueError(
            f"patches must be (N, T, {patch * patch}) for patch={patch}, got {tuple(patches.shape)}"
        )
    n, t, _ = patches.shape
    rows = height // patch
    if rows * patch != height or rows == 0 or t % rows:
        raise ValueError(f"T={t} tokens of {patch}×{patch} do not tile an image of height {height}")
    cols = t // rows
    blocks = patches.reshape(n, rows, cols, patch, patch).permute(0, 1, 3, 2, 4)
    return blocks.reshape(n, height, cols * patch)


def _largest_remainder(sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Integer quotas proportional to ``sizes`` summing to ``total`` (largest remainders)."""
    share = sizes.double() * total / sizes.sum().double()
    quota = share.floor().long()
    order = torch.sort(-(share - quota), stable=True).indices
    quota[order[: total - int(quota.sum())]] += 1
    return quota


def _stratified_draw(
    labels: torch.Tensor, quota: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Sorted positions: ``quota[c]`` uniformly drawn positions with ``labels == c``."""
    picked = []
    for c, q in enumerate(quota.tolist()):
        members = (labels == c).nonzero().flatten()
        perm = torch.randperm(len(members), generator=generator)
        picked.append(members[perm[:q]])
    return torch.sort(torch.cat(picked)).values


def _check_heldout(heldout_classes: object) -> tuple[int, ...]:
    if isinstance(heldout_classes, int | str) or not isinstance(heldout_classes, Iterable):
        raise ValueError(
            f"heldout_classes must be a sequence of digits, e.g. (8, 9), got {heldout_classes!r}"
        )
    held = tuple(heldout_classes)
    for c in held:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_DIGITS:
            raise ValueError(f"heldout_classes must be digits in 0..9, got {held!r}")
    if len(set(held)) != len(held):
        raise ValueError(f"heldout_classes has repeated digits: {held!r}; list each once")
    if NUM_DIGITS - len(held) < 2:
        raise ValueError(
            f"heldout_classes={held!r} leaves {NUM_DIGITS - len(held)} class(es); hold out at "
            "most 8 digits so that at least 2 remain"
        )
    return tuple(sorted(held))


def _seeds(seed: int, count: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (count,), generator=gen).tolist()


def _noise_like(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform-noise images, each with the exact mean intensity of a random row of ``images``."""
    n = images.shape[0]
    source = torch.randint(0, n, (n,), generator=generator)
    m = images[source].mean(dim=(1, 2), keepdim=True)
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype)
    u_bar = u.mean(dim=(1, 2), keepdim=True)
    darker = u * m / u_bar
    brighter = 1 - (1 - u) * (1 - m) / (1 - u_bar)
    return torch.where(m <= u_bar, darker, brighter).clamp(0, 1)


def digits_patch_task(
    *,
    num_train: int = 300,
    num_val: int = 200,
    patch: int = 2,
    seed: int = 0,
    heldout_classes: Iterable[int] = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DigitsPatchTask:
    """The low-data grey-digit patch task (see the module docstring for the construction).

    :param num_train: training sequences, at least the number of kept classes.
    :param num_val: validation sequences (>= 0) from the training images not drawn for ``train``.
    :param patch: patch side ``p``, a divisor of 8; tokens ``T = (8/p)²`` of ``F = p²`` pixels.
    :param seed: seed of every draw.
    :param heldout_classes: digits removed from ``train``/``val``/``test`` and given as the
        ``"heldout"`` OOD set; the other digits are relabelled ``0..C'-1`` (``task.classes``).
    :param dtype: floating dtype of the inputs.
    :param device: device of every tensor.
    :returns: a :class:`DigitsPatchTask`.
    """
    patch = _check_patch(patch)
    held = _check_heldout(heldout_classes)
    dtype = _check_dtype(dtype)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    classes = tuple(c for c in range(NUM_DIGITS) if c not in held)
    num_classes = len(classes)
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < num_classes:
        raise ValueError(
            f"num_train must be an int >= the number of classes ({num_classes}) so that every "
            f"class is in the training set, got {num_train!r}"
        )
    if isinstance(num_val, bool) or not isinstance(num_val, int) or num_val < 0:
        raise ValueError(f"num_val must be an int >= 0, got {num_val!r}")

    data = load_digits_grey(dtype=torch.float64)
    relabel = torch.full((NUM_DIGITS,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(num_classes)
    kept_train = relabel[data.train_labels] >= 0
    pool_images, pool_labels = data.train_images[kept_train], relabel[data.train_labels][kept_train]
    if num_train + num_val > len(pool_labels):
        raise ValueError(
            f"num_train + num_val = {num_train} + {num_val} exceeds the {len(pool_labels)} "
            f"training images of the kept classes; lower num_train or num_val"
        )

    split_seed, val_seed, noise_seed = _seeds(seed, 3)
    sizes = torch.bincount(pool_labels, minlength=num_classes)
    quota = 1 + _largest_remainder(sizes - 1, num_train - num_classes)
    train_pos = _stratified_draw(pool_labels, quota, torch.Generator().manual_seed(split_seed))
    rest = torch.ones(len(pool_labels), dtype=torch.bool)
    rest[train_pos] = False
    rest_pos = rest.nonzero().flatten()
    val_pos = rest_pos[:0]
    if num_val > 0:
        rest_sizes = torch.bincount(pool_labels[rest_pos], minlength=num_classes)
        val_quota = _largest_remainder(rest_sizes, num_val)
        val_gen = torch.Generator().manual_seed(val_seed)
        val_pos = rest_pos[_stratified_draw(pool_labels[rest_pos], val_quota, val_gen)]

    kept_test = relabel[data.test_labels] >= 0
    test_images, test_labels = data.test_images[kept_test], relabel[data.test_labels][kept_test]

    def sequences(images: torch.Tensor, labels: torch.Tensor) -> ClassificationData:
        inputs = image_patches(images, patch).to(device=device, dtype=dtype)
        mask = torch.ones(inputs.shape[:2], dtype=torch.bool, device=device)
        return ClassificationData(inputs, mask, labels.to(device), num_classes)

    def unlabelled(images: torch.Tensor) -> ClassificationData:
        return sequences(images, torch.zeros(images.shape[0], dtype=torch.long))

    noise = _noise_like(test_images, torch.Generator().manual_seed(noise_seed))
    ood = {
        "rotated": sequences(torch.rot90(test_images, 1, (-2, -1)), test_labels),
        "noise": unlabelled(noise),
    }
    if held:
        ood["heldout"] = unlabelled(data.test_images[~kept_test])
    return DigitsPatchTask(
        train=sequences(pool_images[train_pos], pool_labels[train_pos]),
        val=sequences(pool_images[val_pos], pool_labels[val_pos]) if num_val > 0 else None,
        test=sequences(test_images, test_labels),
        ood=ood,
        classes=classes,
        patch=patch,
    )
