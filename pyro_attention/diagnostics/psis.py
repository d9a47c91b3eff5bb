"""Pareto-smoothed importance sampling (PSIS) diagnostic k-hat for raw log importance weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from pyro.ops.stats import fit_generalized_pareto

__all__ = ["psis_khat"]

#: Fewest weights accepted: the tail then still holds ceil(0.2 * 25) = 5 weights.
MIN_WEIGHTS = 25


def psis_khat(log_weights: torch.Tensor | np.ndarray) -> float:
    r"""Pareto shape estimate :math:`\hat k` of the importance weights' right tail.

    Given draws :math:`x_s \sim q` and log weights :math:`\log w_s = \log p(x_s) - \log q(x_s)`
    (``p`` may be unnormalised), fit a generalized Pareto distribution to the :math:`M` largest
    weights, :math:`M = \lceil \min(0.2 S, 3 \sqrt{S}) \rceil`, as exceedances over the
    :math:`(M+1)`-th largest weight (the cutoff; weights tied with it are left out), with the
    Zhang & Stephens (2009) estimator and its weakly informative prior
    (:func:`pyro.ops.stats.fit_generalized_pareto`). This is the computation of
    :func:`pyro.infer.importance.psis_diagnostic`, on weights you already have (e.g. from
    ``vectorized_importance_weights``), except that no floor is put on the cutoff
    (``psis_diagnostic`` raises it to :math:`10^{-15} \max_s w_s`) and equal weights give
    ``-inf`` instead of ``inf`` with a warning.

    Reading (Vehtari et al. 2024):

    - :math:`\hat k < 0.5`: good; the weights have finite variance, importance sampling (and the
      proposal/guide as an approximation of the target) is reliable;
    - :math:`0.5 \le \hat k \le 0.7`: ok; PSIS estimates are still usable;
    - :math:`\hat k > 0.7`: unreliable; the proposal's tails are too light, estimates can be
      far off whatever the number of draws.

    :math:`\hat k` is itself a noisy estimate; use a few thousand weights.

    :param log_weights: 1-D log importance weights, shape ``(S,)`` with ``S >= 25``, on any
        device. ``-inf`` (zero weight) is allowed; NaN is refused.
    :returns: :math:`\hat k`; ``inf`` if a weight is ``+inf``; ``-inf`` if the largest weights
        are all equal (bounded weights with no tail, e.g. proposal equal to the target).
    :raises ValueError: not 1-D, fewer than 25 weights, NaN, or every weight ``-inf``.

    Reference: A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. *Pareto smoothed importance
    sampling*. JMLR 25(72), 2024.

    Example::

        >>> import torch
        >>> from torch.distributions import Normal
        >>> x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))  # proposal N(0, 1)
        >>> psis_khat(Normal(0.0, 1.1).log_prob(x) - Normal(0.0, 1.0).log_prob(x)) < 0.5
        True
        >>> psis_khat(Normal(0.0, 3.0).log_prob(x) - Normal(0.0, 1.0).log_prob(x)) > 0.7  # k = 8/9
        True
    """
    if isinstance(log_weights, torch.Tensor):
        lw = log_weights.detach().to(device="cpu", dtype=torch.float64)
    else:
        array = np.asarray(log_weights)
        if array.dtype.kind not in "iuf":
            raise TypeError(
                f"log_weights must be real numbers, got dtype {array.dtype}; "
                "pass a float torch.Tensor or numpy array"
            )
        lw = torch.as_tensor(array, dtype=torch.float64)
    if lw.dim() != 1:
        raise ValueError(
            f"log_weights must be 1-D (one weight per draw), got shape {tuple(lw.shape)}; "
            "flatten it with .reshape(-1) or compute one k-hat per row"
        )
    num_draws = lw.numel()
    if num_draws < MIN_WEIGHTS:
        raise ValueError(
            f"log_weights has {num_draws} weight(s) but k-hat needs at least {MIN_WEIGHTS} "
            "(a few thousand for a stable estimate); draw more samples from the proposal"
        )
    if torch.isnan(lw).any():
        raise ValueError(
            f"log_weights contains {int(torch.isnan(lw).sum())} NaN value(s); NaN log weights "
            "come from NaN log densities: fix the model/guide or drop those draws"
        )
    if torch.isposinf(lw).any():
        return math.inf
    if torch.isneginf(lw).all():
        raise ValueError(
            "every log weight is -inf (all weights zero): the proposal puts no mass where the "
            "target does; no tail to diagnose"
        )

    num_tail = math.ceil(min(0.2 * num_draws, 3.0 * math.sqrt(num_draws)))
    lw = torch.sort(lw - lw.max()).values
    cutoff = lw[-num_tail - 1]
    # Strictly above the cutoff, as in psis_diagnostic: ties with the cutoff (and zero weights)
    # would give zero exceedances, on which the Zhang-Stephens fit divides by zero.
    tail = lw[-num_tail:]
    tail = tail[tail > cutoff]
    if tail.numel() == 0:
        return -math.inf
    k, _ = fit_generalized_pareto(tail.exp() - cutoff.exp())
    return float(k)
