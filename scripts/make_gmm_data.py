"""Build ``pyro_attention/data/gmm2d.csv``: the embedded data set of ``compare gmm``.

Four anisotropic, partly overlapping 2-D Gaussian clusters with unequal weights, drawn with
numpy's PCG64 generator (stable across numpy versions) from seed 2026, then standardised with
the training split's mean and standard deviation. 800 training and 400 test points; the column
``split`` says which. The data are synthetic and released with the package (MIT licence).

Run ``python scripts/make_gmm_data.py`` to rebuild the file byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = np.array([0.35, 0.3, 0.2, 0.15])
MEANS = np.array([[-3.0, -1.0], [2.5, -1.5], [0.0, 3.0], [4.0, 3.5]])
COVARIANCES = np.array(
    [
        [[1.0, 0.6], [0.6, 0.8]],
        [[0.6, -0.3], [-0.3, 1.2]],
        [[1.5, 0.0], [0.0, 0.3]],
        [[0.4, 0.2], [0.2, 0.4]],
    ]
)
NUM_TRAIN, NUM_TEST, SEED = 800, 400, 2026


def make(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    total = NUM_TRAIN + NUM_TEST
    labels = rng.choice(len(WEIGHTS), size=total, p=WEIGHTS)
    noise = rng.standard_normal((total, 2))
    chol = np.linalg.cholesky(COVARIANCES)
    points = MEANS[labels] + np.einsum("nij,nj->ni", chol[labels], noise)
    mean, std = points[:NUM_TRAIN].mean(0), points[:NUM_TRAIN].std(0)
    return (points - mean) / std, labels


def main() -> None:
    points, labels = make()
    out = Path(__file__).resolve().parents[1] / "pyro_attention" / "data" / "gmm2d.csv"
    with out.open("w") as f:
        f.write("split,x1,x2,component\n")
        for i, (p, z) in enumerate(zip(points, labels, strict=True)):
            split = "train" if i < NUM_TRAIN else "test"
            f.write(f"{split},{p[0]:.6f},{p[1]:.6f},{z}\n")
    print(f"wrote {out} ({len(points)} rows)")


if __name__ == "__main__":
    main()
