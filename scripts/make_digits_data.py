"""Build ``pyro_attention/data/digits8x8.npz``: binarized 8×8 handwritten digits.

Source: the test set of the UCI "Optical Recognition of Handwritten Digits" collection
(Alpaydin & Kaynak, 1998), 1797 images of 8×8 pixels with integer intensities 0..16, as bundled
with scikit-learn (``sklearn.datasets.load_digits``; no download). Licence: CC BY 4.0.

Binarization: a pixel is 1 when its intensity is ``> threshold`` (default 8, i.e. more than
half of the maximum 16) and 0 otherwise. The split is stratified by class: from seed 0 (numpy's
PCG64 generator, stable across numpy versions), each class gives a share of the 500 test images
proportional to its size (largest remainders), the rest are training images; both keep the
original order. Arrays: ``train_x``/``test_x`` (N, 8) uint8, the 64 pixels in row-major order
packed with ``np.packbits``; ``train_y``/``test_y`` (N,) uint8 labels; ``train_index``/
``test_index`` (N,) int64 rows of ``load_digits()``; ``metadata`` a JSON string.

scikit-learn is needed only here (the ``dev`` extra). Run ``python scripts/make_digits_data.py``
to rebuild the file byte for byte: the zip members carry a fixed timestamp, unlike
``np.savez_compressed``'s.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "pyro_attention" / "data" / "digits8x8.npz"
THRESHOLD, SEED, NUM_TEST = 8, 0, 500


def stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices; each class gives a proportional share of the test set."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * num_test / len(labels)
    quota = np.floor(share).astype(np.int64)
    remainder_order = np.argsort(-(share - quota), kind="stable")
    quota[remainder_order[: num_test - quota.sum()]] += 1
    rng = np.random.Generator(np.random.PCG64(seed))
    test = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[:q]
            for c, q in zip(classes, quota, strict=True)
        ]
    )
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train.astype(np.int64), test.astype(np.int64)


def make(
    threshold: int = THRESHOLD, seed: int = SEED, num_test: int = NUM_TEST
) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.data > threshold).astype(np.uint8)  # (1797, 64), 0/1
    labels = digits.target.astype(np.uint8)
    train, test = stratified_split(labels, num_test, seed)
    metadata = {
        "source": "UCI Machine Learning Repository, Optical Recognition of Handwritten Digits "
        "(Alpaydin & Kaynak, 1998), doi:10.24432/C50P49; copy bundled with scikit-learn "
        "(sklearn.datasets.load_digits)",
        "licence": "CC BY 4.0",
        "threshold": threshold,
        "binarization": f"pixel > {threshold} (intensities 0..16)",
        "seed": seed,
        "num_test": num_test,
        "split": "stratified by class, PCG64 seed, largest-remainder quotas; indices sorted",
        "packing": "np.packbits over the 64 row-major pixels, axis=1",
        "script": "scripts/make_digits_data.py",
    }
    return {
        "train_x": np.packbits(pixels[train], axis=1),
        "test_x": np.packbits(pixels[test], axis=1),
        "train_y": labels[train],
        "test_y": labels[test],
        "train_index": train,
        "test_index": test,
        "metadata": np.array(json.dumps(metadata, sort_keys=True)),
    }


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, with a fixed timestamp so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threshold", type=int, default=THRESHOLD, help="pixel is 1 when intensity > this"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the stratified split")
    parser.add_argument("--num-test", type=int, default=NUM_TEST, help="size of the test split")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    arrays = make(args.threshold, args.seed, args.num_test)
    save_npz(args.out, arrays)
    print(
        f"wrote {args.out} ({len(arrays['train_y'])} train, {len(arrays['test_y'])} test, "
        f"{args.out.stat().st_size} bytes)"
    )


if __name__ == "__main__":
    main()
