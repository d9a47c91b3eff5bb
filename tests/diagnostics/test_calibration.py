"""Calibration, OOD and true-posterior metrics, pinned against small loop references."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from pyro_attention.diagnostics import (
    classification_metrics,
    mean_and_error,
    ood_detection,
    ood_scores,
    reliability_bins,
    true_posterior_metrics,
)
from pyro_attention.diagnostics.plots import plot_reliability

DTYPES = [torch.float32, torch.float64]
_NP = {torch.float32: np.float32, torch.float64: np.float64}


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------


def linspace_edges(n_bins: int, dtype: torch.dtype) -> list[float]:
    """The bin edges ``torch.linspace(0, 1, n_bins + 1)``, derived without torch.

    ``step = 1 / n_bins`` rounded to the dtype; edge ``b`` is ``b * step`` in the lower half
    (``b < (n_bins + 1) // 2``) and ``1 - (n_bins - b) * step`` above, each rounded once. For
    float32 the exact value is a double (24-bit step times a small integer), so rounding it
    through ``float`` is a single rounding too.
    """
    npdt = _NP[dtype]
    step = Fraction(float(npdt(1.0) / npdt(n_bins)))
    half = (n_bins + 1) // 2
    exact = [step * b if b < half else 1 - step * (n_bins - b) for b in range(n_bins + 1)]
    return [float(npdt(float(v))) for v in exact]


def reference_bins(
    values: list[float], targets: list[float], edges: list[float]
) -> tuple[list[int], list[float], list[float], float, float]:
    """Counts, mean value, mean target, ECE and MCE by a loop over explicit bins.

    Bin ``b < B`` is ``[edges[b], edges[b + 1])``; the extra bin ``B`` is ``[edges[B], inf)``,
    i.e. the values exactly 1.
    """
    num_bins = len(edges) - 1
    counts, means, rates, gaps = [], [], [], []
    for b in range(num_bins + 1):
        lo = edges[b]
        hi = edges[b + 1] if b < num_bins else math.inf
        members = [i for i, v in enumerate(values) if lo <= v < hi]
        counts.append(len(members))
        if members:
            means.append(math.fsum(values[i] for i in members) / len(members))
            rates.append(math.fsum(targets[i] for i in members) / len(members))
            gaps.append(abs(rates[-1] - means[-1]))
        else:
            means.append(0.0)
            rates.append(0.0)
            gaps.append(0.0)
    assert sum(counts) == len(values)
    ece = math.fsum(c * g for c, g in zip(counts, gaps, strict=True)) / len(values)
    mce = max(g for c, g in zip(counts, gaps, strict=True) if c > 0)
    return counts, means, rates, ece, mce


def edge_heavy_data(
    dtype: torch.dtype, n_bins: int, num_classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirichlet rows plus rows whose top probability sits exactly at 1.0 and on bin edges.

    The edges are both torch's (``linspace_edges``) and the correctly rounded ``b / n_bins``
    (different numbers for some ``b``); one-hot rows give confidence 1.0 and many exact zeros.
    """
    g = torch.Generator().manual_seed(seed)
    alpha = torch.full((num_classes,), 0.4, dtype=torch.float64)
    random_rows = torch.distributions.Dirichlet(alpha).sample((300,))
    tops = [e for e in linspace_edges(n_bins, dtype) if 1 / num_classes <= e <= 1]
    tops += [b / n_bins for b in range(n_bins + 1) if b / n_bins >= 1 / num_classes]
    if dtype == torch.float64:
        tops += [1 - 1e-9, 1 - 1e-12]  # round to 1.0 in float32, where top-1 binning happens
    crafted = []
    for k, top in enumerate(tops * 3):
        row = [(1 - top) / (num_classes - 1)] * num_classes
        row[k % num_classes] = top
        crafted.append(row)
    crafted += [
        [1.0 if c == k % num_classes else 0.0 for c in range(num_classes)] for k in range(20)
    ]
    probs = torch.cat([random_rows, torch.tensor(crafted, dtype=torch.float64)]).to(dtype)
    labels = torch.randint(0, num_classes, (probs.shape[0],), generator=g)
    return probs, labels


# ---------------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 20, 100])
def test_bin_edges_are_torch_linspace(dtype: torch.dtype, n_bins: int) -> None:
    edges = torch.linspace(0, 1, n_bins + 1, dtype=dtype).tolist()
    assert edges == linspace_edges(n_bins, dtype)
    probs = torch.tensor([[0.5, 0.5]], dtype=dtype)
    bins = reliability_bins(probs, torch.tensor([0]), n_bins=n_bins)
    assert bins["edges"].tolist() == linspace_edges(n_bins, torch.float32)
    assert bins["count"].shape == (n_bins + 1,)


def test_edge_values_go_up_and_one_gets_its_own_bin() -> None:
    """Bins are [e_b, e_{b+1}) with torch's e_b, plus an extra bin for exactly 1.0."""
    e = linspace_edges(15, torch.float32)
    # 15 float32 bins: e_3 = 0.20000002 > float32(3 / 15), so 3 / 15 lands in bin 2;
    # e_9 = 0.59999996 < float32(9 / 15), e_12 == float32(12 / 15)
    assert e[3] > float(np.float32(3 / 15))
    assert e[9] < float(np.float32(9 / 15))
    assert e[12] == float(np.float32(12 / 15))
    tops = [3 / 15, e[3], 9 / 15, 12 / 15, e[12], 1.0, 1.0, 0.1]
    expected_bin = [2, 3, 9, 12, 12, 15, 15, 1]
    probs = torch.tensor([[t] + [(1 - t) / 9] * 9 for t in tops])
    bins = reliability_bins(probs, torch.zeros(len(tops), dtype=torch.long), n_bins=15)
    expected = [0] * 16
    for b in expected_bin:
        expected[b] += 1
    assert bins["count"].tolist() == expected
    conf = [float(np.float32(t)) for t in tops]
    assert reference_bins(conf, [1.0] * len(tops), e)[0] == expected
    assert bins["confidence"][15] == 1.0 and bins["accuracy"][15] == 1.0


def test_all_class_binning_depends_on_dtype_at_an_edge() -> None:
    """With 10 bins, float64's e_3 is 0.30000000000000004 and float32's is float32(0.3).

    Pairs (0.3, 1), (0.25, 0), (0.7, 0), (0.75, 1): in float64 0.3 shares bin 2 with 0.25
    (ECE 0.225); in float32 it sits alone in bin 3 (ECE 0.35).
    """
    assert linspace_edges(10, torch.float64)[3] == 0.30000000000000004
    assert linspace_edges(10, torch.float32)[3] == float(np.float32(0.3))
    labels = torch.tensor([0, 1])
    for dtype, expected in ((torch.float64, 0.225), (torch.float32, 0.35)):
        probs = torch.tensor([[0.3, 0.7], [0.25, 0.75]], dtype=dtype)
        assert classification_metrics(probs, labels)["ece_all"] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# calibration errors against the loop reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_bins", [10, 15])
def test_top1_ece_mce_match_reference(
    dtype: torch.dtype, n_bins: int, device: torch.device
) -> None:
    probs, labels = edge_heavy_data(dtype, n_bins)
    rows = probs.tolist()
    # top-1 confidences are binned in float32 whatever the input dtype
    conf = [float(np.float32(max(r))) for r in rows]
    correct = [
        float(max(range(len(r)), key=r.__getitem__) == y) for r, y in zip(rows, labels, strict=True)
    ]
    counts, means, rates, ece, mce = reference_bins(
        conf, correct, linspace_edges(n_bins, torch.float32)
    )
    assert counts[-1] == sum(c == 1.0 for c in conf) >= 20  # the extra bin holds exactly 1.0
    bins = reliability_bins(probs.to(device), labels.to(device), n_bins=n_bins)
    assert bins["count"].tolist() == counts
    assert bins["confidence"].cpu().tolist() == pytest.approx(means, abs=1e-6)
    assert bins["accuracy"].cpu().tolist() == pytest.approx(rates, abs=1e-6)
    metrics = classification_metrics(
        probs.to(device), labels.to(device), n_bins=n_bins, n_bins_all=n_bins
    )
    assert metrics["ece"] == pytest.approx(ece, abs=2e-6)
    assert metrics["mce"] == pytest.approx(mce, abs=2e-6)
    # the ECE of the reliability bins is the ECE
    weights = bins["count"].double() / len(conf)
    from_bins = (weights * (bins["accuracy"] - bins["confidence"]).abs().double()).sum()
    assert float(from_bins) == pytest.approx(metrics["ece"], abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_bins_all", [10, 15])
def test_all_class_ece_mce_match_reference(
    dtype: torch.dtype, n_bins_all: int, device: torch.device
) -> None:
    probs, labels = edge_heavy_data(dtype, n_bins_all, seed=1)
    # all-class pairs are binned in the input dtype
    values = [float(v) for v in probs.flatten().tolist()]
    targets = [float(c == y) for y in labels.tolist() for c in range(probs.shape[1])]
    counts, _, _, ece, mce = reference_bins(values, targets, linspace_edges(n_bins_all, dtype))
    assert counts[0] >= 60  # exact zeros are kept, in bin 0
    assert counts[-1] >= 20  # exact ones, in the extra bin
    metrics = classification_metrics(probs.to(device), labels.to(device), n_bins_all=n_bins_all)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert metrics["ece_all"] == pytest.approx(ece, abs=tol)
    assert metrics["mce_all"] == pytest.approx(mce, abs=tol)


# ---------------------------------------------------------------------------------------------
# accuracy, NLL, Brier
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_nll_brier_by_hand(dtype: torch.dtype, device: torch.device) -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=dtype)
    labels = torch.tensor([0, 2, 2])
    m = classification_metrics(probs.to(device), labels.to(device), n_bins=10)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert m["accuracy"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.1) + math.log(0.4)) / 3, abs=tol)
    sq = (0.09 + 0.04 + 0.01) + (0.01 + 0.64 + 0.81) + (0.09 + 0.09 + 0.36)
    assert m["brier"] == pytest.approx(sq / 3, abs=tol)
    # confidences 0.7 (right), 0.8 (wrong), 0.4 (right), one per bin
    assert m["ece"] == pytest.approx((0.3 + 0.8 + 0.6) / 3, abs=1e-6)
    assert m["mce"] == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_of_a_zero_probability_is_finite(dtype: torch.dtype) -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=dtype)
    m = classification_metrics(probs, torch.tensor([1, 0]))
    tiny = torch.finfo(dtype).tiny
    assert m["nll"] == pytest.approx((-math.log(tiny) + math.log(2)) / 2, rel=1e-6)
    assert m["brier"] == pytest.approx((2.0 + 0.5) / 2, abs=1e-7)


def test_half_precision_is_accepted() -> None:
    probs, labels = edge_heavy_data(torch.float32, 15)
    ref = classification_metrics(probs, labels)
    low = classification_metrics(probs.bfloat16(), labels)
    assert low["accuracy"] == pytest.approx(ref["accuracy"], abs=0.02)
    assert low["nll"] == pytest.approx(ref["nll"], rel=0.05)
    assert ood_scores(probs.half())["entropy"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# OOD detection
# ---------------------------------------------------------------------------------------------


def test_ood_scores_values() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    scores = ood_scores(probs)
    assert scores["max_prob"].tolist() == pytest.approx([0.0, 0.5, 2 / 3])
    assert scores["entropy"].tolist() == pytest.approx([0.0, math.log(2), math.log(3)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ood_detection_separated_and_reversed(dtype: torch.dtype, device: torch.device) -> None:
    confident = torch.tensor([[0.97, 0.02, 0.01], [0.01, 0.9, 0.09]] * 5, dtype=dtype)
    uniform = torch.tensor([[0.4, 0.3, 0.3], [0.34, 0.33, 0.33]] * 4, dtype=dtype)
    separated = ood_detection(confident.to(device), uniform.to(device))
    assert separated == pytest.approx(dict.fromkeys(separated, 1.0))
    reversed_ = ood_detection(uniform.to(device), confident.to(device))
    assert reversed_["auroc_max_prob"] == pytest.approx(0.0)
    assert reversed_["auroc_entropy"] == pytest.approx(0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ood_detection_with_ties_matches_sklearn(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    table = torch.tensor(
        [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [0.0, 0.5, 0.5], [1 / 3] * 3],
        dtype=dtype,
    )
    p_in = table[torch.multinomial(torch.tensor([5.0, 3, 2, 1, 1]), 60, True, generator=g)]
    p_out = table[torch.multinomial(torch.tensor([1.0, 2, 2, 2, 3]), 40, True, generator=g)]
    result = ood_detection(p_in, p_out)
    target = np.r_[np.zeros(60), np.ones(40)]
    s_in, s_out = ood_scores(p_in), ood_scores(p_out)
    for key in ("max_prob", "entropy"):
        score = torch.cat([s_in[key], s_out[key]]).double().numpy()
        assert len(np.unique(score)) <= 5  # heavy ties
        assert result[f"auroc_{key}"] == pytest.approx(roc_auc_score(target, score), abs=1e-6)
        assert result[f"aupr_{key}"] == pytest.approx(
            average_precision_score(target, score), abs=1e-6
        )


# ---------------------------------------------------------------------------------------------
# true posterior
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_true_posterior_metrics(dtype: torch.dtype, num_classes: int, device: torch.device) -> None:
    alpha = torch.ones(num_classes, dtype=torch.float64)
    true = torch.distributions.Dirichlet(alpha).sample((50,))
    true[0] = torch.eye(num_classes, dtype=torch.float64)[0]  # zeros in p*: 0 log 0 = 0
    pred = 0.8 * true + 0.2 * torch.distributions.Dirichlet(alpha).sample((50,))
    true, pred = true.to(dtype), pred.to(dtype)
    same = true_posterior_metrics(true.to(device), true.to(device))
    assert same == {"true_kl": 0.0, "true_abs_error": 0.0}
    got = true_posterior_metrics(pred.to(device), true.to(device))
    kl = np.mean(
        [
            math.fsum(q * math.log(q / p) for p, q in zip(pr, tr, strict=True) if q > 0)
            for pr, tr in zip(pred.tolist(), true.tolist(), strict=True)
        ]
    )
    tv = np.mean(
        [
            0.5 * math.fsum(abs(p - q) for p, q in zip(pr, tr, strict=True))
            for pr, tr in zip(pred.tolist(), true.tolist(), strict=True)
        ]
    )
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert got["true_kl"] > 0
    assert got["true_kl"] == pytest.approx(kl, rel=tol)
    assert got["true_abs_error"] == pytest.approx(tv, rel=tol)
    if num_classes == 2:
        direct = (pred[:, 1] - true[:, 1]).abs().double().mean()
        assert got["true_abs_error"] == pytest.approx(float(direct), rel=tol)


def test_true_kl_of_a_zero_prediction_is_finite() -> None:
    got = true_posterior_metrics(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
    assert math.isfinite(got["true_kl"]) and got["true_kl"] > 40
    assert got["true_abs_error"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# mean and error
# ---------------------------------------------------------------------------------------------


def test_mean_and_error_matches_numpy() -> None:
    values = [0.912, 0.934, 0.921, 0.905, 0.940]
    mean, error = mean_and_error(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert error == pytest.approx(2 * np.std(values, ddof=1) / np.sqrt(len(values)), rel=1e-12)
    assert mean_and_error(torch.tensor(values, dtype=torch.float64)) == pytest.approx(
        (mean, error), rel=1e-12
    )
    one = mean_and_error([0.5])
    assert one[0] == 0.5 and math.isnan(one[1])


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

_P = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
_Y = torch.tensor([0, 1])
_LOGITS = torch.tensor([[2.0, -1.0], [0.3, 0.1]])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: classification_metrics(torch.tensor([0.6, 0.4]), _Y), "probs must have shape"),
        (lambda: classification_metrics(torch.ones(2, 1), _Y), "C >= 2"),
        (lambda: classification_metrics(torch.ones(0, 2), _Y[:0]), "probs is empty"),
        (lambda: classification_metrics(torch.tensor([[0.5, math.nan]] * 2), _Y), "probs .*NaN"),
        (lambda: classification_metrics(torch.tensor([[1.5, -0.5]] * 2), _Y), "probs.*not logits"),
        (lambda: classification_metrics(_LOGITS, _Y), "probs.*not logits"),
        (lambda: classification_metrics(_P + 2e-4, _Y), "probs.*not logits"),
        (lambda: classification_metrics(torch.tensor([[1, 0], [0, 1]]), _Y), "probs.*floating"),
        (lambda: classification_metrics(_P.numpy(), _Y), "probs must be a torch.Tensor"),
        (lambda: classification_metrics(_P, _Y.int()), "labels must be int64"),
        (lambda: classification_metrics(_P, _Y.float()), "labels must be int64"),
        (lambda: classification_metrics(_P, torch.tensor([0, 1, 1])), "labels must have shape"),
        (lambda: classification_metrics(_P, torch.eye(2, dtype=torch.long)), "labels.*one-hot"),
        (lambda: classification_metrics(_P, torch.tensor([0, 2])), r"labels must lie in \[0, 2\)"),
        (lambda: classification_metrics(_P, torch.tensor([-1, 0])), "labels must lie"),
        (lambda: classification_metrics(_P, [0, 1]), "labels must be a torch.Tensor"),
        (lambda: classification_metrics(_P, _Y, n_bins=0), "n_bins must be a positive"),
        (lambda: classification_metrics(_P, _Y, n_bins=2.5), "n_bins must be a positive"),
        (lambda: classification_metrics(_P, _Y, n_bins=True), "n_bins must be a positive"),
        (lambda: classification_metrics(_P, _Y, n_bins_all=0), "n_bins_all must be a positive"),
        (lambda: reliability_bins(_P, _Y, n_bins=0), "n_bins must be a positive"),
        (lambda: reliability_bins(_LOGITS, _Y), "probs.*not logits"),
        (lambda: reliability_bins(_P, _Y.int()), "labels must be int64"),
        (lambda: ood_scores(_LOGITS), "probs.*not logits"),
        (lambda: ood_detection(_LOGITS, _P), "probs_in.*not logits"),
        (lambda: ood_detection(_P, _LOGITS), "probs_out.*not logits"),
        (lambda: ood_detection(_P, torch.ones(2, 4) / 4), "probs_out has 4 classes"),
        (lambda: ood_detection(_P, torch.ones(0, 2)), "probs_out is empty"),
        (lambda: true_posterior_metrics(_P, _LOGITS), "true_probs.*not logits"),
        (lambda: true_posterior_metrics(_LOGITS, _P), "probs.*not logits"),
        (lambda: true_posterior_metrics(_P, torch.ones(3, 2) / 2), "true_probs has shape"),
        (lambda: mean_and_error([]), "values is empty"),
        (lambda: mean_and_error(torch.ones(2, 2)), "values must be 1-D"),
        (lambda: mean_and_error([1.0, math.nan]), "values contains NaN"),
        (lambda: mean_and_error(["a"]), "values must be numbers"),
        (lambda: plot_reliability({}), "curves is empty"),
    ],
)
def test_bad_input_is_refused(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# reliability diagram
# ---------------------------------------------------------------------------------------------


def test_plot_reliability_writes_png(tmp_path: Path) -> None:
    probs, labels = edge_heavy_data(torch.float32, 10)
    sharp = torch.nn.functional.one_hot(probs.argmax(1), 4).float()
    curves = {
        "model": reliability_bins(probs, labels, n_bins=10),
        "over-confident": reliability_bins(sharp, labels, n_bins=10),
    }
    path = tmp_path / "plots" / "reliability.png"
    fig = plot_reliability(curves, path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [ax.get_title() for ax in fig.axes]
    ece = classification_metrics(probs, labels, n_bins=10)["ece"]
    assert any(f"model: ECE {ece:.3f}" in t for t in titles)
    assert isinstance(plot_reliability(curves), Figure)  # no path: nothing written


def test_rounding_above_one_is_not_taken_for_logits() -> None:
    """1 + 5e-5 passes the row-sum check but must not reach torchmetrics, which would softmax."""
    labels = torch.tensor([0, 1, 0])
    exact = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.3, 0.7]])
    rounded = exact.clone()
    rounded[0, 0] = 1.00005
    assert classification_metrics(rounded, labels) == pytest.approx(
        classification_metrics(exact, labels), abs=1e-6
    )
