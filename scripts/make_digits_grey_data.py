"""Build ``pyro_attention/data/digits8x8_grey.npz``: the 8×8 handwritten digits in grey levels.

Source: the same images as ``digits8x8.npz`` (``scripts/make_digits_data.py``): the test set of
the UCI "Optical Recognition of Handwritten Digits" collection (Alpaydin & Kaynak, 1998), 1797
images of 8×8 pixels with integer intensities 0..16, as bundled with scikit-learn
(``sklearn.datasets.load_digits``; no download). Licence: CC BY 4.0.

The intensities are kept as they are (uint8, 0..16), not binarized. The split is the one of the
binary file, made by the same function (``stratified_split`` of ``make_digits_data.py``, seed 0,
500 test images stratified by class), so the grey and binary files hold the same images in the
same order. Arrays: ``train_x``/``test_x`` (N, 8, 8) uint8 intensities 0..16; ``train_y``/
``test_y`` (N,) uint8 labels; ``train_index``/``test_index`` (N,) int64 rows of
``load_digits()``; ``metadata`` a JSON string.

scikit-learn is needed only here (the ``dev`` extra). Run
``python scripts/make_digits_grey_data.py`` to rebuild the file byte for byte (the zip members
carry a fixed timestamp). Run it as a script (or with ``scripts/`` on ``sys.path``): it imports
``make_digits_data`` from its own directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from make_digits_data import NUM_TEST, SEED, save_npz, stratified_split

OUT = Path(__file__).resolve().parents[1] / "pyro_attention" / "data" / "digits8x8_grey.npz"


def make(seed: int = SEED, num_test: int = NUM_TEST) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8), 0..16
    if not np.array_equal(images, digits.images) or images.max() > 16:
        raise RuntimeError("load_digits() no longer returns integer intensities 0..16")
    labels = digits.target.astype(np.uint8)
    train, test = stratified_split(labels, num_test, seed)
    metadata = {
        "source": "UCI Machine Learning Repository, Optical Recognition of Handwritten Digits "
        "(Alpaydin & Kaynak, 1998), doi:10.24432/C50P49; copy bundled with scikit-learn "
        "(sklearn.datasets.load_digits)",
        "licence": "CC BY 4.0",
        "intensities": "uint8 0..16 as in the source (not binarized)",
        "seed": seed,
        "num_test": num_test,
        "split": "stratified by class, PCG64 seed, largest-remainder quotas; indices sorted "
        "(the split of digits8x8.npz)",
        "layout": "(N, 8, 8) images, rows then columns",
        "script": "scripts/make_digits_grey_data.py",
    }
    return {
        "train_x": images[train],
        "test_x": images[test],
        "train_y": labels[train],
        "test_y": labels[test],
        "train_index": train,
        "test_index": test,
        "metadata": np.array(json.dumps(metadata, sort_keys=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the stratified split")
    parser.add_argument("--num-test", type=int, default=NUM_TEST, help="size of the test split")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    arrays = make(args.seed, args.num_test)
    save_npz(args.out, arrays)
    print(
        f"wrote {args.out} ({len(arrays['train_y'])} train, {len(arrays['test_y'])} test, "
        f"{args.out.stat().st_size} bytes)"
    )


if __name__ == "__main__":
    main()
