"""Closed-form CAVI and EM for the Bayesian Gaussian mixture against independent references:
scikit-learn, Monte-Carlo estimates built from ``torch.distributions``, and the factorisation of
the diagonal model into independent 1-D problems."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributions as dist
from conftest import require

from pyro_attention.models.gmm_conjugate import (
    GMMPrior,
    GMMVariationalPosterior,
    _Features,
    _posterior_like,
    _posterior_terms,
    _sufficient_stats,
    _sufficient_stats_reference,
    _Sums,
    cavi,
    elbo,
    em,
    kmeans_responsibilities,
    update_posterior,
    update_responsibilities,
)

F64 = torch.float64
COV_TYPES = ["full", "diag"]


def _blobs(
    device: torch.device,
    *,
    n_per: int = 60,
    dim: int = 2,
    seed: int = 0,
    dtype: torch.dtype = F64,
    spacing: float = 7.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three correlated Gaussian clusters of different scales (0.6 to 1.2), ``spacing`` apart,
    and labels: well separated by default, overlapping with ``spacing=OVERLAP``."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.zeros(3, dim, dtype=F64)
    centers[1, 0] = spacing
    centers[2, -1] = -spacing if dim == 1 else spacing
    parts, labels = [], []
    for k in range(3):
        a = torch.randn(dim, dim, generator=g, dtype=F64) * 0.3 + torch.eye(dim, dtype=F64)
        noise = torch.randn(n_per, dim, generator=g, dtype=F64)
        parts.append(noise @ (a * (0.6 + 0.3 * k)) + centers[k])
        labels.append(torch.full((n_per,), k))
    return torch.cat(parts).to(device=device, dtype=dtype), torch.cat(labels).to(device)


#: cluster spacing of the scikit-learn comparisons: the clusters overlap, so responsibilities
#: are fractional and every term of the E-step moves them (with well-separated clusters they
#: are 0 or 1 and a wrong term changes nothing visible)
OVERLAP = 2.0
#: relative agreement with scikit-learn of one step (float64; observed about 1e-14)
STEP_TOL = 1e-8


def _random_resp(n: int, k: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, k, generator=g, dtype=F64) + 0.05
    return (w / w.sum(-1, keepdim=True)).to(device)


def _skewed_resp(n: int, k: int, device: torch.device) -> torch.Tensor:
    """:func:`_random_resp` with unequal component masses (about 2 : 5 : 7 for K = 3), so the
    per-component terms of the E-step (E log pi_k, E log|Lambda_k|, D / beta_k) differ between
    components and cannot cancel in the softmax."""
    resp = _random_resp(n, k, device) * torch.linspace(0.5, 2.0, k, dtype=F64, device=device)
    return resp / resp.sum(-1, keepdim=True)


def _prior(x: torch.Tensor, covariance_type: str = "full") -> GMMPrior:
    """A data-informed prior that is not the default one, so every hyper-parameter matters."""
    d = x.shape[1]
    cov = torch.atleast_2d(torch.cov(x.mT))
    return GMMPrior(
        weight_concentration=0.5,
        mean_prior=x.mean(0) + 0.3,
        mean_precision=0.7,
        degrees_of_freedom=d + 0.5,
        covariance_prior=cov if covariance_type == "full" else cov.diagonal().clone(),
        covariance_type=covariance_type,
    )


def _rel(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference entry."""
    a = a.detach().cpu().double().numpy()
    b = b.detach().cpu().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _from_sklearn(model, prior: GMMPrior, device: torch.device) -> GMMVariationalPosterior:
    """sklearn's fitted attributes as our posterior: ``covariances_`` is Psi_k / nu_k."""
    nu = model.degrees_of_freedom_
    scale = nu[:, None, None] if model.covariance_type == "full" else nu[:, None]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)

    return GMMVariationalPosterior(
        weight_concentration=t(model.weight_concentration_),
        mean_precision=t(model.mean_precision_),
        means=t(model.means_),
        degrees_of_freedom=t(nu),
        covariance=t(model.covariances_ * scale),
        prior=prior,
    )


def _sklearn_bgm(prior: GMMPrior, k: int, resp0: torch.Tensor, max_iter: int):
    """scikit-learn's ``BayesianGaussianMixture`` with our prior, started from its own M-step
    (``_initialize``) on the responsibilities ``resp0`` instead of k-means; ``max_iter`` E+M
    iterations after it (``max_iter=0``: the M-step alone)."""
    mixture = require("sklearn.mixture")
    start = resp0.cpu().numpy()

    class FromResponsibilities(mixture.BayesianGaussianMixture):
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, start)

    return FromResponsibilities(
        n_components=k,
        covariance_type=prior.covariance_type,
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=prior.weight_concentration,
        mean_precision_prior=prior.mean_precision,
        mean_prior=prior.mean_prior.cpu().numpy(),
        degrees_of_freedom_prior=prior.degrees_of_freedom,
        covariance_prior=prior.covariance_prior.cpu().numpy(),
        reg_covar=0.0,
        tol=1e-12,
        max_iter=max_iter,
        random_state=0,
    )


def _sklearn_fit(x: torch.Tensor, prior: GMMPrior, k: int, resp0: torch.Tensor, max_iter: int):
    """:func:`_sklearn_bgm` fitted to ``x``; a run stopped before convergence is the point."""
    exceptions = require("sklearn.exceptions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
        return _sklearn_bgm(prior, k, resp0, max_iter).fit(x.cpu().numpy())


def _sklearn_resp(model, x: torch.Tensor) -> np.ndarray:
    """sklearn's E-step at the model's current posterior."""
    return np.exp(model._estimate_log_prob_resp(x.cpu().numpy())[1])


_POSTERIOR_FIELDS = (
    "weight_concentration",
    "mean_precision",
    "means",
    "degrees_of_freedom",
    "covariance",
)


def _assert_posteriors_match(
    ours: GMMVariationalPosterior, theirs: GMMVariationalPosterior, tol: float, when: str
) -> None:
    for name in _POSTERIOR_FIELDS:
        err = _rel(getattr(ours, name), getattr(theirs, name))
        assert err < tol, f"{when}: {name} differs from scikit-learn's by {err:.3g} (relative)"


def _fractional(resp: torch.Tensor | np.ndarray) -> float:
    """Share of the points whose largest responsibility is below 0.9."""
    resp = torch.as_tensor(resp)
    return (resp.max(-1).values < 0.9).double().mean().item()


def _check_cavi_against_sklearn(
    x: torch.Tensor, prior: GMMPrior, k: int, device: torch.device
) -> None:
    """CAVI from a random, non-converged start against scikit-learn from the same start: the
    M-step, the E-step, each of the first iterations, then the converged result.

    ``cavi`` runs an M-step on ``init_responsibilities``, then ``max_iter`` iterations of
    (E-step, M-step); sklearn's ``fit`` runs ``_initialize`` (the same M-step), then
    ``max_iter`` iterations of (``_e_step``, ``_m_step``): the same count."""
    resp0 = _skewed_resp(len(x), k, device)
    # (a) M-step from the random responsibilities
    start = _sklearn_fit(x, prior, k, resp0, max_iter=0)
    post0 = update_posterior(x, prior, resp0)
    _assert_posteriors_match(post0, _from_sklearn(start, prior, device), STEP_TOL, "M-step")
    # (b) E-step at that posterior, far from any fixed point: fractional responsibilities
    theirs = _sklearn_resp(start, x)
    assert _fractional(theirs) > 0.5
    assert _rel(update_responsibilities(x, post0), theirs) < STEP_TOL
    # (c) the first iterations, one by one; the responsibilities a CAVIResult returns are those
    # of its last E-step, i.e. sklearn's E-step after one iteration fewer
    for n in range(1, 6):
        fit = cavi(x, prior, k, max_iter=n, tol=0.0, init_responsibilities=resp0)
        model = _sklearn_fit(x, prior, k, resp0, max_iter=n)
        assert fit.n_iter == model.n_iter_ == n
        _assert_posteriors_match(
            fit.posterior, _from_sklearn(model, prior, device), STEP_TOL, f"iteration {n}"
        )
        assert _rel(fit.responsibilities, theirs) < STEP_TOL, f"E-step of iteration {n}"
        theirs = _sklearn_resp(model, x)
    # (d) at convergence: the same number of sklearn iterations gives the same posterior ...
    fit = cavi(x, prior, k, max_iter=5000, tol=1e-10, init_responsibilities=resp0)
    assert fit.converged and fit.n_iter > 20
    same = _sklearn_fit(x, prior, k, resp0, max_iter=fit.n_iter)
    _assert_posteriors_match(
        fit.posterior, _from_sklearn(same, prior, device), STEP_TOL, "same iteration count"
    )
    resp = update_responsibilities(x, fit.posterior)
    assert _rel(resp, _sklearn_resp(same, x)) < STEP_TOL
    # ... and sklearn run to its own convergence stops near the same fixed point
    model = _sklearn_fit(x, prior, k, resp0, max_iter=5000)
    assert model.converged_
    theirs_post = _from_sklearn(model, prior, device)
    _assert_posteriors_match(fit.posterior, theirs_post, 1e-4, "converged")
    predicted = model.predict_proba(x.cpu().numpy())
    assert _rel(resp, predicted) < 1e-4
    # the clusters overlap: at the optimum many points are shared between components
    assert _fractional(resp) > 0.2
    # sklearn's bound drops constants; ours at sklearn's optimum is our optimum's
    at_theirs = elbo(x, prior, theirs_post, torch.as_tensor(predicted, device=device)).item()
    assert abs(at_theirs - fit.elbo_trace[-1]) < 1e-6 * abs(fit.elbo_trace[-1])


# ----------------------------------------------------------------------------------------------
# CAVI


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_elbo_trace_never_decreases(device: torch.device, covariance_type: str) -> None:
    x, _ = _blobs(device, dim=3)
    prior = _prior(x, covariance_type)
    fit = cavi(x, prior, 5, init_responsibilities=_random_resp(len(x), 5, device), tol=1e-10)
    trace = np.array(fit.elbo_trace)
    assert fit.converged and fit.n_iter == len(trace) > 10
    steps = np.diff(trace)
    assert (steps >= -1e-6 * np.abs(trace[1:])).all(), steps.min()
    assert trace[-1] - trace[0] > 1.0  # the random start is clearly improved on
    # the trace's last value is the public bound at the returned (posterior, responsibilities)
    last = elbo(x, prior, fit.posterior, fit.responsibilities)
    assert last.dtype == F64 and last.device.type == device.type
    assert math.isclose(last.item(), trace[-1], rel_tol=1e-12)


def test_cavi_matches_sklearn_full(device: torch.device) -> None:
    x, _ = _blobs(device, n_per=50, dim=3, spacing=OVERLAP)
    _check_cavi_against_sklearn(x, _prior(x, "full"), 3, device)


def test_diag_equals_full_in_one_dimension(device: torch.device) -> None:
    x, _ = _blobs(device, dim=1)
    full, diag = _prior(x, "full"), _prior(x, "diag")
    init = _random_resp(len(x), 3, device)
    a = cavi(x, full, 3, init_responsibilities=init, tol=1e-10)
    b = cavi(x, diag, 3, init_responsibilities=init, tol=1e-10)
    assert a.n_iter == b.n_iter > 3
    np.testing.assert_allclose(a.elbo_trace, b.elbo_trace, rtol=1e-10)
    assert _rel(b.posterior.covariance, a.posterior.covariance.reshape(3, 1)) < 1e-10
    assert _rel(b.posterior.means, a.posterior.means) < 1e-10


def test_cavi_matches_sklearn_diag_in_one_dimension(device: torch.device) -> None:
    """The 1-D diag model against sklearn (its diag digamma term is right only for D = 1); K = 2,
    as this prior (weight_concentration 0.5) empties a third component on these data."""
    x, _ = _blobs(device, n_per=50, dim=1, spacing=OVERLAP)
    _check_cavi_against_sklearn(x, _prior(x, "diag"), 2, device)


def test_diag_is_independent_one_dimensional_problems(device: torch.device) -> None:
    x, _ = _blobs(device, dim=3)
    prior = _prior(x, "diag")
    n, d, k = len(x), 3, 4
    resp = _random_resp(n, k, device)
    post = update_posterior(x, prior, resp)
    new_resp = update_responsibilities(x, post)
    bound = elbo(x, prior, post, resp)
    e_log_w = torch.digamma(post.weight_concentration) - torch.digamma(
        post.weight_concentration.sum()
    )
    sum_log_r = torch.zeros(n, k, dtype=F64, device=device)
    sum_bounds = 0.0
    for j in range(d):
        prior_j = GMMPrior(
            prior.weight_concentration,
            prior.mean_prior[j : j + 1],
            prior.mean_precision,
            prior.degrees_of_freedom,
            prior.covariance_prior[j : j + 1].reshape(1, 1),
            "full",
        )
        post_j = update_posterior(x[:, j : j + 1], prior_j, resp)
        torch.testing.assert_close(post_j.means[:, 0], post.means[:, j])
        torch.testing.assert_close(post_j.covariance[:, 0, 0], post.covariance[:, j])
        torch.testing.assert_close(post_j.mean_precision, post.mean_precision)
        torch.testing.assert_close(post_j.degrees_of_freedom, post.degrees_of_freedom)
        torch.testing.assert_close(post_j.weight_concentration, post.weight_concentration)
        sum_log_r += update_responsibilities(x[:, j : j + 1], post_j).log() - e_log_w
        sum_bounds += elbo(x[:, j : j + 1], prior_j, post_j, resp).item()
    # E-step: the diag log-responsibilities add the D one-dimensional expected log-likelihoods
    torch.testing.assert_close(torch.softmax(sum_log_r + e_log_w, -1), new_resp)
    # ELBO: the (z, pi) part is shared, each 1-D bound counts it once
    q_pi = dist.Dirichlet(post.weight_concentration)
    p_pi = dist.Dirichlet(torch.full_like(post.weight_concentration, prior.weight_concentration))
    shared = (
        (resp * e_log_w).sum()
        - dist.kl_divergence(q_pi, p_pi)
        - torch.special.xlogy(resp, resp).sum()
    )
    assert math.isclose(bound.item(), sum_bounds - (d - 1) * shared.item(), rel_tol=1e-10)


def _mc_elbo(
    x: torch.Tensor,
    prior: GMMPrior,
    post: GMMVariationalPosterior,
    resp: torch.Tensor,
    num_samples: int,
) -> tuple[float, float]:
    """E_q[log p(X, z, pi, mu, Lambda) - log q(z, pi, mu, Lambda)] with torch.distributions,
    q(pi, mu, Lambda) sampled and q(z) summed exactly; (estimate, standard error)."""
    full = prior.covariance_type == "full"
    k = post.num_components
    alpha0 = torch.full((k,), prior.weight_concentration, dtype=x.dtype, device=x.device)
    q_pi, p_pi = dist.Dirichlet(post.weight_concentration), dist.Dirichlet(alpha0)
    pi = q_pi.sample((num_samples,))  # (S, K)
    if full:
        q_lam = dist.Wishart(post.degrees_of_freedom, precision_matrix=post.covariance)
        lam = q_lam.sample((num_samples,))  # (S, K, D, D)
        beta = post.mean_precision[:, None, None]
        q_mu = dist.MultivariateNormal(post.means, precision_matrix=beta * lam)
        mu = q_mu.sample()
        p_lam = dist.Wishart(
            torch.tensor(prior.degrees_of_freedom, dtype=x.dtype, device=x.device),
            precision_matrix=prior.covariance_prior,
        )
        p_mu = dist.MultivariateNormal(
            prior.mean_prior, precision_matrix=prior.mean_precision * lam
        )
        lik = dist.MultivariateNormal(mu, precision_matrix=lam)
        log_lik = lik.log_prob(x[:, None, None, :])  # (N, S, K)
        log_q = q_lam.log_prob(lam).sum(-1) + q_mu.log_prob(mu).sum(-1)
        log_p = p_lam.log_prob(lam).sum(-1) + p_mu.log_prob(mu).sum(-1)
    else:
        nu = post.degrees_of_freedom[:, None]
        q_lam = dist.Gamma(0.5 * nu.expand_as(post.covariance), 0.5 * post.covariance)
        lam = q_lam.sample((num_samples,))  # (S, K, D)
        q_mu = dist.Normal(post.means, (post.mean_precision[:, None] * lam).rsqrt())
        mu = q_mu.sample()
        p_lam = dist.Gamma(0.5 * prior.degrees_of_freedom, 0.5 * prior.covariance_prior)
        p_mu = dist.Normal(prior.mean_prior, (prior.mean_precision * lam).rsqrt())
        log_lik = dist.Normal(mu, lam.rsqrt()).log_prob(x[:, None, None, :]).sum(-1)
        log_q = q_lam.log_prob(lam).sum((-1, -2)) + q_mu.log_prob(mu).sum((-1, -2))
        log_p = p_lam.log_prob(lam).sum((-1, -2)) + p_mu.log_prob(mu).sum((-1, -2))
    data_term = (resp[:, None, :] * (pi.log() + log_lik)).sum((0, 2))  # sum_n,k r (log pi + lik)
    integrand = (
        data_term
        + p_pi.log_prob(pi)
        + log_p
        - q_pi.log_prob(pi)
        - log_q
        - torch.special.xlogy(resp, resp).sum()
    )
    return integrand.mean().item(), (integrand.std() / math.sqrt(num_samples)).item()


@pytest.fixture
def one_thread() -> None:
    """Batched solves over thousands of 2x2 matrices (torch's MVN.log_prob on (N, S, K)) take
    minutes instead of milliseconds with 2 OpenMP threads on a 2-core machine that is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# torch 2.13's Wishart.rsample stores ``support.check`` (True = valid) as ``is_singular``, so it
# warns for every batched draw and redraws them all once; the draws stay exact.
@pytest.mark.filterwarnings("ignore:Singular sample detected:UserWarning")
@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.usefixtures("one_thread")
def test_elbo_equals_monte_carlo(device: torch.device, covariance_type: str) -> None:
    x, _ = _blobs(device, n_per=10, dim=2)  # 30 points
    x = x[:30]
    prior = _prior(x, covariance_type)
    # a deliberately non-optimal pair: the bound must be right everywhere, not only at a fixed point
    resp = _random_resp(30, 2, device)
    other = update_posterior(x, prior, _random_resp(30, 2, device, seed=5))
    # moved off the M-step manifold too (there sum(nu) = K nu0 + N hides constants of E log|Lambda|)
    post = GMMVariationalPosterior(
        other.weight_concentration + torch.tensor([1.0, 2.5], dtype=F64, device=device),
        other.mean_precision * 0.7,
        other.means + 0.2,
        other.degrees_of_freedom * torch.tensor([1.3, 0.8], dtype=F64, device=device),
        other.covariance * 1.1,
        prior,
    )
    closed = elbo(x, prior, post, resp).item()
    torch.manual_seed(0)
    estimate, stderr = _mc_elbo(x, prior, post, resp, 4000)
    assert stderr < 0.2  # small enough to see a missing constant such as K * D/2 * log 2
    assert abs(closed - estimate) < 4.0 * stderr, (closed, estimate, stderr)
    # and at a CAVI optimum
    fit = cavi(x, prior, 2, tol=1e-10)
    estimate, stderr = _mc_elbo(x, prior, fit.posterior, fit.responsibilities, 4000)
    assert abs(fit.elbo_trace[-1] - estimate) < 4.0 * stderr + 1e-9, (estimate, stderr)


def test_float32_follows_the_data(device: torch.device) -> None:
    x64, _ = _blobs(device, dim=2)
    x32 = x64.float()
    prior = GMMPrior.default(2, dtype=torch.float32, device=device)
    # statistics and bound are accumulated in float64, so float32 meets a tight tol as well
    fit32 = cavi(x32, prior, 3, tol=1e-7)
    fit64 = cavi(x64, prior, 3, tol=1e-7)
    q = fit32.posterior
    for t in (q.weight_concentration, q.means, q.covariance, fit32.responsibilities):
        assert t.dtype == torch.float32 and t.device.type == device.type
    assert elbo(x32, prior, q, fit32.responsibilities).dtype == torch.float32
    assert fit32.converged and fit32.n_iter <= fit64.n_iter + 5
    assert _rel(q.means, fit64.posterior.means) < 1e-4
    assert _rel(q.covariance, fit64.posterior.covariance) < 1e-4
    assert math.isclose(fit32.elbo_trace[-1], fit64.elbo_trace[-1], rel_tol=1e-5)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_kmeans_plus_plus_start_finds_the_clusters(
    device: torch.device, covariance_type: str
) -> None:
    x, labels = _blobs(device, dim=2)
    prior = GMMPrior.default(2, covariance_type, dtype=F64, device=device)
    fit = cavi(x, prior, 3, seed=3)
    again = cavi(x, prior, 3, seed=3)
    assert fit.elbo_trace == again.elbo_trace
    pred = fit.responsibilities.argmax(-1)
    # a bijection between true and fitted labels: every true cluster is one fitted component
    pairs = {(int(a), int(b)) for a, b in zip(labels.tolist(), pred.tolist(), strict=True)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3


def test_progress_bar(device: torch.device, capsys: pytest.CaptureFixture[str]) -> None:
    x, _ = _blobs(device)
    cavi(x, GMMPrior.default(2, dtype=F64, device=device), 3, progress=True, max_iter=3)
    em(x, 3, progress=True, max_iter=3)
    err = capsys.readouterr().err
    assert "CAVI" in err and "EM" in err


def _bishop_log_rho(x: torch.Tensor, post: GMMVariationalPosterior) -> torch.Tensor:
    """Bishop 10.46 with 10.64-10.66, every term written out with the inverse covariance,
    ``(N, K)``: the reference for the E-step."""
    d = x.shape[1]
    nu, beta, alpha = post.degrees_of_freedom, post.mean_precision, post.weight_concentration
    if post.covariance_type == "full":
        precision = torch.linalg.inv(post.covariance)  # W_k = Psi_k^{-1}
        diff = x.unsqueeze(1) - post.means  # (N, K, D)
        quad = torch.einsum("nki,kij,nkj->nk", diff, precision, diff)
        i = torch.arange(d, dtype=x.dtype, device=x.device)
        e_log_det = torch.digamma(0.5 * (nu[:, None] - i)).sum(-1) + d * math.log(2.0)
        e_log_det = e_log_det + torch.logdet(precision)
    else:
        precision = post.covariance.reciprocal()
        quad = ((x.unsqueeze(1) - post.means).square() * precision).sum(-1)
        e_log_det = d * (torch.digamma(0.5 * nu) + math.log(2.0)) + precision.log().sum(-1)
    e_log_pi = torch.digamma(alpha) - torch.digamma(alpha.sum())
    return (
        e_log_pi + 0.5 * e_log_det - 0.5 * d * math.log(2 * math.pi) - 0.5 * d / beta
    ) - 0.5 * nu * quad


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fast_paths_match_their_references(
    device: torch.device, covariance_type: str, dtype: torch.dtype
) -> None:
    """The feature-space statistics and responsibilities against the direct (K, N, D) ones, on
    data with a large offset (where an uncentred formula would lose the float32 digits)."""
    x, _ = _blobs(device, dim=4, dtype=dtype)
    x = x + 1000.0
    full = covariance_type == "full"
    resp = _random_resp(len(x), 5, device).to(dtype)
    ref = _sufficient_stats_reference(x, resp, full)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    for a, b in zip(_sufficient_stats(x, resp, full), ref, strict=True):
        torch.testing.assert_close(a, b, **tol)
    post = update_posterior(x, _prior(x, covariance_type), resp)
    wide = x.double()
    expected = torch.softmax(_bishop_log_rho(wide, _posterior_like(post, wide)), -1).to(dtype)
    torch.testing.assert_close(update_responsibilities(x, post), expected, **tol)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("stored", [True, False])
def test_cavi_feature_pass_is_bishops_e_step_and_statistics(
    device: torch.device, covariance_type: str, stored: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CAVI's pass over the expanded features (log rho linear in [phi(x), x]) against Bishop
    10.46 written out with the inverse covariance, and the statistics against the direct
    (K, N, D) ones; on data with a large offset, over several chunks, features stored or built
    chunk by chunk."""
    module = "pyro_attention.models.gmm_conjugate"
    monkeypatch.setattr(f"{module}._CHUNK_NUMBERS", 0)  # chunks of 256 rows
    if not stored:
        monkeypatch.setattr(f"{module}._FEATURE_BYTES", 0)
    x, _ = _blobs(device, n_per=250, dim=3)
    x = x + 1000.0
    full = covariance_type == "full"
    k = 4
    resp = _skewed_resp(len(x), k, device)
    prior = _prior(x, covariance_type)
    post = update_posterior(x, prior, resp)
    features = _Features.of(x, full)
    assert (features.psi is not None) == stored
    chunks = list(features.chunks(k))
    assert len(chunks) == 3  # 750 rows, at least 256 a chunk

    expected = _bishop_log_rho(x, post)

    weights, offset = features.log_rho_coefficients(post, _posterior_terms(post))
    log_rho = torch.cat([features.log_rho(c, weights, offset) for c in chunks], 1).mT
    torch.testing.assert_close(log_rho, expected, rtol=1e-9, atol=1e-9)

    sums = _Sums.total(features.sums(c, resp.mT[:, c]) for c in chunks)
    torch.testing.assert_close(features.weighted_sums(resp), sums, rtol=1e-12, atol=1e-12)
    for a, b in zip(features.stats(sums), _sufficient_stats_reference(x, resp, full), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Posterior sampling and density


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_sample_moments_and_log_prob(device: torch.device, covariance_type: str) -> None:
    x, _ = _blobs(device, n_per=15, dim=2)
    post = cavi(x, _prior(x, covariance_type), 3, tol=1e-8).posterior
    s = 20000
    g = torch.Generator(device=device).manual_seed(0)
    draws = post.sample(s, generator=g)
    d = 2
    lam_shape = (s, 3, d, d) if covariance_type == "full" else (s, 3, d)
    assert draws["weights"].shape == (s, 3) and draws["locs"].shape == (s, 3, d)
    assert draws["precisions"].shape == lam_shape
    mean = post.mean()
    for key, value in draws.items():
        se = value.std(0) / math.sqrt(s)
        z = (value.mean(0) - mean[key]).abs() / se
        assert z.max() < 5.0, (key, z.max())
    # second moment of the precision diagonals: Var(Lambda_ii) = 2 nu W_ii^2
    lam_diag = (
        draws["precisions"].diagonal(dim1=-2, dim2=-1)
        if covariance_type == "full"
        else draws["precisions"]
    )
    w_diag = (
        torch.linalg.inv(post.covariance).diagonal(dim1=-2, dim2=-1)
        if covariance_type == "full"
        else post.covariance.reciprocal()
    )
    expected_var = 2.0 * post.degrees_of_freedom[:, None] * w_diag.square()
    torch.testing.assert_close(lam_diag.var(0), expected_var, rtol=0.1, atol=0.0)
    # reproducible with a generator
    g2 = torch.Generator(device=device).manual_seed(0)
    torch.testing.assert_close(post.sample(s, generator=g2)["locs"], draws["locs"])
    # log_prob against torch.distributions
    sub = {key: value[:50] for key, value in draws.items()}
    lam, mu = sub["precisions"], sub["locs"]
    ref = dist.Dirichlet(post.weight_concentration).log_prob(sub["weights"])
    if covariance_type == "full":
        ref = ref + dist.Wishart(
            post.degrees_of_freedom, precision_matrix=post.covariance
        ).log_prob(lam).sum(-1)
        beta = post.mean_precision[:, None, None]
        ref = ref + dist.MultivariateNormal(post.means, precision_matrix=beta * lam).log_prob(
            mu
        ).sum(-1)
    else:
        nu = post.degrees_of_freedom[:, None].expand_as(post.covariance)
        ref = ref + dist.Gamma(0.5 * nu, 0.5 * post.covariance).log_prob(lam).sum((-1, -2))
        scale = (post.mean_precision[:, None] * lam).rsqrt()
        ref = ref + dist.Normal(post.means, scale).log_prob(mu).sum((-1, -2))
    torch.testing.assert_close(post.log_prob(sub), ref, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# EM


def _one_m_step(x: np.ndarray, resp: np.ndarray, covariance_type: str, reg: float):
    """sklearn's M-step formulas, in numpy, as GaussianMixture's *_init arguments."""
    nk = resp.sum(0) + 10 * np.finfo(resp.dtype).eps
    means = resp.T @ x / nk[:, None]
    if covariance_type == "full":
        diff = x[None] - means[:, None]
        cov = np.einsum("nk,kni,knj->kij", resp, diff, diff) / nk[:, None, None]
        cov += reg * np.eye(x.shape[1])
        precisions = np.linalg.inv(cov)
    else:
        cov = (resp.T @ x**2) / nk[:, None] - means**2 + reg
        precisions = 1.0 / cov
    weights = nk / nk.sum()
    return weights, means, precisions


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_em_matches_sklearn(device: torch.device, covariance_type: str) -> None:
    mixture = require("sklearn.mixture")
    x, _ = _blobs(device, n_per=50, dim=3, spacing=OVERLAP)
    resp0 = _random_resp(len(x), 3, device, seed=7)
    reg = 1e-3  # large enough that a wrong regularisation shows at the 1e-5 tolerance
    w0, m0, p0 = _one_m_step(x.cpu().numpy(), resp0.cpu().numpy(), covariance_type, reg)
    model = mixture.GaussianMixture(
        n_components=3,
        covariance_type=covariance_type,
        reg_covar=reg,
        tol=1e-12,
        max_iter=2000,
        weights_init=w0,
        means_init=m0,
        precisions_init=p0,
    ).fit(x.cpu().numpy())
    fit = em(x, 3, covariance_type, tol=1e-12, reg_covar=reg, init_responsibilities=resp0)
    assert fit.converged and model.converged_
    assert fit.n_iter > 5
    assert _fractional(fit.responsibilities) > 0.2  # overlapping clusters: every term shows
    assert _rel(fit.weights, model.weights_) < 1e-5
    assert _rel(fit.means, model.means_) < 1e-5
    assert _rel(fit.covariances, model.covariances_) < 1e-5
    assert math.isclose(fit.log_likelihood_trace[-1], model.score(x.cpu().numpy()), rel_tol=1e-9)
    steps = np.diff(fit.log_likelihood_trace)
    assert (steps >= -1e-9).all(), steps.min()
    samples = fit.as_samples()
    assert samples["weights"].shape == (1, 3) and samples["locs"].shape == (1, 3, 3)
    precisions = samples["precisions"][0]
    if covariance_type == "full":
        eye = torch.eye(3, dtype=F64, device=device).expand(3, 3, 3)
        torch.testing.assert_close(precisions @ fit.covariances, eye)
    else:
        torch.testing.assert_close(precisions * fit.covariances, torch.ones_like(precisions))


def test_em_default_start(device: torch.device) -> None:
    x, labels = _blobs(device, dim=2)
    fit = em(x, 3, "diag", seed=1)
    assert fit.converged
    pred = fit.responsibilities.argmax(-1)
    pairs = {(int(a), int(b)) for a, b in zip(labels.tolist(), pred.tolist(), strict=True)}
    assert len(pairs) == 3


def test_em_singular_covariance_is_explained(device: torch.device) -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [5.0, 5.0]], dtype=F64, device=device)
    with pytest.raises(ValueError, match="reg_covar"):
        em(x, 2, reg_covar=0.0)


# ----------------------------------------------------------------------------------------------
# Bad input


def _fit(method: str, data: object, k: object, **kw: object) -> object:
    if method == "cavi":
        return cavi(data, GMMPrior.default(2, dtype=F64), k, **kw)
    return em(data, k, **kw)


@pytest.mark.parametrize("method", ["cavi", "em"])
def test_bad_data_is_refused(device: torch.device, method: str) -> None:
    good = torch.randn(20, 2, dtype=F64, device=device)
    nan = good.clone()
    nan[3, 1] = float("nan")
    inf = good.clone()
    inf[0, 0] = float("inf")
    for bad in (nan, inf, good[:, 0], good[:0]):
        with pytest.raises(ValueError, match="data"):
            _fit(method, bad, 2)
    with pytest.raises(TypeError, match="data"):
        _fit(method, good.long(), 2)
    with pytest.raises(TypeError, match="data"):
        _fit(method, good.cpu().numpy(), 2)
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_components"):
            _fit(method, good, k)
    with pytest.raises(ValueError, match="num_components"):
        _fit(method, good[:3], 4)
    with pytest.raises(ValueError, match="init_responsibilities"):
        _fit(method, good, 2, init_responsibilities=torch.full((20, 3), 1 / 3, device=device))
    with pytest.raises(ValueError, match="init_responsibilities"):
        _fit(method, good, 2, init_responsibilities=torch.ones(20, 2, dtype=F64, device=device))
    with pytest.raises(ValueError, match="max_iter"):
        _fit(method, good, 2, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        _fit(method, good, 2, tol=-1.0)


def test_bad_prior_is_refused(device: torch.device) -> None:
    m0 = torch.zeros(2, dtype=F64, device=device)
    eye = torch.eye(2, dtype=F64, device=device)

    def make(**kw: object) -> GMMPrior:
        args = dict(
            weight_concentration=1.0,
            mean_prior=m0,
            mean_precision=1.0,
            degrees_of_freedom=3.0,
            covariance_prior=eye,
            covariance_type="full",
        )
        args.update(kw)
        return GMMPrior(**args)

    make()  # valid
    with pytest.raises(ValueError, match="covariance_prior"):
        make(covariance_prior=torch.eye(3, dtype=F64, device=device))
    with pytest.raises(ValueError, match="covariance_prior"):
        make(covariance_prior=torch.ones(2, dtype=F64, device=device))  # diag shape for full
    with pytest.raises(ValueError, match="covariance_prior"):
        make(covariance_prior=-eye)  # not positive definite
    with pytest.raises(ValueError, match="covariance_prior"):
        make(covariance_prior=torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64, device=device))
    with pytest.raises(ValueError, match="covariance_prior"):
        make(covariance_type="diag", covariance_prior=torch.tensor([1.0, 0.0], device=device))
    with pytest.raises(ValueError, match="degrees_of_freedom"):
        make(degrees_of_freedom=0.5)  # needs > D - 1 = 1 for full
    make(
        covariance_type="diag",
        covariance_prior=torch.ones(2, device=device),
        degrees_of_freedom=0.5,
    )
    with pytest.raises(ValueError, match="weight_concentration"):
        make(weight_concentration=0.0)
    with pytest.raises(ValueError, match="mean_precision"):
        make(mean_precision=-1.0)
    with pytest.raises(ValueError, match="mean_prior"):
        make(mean_prior=torch.zeros(2, 1, dtype=F64, device=device))
    with pytest.raises(ValueError, match="covariance_type"):
        make(covariance_type="spherical")
    with pytest.raises(ValueError, match="prior"):
        cavi(torch.randn(10, 3, dtype=F64, device=device), make(), 2)
    with pytest.raises(TypeError, match="prior"):
        cavi(torch.randn(10, 2, dtype=F64, device=device), "default", 2)
    with pytest.raises(ValueError, match="covariance_type"):
        em(torch.randn(10, 2, dtype=F64, device=device), 2, "tied")
    default = GMMPrior.default(4, "diag", dtype=F64, device=device)
    assert default.covariance_prior.shape == (4,) and default.degrees_of_freedom == 5.0


def test_float32_data_and_a_float64_copy_start_and_end_alike(device: torch.device) -> None:
    """The default k-means++ start runs in float64, so float32 data and its float64 copy get the
    same start and CAVI reaches the same bound (they once ended 6,500 nats apart)."""
    g = torch.Generator().manual_seed(0)
    centers = 1.5 * torch.randn(10, 16, generator=g, dtype=F64)
    many = centers[torch.randint(10, (50000,), generator=g)]
    many = (many + torch.randn(50000, 16, generator=g, dtype=F64)).to(device)
    starts = [kmeans_responsibilities(x, 10, seed=0) for x in (many.float(), many)]
    assert starts[0].dtype == torch.float32
    torch.testing.assert_close(starts[0].double(), starts[1], rtol=0, atol=0)
    x64, _ = _blobs(device, n_per=300, dim=3, spacing=OVERLAP)
    x32 = x64.float()
    prior = _prior(x64)
    prior32 = GMMPrior(
        prior.weight_concentration,
        prior.mean_prior.float(),
        prior.mean_precision,
        prior.degrees_of_freedom,
        prior.covariance_prior.float(),
        prior.covariance_type,
    )
    fits = [cavi(x32, prior32, 5, tol=1e-8), cavi(x32.double(), prior, 5, tol=1e-8)]
    assert abs(fits[0].elbo_trace[-1] - fits[1].elbo_trace[-1]) < 1e-3 * len(x64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_posterior_float32_cannot_hold_is_refused_with_the_fix(
    device: torch.device, seed: int
) -> None:
    """Data at 1e6 under a prior centred at 0: the posterior covariances hold a 1e12 rank-one
    term next to a spread of 1, fine in float64; cast to float32 they are not positive definite,
    or their sampled precisions are not."""
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(3, 2, generator=g, dtype=F64)
    x = centers[torch.randint(3, (600,), generator=g)] + torch.randn(600, 2, generator=g, dtype=F64)
    x = (x + 1e6).float().to(device)
    prior = GMMPrior.default(2, "full", dtype=F64, device=device)
    fit64 = cavi(x.double(), prior, 3)
    assert fit64.posterior.covariance.dtype == F64 and math.isfinite(fit64.elbo_trace[-1])
    prior32 = GMMPrior.default(2, "full", dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"cannot be held in torch\.float32.*fit float64 data"):
        cavi(x, prior32, 3)
