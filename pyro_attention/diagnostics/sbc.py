r"""Simulation-based calibration (SBC) of a Bayesian inference algorithm.

If :math:`\tilde\theta \sim p(\theta)`, :math:`\tilde y \sim p(y \mid \tilde\theta)` and
:math:`\theta_1, \dots, \theta_L` are *independent* draws from the exact posterior
:math:`p(\theta \mid \tilde y)`, then for any scalar statistic :math:`f(\theta, y)` the rank

.. math::

    r = \#\{\, l : f(\theta_l, \tilde y) < f(\tilde\theta, \tilde y) \,\}
    \qquad (\text{ties broken uniformly at random})

is uniformly distributed on :math:`\{0, \dots, L\}`, because :math:`\tilde\theta` and the
:math:`\theta_l` are exchangeable draws from the joint :math:`p(\theta \mid \tilde y)\,
p(\tilde y)` (Talts et al. 2018, Theorem 1). An algorithm whose draws are too narrow
(over-confident) piles the ranks at both ends (a "∪" histogram), one that is too wide piles them
in the middle ("∩"), and a biased one skews them. Repeating the simulation :math:`R` times and
testing the :math:`R` ranks for uniformity checks the algorithm and its implementation together.

Practicalities handled here:

- **Independence.** MCMC draws are autocorrelated, which by itself makes the histogram "∪"
  shaped. With ``thin="ess"`` the draws returned by ``infer`` are read as one chain, the effective
  sample size (ESS) of every statistic is computed over the whole chain, and ``L`` evenly spaced
  draws are kept (Talts et al. §5.1 thin to about the ESS); replications whose smallest ESS is
  below ``L`` are counted in :attr:`SBCResult.low_ess`, so a residual autocorrelation is visible.
- **Label switching.** Mixture components are exchangeable, so use permutation-invariant
  statistics only (sorted locations, the largest weight, the log-likelihood of the simulated data
  — a data-dependent statistic, Modrák et al. 2023): see :func:`gaussian_mixture_statistics`.
- **Test.** Ranks are binned into :math:`B` bins; Pearson's :math:`\chi^2 = \sum_b (c_b -
  R p_b)^2 / (R p_b)` with :math:`B - 1` degrees of freedom gives one p-value per statistic
  (:math:`p_b` is the share of the :math:`L + 1` rank values in bin :math:`b`). A method passes
  when no p-value is below the Bonferroni threshold :math:`\alpha / (\text{number of statistics})`.
- **Plot.** :func:`plot_rank_histograms` draws one histogram per statistic with the 99% band of a
  uniform histogram (binomial quantiles 0.005 and 0.995 of :math:`\mathrm{Bin}(R, p_b)`), as in
  Talts et al., Fig. 1.

Example (a Normal mean with known variance, whose posterior is exact)::

    import torch
    from pyro_attention.diagnostics.sbc import sbc_ranks

    def simulate(seed):
        g = torch.Generator().manual_seed(seed)
        mu = torch.randn((), generator=g, dtype=torch.float64)
        return {"mu": mu}, mu + torch.randn(10, generator=g, dtype=torch.float64)

    def infer(y, seed):  # prior N(0, 1), unit noise: posterior N(sum y / (n + 1), 1 / (n + 1))
        g = torch.Generator().manual_seed(seed)
        n = y.shape[0]
        draws = y.sum() / (n + 1) + torch.randn(99, generator=g, dtype=y.dtype) / (n + 1) ** 0.5
        return {"mu": draws}

    result = sbc_ranks(simulate, infer, lambda theta, y: {"mu": theta["mu"]},
                       num_replications=200, num_draws=99)
    result.passed, result.p_values  # True, {"mu": ...}

References: S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman. *Validating Bayesian
inference algorithms with simulation-based calibration*, arXiv:1804.06788, 2018.
M. Modrák, A. H. Moon, S. Kim, P. Bürkner, N. Huurre, K. Faltejsková, A. Gelman, A. Vehtari.
*Simulation-based calibration checking for Bayesian computation: the choice of test quantities
shapes sensitivity*, Bayesian Analysis, 2023.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pyro import poutine
from pyro.ops.stats import effective_sample_size
from tqdm import tqdm

__all__ = [
    "SBCResult",
    "binomial_band",
    "chi2_sf",
    "default_num_bins",
    "gaussian_mixture_statistics",
    "overconfident",
    "plot_rank_histograms",
    "prior_simulator",
    "rank_bins",
    "sbc_rank",
    "sbc_ranks",
    "summarize_ranks",
    "uniformity_test",
]

#: draws of the globals, ``{site: (S, *site_shape)}``
Draws = Mapping[str, torch.Tensor]
#: ``seed -> (theta, data)``: ``theta`` ``{site: site_shape}`` drawn from the prior, ``data`` from
#: the model given ``theta``
SimulateFn = Callable[[int], tuple[dict[str, torch.Tensor], Any]]
#: ``(data, seed) -> {site: (S, *site_shape)}``, draws of (an approximation of) the posterior
InferFn = Callable[[Any, int], Draws]
#: ``(theta, data) -> {name: (S,)}``, scalar statistics of a batch of ``S`` parameter values
StatisticsFn = Callable[[Draws, Any], Mapping[str, torch.Tensor]]


# ----------------------------------------------------------------------------------------------
# Ranks and the uniformity test


def sbc_rank(
    truth: torch.Tensor, draws: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Rank of ``truth`` among ``draws``: :math:`\#\{l : d_l < t\} + U`, with :math:`U` uniform
    on :math:`\{0, \dots, \#\{l : d_l = t\}\}` (ties broken at random), so in :math:`0..L`.

    :param truth: ``(*batch)``, e.g. one value per statistic.
    :param draws: ``(L, *batch)``.
    :param generator: CPU ``torch.Generator`` of the tie-breaking draws (global RNG if None).
    :returns: ``(*batch)`` int64 ranks.
    """
    if draws.dim() < 1 or draws.shape[1:] != truth.shape:
        raise ValueError(
            f"draws must be (L, *truth.shape) = (L, {', '.join(map(str, truth.shape))}), got "
            f"{tuple(draws.shape)}"
        )
    if torch.isnan(truth).any() or torch.isnan(draws).any():
        raise ValueError("sbc_rank got NaN in truth or draws; a statistic must be finite or ±inf")
    less = (draws < truth).sum(0)
    ties = (draws == truth).sum(0)
    u = torch.rand(truth.shape, generator=generator, dtype=torch.float64)
    extra = (u * (ties + 1).to(torch.float64).cpu()).floor().long().clamp(max=ties.cpu())
    return less.cpu() + extra


def rank_bins(num_draws: int, num_bins: int) -> torch.Tensor:
    """Bin of each rank value: rank :math:`r \\in 0..L` goes to bin
    :math:`\\lfloor r B / (L + 1) \\rfloor`; ``(L + 1,)`` int64 (bins equal when ``B`` divides
    ``L + 1``)."""
    _check_int(num_draws, "num_draws", 1)
    _check_int(num_bins, "num_bins", 2)
    if num_bins > num_draws + 1:
        raise ValueError(
            f"num_bins={num_bins} exceeds the {num_draws + 1} possible ranks of num_draws="
            f"{num_draws}; use at most {num_draws + 1} bins"
        )
    return torch.arange(num_draws + 1) * num_bins // (num_draws + 1)


def default_num_bins(num_replications: int, num_draws: int, max_bins: int = 20) -> int:
    """The most bins ``B <= max_bins`` that divide ``L + 1`` and keep ``R / B >= 5`` expected
    ranks per bin (the usual condition of Pearson's test); at least 2."""
    _check_int(num_replications, "num_replications", 1)
    _check_int(num_draws, "num_draws", 1)
    best = 2
    for bins in range(2, min(max_bins, num_draws + 1) + 1):
        if (num_draws + 1) % bins == 0 and num_replications / bins >= 5:
            best = bins
    return best


def chi2_sf(statistic: float, df: int) -> float:
    r"""Survival function of :math:`\chi^2_{df}`: :math:`Q(df/2, x/2)`, the regularised upper
    incomplete gamma function (``torch.special.gammaincc``), in float64."""
    _check_int(df, "df", 1)
    if not statistic >= 0:
        raise ValueError(f"a chi-square statistic is >= 0, got {statistic!r}")
    x = torch.tensor(statistic / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), x))


def uniformity_test(ranks: torch.Tensor, num_draws: int, num_bins: int) -> tuple[float, float]:
    r"""Pearson's :math:`\chi^2` test that ``ranks`` are uniform on :math:`0..L`.

    :math:`X^2 = \sum_b (c_b - R p_b)^2 / (R p_b)` over the :func:`rank_bins`, with
    :math:`p_b` the share of rank values in bin :math:`b`; p-value :math:`P(\chi^2_{B-1} \ge X^2)`.

    :param ranks: ``(R,)`` integers in ``0..num_draws``.
    :returns: ``(X², p-value)``.
    """
    ranks = torch.as_tensor(ranks)
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor, got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.min() < 0 or ranks.max() > num_draws:
        raise ValueError(f"ranks must be integers in 0..{num_draws} (num_draws)")
    bins = rank_bins(num_draws, num_bins)
    counts = torch.bincount(bins[ranks.long().cpu()], minlength=num_bins).double()
    probs = torch.bincount(bins, minlength=num_bins).double() / (num_draws + 1)
    expected = ranks.numel() * probs
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic, chi2_sf(statistic, num_bins - 1)


def binomial_band(
    num_replications: int, probs: torch.Tensor, level: float = 0.99
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Central ``level`` band of a uniform histogram's bin counts: the
    :math:`(1 - \text{level})/2` and :math:`(1 + \text{level})/2` quantiles of
    :math:`\mathrm{Bin}(R, p_b)` (smallest :math:`k` with CDF :math:`\ge q`).

    :param probs: ``(B,)`` bin probabilities.
    :returns: ``(lower, upper)``, each ``(B,)`` float64 counts.
    """
    _check_int(num_replications, "num_replications", 1)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    probs = torch.as_tensor(probs, dtype=torch.float64)
    k = torch.arange(num_replications + 1, dtype=torch.float64)
    binom = torch.distributions.Binomial(
        total_count=torch.tensor(float(num_replications), dtype=torch.float64),
        probs=probs.clamp(1e-12, 1 - 1e-12)[:, None],
    )
    cdf = binom.log_prob(k).exp().cumsum(-1)

    def quantile(q: float) -> torch.Tensor:
        # a little slack against round-off in the cumulative sum
        return (cdf < q - 1e-12).sum(-1).clamp(max=num_replications).double()

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


# ----------------------------------------------------------------------------------------------
# The SBC loop


@dataclass
class SBCResult:
    """What :func:`sbc_ranks` returns.

    :ivar ranks: ``{statistic: (R,)}`` int64 ranks in ``0..num_draws``.
    :ivar num_draws: :math:`L`, posterior draws per replication after thinning.
    :ivar num_bins: :math:`B` of the test and the histograms.
    :ivar chi2: ``{statistic: X²}``; :ivar p_values: ``{statistic: p-value}``.
    :ivar alpha: family-wise level; :ivar threshold: ``alpha / len(ranks)`` (Bonferroni).
    :ivar passed: no p-value below ``threshold``.
    :ivar seconds: wall time (simulation, inference and ranks).
    :ivar min_ess: ``(R,)`` smallest ESS over the statistics before thinning (``thin="ess"``),
        else ``None``; :ivar low_ess: replications with ``min_ess < num_draws``.
    :ivar skipped: ``[(replication, error)]`` of replications whose inference failed
        (``on_error="skip"``); they are not ranked, which can bias the test: report them.
    """

    ranks: dict[str, torch.Tensor]
    num_draws: int
    num_bins: int
    chi2: dict[str, float]
    p_values: dict[str, float]
    alpha: float
    threshold: float
    passed: bool
    seconds: float
    min_ess: torch.Tensor | None = None
    low_ess: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def num_replications(self) -> int:
        """:math:`R`, ranked replications."""
        return int(next(iter(self.ranks.values())).numel())

    def normalized_rank_moments(self) -> dict[str, tuple[float, float]]:
        """``{statistic: (mean, sd)}`` of ``rank / L``: uniform gives about ``(0.5, 0.29)``; a
        larger sd means over-confident draws (∪), a smaller one under-confident (∩), a mean off
        0.5 a bias (above: the draws of the statistic are too small)."""
        out = {}
        for name, ranks in self.ranks.items():
            u = ranks.double() / self.num_draws
            out[name] = (float(u.mean()), float(u.std()) if u.numel() > 1 else math.nan)
        return out

    def to_dict(self, with_ranks: bool = True) -> dict[str, Any]:
        """JSON-ready summary (ranks as lists when ``with_ranks``)."""
        moments = self.normalized_rank_moments()
        out: dict[str, Any] = {
            "passed": self.passed,
            "replications": self.num_replications,
            "draws": self.num_draws,
            "bins": self.num_bins,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "seconds": self.seconds,
            "statistics": {
                name: {
                    "p_value": self.p_values[name],
                    "chi2": self.chi2[name],
                    "rank_mean": moments[name][0],
                    "rank_sd": moments[name][1],
                }
                for name in self.ranks
            },
            "low_ess": self.low_ess,
            "min_ess_median": (
                None if self.min_ess is None else float(self.min_ess.double().median())
            ),
            "skipped": [{"replication": r, "error": e} for r, e in self.skipped],
        }
        if with_ranks:
            out["ranks"] = {name: r.tolist() for name, r in self.ranks.items()}
        return out


def sbc_ranks(
    simulate: SimulateFn,
    infer: InferFn,
    statistics: StatisticsFn,
    *,
    num_replications: int,
    num_draws: int,
    seed: int = 0,
    thin: Literal["none", "ess"] = "none",
    num_bins: int | None = None,
    alpha: float = 0.01,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = False,
    desc: str = "SBC",
) -> SBCResult:
    r"""Run simulation-based calibration (Talts et al. 2018, Algorithm 1) and test the ranks.

    For replication :math:`i = 1..R`: ``theta, y = simulate(s_i)``;
    ``draws = infer(y, t_i)``; the statistics of the truth ``statistics(theta[None], y)`` and of
    the draws ``statistics(draws, y)`` (vectorised over the draws); one :func:`sbc_rank` per
    statistic. The seeds :math:`s_i, t_i` and the tie-breaking generator all derive from
    ``seed``, so a run is reproducible given deterministic ``simulate``/``infer``.

    :param simulate: ``seed -> (theta, data)``: ``theta`` ``{site: site_shape}`` drawn from the
        prior, ``data`` from the model given it (e.g. :func:`prior_simulator`).
    :param infer: ``(data, seed) -> {site: (S, *site_shape)}`` posterior draws. Independent
        draws with ``thin="none"`` (the first ``num_draws`` are used); one Markov chain in order
        with ``thin="ess"`` (``S >= num_draws``).
    :param statistics: ``(theta, data) -> {name: (S,)}`` for a batch of ``S`` parameter values
        ``{site: (S, *site_shape)}``; permutation-invariant for mixtures.
    :param num_replications: :math:`R \ge 1`.
    :param num_draws: :math:`L \ge 1`; ranks lie in ``0..L``.
    :param seed: base seed.
    :param thin: ``"none"`` or ``"ess"`` (keep ``L`` evenly spaced draws of the chain; record the
        smallest ESS of the statistics, :attr:`SBCResult.min_ess`).
    :param num_bins: bins of the :math:`\chi^2` test; default :func:`default_num_bins`.
    :param alpha: family-wise level of the test, Bonferroni-corrected over the statistics.
    :param on_error: ``"raise"`` the first exception of ``infer``, or ``"skip"`` the replication
        (recorded in :attr:`SBCResult.skipped`).
    :param progress: show a tqdm bar; :param desc: its label.
    :returns: :class:`SBCResult`.
    """
    _check_int(num_replications, "num_replications", 1)
    _check_int(num_draws, "num_draws", 1)
    if thin not in ("none", "ess"):
        raise ValueError(f"thin must be 'none' or 'ess', got {thin!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    bins = default_num_bins(num_replications, num_draws) if num_bins is None else num_bins
    rank_bins(num_draws, bins)  # checks num_bins
    seeds = torch.randint(
        0, 2**31 - 1, (num_replications, 2), generator=torch.Generator().manual_seed(seed)
    ).tolist()
    tie_generator = torch.Generator().manual_seed(seed + 1)
    ranks: dict[str, list[torch.Tensor]] = {}
    min_ess: list[float] = []
    skipped: list[tuple[int, str]] = []
    t0 = time.perf_counter()
    bar = tqdm(range(num_replications), desc=desc, disable=not progress, unit="rep")
    for i in bar:
        sim_seed, infer_seed = seeds[i]
        theta, data = simulate(sim_seed)
        try:
            draws = dict(infer(data, infer_seed))
        except Exception as err:
            if on_error == "raise":
                raise
            skipped.append((i, f"{type(err).__name__}: {err}"))
            bar.set_postfix(skipped=len(skipped), refresh=False)
            continue
        truth = _stack_statistics(statistics({k: v.unsqueeze(0) for k, v in theta.items()}, data))
        values = _stack_statistics(statistics(draws, data))  # (S, n_stats)
        names = list(truth)
        if not ranks:
            ranks = {name: [] for name in names}
        elif set(names) != set(ranks):
            raise ValueError(f"statistics changed names between replications: {names}")
        stacked = torch.stack([values[n] for n in names], -1)
        num_available = stacked.shape[0]
        if num_available < num_draws:
            raise ValueError(
                f"infer returned {num_available} draws in replication {i} but num_draws="
                f"{num_draws}; return at least num_draws draws"
            )
        if thin == "ess":
            ess = effective_sample_size(stacked.double().unsqueeze(0), chain_dim=0, sample_dim=1)
            min_ess.append(float(ess.nan_to_num(0.0).min()))
            index = torch.linspace(0, num_available - 1, num_draws).round().long()
            stacked = stacked[index.to(stacked.device)]
        else:
            stacked = stacked[:num_draws]
        true_values = torch.stack([truth[n].reshape(()) for n in names]).to(stacked)
        rank = sbc_rank(true_values, stacked, tie_generator)
        for j, name in enumerate(names):
            ranks[name].append(rank[j])
    seconds = time.perf_counter() - t0
    if not ranks:
        raise RuntimeError(
            f"every one of the {num_replications} replications failed; first error: "
            f"{skipped[0][1] if skipped else 'none'}"
        )
    rank_tensors = {name: torch.stack(values) for name, values in ranks.items()}
    return summarize_ranks(
        rank_tensors,
        num_draws,
        bins,
        alpha=alpha,
        seconds=seconds,
        min_ess=torch.tensor(min_ess, dtype=torch.float64) if thin == "ess" else None,
        skipped=skipped,
    )


def summarize_ranks(
    ranks: Mapping[str, torch.Tensor],
    num_draws: int,
    num_bins: int,
    *,
    alpha: float = 0.01,
    seconds: float = math.nan,
    min_ess: torch.Tensor | None = None,
    skipped: Sequence[tuple[int, str]] = (),
) -> SBCResult:
    """Test ranks already computed (``{statistic: (R,)}``) and wrap them in an
    :class:`SBCResult`; the Bonferroni threshold is ``alpha / len(ranks)``."""
    if not ranks:
        raise ValueError("ranks is empty: pass at least one statistic")
    chi2: dict[str, float] = {}
    p_values: dict[str, float] = {}
    for name, r in ranks.items():
        chi2[name], p_values[name] = uniformity_test(r, num_draws, num_bins)
    threshold = alpha / len(ranks)
    return SBCResult(
        ranks=dict(ranks),
        num_draws=num_draws,
        num_bins=num_bins,
        chi2=chi2,
        p_values=p_values,
        alpha=alpha,
        threshold=threshold,
        passed=all(p >= threshold for p in p_values.values()),
        seconds=seconds,
        min_ess=min_ess,
        low_ess=0 if min_ess is None else int((min_ess < num_draws).sum()),
        skipped=list(skipped),
    )


def _stack_statistics(stats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not stats:
        raise ValueError("statistics returned no statistic; return {name: (S,) tensor}")
    out = {}
    for name, value in stats.items():
        value = torch.as_tensor(value).detach()
        if value.dim() != 1:
            raise ValueError(
                f"statistic {name!r} has shape {tuple(value.shape)}; it must be (S,), one scalar "
                "per parameter value of the batch"
            )
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------
# Building blocks: simulation from a Pyro model, a negative control, mixture statistics


def prior_simulator(
    model: Callable[..., Any],
    *args: Any,
    sites: Sequence[str],
    observed: str,
    **kwargs: Any,
) -> SimulateFn:
    """``seed -> (theta, data)`` for a Pyro model whose observations are one site.

    Runs ``poutine.uncondition(model)(*args, **kwargs)`` under ``torch.manual_seed(seed)`` (in a
    forked RNG, so the caller's stream is untouched) and returns the values of ``sites`` (the
    globals, drawn from the prior) and of ``observed`` (the data, drawn given them). ``args`` only
    give the data's shape, dtype and device, e.g. ``torch.zeros(N, D)`` for
    ``BayesianGMM.model``.
    """
    if not sites:
        raise ValueError("sites is empty: name the global sites whose truth is ranked")

    def simulate(seed: int) -> tuple[dict[str, torch.Tensor], Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        missing = [name for name in [*sites, observed] if name not in trace.nodes]
        if missing:
            raise ValueError(
                f"the model has no site {missing}; its sample sites are "
                f"{[n for n, s in trace.nodes.items() if s['type'] == 'sample']}"
            )
        values: dict[str, torch.Tensor] = {}
        for name in [*sites, observed]:
            value = trace.nodes[name]["value"]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"site {name!r} has a {type(value).__name__}, not a tensor")
            values[name] = value.detach()
        data = values.pop(observed)
        return values, data

    return simulate


def overconfident(infer: InferFn, factor: float) -> InferFn:
    r"""A deliberately miscalibrated ``infer``: every site's draws shrunk toward their mean,
    :math:`\theta_l \mapsto \bar\theta + c\,(\theta_l - \bar\theta)` with ``factor`` :math:`c`.

    With :math:`0 < c < 1` the spread is too small by :math:`c` (a negative control that SBC must
    reject: a "∪" rank histogram). The map is a convex combination, so it keeps draws in convex
    supports (simplex, positive numbers, positive definite matrices). The mean is taken over the
    draws as returned, so use it on draws without label switching (e.g. CAVI's).
    """
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")

    def shrunk(data: Any, seed: int) -> Draws:
        draws = infer(data, seed)
        out = {}
        for name, value in draws.items():
            if value.is_floating_point():
                mean = value.mean(0, keepdim=True)
                value = mean + factor * (value - mean)
            out[name] = value
        return out

    return shrunk


def gaussian_mixture_statistics(theta: Draws, data: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Permutation-invariant statistics of a Gaussian mixture (``BayesianGMM``'s sites).

    For ``weights`` ``(S, K)``, ``locs`` ``(S, K, D)`` and ``precisions`` ``(S, K, D)`` (diag)
    or ``(S, K, D, D)`` (full), with :math:`\mu_{k1}` and :math:`\lambda_{k1}` the first feature's
    location and precision:

    - ``loc_min``, ``loc_max``: :math:`\min_k \mu_{k1}`, :math:`\max_k \mu_{k1}`;
    - ``weight_max``: :math:`\max_k \pi_k`;
    - ``precision_min``, ``precision_max``: :math:`\min_k \lambda_{k1}`,
      :math:`\max_k \lambda_{k1}`;
    - ``log_lik``: :math:`\sum_n \log \sum_k \pi_k \mathcal N(x_n \mid \mu_k, \Lambda_k^{-1})` of
      the simulated ``data`` ``(N, D)`` (a data-dependent statistic, Modrák et al. 2023).

    None depends on the labelling of the components, so label switching cannot affect the ranks.
    :returns: ``{name: (S,)}``.
    """
    weights, locs, precisions = theta["weights"], theta["locs"], theta["precisions"]
    first_precision = precisions[..., 0] if precisions.dim() == 3 else precisions[..., 0, 0]
    first_loc = locs[..., 0]
    points = data.to(locs.dtype)[:, None, None, :]  # (N, 1, 1, D)
    if precisions.dim() == 3:
        component = torch.distributions.Normal(locs, precisions.rsqrt()).log_prob(points).sum(-1)
    else:
        component = torch.distributions.MultivariateNormal(
            locs, precision_matrix=precisions
        ).log_prob(points)
    log_weights = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
    log_lik = torch.logsumexp(component + log_weights, -1).sum(0)  # (S,)
    return {
        "loc_min": first_loc.min(-1).values,
        "loc_max": first_loc.max(-1).values,
        "weight_max": weights.max(-1).values,
        "precision_min": first_precision.min(-1).values,
        "precision_max": first_precision.max(-1).values,
        "log_lik": log_lik,
    }


# ----------------------------------------------------------------------------------------------
# Plot


def plot_rank_histograms(
    result: SBCResult, path: str | Path, title: str | None = None, level: float = 0.99
) -> Path:
    """Rank histograms, one panel per statistic, with the ``level`` band of a uniform histogram
    shaded (:func:`binomial_band`) and the expected count dashed (Talts et al. 2018, Fig. 1);
    each panel's title gives the statistic's p-value. Written as PNG, atomically."""
    from matplotlib.figure import Figure

    from pyro_attention.diagnostics.plots import save_figure

    names = list(result.ranks)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    bins = rank_bins(result.num_draws, result.num_bins)
    probs = torch.bincount(bins, minlength=result.num_bins).double() / (result.num_draws + 1)
    replications = result.num_replications
    lower, upper = binomial_band(replications, probs, level)
    edges = torch.arange(result.num_bins + 1, dtype=torch.float64)
    for ax, name in zip(axes.flat, names, strict=False):
        counts = torch.bincount(bins[result.ranks[name]], minlength=result.num_bins)
        ax.stairs(upper.tolist(), edges.tolist(), baseline=lower.tolist(), fill=True,
                  color="0.85", label=f"{level:.0%} band")  # fmt: skip
        ax.stairs(counts.tolist(), edges.tolist(), color="C0", lw=1.5)
        ax.stairs((replications * probs).tolist(), edges.tolist(), color="0.4", ls="--", lw=0.8)
        p = result.p_values[name]
        flag = "" if p >= result.threshold else "  ✗"
        ax.set_title(f"{name}: p = {p:.2g}{flag}", fontsize=9)
        ax.set_xticks([0, result.num_bins])
        ax.set_xticklabels(["0", str(result.num_draws)])
        ax.set_xlabel("rank", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    verdict = "pass" if result.passed else "FAIL"
    head = f"{title}: " if title else ""
    fig.suptitle(
        f"{head}{verdict} (R = {replications}, L = {result.num_draws}, B = {result.num_bins}, "
        f"threshold {result.threshold:.2g})",
        fontsize=10,
    )
    return save_figure(fig, Path(path))


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
