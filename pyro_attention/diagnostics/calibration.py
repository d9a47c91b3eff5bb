r"""Calibration, out-of-distribution and true-posterior metrics of a classifier's probabilities.

Every function takes predictive probabilities ``probs`` of shape ``(N, C)`` (``N`` examples,
``C >= 2`` classes; rows on the simplex, e.g. the average over posterior draws of
``logits.softmax(-1)``) and, where needed, ``labels`` of shape ``(N,)`` (``int64`` class indices),
on any device and in any floating dtype (half precision is computed in float32). Results are
Python floats unless stated otherwise. Input is checked before any work: wrong shape, empty,
non-finite, negative entries, rows that do not sum to one (logits passed by mistake) or labels out
of range raise :class:`ValueError` naming the argument.

Metrics
-------

Write :math:`p_{nc}` for the predicted probability of class :math:`c` for example :math:`n`,
:math:`y_n` for its label, :math:`\hat y_n = \arg\max_c p_{nc}` for the prediction and
:math:`\hat c_n = \max_c p_{nc}` for its (top-1) confidence.

- Accuracy :math:`\frac1N \sum_n 1[\hat y_n = y_n]`.
- Negative log-likelihood :math:`\mathrm{NLL} = -\frac1N \sum_n \log \max(p_{n y_n}, \epsilon)`
  with :math:`\epsilon` the smallest normal number of the dtype (``torch.finfo(dtype).tiny``),
  so a zero probability on the true class gives a large finite value instead of ``inf``.
- Brier score :math:`\frac1N \sum_n \sum_c (p_{nc} - 1[y_n = c])^2` (between 0 and 2).
- Top-1 calibration error (Naeini et al. 2015; Guo et al. 2017). The confidences are grouped into
  ``n_bins`` equal-width bins :math:`B_1, \dots` (see *Binning* below); with
  :math:`\mathrm{acc}(B) = \frac{1}{|B|}\sum_{n \in B} 1[\hat y_n = y_n]` and
  :math:`\mathrm{conf}(B) = \frac{1}{|B|}\sum_{n \in B} \hat c_n`,

  .. math::

      \mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|,
      \qquad
      \mathrm{MCE} = \max_{b:\,|B_b| > 0} \bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|,

  computed by :func:`torchmetrics.functional.classification.multiclass_calibration_error`
  (``norm="l1"`` and ``norm="max"``).
- All-class calibration error (Chen & Li 2023): every class probability is a prediction of its
  own binary event. The :math:`N C` pairs :math:`(p_{nc},\, 1[y_n = c])` are binned on
  :math:`p_{nc}` with ``n_bins_all`` bins (10 in the paper) and
  :math:`\mathrm{ECE}_\mathrm{all} = \sum_b \frac{|B_b|}{NC} |\bar t(B_b) - \bar p(B_b)|`, with
  :math:`\bar t` the fraction of pairs whose target is 1 and :math:`\bar p` the mean probability;
  :math:`\mathrm{MCE}_\mathrm{all}` is the largest gap over non-empty bins. Computed by
  :func:`torchmetrics.functional.classification.binary_calibration_error` on the flattened pairs.
- OOD scores, larger meaning "more likely out of distribution": :math:`1 - \hat c_n` (maximum
  softmax probability, Hendrycks & Gimpel 2017) and the predictive entropy
  :math:`-\sum_c p_{nc} \log p_{nc}` (with :math:`0 \log 0 = 0`). Detection treats the OOD examples
  as positives and reports the area under the ROC curve and the average precision
  :math:`\sum_k (R_k - R_{k-1}) P_k` (area under the precision-recall curve, no interpolation)
  with :func:`~torchmetrics.functional.classification.binary_auroc` and
  :func:`~torchmetrics.functional.classification.binary_average_precision`.
- Against a known true posterior :math:`p^*` (synthetic data):
  :math:`\frac1N\sum_n \mathrm{KL}(p^*_n \,\|\, \hat p_n)
  = \frac1N\sum_n\sum_c p^*_{nc}(\log p^*_{nc} - \log \max(\hat p_{nc}, \epsilon))` in nats, and
  the mean absolute error of the predicted probability: :math:`|\hat p_{n1} - p^*_{n1}|` for
  ``C == 2``, the total variation :math:`\frac12\sum_c |\hat p_{nc} - p^*_{nc}|` otherwise (for
  normalised rows with two classes the two are equal).

Binning
-------

The bins are those of torchmetrics (1.9), which differ in three details from the half-open
:math:`(b/B, (b+1)/B]` bins one might assume:

1. The edges are :math:`e = ` ``torch.linspace(0, 1, B + 1)`` in the binning dtype, on the input's
   device, and bin :math:`b < B` is the *left-closed* interval :math:`[e_b, e_{b+1})`
   (``torch.bucketize(x, e, right=True) - 1``). A value exactly on an edge goes to the bin above
   it; ``0.0`` goes to bin 0.
2. There are :math:`B + 1` bins: the extra bin :math:`B` holds the values :math:`\ge e_B = 1`,
   i.e. the probabilities exactly equal to ``1.0``. They are not merged into
   :math:`[e_{B-1}, 1)`. Splitting a bin can only raise the L1 error (triangle inequality), so for
   a saturated, over-confident model this ECE is at least that of code which folds ``1.0`` into
   the top bin. Guo et al.'s reference code uses :math:`(e_b, e_{b+1}]`: edge values go to the
   lower bin, ``1.0`` to the top bin, and an exact ``0.0`` to no bin at all (which matters for the
   all-class error, where most probabilities of a confident float32 model are exactly zero);
   loops that use :math:`[e_b, e_{b+1})` for every bin and no extra bin drop ``1.0`` altogether.
3. :math:`e_b` is ``torch.linspace``'s value, not the correctly rounded :math:`b/B`: it is
   :math:`b \cdot s` for :math:`b < \lfloor (B+1)/2 \rfloor` and :math:`1 - (B - b)\, s` above,
   with :math:`s = 1/B` rounded to the dtype and one rounding per edge. With 15 float32 bins,
   :math:`e_3 = 0.20000002 >` ``float32(0.2)``, so a confidence of 0.2 lands in bin 2; with 10
   float64 bins :math:`e_3 = 0.30000000000000004`, so a probability of 0.3 lands in bin 2.

The top-1 confidences are cast to float32 before binning whatever the input dtype (torchmetrics'
multiclass update does this), so a float64 confidence within ``2**-25`` (about 3e-8) of one
counts as ``1.0``; the all-class pairs are binned in the input dtype. Empty bins report
confidence and accuracy 0 and weigh nothing. :func:`reliability_bins` reproduces this binning
exactly, so the ECE computed from its bins equals :func:`classification_metrics`' ``ece``.

Example::

    >>> import torch
    >>> probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    >>> labels = torch.tensor([0, 2, 2])
    >>> m = classification_metrics(probs, labels, n_bins=10)
    >>> round(m["accuracy"], 4), round(m["brier"], 4), round(m["ece"], 4)
    (0.6667, 0.7133, 0.5667)

References:

- M. P. Naeini, G. F. Cooper, M. Hauskrecht. *Obtaining well calibrated probabilities using
  Bayesian binning*. AAAI 2015 (ECE and MCE).
- C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger. *On calibration of modern neural networks*.
  ICML 2017 (top-1 ECE and reliability diagrams).
- W. Chen, Y. Li. *Calibrating Transformers via Sparse Gaussian Processes*. ICLR 2023 (all-class
  ECE/MCE, OOD detection by maximum probability and entropy).
- D. Hendrycks, K. Gimpel. *A baseline for detecting misclassified and out-of-distribution examples
  in neural networks*. ICLR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    multiclass_calibration_error,
)

__all__ = [
    "classification_metrics",
    "mean_and_error",
    "ood_detection",
    "ood_scores",
    "reliability_bins",
    "true_posterior_metrics",
]

#: Tolerance on ``|sum_c p_nc - 1|`` for float32 and float64 (raised to ``C * eps`` for half
#: precision and very many classes).
ROW_SUM_TOL = 1e-4


def _check_probs(probs: object, name: str = "probs") -> torch.Tensor:
    """``probs`` as an ``(N, C)`` tensor of at least float32, clamped to at most 1."""
    if not isinstance(probs, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape (N, C), got {type(probs).__name__}; "
            f"convert it with torch.as_tensor({name}, dtype=torch.float32)"
        )
    if not probs.is_floating_point():
        raise ValueError(
            f"{name} must have a floating dtype, got {probs.dtype}; pass probabilities as "
            f"float32 or float64 (e.g. logits.softmax(-1)), not class indices"
        )
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape (N, C) with C >= 2 classes, got shape {tuple(probs.shape)}; "
            "for one probability p per example pass torch.stack([1 - p, p], dim=-1)"
        )
    if probs.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(probs.shape)}); pass at least one example")
    p = probs.detach()
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()
    finite = torch.isfinite(p).all(dim=1)
    if not finite.all():
        row = int((~finite).nonzero()[0])
        raise ValueError(
            f"{name} contains NaN or inf (first in row {row}); drop those examples or fix the "
            "model output"
        )
    negative = (p < 0).any(dim=1)
    if negative.any():
        row = int(negative.nonzero()[0])
        raise ValueError(
            f"{name} has negative entries (first in row {row}, min {float(p.min()):.4g}); pass "
            "probabilities, not logits (apply .softmax(-1))"
        )
    num_classes = p.shape[1]
    tol = max(ROW_SUM_TOL, num_classes * torch.finfo(probs.dtype).eps)
    gap = (p.double().sum(dim=1) - 1.0).abs()
    if (gap > tol).any():
        row = int(gap.argmax())
        raise ValueError(
            f"rows of {name} must sum to 1 within {tol:.1e}, but row {row} sums to "
            f"{float(p[row].double().sum()):.6g}; pass probabilities, not logits (apply "
            ".softmax(-1)), and average probabilities, not logits, over posterior draws"
        )
    # within the tolerance an entry may exceed 1 by rounding; torchmetrics would then take the
    # whole tensor for logits and apply softmax/sigmoid
    return p.clamp(max=1.0)


def _check_labels(labels: object, probs: torch.Tensor) -> torch.Tensor:
    """``labels`` as ``(N,)`` int64 class indices in ``[0, C)`` on ``probs``' device."""
    num, num_classes = probs.shape
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"labels must be a torch.Tensor of shape ({num},), got {type(labels).__name__}; "
            "convert it with torch.as_tensor(labels, dtype=torch.long)"
        )
    if labels.dim() == 2 and labels.shape == probs.shape:
        raise ValueError(
            f"labels must be class indices of shape ({num},), got shape {tuple(labels.shape)} "
            "(one-hot?); pass labels.argmax(-1)"
        )
    if labels.shape != (num,):
        raise ValueError(
            f"labels must have shape ({num},) (one class index per row of probs), got shape "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be int64 class indices, got dtype {labels.dtype}; use labels.long()"
        )
    if labels.device != probs.device:
        raise ValueError(
            f"labels is on {labels.device} but probs is on {probs.device}; move it with "
            f"labels.to({str(probs.device)!r})"
        )
    labels = labels.detach()
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for probs with {num_classes} classes, got "
            f"{int(labels[index])} at index {index}; relabel the classes as 0..{num_classes - 1}"
        )
    return labels


def _check_n_bins(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer number of bins, got {value!r}")
    return value


def _same_layout(other: torch.Tensor, probs: torch.Tensor, name: str, ref: str) -> None:
    if other.device != probs.device:
        raise ValueError(
            f"{name} is on {other.device} but {ref} is on {probs.device}; move it with "
            f"{name}.to({str(probs.device)!r})"
        )


def classification_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_bins: int = 15,
    n_bins_all: int = 10,
) -> dict[str, float]:
    r"""Accuracy, NLL, Brier score and the top-1 and all-class calibration errors.

    See the module docstring for the formulas and the exact binning.

    :param probs: predictive probabilities, shape ``(N, C)``, rows summing to 1.
    :param labels: true classes, ``int64`` of shape ``(N,)`` in ``[0, C)``, same device.
    :param n_bins: equal-width bins of the top-1 ECE/MCE (15, as in Guo et al. 2017).
    :param n_bins_all: bins of the all-class ECE/MCE (10, as in Chen & Li 2023).
    :returns: ``{"accuracy", "nll", "brier", "ece", "mce", "ece_all", "mce_all"}``.
    :raises ValueError: bad ``probs``, ``labels``, ``n_bins`` or ``n_bins_all``.
    """
    p = _check_probs(probs)
    y = _check_labels(labels, p)
    n_bins = _check_n_bins(n_bins, "n_bins")
    n_bins_all = _check_n_bins(n_bins_all, "n_bins_all")
    num_classes = p.shape[1]
    onehot = F.one_hot(y, num_classes)
    p_true = p.gather(1, y[:, None]).squeeze(1)
    return {
        "accuracy": float((p.argmax(dim=1) == y).double().mean()),
        "nll": float(-p_true.clamp(min=torch.finfo(p.dtype).tiny).log().mean()),
        "brier": float((p - onehot.to(p.dtype)).square().sum(dim=1).mean()),
        "ece": float(multiclass_calibration_error(p, y, num_classes, n_bins=n_bins, norm="l1")),
        "mce": float(multiclass_calibration_error(p, y, num_classes, n_bins=n_bins, norm="max")),
        "ece_all": float(
            binary_calibration_error(p.flatten(), onehot.flatten(), n_bins=n_bins_all, norm="l1")
        ),
        "mce_all": float(
            binary_calibration_error(p.flatten(), onehot.flatten(), n_bins=n_bins_all, norm="max")
        ),
    }


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> dict[str, torch.Tensor]:
    r"""Per-bin mean confidence, accuracy and count of the top-1 predictions.

    The binning is torchmetrics' (module docstring, *Binning*): confidences
    :math:`\hat c_n = \max_c p_{nc}` cast to float32; ``edges = torch.linspace(0, 1, n_bins + 1)``
    (float32, on ``probs``' device); bin ``b < n_bins`` is ``[edges[b], edges[b + 1])``, so a
    confidence equal to an edge goes to the bin above it; an extra last bin ``n_bins`` holds the
    confidences exactly ``1.0``. Hence ``n_bins + 1`` bins, and
    ``sum(count * |accuracy - confidence|) / N`` is :func:`classification_metrics`' ``ece``.

    :param probs: predictive probabilities, shape ``(N, C)``.
    :param labels: true classes, ``int64`` of shape ``(N,)``.
    :param n_bins: number of equal-width bins below 1.
    :returns: tensors of shape ``(n_bins + 1,)`` on ``probs``' device: ``"confidence"`` (mean
        confidence, float32, 0 in empty bins), ``"accuracy"`` (fraction correct, float32, 0 in empty
        bins), ``"count"`` (int64) and ``"edges"`` (the lower edge of each bin, float32; the
        last is 1.0).
    :raises ValueError: bad ``probs``, ``labels`` or ``n_bins``.
    """
    p = _check_probs(probs)
    y = _check_labels(labels, p)
    n_bins = _check_n_bins(n_bins, "n_bins")
    confidence, prediction = p.max(dim=1)
    confidence = confidence.float()
    correct = (prediction == y).float()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32, device=p.device)
    index = torch.bucketize(confidence, edges, right=True) - 1
    count = torch.bincount(index, minlength=n_bins + 1)
    denom = count.float()
    conf_sum = torch.zeros_like(edges).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros_like(edges).scatter_add_(0, index, correct)
    return {
        "confidence": torch.nan_to_num(conf_sum / denom),
        "accuracy": torch.nan_to_num(acc_sum / denom),
        "count": count,
        "edges": edges,
    }


def _scores(p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "max_prob": 1.0 - p.max(dim=1).values,
        "entropy": -torch.special.xlogy(p, p).sum(dim=1),
    }


def ood_scores(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Per-example out-of-distribution scores; larger means more likely OOD.

    :param probs: predictive probabilities, shape ``(N, C)``.
    :returns: ``{"max_prob": 1 - max_c p_nc, "entropy": -sum_c p_nc log p_nc}``, each of shape
        ``(N,)`` on ``probs``' device (float32 for half-precision input), with
        :math:`0 \log 0 = 0`.
    :raises ValueError: bad ``probs``.
    """
    return _scores(_check_probs(probs))


def ood_detection(probs_in: torch.Tensor, probs_out: torch.Tensor) -> dict[str, float]:
    """AUROC and average precision of telling OOD examples (the positives) from in-distribution.

    Both scores of :func:`ood_scores` are used. Entropy is divided by :math:`\\log C` (a monotone
    map into ``[0, 1]``, which leaves both areas unchanged) because torchmetrics takes scores
    outside ``[0, 1]`` for logits and squashes them with a sigmoid, which in float32 merges
    nearby large scores into ties.

    :param probs_in: predictive probabilities on in-distribution inputs, shape ``(N_in, C)``.
    :param probs_out: predictive probabilities on OOD inputs, shape ``(N_out, C)``, same ``C``
        and device.
    :returns: ``{"auroc_max_prob", "aupr_max_prob", "auroc_entropy", "aupr_entropy"}``.
    :raises ValueError: bad ``probs_in`` or ``probs_out``.
    """
    p_in = _check_probs(probs_in, "probs_in")
    p_out = _check_probs(probs_out, "probs_out")
    if p_out.shape[1] != p_in.shape[1]:
        raise ValueError(
            f"probs_out has {p_out.shape[1]} classes but probs_in has {p_in.shape[1]}; score "
            "both sets with the same classifier"
        )
    _same_layout(p_out, p_in, "probs_out", "probs_in")
    target = torch.cat(
        [
            torch.zeros(p_in.shape[0], dtype=torch.long, device=p_in.device),
            torch.ones(p_out.shape[0], dtype=torch.long, device=p_in.device),
        ]
    )
    s_in, s_out = _scores(p_in), _scores(p_out)
    scale = {"max_prob": 1.0, "entropy": math.log(p_in.shape[1])}
    result: dict[str, float] = {}
    for key in ("max_prob", "entropy"):
        score = (torch.cat([s_in[key], s_out[key]]).double() / scale[key]).clamp(0.0, 1.0)
        result[f"auroc_{key}"] = float(binary_auroc(score, target))
        result[f"aupr_{key}"] = float(binary_average_precision(score, target))
    return result


def true_posterior_metrics(probs: torch.Tensor, true_probs: torch.Tensor) -> dict[str, float]:
    r"""Distance of the predicted probabilities from the true posterior :math:`p^*(y \mid x)`.

    - ``true_kl``: :math:`\frac1N \sum_n \sum_c p^*_{nc}
      (\log p^*_{nc} - \log \max(\hat p_{nc}, \epsilon))`, in nats, with :math:`0 \log 0 = 0`
      and :math:`\epsilon` the dtype's smallest normal number (a zero prediction where
      :math:`p^* > 0` is large but finite).
    - ``true_abs_error``: for ``C == 2``, :math:`\frac1N \sum_n |\hat p_{n1} - p^*_{n1}|`, the
      error of the predicted :math:`p(y = 1 \mid x)`; for ``C > 2``, the mean total variation
      :math:`\frac1N \sum_n \frac12 \sum_c |\hat p_{nc} - p^*_{nc}|`. The two agree for two
      normalised classes.

    :param probs: predicted probabilities, shape ``(N, C)``.
    :param true_probs: true class probabilities, same shape and device.
    :returns: ``{"true_kl", "true_abs_error"}``.
    :raises ValueError: bad ``probs`` or ``true_probs``, or their shapes differ.
    """
    p = _check_probs(probs)
    q = _check_probs(true_probs, "true_probs")
    if q.shape != p.shape:
        raise ValueError(
            f"true_probs has shape {tuple(q.shape)} but probs has {tuple(p.shape)}; pass the "
            "true class probabilities of the same examples"
        )
    _same_layout(q, p, "true_probs", "probs")
    dtype = torch.promote_types(p.dtype, q.dtype)
    p, q = p.to(dtype), q.to(dtype)
    p_floor = p.clamp(min=torch.finfo(dtype).tiny)
    # the same op on both terms: exactly 0 where the prediction equals the truth
    kl = (torch.special.xlogy(q, q) - torch.special.xlogy(q, p_floor)).sum(dim=1).mean()
    if p.shape[1] == 2:
        abs_error = (p[:, 1] - q[:, 1]).abs().mean()
    else:
        abs_error = 0.5 * (p - q).abs().sum(dim=1).mean()
    return {"true_kl": float(kl), "true_abs_error": float(abs_error)}


def mean_and_error(values: torch.Tensor | np.ndarray | Sequence[float]) -> tuple[float, float]:
    r"""Mean and two standard errors, :math:`2 s / \sqrt n` with the sample sd (``ddof=1``).

    For results over independent seeds or folds: ``mean ± error`` is an approximate 95%
    interval for the mean.

    :param values: one number per run, a 1-D tensor, array or sequence.
    :returns: ``(mean, error)``; ``error`` is NaN for a single value.
    :raises ValueError: empty, not 1-D, not numbers, or not finite.
    """
    if isinstance(values, torch.Tensor):
        array = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"values must be numbers (one per run), got {values!r:.80}; pass a list of floats"
            ) from error
    if array.ndim != 1:
        raise ValueError(
            f"values must be 1-D (one number per run), got shape {array.shape}; flatten it or "
            "call once per metric"
        )
    if array.size == 0:
        raise ValueError("values is empty; pass at least one number")
    if not np.isfinite(array).all():
        raise ValueError(
            f"values contains NaN or inf at index {int(np.flatnonzero(~np.isfinite(array))[0])}; "
            "drop failed runs explicitly"
        )
    mean = float(array.mean())
    if array.size == 1:
        return mean, math.nan
    return mean, float(2.0 * array.std(ddof=1) / math.sqrt(array.size))
