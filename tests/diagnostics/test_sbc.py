"""Simulation-based calibration: ranks, the chi-square test, thinning, the plot, the GMM pieces.

The exact conjugate toy is a Normal mean with known variance: prior :math:`\\mu \\sim N(0, 1)`,
:math:`y_i \\mid \\mu \\sim N(\\mu, 1)`, posterior :math:`N(\\sum y / (n + 1), 1 / (n + 1))`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import load_script, require
from pyro import poutine

from pyro_attention.diagnostics.sbc import (
    SBCResult,
    binomial_band,
    chi2_sf,
    default_num_bins,
    gaussian_mixture_statistics,
    overconfident,
    plot_rank_histograms,
    prior_simulator,
    rank_bins,
    sbc_rank,
    sbc_ranks,
    summarize_ranks,
    uniformity_test,
)
from pyro_attention.models import BayesianGMM
from pyro_attention.models.gmm_conjugate import GMMPrior

N_OBS = 10


def simulate(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn((), generator=g, dtype=torch.float64)
    return {"mu": mu}, mu + torch.randn(N_OBS, generator=g, dtype=torch.float64)


def posterior(y: torch.Tensor) -> tuple[torch.Tensor, float]:
    n = y.shape[0]
    return y.sum() / (n + 1), 1.0 / math.sqrt(n + 1)


def exact_infer(num: int, scale: float = 1.0):
    def infer(y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        mean, sd = posterior(y)
        return {"mu": mean + scale * sd * torch.randn(num, generator=g, dtype=y.dtype)}

    return infer


def ar1_infer(num: int, rho: float):
    """A stationary AR(1) chain whose marginal is the exact posterior (autocorrelation rho)."""

    def infer(y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        mean, sd = posterior(y)
        eps = torch.randn(num, generator=g, dtype=torch.float64)
        z = torch.empty(num, dtype=torch.float64)
        z[0] = eps[0]
        for t in range(1, num):
            z[t] = rho * z[t - 1] + math.sqrt(1 - rho**2) * eps[t]
        return {"mu": mean + sd * z}

    return infer


def mu_statistics(theta, y):
    return {"mu": theta["mu"], "mu_sq": theta["mu"] ** 2}


# ----------------------------------------------------------------------------------------------
# ranks


def test_rank_counts_draws_below_the_truth():
    draws = torch.tensor([[0.1, 5.0], [0.3, 6.0], [0.7, 7.0], [0.9, 8.0]])
    rank = sbc_rank(torch.tensor([0.5, 100.0]), draws)
    assert rank.tolist() == [2, 4]
    assert sbc_rank(torch.tensor([-1.0, 0.0]), draws).tolist() == [0, 0]
    assert rank.dtype == torch.int64


def test_rank_ties_are_broken_uniformly_over_0_to_L():
    L = 4
    draws = torch.zeros(L, 1)
    g = torch.Generator().manual_seed(0)
    ranks = torch.stack([sbc_rank(torch.zeros(1), draws, g) for _ in range(5000)]).flatten()
    counts = torch.bincount(ranks, minlength=L + 1)
    assert ranks.min() == 0 and ranks.max() == L  # the whole range 0..L, nothing outside
    assert (counts.double() / 5000 - 1 / (L + 1)).abs().max() < 0.03
    # partial ties: two draws below, two tied -> ranks 2, 3 or 4
    tied = torch.tensor([[0.0], [0.0], [-1.0], [-2.0]])
    ranks = torch.stack([sbc_rank(torch.zeros(1), tied, g) for _ in range(600)]).flatten()
    assert set(ranks.tolist()) == {2, 3, 4}


def test_rank_refuses_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        sbc_rank(torch.tensor([0.0]), torch.tensor([[math.nan]]))
    with pytest.raises(ValueError, match="draws must be"):
        sbc_rank(torch.zeros(2), torch.zeros(5, 3))


# ----------------------------------------------------------------------------------------------
# the test and the band against scipy / closed forms


def test_rank_bins_and_default_bins():
    assert rank_bins(9, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert torch.bincount(rank_bins(10, 3)).tolist() == [4, 4, 3]  # unequal when B ∤ L + 1
    assert default_num_bins(200, 99) == 20
    assert default_num_bins(64, 39) == 10
    assert default_num_bins(10, 39) == 2
    with pytest.raises(ValueError, match="num_bins"):
        rank_bins(3, 5)


def test_chi2_sf_closed_form_and_scipy():
    for x in (0.0, 0.5, 3.0, 12.0):  # df = 2: exp(-x / 2)
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)
    stats = require("scipy.stats")
    for x, df in [(3.2, 1), (15.0, 9), (40.0, 19), (150.0, 19), (0.1, 4)]:
        assert chi2_sf(x, df) == pytest.approx(float(stats.chi2.sf(x, df)), rel=1e-9, abs=1e-300)


def test_uniformity_test_matches_scipy_chisquare():
    stats = require("scipy.stats")
    ranks = torch.randint(0, 40, (137,), generator=torch.Generator().manual_seed(3))
    x2, p = uniformity_test(ranks, 39, 8)
    counts = torch.bincount(ranks // 5, minlength=8).numpy()
    reference = stats.chisquare(counts)
    assert x2 == pytest.approx(float(reference.statistic), rel=1e-12)
    assert p == pytest.approx(float(reference.pvalue), rel=1e-9)
    # unequal bins: expected counts proportional to the rank values per bin
    ranks = torch.randint(0, 11, (90,), generator=torch.Generator().manual_seed(4))
    x2, p = uniformity_test(ranks, 10, 3)
    counts = torch.bincount(rank_bins(10, 3)[ranks], minlength=3).numpy()
    reference = stats.chisquare(counts, f_exp=[90 * 4 / 11, 90 * 4 / 11, 90 * 3 / 11])
    assert p == pytest.approx(float(reference.pvalue), rel=1e-9)
    with pytest.raises(ValueError, match=r"integers in 0\.\.10"):
        uniformity_test(torch.tensor([11]), 10, 2)


def test_binomial_band_matches_scipy():
    stats = require("scipy.stats")
    probs = torch.tensor([0.05, 0.1, 4 / 11])
    lower, upper = binomial_band(200, probs, 0.99)
    assert lower.tolist() == stats.binom.ppf(0.005, 200, probs.numpy()).tolist()
    assert upper.tolist() == stats.binom.ppf(0.995, 200, probs.numpy()).tolist()


# ----------------------------------------------------------------------------------------------
# SBC on the exact conjugate toy: the exact posterior passes, wrong ones fail


def test_exact_posterior_passes():
    result = sbc_ranks(
        simulate, exact_infer(19), mu_statistics, num_replications=300, num_draws=19, seed=1
    )
    assert result.passed, result.p_values
    assert result.num_replications == 300 and result.num_bins == 20
    assert min(result.p_values.values()) > 0.01
    assert all(0 <= int(r.min()) and int(r.max()) <= 19 for r in result.ranks.values())
    mean, sd = result.normalized_rank_moments()["mu"]
    assert abs(mean - 0.5) < 0.05 and abs(sd - 0.3) < 0.04


@pytest.mark.parametrize("scale, shape", [(0.5, "∪"), (2.0, "∩")])
def test_wrong_posterior_variance_fails(scale, shape):
    result = sbc_ranks(
        simulate, exact_infer(19, scale), mu_statistics, num_replications=300, num_draws=19
    )
    assert not result.passed
    assert result.p_values["mu"] < 1e-6
    sd = result.normalized_rank_moments()["mu"][1]
    assert sd > 0.35 if shape == "∪" else sd < 0.25


def test_overconfident_wrapper_fails_and_keeps_convex_supports():
    result = sbc_ranks(
        simulate,
        overconfident(exact_infer(19), 0.3),
        mu_statistics,
        num_replications=200,
        num_draws=19,
    )
    assert not result.passed
    weights = torch.distributions.Dirichlet(torch.ones(3)).sample((50,))
    shrunk = overconfident(lambda data, seed: {"w": weights}, 0.3)(None, 0)["w"]
    assert (shrunk > 0).all() and torch.allclose(shrunk.sum(-1), torch.ones(50))
    assert torch.allclose(shrunk.mean(0), weights.mean(0))
    assert torch.allclose(shrunk.std(0), 0.3 * weights.std(0))


def test_ess_thinning_of_an_autocorrelated_chain():
    chain = ar1_infer(400, rho=0.9)  # ESS about 400 * 0.1 / 1.9 = 21
    thinned = sbc_ranks(
        simulate, chain, mu_statistics, num_replications=150, num_draws=15, thin="ess", seed=2
    )
    assert thinned.passed, thinned.p_values
    assert thinned.min_ess is not None and thinned.min_ess.shape == (150,)
    assert 10 < float(thinned.min_ess.median()) < 40
    # the first 15 draws of the same chain, unthinned: autocorrelated, ranks pile at the ends
    raw = sbc_ranks(
        simulate, chain, mu_statistics, num_replications=150, num_draws=15, thin="none", seed=2
    )
    assert not raw.passed


def test_sbc_ranks_checks_and_skips():
    with pytest.raises(ValueError, match="num_draws"):
        sbc_ranks(simulate, exact_infer(5), mu_statistics, num_replications=2, num_draws=9)
    with pytest.raises(ValueError, match="num_replications"):
        sbc_ranks(simulate, exact_infer(5), mu_statistics, num_replications=0, num_draws=5)
    with pytest.raises(ValueError, match="thin"):
        sbc_ranks(simulate, exact_infer(5), mu_statistics, num_replications=2, num_draws=5,
                  thin="auto")  # fmt: skip

    def flaky(y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        if y[0] > 0:
            raise FloatingPointError("diverged")
        return exact_infer(9)(y, seed)

    result = sbc_ranks(
        simulate, flaky, mu_statistics, num_replications=20, num_draws=9, on_error="skip"
    )
    assert result.skipped and result.num_replications == 20 - len(result.skipped)
    assert "FloatingPointError: diverged" in result.skipped[0][1]
    with pytest.raises(FloatingPointError):
        sbc_ranks(simulate, flaky, mu_statistics, num_replications=20, num_draws=9)


def test_summary_and_bonferroni_threshold():
    ranks = {"a": torch.arange(40) % 20, "b": torch.zeros(40, dtype=torch.long)}
    result = summarize_ranks(ranks, 19, 4, alpha=0.01)
    assert isinstance(result, SBCResult)
    assert result.threshold == pytest.approx(0.005)
    assert result.p_values["a"] == pytest.approx(1.0) and result.p_values["b"] < 1e-10
    assert not result.passed
    summary = result.to_dict()
    assert summary["ranks"]["b"] == [0] * 40 and summary["statistics"]["a"]["p_value"] > 0.99


def test_plot_is_written(tmp_path):
    result = sbc_ranks(simulate, exact_infer(19), mu_statistics, num_replications=40, num_draws=19)
    path = plot_rank_histograms(result, tmp_path / "ranks.png", title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ranks.png"]  # no temporary left


# ----------------------------------------------------------------------------------------------
# the GMM pieces


def small_gmm(covariance_type: str = "diag", dim: int = 1, k: int = 2) -> BayesianGMM:
    prior = GMMPrior.default(dim, covariance_type, dtype=torch.float64)
    return BayesianGMM(k, dim, covariance_type=covariance_type, prior=prior)


def test_prior_simulator_is_seeded_and_leaves_the_global_rng_alone():
    gmm = small_gmm()
    sim = prior_simulator(
        gmm.model, torch.zeros(30, 1, dtype=torch.float64), sites=["weights", "locs"],
        observed="obs",
    )  # fmt: skip
    state = torch.get_rng_state()
    theta, data = sim(5)
    assert torch.equal(torch.get_rng_state(), state)
    again, data_again = sim(5)
    assert torch.equal(data, data_again) and torch.equal(theta["locs"], again["locs"])
    assert data.shape == (30, 1) and theta["weights"].shape == (2,)
    assert not torch.equal(sim(6)[1], data)
    with pytest.raises(ValueError, match="no site"):
        prior_simulator(gmm.model, torch.zeros(3, 1), sites=["mu"], observed="obs")(0)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_mixture_statistics_are_permutation_invariant_and_match_a_loop(covariance_type):
    g = torch.Generator().manual_seed(0)
    S, K, D, N = 4, 3, 2, 7
    weights = torch.distributions.Dirichlet(torch.ones(K, dtype=torch.float64)).sample((S,))
    locs = torch.randn(S, K, D, generator=g, dtype=torch.float64)
    diag = torch.rand(S, K, D, generator=g, dtype=torch.float64) + 0.5
    precisions = diag if covariance_type == "diag" else torch.diag_embed(diag)
    data = torch.randn(N, D, generator=g, dtype=torch.float64)
    theta = {"weights": weights, "locs": locs, "precisions": precisions}
    stats = gaussian_mixture_statistics(theta, data)
    perm = torch.tensor([2, 0, 1])
    permuted = gaussian_mixture_statistics({k: v[:, perm] for k, v in theta.items()}, data)
    for name, value in stats.items():
        assert value.shape == (S,)
        assert torch.allclose(value, permuted[name]), name
    for s in range(S):  # log-likelihood by a loop over points and components
        total = 0.0
        for x in data:
            mix = sum(
                weights[s, k]
                * torch.exp(
                    torch.distributions.Normal(locs[s, k], diag[s, k].rsqrt()).log_prob(x)
                ).prod()
                for k in range(K)
            )
            total += math.log(mix)
        assert stats["log_lik"][s].item() == pytest.approx(total, rel=1e-10)
    assert torch.equal(stats["loc_max"], locs[..., 0].max(-1).values)
    assert torch.equal(stats["precision_min"], diag[..., 0].min(-1).values)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_cavi_prior_is_the_pyro_models_prior(covariance_type):
    """With K = 1 CAVI's q is the exact conjugate posterior, so log p(x, θ) - log q(θ) must be
    the same constant (log p(x), CAVI's final ELBO) at every draw, where log p(x, θ) is the
    Pyro model's own density: the two priors (Gamma rates, Wishart scale, β0) agree."""
    psi = (
        torch.tensor([3.0, 7.0], dtype=torch.float64)
        if covariance_type == "diag"
        else torch.tensor([[3.0, 0.5], [0.5, 7.0]], dtype=torch.float64)
    )
    prior = GMMPrior(2.0, torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3, 6.0, psi,
                     covariance_type)  # fmt: skip
    gmm = BayesianGMM(1, 2, covariance_type=covariance_type, prior=prior)
    data = 2 * torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = gmm.cavi(data, max_iter=50)
    draws, log_q = fit.sample_globals(5)
    gaps = []
    for s in range(5):
        values = {k: v[s] for k, v in draws.items()}
        values["assignment"] = torch.zeros(30, dtype=torch.long)
        trace = poutine.trace(poutine.condition(gmm.model, values)).get_trace(data)
        gaps.append(float(trace.log_prob_sum() - log_q[s]))
    assert max(gaps) - min(gaps) < 1e-8
    assert gaps[0] == pytest.approx(fit.elbo_trace[-1], abs=1e-8)


def test_script_checks_options_before_work(tmp_path, capsys):
    script = load_script("sbc_gmm")
    bad = [
        ["--replications", "0"],
        ["--methods", "cavi,magic"],
        ["--method-replications", "nuts=0"],
        ["--draws", "50", "--nuts-samples", "20"],
        ["--bins", "1"],
    ]
    for argv in bad:
        with pytest.raises(SystemExit):
            script.parse_args([*argv, "--out", str(tmp_path)])
    args = script.parse_args(["--method-replications", "nuts=7", "--out", str(tmp_path)])
    assert args.replications_of["nuts"] == 7 and args.replications_of["cavi"] == 100
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(blocker / "sub")])
    assert "cannot be written" in capsys.readouterr().err


def test_script_runs_cavi_and_writes_its_files(tmp_path):
    script = load_script("sbc_gmm")
    script.main(["--methods", "cavi,overconfident-cavi", "--replications", "4", "--draws", "9",
                 "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    import json

    summary = json.loads((tmp_path / "sbc.json").read_text())
    assert set(summary["methods"]) == {"cavi", "overconfident-cavi"}
    assert summary["methods"]["cavi"]["replications"] == 4
    assert "commit" in summary["provenance"] and summary["provenance"]["threads"] >= 1
    assert (tmp_path / "rank_hist_cavi.png").exists()


# ----------------------------------------------------------------------------------------------
# slow: cavi and the negative control on the small GMM


@pytest.mark.slow
def test_gmm_cavi_and_overconfident_control():
    from pyro_attention.infer import fit
    from pyro_attention.infer.methods import CAVI

    script = load_script("sbc_gmm")
    gmm = BayesianGMM(2, 1, covariance_type="diag", prior=script.make_prior(1))
    sim = prior_simulator(
        gmm.model, torch.zeros(40, 1, dtype=torch.float64), sites=script.GLOBALS, observed="obs"
    )

    def cavi(data: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        result = fit(gmm, data, CAVI(tol=1e-8), seed=seed, progress=False)
        torch.manual_seed(seed)
        return result.draws(39).samples

    options = {"num_replications": 100, "num_draws": 39, "seed": 0}
    exact_ish = sbc_ranks(sim, cavi, gaussian_mixture_statistics, **options)
    control = sbc_ranks(sim, overconfident(cavi, 0.3), gaussian_mixture_statistics, **options)
    assert not control.passed
    assert max(control.p_values.values()) < 1e-6
    # CAVI's precisions and the data log-likelihood are calibrated at this size ...
    for name in ("precision_min", "precision_max", "log_lik"):
        assert exact_ish.p_values[name] > exact_ish.threshold, (name, exact_ish.p_values)
    # ... and even where mean-field CAVI is too narrow it is far closer than the control
    for name, p in exact_ish.p_values.items():
        assert p > 1e6 * control.p_values[name], name


@pytest.mark.slow
def test_gmm_enum_and_nuts_are_calibrated(tmp_path):
    """The script's own runs of enum and nuts, at fewer replications than the README's."""
    script = load_script("sbc_gmm")
    script.main(
        ["--methods", "enum,nuts", "--replications", "24", "--draws", "19"]
        + ["--out", str(tmp_path), "--seed", "1"]
    )
    methods = json.loads((tmp_path / "sbc.json").read_text())["methods"]
    for name in ("enum", "nuts"):
        assert methods[name]["passed"], (name, methods[name]["statistics"])
        assert (tmp_path / f"rank_hist_{name}.png").stat().st_size > 0
