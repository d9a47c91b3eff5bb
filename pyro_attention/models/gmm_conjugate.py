r"""Closed-form inference for the Bayesian Gaussian mixture: CAVI and maximum-likelihood EM.

Generative model (site names as in the Pyro model of this package), for :math:`K` components
in :math:`D` dimensions and hyper-parameters :math:`\alpha_0, m_0, \beta_0, \nu_0,
\Psi_0 = W_0^{-1}` (:class:`GMMPrior`):

.. math::

    \pi &\sim \mathrm{Dirichlet}(\alpha_0 \mathbf 1_K)
        && \text{site ``weights``, } (K,) \\
    \Lambda_k &\sim \mathcal W(\nu_0, W_0)
        && \text{site ``precisions``, } (K, D, D) \\
    \mu_k \mid \Lambda_k &\sim \mathcal N\big(m_0, (\beta_0 \Lambda_k)^{-1}\big)
        && \text{site ``locs``, } (K, D) \\
    z_n \mid \pi &\sim \mathrm{Categorical}(\pi), \qquad
    x_n \mid z_n, \mu, \Lambda \sim \mathcal N\big(\mu_{z_n}, \Lambda_{z_n}^{-1}\big).

With ``covariance_type="diag"`` the precisions are :math:`(K, D)` and every
:math:`\lambda_{kd} \sim \mathrm{Gamma}(\nu_0/2,\ \mathrm{rate}=\Psi_{0,d}/2)` (a 1-D Wishart),
:math:`\mu_{kd} \sim \mathcal N(m_{0,d}, 1/(\beta_0 \lambda_{kd}))`: the normal-Wishart block of
size :math:`D` becomes :math:`D` normal-gamma blocks of size 1.

:func:`cavi` fits the mean-field family :math:`q(z)\,q(\pi)\,\prod_k q(\mu_k, \Lambda_k)` with
:math:`q(\pi) = \mathrm{Dirichlet}(\alpha)` and
:math:`q(\mu_k, \Lambda_k) = \mathcal N(\mu_k \mid m_k, (\beta_k \Lambda_k)^{-1})
\,\mathcal W(\Lambda_k \mid \nu_k, W_k)` by coordinate ascent (Bishop, PRML §10.2,
eqs. 10.46–10.63); :func:`elbo` is the full evidence lower bound with every normalising constant
(eqs. 10.70–10.77), in total nats, so it bounds :math:`\log p(X)` and is comparable with a Pyro
``Trace_ELBO`` of the same model. :func:`em` is maximum-likelihood EM with scikit-learn's
``GaussianMixture`` conventions. Both iterate in feature space: about the data mean, the
log responsibilities are linear in :math:`\psi_n = [\text{packed } x_n x_n^\top, x_n]` and the
statistics are their weighted sums, so an iteration is two matrix products per cache-sized
chunk of rows (:class:`_Features`), computed in float64 on the data's device and returned in
the data's dtype; log-determinants and precisions go through Cholesky factors.

Example::

    import torch
    from pyro_attention.models.gmm_conjugate import GMMPrior, cavi

    x = torch.cat([torch.randn(200, 2) - 4, torch.randn(200, 2) + 4]).double()
    fit = cavi(x, GMMPrior.default(2, dtype=x.dtype), num_components=2)
    fit.posterior.mean()["locs"]          # (2, 2), close to (-4, -4) and (4, 4)
    fit.elbo_trace[-1]                    # a lower bound on log p(x), total nats

References: C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §10.2 and
Appendix B; D. Arthur and S. Vassilvitskii, *k-means++: the advantages of careful seeding*,
SODA 2007; scikit-learn's ``BayesianGaussianMixture`` and ``GaussianMixture``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from numbers import Real
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from pyro_attention._validation import check_positive_int, check_tensor

__all__ = [
    "CAVIResult",
    "EMResult",
    "GMMPrior",
    "GMMVariationalPosterior",
    "cavi",
    "elbo",
    "em",
    "update_posterior",
    "update_responsibilities",
]

_COVARIANCE_TYPES = ("full", "diag")
_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
_LOG_PI = math.log(math.pi)
_KMEANS_LLOYD_ITERS = 20


# ----------------------------------------------------------------------------------------------
# Prior and variational posterior


def _positive_float(value: object, name: str, *, above: float = 0.0) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= above:
        raise ValueError(f"{name} must be a finite number > {above:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class GMMPrior:
    r"""Conjugate hyper-parameters of the Bayesian Gaussian mixture (scikit-learn's names).

    :param weight_concentration: :math:`\alpha_0 > 0` of the symmetric Dirichlet over the weights.
    :param mean_prior: :math:`m_0`, shape ``(D,)``.
    :param mean_precision: :math:`\beta_0 > 0`, scales the precision of the locations.
    :param degrees_of_freedom: :math:`\nu_0`, ``> D - 1`` for ``"full"``, ``> 0`` for ``"diag"``.
    :param covariance_prior: :math:`\Psi_0 = W_0^{-1}`, symmetric positive definite ``(D, D)``
        for ``"full"``, positive ``(D,)`` for ``"diag"``.
    :param covariance_type: ``"full"`` (Wishart precisions) or ``"diag"`` (gamma precisions).
    """

    weight_concentration: float
    mean_prior: torch.Tensor
    mean_precision: float
    degrees_of_freedom: float
    covariance_prior: torch.Tensor
    covariance_type: str

    def __post_init__(self) -> None:
        if self.covariance_type not in _COVARIANCE_TYPES:
            raise ValueError(
                f"GMMPrior.covariance_type must be 'full' or 'diag', got {self.covariance_type!r}"
            )
        set_ = object.__setattr__
        set_(
            self,
            "weight_concentration",
            _positive_float(self.weight_concentration, "GMMPrior.weight_concentration"),
        )
        set_(
            self,
            "mean_precision",
            _positive_float(self.mean_precision, "GMMPrior.mean_precision"),
        )
        mean_prior = check_tensor(self.mean_prior, "GMMPrior.mean_prior", ndim=1)
        dim = mean_prior.shape[0]
        full = self.covariance_type == "full"
        psi = check_tensor(
            self.covariance_prior, "GMMPrior.covariance_prior", ndim=2 if full else 1
        )
        expected = (dim, dim) if full else (dim,)
        if tuple(psi.shape) != expected:
            raise ValueError(
                f"GMMPrior.covariance_prior has shape {tuple(psi.shape)} but mean_prior has "
                f"{dim} entries, so a {self.covariance_type!r} prior needs shape {expected}"
            )
        if full:
            if not torch.allclose(psi, psi.mT, rtol=1e-5, atol=1e-8):
                raise ValueError("GMMPrior.covariance_prior must be symmetric; pass (P + P.T) / 2")
            if torch.linalg.cholesky_ex(psi.double())[1].item() != 0:
                raise ValueError(
                    "GMMPrior.covariance_prior is not positive definite; add a multiple of the "
                    "identity or use a scaled empirical covariance of the data"
                )
        elif not (psi > 0).all():
            raise ValueError(
                "GMMPrior.covariance_prior (diag) must be positive in every dimension, got "
                f"min {psi.min().item():g}"
            )
        lower = dim - 1.0 if full else 0.0
        set_(
            self,
            "degrees_of_freedom",
            _positive_float(self.degrees_of_freedom, "GMMPrior.degrees_of_freedom", above=lower),
        )

    @classmethod
    def default(
        cls,
        dim: int,
        covariance_type: str = "full",
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> GMMPrior:
        r""":math:`\alpha_0 = 1, m_0 = 0, \beta_0 = 1, \nu_0 = D + 1, \Psi_0 = I` (ones if diag)."""
        dim = check_positive_int(dim, "dim")
        if covariance_type not in _COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        psi = (
            torch.eye(dim, dtype=dtype, device=device)
            if covariance_type == "full"
            else torch.ones(dim, dtype=dtype, device=device)
        )
        return cls(
            weight_concentration=1.0,
            mean_prior=torch.zeros(dim, dtype=dtype, device=device),
            mean_precision=1.0,
            degrees_of_freedom=dim + 1.0,
            covariance_prior=psi,
            covariance_type=covariance_type,
        )

    @property
    def dim(self) -> int:
        """The data dimension :math:`D`."""
        return self.mean_prior.shape[0]

    def tensors_like(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(m_0, \Psi_0)` on ``like``'s device and dtype."""
        return (
            self.mean_prior.to(device=like.device, dtype=like.dtype),
            self.covariance_prior.to(device=like.device, dtype=like.dtype),
        )


def _mvlgamma(a: torch.Tensor, p: int) -> torch.Tensor:
    r""":math:`\log \Gamma_p(a)`, batched over ``a`` (no domain check, so no device sync)."""
    i = torch.arange(p, dtype=a.dtype, device=a.device)
    return torch.lgamma(a.unsqueeze(-1) - 0.5 * i).sum(-1) + 0.25 * p * (p - 1) * _LOG_PI


def _block(full: bool, dim: int) -> tuple[int, int]:
    """(block size p, blocks per component B): one D-block for full, D 1-blocks for diag."""
    return (dim, 1) if full else (1, dim)


def _cholesky(matrix: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(matrix)
    if (info != 0).any():
        bad = int(info.ne(0).nonzero()[0, 0]) if info.dim() > 0 else 0
        raise ValueError(f"{what} (component {bad}) is not positive definite; {fix}")
    return chol


@dataclass
class GMMVariationalPosterior:
    r"""The mean-field posterior :math:`q(\pi)\prod_k q(\mu_k, \Lambda_k)` of :func:`cavi`.

    :math:`q(\pi) = \mathrm{Dir}(\alpha)`, :math:`q(\Lambda_k) = \mathcal W(\nu_k, W_k)`
    (diag: :math:`\lambda_{kd} \sim \mathrm{Gamma}(\nu_k/2, \Psi_{kd}/2)`) and
    :math:`q(\mu_k \mid \Lambda_k) = \mathcal N(m_k, (\beta_k\Lambda_k)^{-1})`.

    :param weight_concentration: :math:`\alpha`, ``(K,)``.
    :param mean_precision: :math:`\beta`, ``(K,)``.
    :param means: :math:`m`, ``(K, D)``.
    :param degrees_of_freedom: :math:`\nu`, ``(K,)``.
    :param covariance: :math:`\Psi_k = W_k^{-1}`, ``(K, D, D)`` (full) or ``(K, D)`` (diag).
        scikit-learn's ``covariances_`` is :math:`\Psi_k / \nu_k`.
    :param prior: the :class:`GMMPrior` it was fitted under.
    """

    weight_concentration: torch.Tensor
    mean_precision: torch.Tensor
    means: torch.Tensor
    degrees_of_freedom: torch.Tensor
    covariance: torch.Tensor
    prior: GMMPrior

    def __post_init__(self) -> None:
        means = check_tensor(self.means, "GMMVariationalPosterior.means", ndim=2)
        k, d = means.shape
        for name in ("weight_concentration", "mean_precision", "degrees_of_freedom"):
            value = check_tensor(getattr(self, name), f"GMMVariationalPosterior.{name}", ndim=1)
            if value.shape[0] != k:
                raise ValueError(
                    f"GMMVariationalPosterior.{name} has {value.shape[0]} entries but means has "
                    f"{k} components"
                )
        shape = (k, d, d) if self.prior.covariance_type == "full" else (k, d)
        cov = check_tensor(self.covariance, "GMMVariationalPosterior.covariance")
        if tuple(cov.shape) != shape:
            raise ValueError(
                f"GMMVariationalPosterior.covariance has shape {tuple(cov.shape)}; a "
                f"{self.prior.covariance_type!r} posterior with means {tuple(means.shape)} "
                f"needs {shape}"
            )
        if self.prior.dim != d:
            raise ValueError(
                f"GMMVariationalPosterior.prior has dim {self.prior.dim} but means has {d} columns"
            )

    @property
    def covariance_type(self) -> str:
        """``"full"`` or ``"diag"``, that of the prior."""
        return self.prior.covariance_type

    @property
    def num_components(self) -> int:
        """:math:`K`."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """:math:`D`."""
        return self.means.shape[1]

    def mean(self) -> dict[str, torch.Tensor]:
        r"""Posterior means :math:`E_q[\pi] = \alpha/\sum\alpha`, :math:`E_q[\mu_k] = m_k`,
        :math:`E_q[\Lambda_k] = \nu_k W_k`; keys ``weights`` ``(K,)``, ``locs`` ``(K, D)``,
        ``precisions`` ``(K, D, D)`` or ``(K, D)``."""
        alpha, nu = self.weight_concentration, self.degrees_of_freedom
        if self.covariance_type == "full":
            chol = _cholesky(self.covariance, "posterior covariance", "refit the posterior")
            precisions = nu[:, None, None] * torch.cholesky_inverse(chol)
        else:
            precisions = nu[:, None] / self.covariance
        return {
            "weights": alpha / alpha.sum(),
            "locs": self.means.clone(),
            "precisions": precisions,
        }

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        r"""Exact draws from :math:`q`: Dirichlet by normalised gammas, Wishart by the Bartlett
        decomposition :math:`\Lambda = (U^\top A)(U^\top A)^\top` with :math:`\Psi = LL^\top`,
        :math:`U = L^{-1}` and :math:`A` lower triangular, :math:`A_{ii}^2 \sim
        \chi^2_{\nu-i+1}`, :math:`A_{ij} \sim \mathcal N(0, 1)`; then
        :math:`\mu_k = m_k + \beta_k^{-1/2} L_{\Lambda_k}^{-\top}\varepsilon`.

        :param num_samples: :math:`S`.
        :param generator: a ``torch.Generator`` on the posterior's device (global RNG if None).
        :returns: ``weights`` ``(S, K)``, ``locs`` ``(S, K, D)``, ``precisions``
            ``(S, K, D, D)`` or ``(S, K, D)``.
        """
        s = check_positive_int(num_samples, "num_samples")
        alpha, beta, m, nu = (
            self.weight_concentration,
            self.mean_precision,
            self.means,
            self.degrees_of_freedom,
        )
        k, d = m.shape
        tiny = torch.finfo(m.dtype).tiny
        opts: dict[str, Any] = {"dtype": m.dtype, "device": m.device, "generator": generator}
        weights = torch._sample_dirichlet(alpha.expand(s, k).contiguous(), generator=generator)
        weights = weights.clamp_min(tiny)
        weights = weights / weights.sum(-1, keepdim=True)
        eps = torch.randn(s, k, d, **opts)
        if self.covariance_type == "full":
            i = torch.arange(d, dtype=m.dtype, device=m.device)
            shape = (0.5 * (nu[:, None] - i)).expand(s, k, d).contiguous()
            diag = (2.0 * torch._standard_gamma(shape, generator=generator)).clamp_min(tiny).sqrt()
            a = torch.randn(s, k, d, d, **opts).tril(-1) + torch.diag_embed(diag)
            chol_psi = _cholesky(self.covariance, "posterior covariance", "refit the posterior")
            u = torch.linalg.solve_triangular(
                chol_psi, torch.eye(d, dtype=m.dtype, device=m.device).expand(k, d, d), upper=False
            )
            g = u.mT @ a
            precisions = g @ g.mT
            precisions = 0.5 * (precisions + precisions.mT)
            chol_lam = torch.linalg.cholesky(precisions)
            z = torch.linalg.solve_triangular(chol_lam.mT, eps.unsqueeze(-1), upper=True)
            locs = m + z.squeeze(-1) / beta[:, None].sqrt()
        else:
            shape = (0.5 * nu[:, None]).expand(s, k, d).contiguous()
            gam = torch._standard_gamma(shape, generator=generator).clamp_min(tiny)
            precisions = 2.0 * gam / self.covariance
            locs = m + eps / (beta[:, None] * precisions).sqrt()
        return {"weights": weights, "locs": locs, "precisions": precisions}

    def log_prob(self, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\log q(\pi, \mu, \Lambda)` at draws shaped as :meth:`sample` returns them.

        :returns: ``(S,)``.
        """
        alpha, beta, m, nu, psi = (
            self.weight_concentration,
            self.mean_precision,
            self.means,
            self.degrees_of_freedom,
            self.covariance,
        )
        k, d = m.shape
        full = self.covariance_type == "full"
        weights = check_tensor(samples["weights"], 'samples["weights"]', ndim=2)
        locs = check_tensor(samples["locs"], 'samples["locs"]', ndim=3)
        lam = check_tensor(samples["precisions"], 'samples["precisions"]', ndim=4 if full else 3)
        s = weights.shape[0]
        expected = {
            "weights": (s, k),
            "locs": (s, k, d),
            "precisions": (s, k, d, d) if full else (s, k, d),
        }
        for key, value in (("weights", weights), ("locs", locs), ("precisions", lam)):
            if tuple(value.shape) != expected[key]:
                raise ValueError(
                    f'samples["{key}"] has shape {tuple(value.shape)}, expected {expected[key]}'
                )
        p, b = _block(full, d)
        log_dir = (
            torch.lgamma(alpha.sum())
            - torch.lgamma(alpha).sum()
            + ((alpha - 1.0) * weights.log()).sum(-1)
        )
        diff = locs - m
        if full:
            chol_lam = _cholesky(lam, 'samples["precisions"]', "pass positive definite matrices")
            logdet_lam = 2.0 * chol_lam.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            trace = (psi * lam).sum((-1, -2))
            quad = (chol_lam.mT @ diff.unsqueeze(-1)).squeeze(-1).square().sum(-1)
            chol_psi = _cholesky(psi, "posterior covariance", "refit the posterior")
            logdet_psi = 2.0 * chol_psi.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        else:
            logdet_lam = lam.log().sum(-1)
            trace = (psi * lam).sum(-1)
            quad = (diff.square() * lam).sum(-1)
            logdet_psi = psi.log().sum(-1)
        log_norm_w = 0.5 * nu * logdet_psi - 0.5 * nu * d * _LOG_2 - b * _mvlgamma(0.5 * nu, p)
        log_wishart = log_norm_w + 0.5 * (nu - p - 1.0) * logdet_lam - 0.5 * trace
        log_normal = 0.5 * d * (beta.log() - _LOG_2PI) + 0.5 * logdet_lam - 0.5 * beta * quad
        return log_dir + (log_wishart + log_normal).sum(-1)


# ----------------------------------------------------------------------------------------------
# Shared batched pieces


class _Stats(NamedTuple):
    nk: torch.Tensor  # (K,)  sum_n r_nk
    xbar: torch.Tensor  # (K, D)
    scatter: torch.Tensor  # (K, D, D) or (K, D): sum_n r_nk (x_n - xbar_k)(x_n - xbar_k)^T


class _Terms(NamedTuple):
    factor: torch.Tensor  # full: U_k = L_k^{-1} with Psi_k = L_k L_k^T, so W_k = U^T U; diag: 1/Psi
    logdet_psi: torch.Tensor  # (K,)
    e_log_det: torch.Tensor  # (K,)  E_q log|Lambda_k|, summed over blocks
    e_log_weights: torch.Tensor  # (K,)  E_q log pi_k


class _Sums(NamedTuple):
    r"""Sums over points of :math:`r_{nk}`, :math:`r_{nk} x_n` and :math:`r_{nk} x_n x_n^\top`
    (packed upper triangles, ``(D, D)`` blocks or diagonals) about the data mean; they add up
    over chunks of the data."""

    nk: torch.Tensor  # (K,)
    sx: torch.Tensor  # (K, D)
    second: torch.Tensor  # (K, D(D+1)/2) packed, (K, D, D), or diag (K, D)

    @staticmethod
    def total(parts: Iterable[_Sums]) -> _Sums:
        """The sums over all chunks."""
        nk, sx, second = (torch.stack(list(t)).sum(0) for t in zip(*parts, strict=True))
        return _Sums(nk, sx, second)


def _stats_from_sums(sums: _Sums, center: torch.Tensor, triu: torch.Tensor | None) -> _Stats:
    """Counts, means and scatter matrices from :class:`_Sums` about ``center``; ``triu`` the
    indices of the packed upper triangles (full covariances), None for diagonal ones."""
    nk, sx, second = sums
    k, d = sx.shape
    denom = nk + 10.0 * torch.finfo(sx.dtype).eps
    xbar = sx / denom[:, None]
    if triu is not None:
        packed = second
        second = packed.new_zeros(k, d, d)
        second[:, triu[0], triu[1]] = packed
        second[:, triu[1], triu[0]] = packed
        cross = xbar.unsqueeze(-1) * sx.unsqueeze(-2)
        scatter = (
            second
            - cross
            - cross.mT
            + nk[:, None, None] * (xbar.unsqueeze(-1) * xbar.unsqueeze(-2))
        )
        scatter = 0.5 * (scatter + scatter.mT)
    else:
        scatter = (second - 2.0 * xbar * sx + nk[:, None] * xbar.square()).clamp_min(0.0)
    return _Stats(nk, xbar + center, scatter)


def _sufficient_stats(data: torch.Tensor, resp: torch.Tensor, full: bool) -> _Stats:
    """Weighted counts, means and scatter matrices, by :class:`_Features`: second moments
    about the data mean (so the uncentred formula loses no precision to an offset), one
    ``(K, rows) @ (rows, P + D)`` product per chunk of rows; :func:`_sufficient_stats_reference`
    is the direct version."""
    features = _Features.of(data, full)
    return features.stats(features.weighted_sums(resp))


class _Features(NamedTuple):
    r"""The data as the features that CAVI's E-step and statistics are linear in, float64.

    About the data mean :math:`c`, with :math:`x = x_n - c`, each point is
    :math:`\psi_n = [\phi(x), x]` with :math:`\phi(x)` the packed upper triangle of
    :math:`x x^\top` (full) or :math:`x^2` (diag), :math:`P = D(D+1)/2` or :math:`D` numbers.
    Then :math:`\log\rho_{nk} = a_k + w_k\cdot\psi_n` (Bishop 10.46 with 10.64: the quadratic
    form :math:`\nu_k (x - m_k)^\top W_k (x - m_k)` expanded) and the statistics are
    :math:`\sum_n r_{nk}\psi_n`: an iteration is two ``(K, P + D)`` by ``(P + D, rows)``
    products per chunk of rows, with no ``(N, K, D)`` temporary (half the arithmetic of whitening
    every point for every component). Stored whole when it fits in :data:`_FEATURE_BYTES`,
    else built chunk by chunk.
    """

    center: torch.Tensor  # (D,)
    x: torch.Tensor  # (N, D) centred
    psi: torch.Tensor | None  # (N, P + D), or None when built per chunk
    triu: torch.Tensor | None  # (2, P) for full

    @staticmethod
    def of(data: torch.Tensor, full: bool) -> _Features:
        center = data.mean(0)
        x = data - center
        d = x.shape[1]
        triu = torch.triu_indices(d, d, device=x.device) if full else None
        features = _Features(center, x, None, triu)
        width = (d * (d + 1) // 2 if full else d) + d
        if x.shape[0] * width * x.element_size() <= _FEATURE_BYTES:
            psi = x.new_empty(x.shape[0], width)  # filled by chunks: no N-sized temporaries
            for chunk in features.chunks(0):
                psi[chunk] = features.block(chunk)
            features = features._replace(psi=psi)
        return features

    def block(self, chunk: slice) -> torch.Tensor:
        r""":math:`\psi` of the rows ``chunk``, ``(rows, P + D)``."""
        if self.psi is not None:
            return self.psi[chunk]
        x = self.x[chunk]
        phi = x.square() if self.triu is None else x[:, self.triu[0]] * x[:, self.triu[1]]
        return torch.cat([phi, x], 1)

    def chunks(self, num_components: int) -> Iterator[slice]:
        """Row ranges whose ``(K, rows)`` and ``(rows, P + D)`` blocks hold about
        :data:`_CHUNK_NUMBERS` numbers (at least 256 rows)."""
        width = self.x.shape[1] + (0 if self.triu is None else self.triu.shape[1])
        rows = max(256, _CHUNK_NUMBERS // (width + num_components))
        return (slice(i, i + rows) for i in range(0, self.x.shape[0], rows))

    def sums(self, chunk: slice, resp_t: torch.Tensor) -> _Sums:
        """:class:`_Sums` of the rows ``chunk`` with responsibilities ``resp_t (K, rows)``."""
        moments = resp_t @ self.block(chunk)  # (K, P + D)
        d = self.x.shape[1]
        return _Sums(resp_t.sum(1), moments[:, -d:], moments[:, :-d])

    def stats(self, sums: _Sums) -> _Stats:
        return _stats_from_sums(sums, self.center, self.triu)

    def weighted_sums(self, resp: torch.Tensor) -> _Sums:
        """:class:`_Sums` of all rows with responsibilities ``resp (N, K)``."""
        resp_t = resp.to(self.x.dtype).mT
        k = resp.shape[1]
        return _Sums.total(self.sums(chunk, resp_t[:, chunk]) for chunk in self.chunks(k))

    def coefficients(
        self,
        precision: torch.Tensor,
        means: torch.Tensor,
        scale: torch.Tensor,
        constant: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(w (K, P + D), a (K, 1))`` with :math:`a_k + w_k\cdot\psi_n = c_k - \tfrac12
        s_k (x_n - m_k)^\top W_k (x_n - m_k)` for precisions ``W (K, D, D)`` (diag:
        ``(K, D)``), means ``m (K, D)``, scales ``s (K,)`` and constants ``c (K,)``."""
        dtype = self.x.dtype
        precision, scale = precision.to(dtype), scale.to(dtype)
        means = means.to(dtype) - self.center
        if self.triu is None:
            w_means = precision * means
            quadratic = precision  # coefficients of x²
        else:
            w_means = (precision @ means.unsqueeze(-1)).squeeze(-1)
            i, j = self.triu
            quadratic = precision[:, i, j] * torch.where(i == j, 1.0, 2.0).to(precision)
        weights = -0.5 * scale[:, None] * torch.cat([quadratic, -2.0 * w_means], 1)
        offset = constant.to(dtype) - 0.5 * scale * (means * w_means).sum(-1)
        return weights, offset.unsqueeze(-1)

    def log_rho_coefficients(
        self, post: GMMVariationalPosterior, terms: _Terms
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""CAVI's :math:`\log\rho_{nk}` (Bishop 10.46 with 10.64-10.66) as
        :meth:`coefficients`: :math:`s_k = \nu_k`, :math:`c_k = E\log\pi_k + \tfrac12
        E\log|\Lambda_k| - \tfrac D2 \log 2\pi - \tfrac{D}{2\beta_k}`."""
        d = self.x.shape[1]
        precision = _precision_matrix(terms.factor, self.triu is not None)
        constant = (
            terms.e_log_weights
            + 0.5 * terms.e_log_det
            - 0.5 * d * _LOG_2PI
            - 0.5 * d / post.mean_precision
        )
        return self.coefficients(precision, post.means, post.degrees_of_freedom, constant)

    def responsibilities(
        self, weights: torch.Tensor, offset: torch.Tensor, out: torch.Tensor
    ) -> tuple[_Sums, torch.Tensor, torch.Tensor]:
        r"""One pass over chunks of rows: the normalised responsibilities of
        :math:`a_k + w_k\cdot\psi_n` into ``out (N, K)``, and the statistics they give
        (:class:`_Sums`), :math:`\sum_n \log\sum_k e^{a_k + w_k\cdot\psi_n}` and
        :math:`\sum_{nk} r_{nk} \log r_{nk}`."""
        k = weights.shape[0]
        parts = []
        log_norm = self.x.new_zeros(())
        neg_entropy = self.x.new_zeros(())
        for chunk in self.chunks(k):
            log_joint = self.log_rho(chunk, weights, offset)  # (K, rows)
            norm = torch.logsumexp(log_joint, dim=0, keepdim=True)
            log_resp = log_joint - norm
            r = log_resp.exp()
            log_norm += norm.sum()
            neg_entropy += (r * log_resp).sum()
            parts.append(self.sums(chunk, r))
            out[chunk] = r.mT
        return _Sums.total(parts), log_norm, neg_entropy

    def log_rho(self, chunk: slice, weights: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Unnormalised log responsibilities of the rows ``chunk``, ``(K, rows)``."""
        return torch.addmm(offset, weights, self.block(chunk).mT)


_FEATURE_BYTES = 1 << 29  # 512 MiB: N = 4e5 points of D = 16
_CHUNK_NUMBERS = 1 << 19  # 4 MB of float64 a chunk: cache-sized, few Python round trips


def _sufficient_stats_reference(data: torch.Tensor, resp: torch.Tensor, full: bool) -> _Stats:
    """Direct centred version of :func:`_sufficient_stats` (a ``(K, N, D)`` difference)."""
    nk = resp.sum(0)
    denom = nk + 10.0 * torch.finfo(data.dtype).eps
    xbar = (resp.mT @ data) / denom[:, None]
    diff = data.unsqueeze(0) - xbar.unsqueeze(1)  # (K, N, D)
    if full:
        scatter = (diff * resp.mT.unsqueeze(-1)).mT @ diff
        scatter = 0.5 * (scatter + scatter.mT)
    else:
        scatter = (resp.mT.unsqueeze(1) @ diff.square()).squeeze(1)
    return _Stats(nk, xbar, scatter)


def _whiten_factor(
    cov: torch.Tensor, full: bool, what: str, fix: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor, log-determinant) of a covariance: U = L^{-1} for full, 1/cov for diag."""
    if full:
        chol = _cholesky(cov, what, fix)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        factor = torch.linalg.solve_triangular(chol, eye, upper=False)
        logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    else:
        factor = cov.reciprocal()
        logdet = cov.log().sum(-1)
    return factor, logdet


def _quad_vectors(v: torch.Tensor, factor: torch.Tensor, full: bool) -> torch.Tensor:
    r""":math:`v_k^\top W_k v_k` for ``v`` of shape ``(K, D)``."""
    if full:
        return (factor @ v.unsqueeze(-1)).squeeze(-1).square().sum(-1)
    return (v.square() * factor).sum(-1)


def _precision_matrix(factor: torch.Tensor, full: bool) -> torch.Tensor:
    return factor.mT @ factor if full else factor


def _posterior_terms(post: GMMVariationalPosterior) -> _Terms:
    full = post.covariance_type == "full"
    nu, alpha = post.degrees_of_freedom, post.weight_concentration
    d = post.dim
    factor, logdet_psi = _whiten_factor(
        post.covariance, full, "posterior covariance", "check the prior's covariance_prior"
    )
    if full:
        i = torch.arange(d, dtype=nu.dtype, device=nu.device)
        digammas = torch.digamma(0.5 * (nu[:, None] - i)).sum(-1)
    else:
        digammas = d * torch.digamma(0.5 * nu)
    e_log_det = digammas + d * _LOG_2 - logdet_psi
    e_log_weights = torch.digamma(alpha) - torch.digamma(alpha.sum())
    return _Terms(factor, logdet_psi, e_log_det, e_log_weights)


def _posterior_from_stats(stats: _Stats, prior: GMMPrior) -> GMMVariationalPosterior:
    """Bishop 10.58–10.63 (and the per-dimension normal-gamma analogue for diag)."""
    nk, xbar, scatter = stats
    m0, psi0 = prior.tensors_like(xbar)
    a0, b0, nu0 = prior.weight_concentration, prior.mean_precision, prior.degrees_of_freedom
    beta = b0 + nk
    means = (b0 * m0 + nk[:, None] * xbar) / beta[:, None]
    d = xbar - m0
    shrink = b0 * nk / beta
    if prior.covariance_type == "full":
        psi = psi0 + scatter + shrink[:, None, None] * (d.unsqueeze(-1) * d.unsqueeze(-2))
        psi = 0.5 * (psi + psi.mT)
    else:
        psi = psi0 + scatter + shrink[:, None] * d.square()
    return GMMVariationalPosterior(
        weight_concentration=a0 + nk,
        mean_precision=beta,
        means=means,
        degrees_of_freedom=nu0 + nk,
        covariance=psi,
        prior=prior,
    )


def _elbo_from_stats(
    stats: _Stats,
    neg_entropy: torch.Tensor,
    prior: GMMPrior,
    post: GMMVariationalPosterior,
    terms: _Terms | None = None,
) -> torch.Tensor:
    """Bishop 10.70–10.77 from sufficient statistics, accumulated in float64; a scalar."""
    full = prior.covariance_type == "full"
    f64 = torch.float64
    if post.means.dtype != f64:
        post = GMMVariationalPosterior(
            post.weight_concentration.to(f64),
            post.mean_precision.to(f64),
            post.means.to(f64),
            post.degrees_of_freedom.to(f64),
            post.covariance.to(f64),
            post.prior,
        )
        terms = None
    if terms is None:
        terms = _posterior_terms(post)
    nk, xbar, scatter = (t.to(f64) for t in stats)
    k, d = post.means.shape
    p, b = _block(full, d)
    m0, psi0 = prior.tensors_like(post.means)
    a0, b0, nu0 = prior.weight_concentration, prior.mean_precision, prior.degrees_of_freedom
    alpha, beta, m, nu = (
        post.weight_concentration,
        post.mean_precision,
        post.means,
        post.degrees_of_freedom,
    )
    factor, logdet_psi, e_log_det, e_log_w = terms
    precision = _precision_matrix(factor, full)
    sum_dims = (-1, -2) if full else (-1,)
    tr_sw = (scatter * precision).sum(sum_dims)  # N_k Tr(S_k W_k)
    tr_0w = (psi0 * precision).sum(sum_dims)  # Tr(Psi_0 W_k)
    mah_x = _quad_vectors(xbar - m, factor, full)
    mah_0 = _quad_vectors(m - m0, factor, full)
    logdet_psi0 = _whiten_factor(psi0, full, "GMMPrior.covariance_prior", "fix the prior")[1]
    half_nu0 = m.new_tensor(0.5 * nu0)

    # 10.71  E log p(X | Z, mu, Lambda)
    log_px = (
        nk * (0.5 * e_log_det - 0.5 * d / beta - 0.5 * d * _LOG_2PI)
        - 0.5 * nu * (tr_sw + nk * mah_x)
    ).sum()
    # 10.72  E log p(Z | pi)
    log_pz = (nk * e_log_w).sum()
    # 10.73  E log p(pi)
    log_ppi = math.lgamma(k * a0) - k * math.lgamma(a0) + (a0 - 1.0) * e_log_w.sum()
    # 10.74  E log p(mu, Lambda)
    log_b0 = 0.5 * nu0 * logdet_psi0 - 0.5 * nu0 * d * _LOG_2 - b * _mvlgamma(half_nu0, p)
    log_pml = (
        0.5 * d * (math.log(b0) - _LOG_2PI)
        + 0.5 * (nu0 - p) * e_log_det
        - 0.5 * d * b0 / beta
        - 0.5 * b0 * nu * mah_0
        - 0.5 * nu * tr_0w
    ).sum() + k * log_b0
    # 10.76  E log q(pi)
    log_qpi = (
        ((alpha - 1.0) * e_log_w).sum() + torch.lgamma(alpha.sum()) - torch.lgamma(alpha).sum()
    )
    # 10.77  E log q(mu, Lambda), with the Wishart entropy B.82
    log_bk = 0.5 * nu * logdet_psi - 0.5 * nu * d * _LOG_2 - b * _mvlgamma(0.5 * nu, p)
    entropy_w = -log_bk - 0.5 * (nu - p - 1.0) * e_log_det + 0.5 * nu * d
    log_qml = (0.5 * e_log_det + 0.5 * d * (beta.log() - _LOG_2PI) - 0.5 * d - entropy_w).sum()
    # 10.75  E log q(Z) = neg_entropy
    return log_px + log_pz + log_ppi + log_pml - neg_entropy.to(f64) - log_qpi - log_qml


# ----------------------------------------------------------------------------------------------
# Input checks


def _check_data(data: object, num_components: object) -> tuple[torch.Tensor, int]:
    data = check_tensor(data, "data", ndim=2)
    k = check_positive_int(num_components, "num_components")
    if data.shape[0] < k:
        raise ValueError(
            f"data has {data.shape[0]} points but num_components={k}; a mixture needs at least "
            "as many points as components: pass more rows or lower num_components"
        )
    return data, k


def _check_responsibilities(resp: object, data: torch.Tensor, k: int, name: str) -> torch.Tensor:
    resp = check_tensor(resp, name, ndim=2, device=data.device)
    if tuple(resp.shape) != (data.shape[0], k):
        raise ValueError(
            f"{name} has shape {tuple(resp.shape)}, expected (num_points, num_components) = "
            f"{(data.shape[0], k)}"
        )
    resp = resp.to(device=data.device, dtype=data.dtype)
    if (resp < 0).any():
        raise ValueError(f"{name} has negative entries; pass probabilities, not log-probabilities")
    sums = resp.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3, rtol=0.0):
        raise ValueError(
            f"{name} rows must sum to 1, got sums in [{sums.min():g}, {sums.max():g}]; "
            "normalise them (e.g. softmax of log-probabilities)"
        )
    return resp / sums[:, None]


def _check_prior(prior: object, data: torch.Tensor) -> GMMPrior:
    if not isinstance(prior, GMMPrior):
        raise TypeError(
            f"prior must be a GMMPrior, got {type(prior).__name__}; use GMMPrior.default(dim)"
        )
    if prior.dim != data.shape[1]:
        raise ValueError(
            f"prior.mean_prior has {prior.dim} entries but data has {data.shape[1]} columns; "
            f"build the prior with GMMPrior.default({data.shape[1]}) or matching tensors"
        )
    return prior


def _check_tol(tol: object, max_iter: object) -> tuple[float, int]:
    if isinstance(tol, bool) or not isinstance(tol, Real) or not float(tol) >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    return float(tol), check_positive_int(max_iter, "max_iter")


# ----------------------------------------------------------------------------------------------
# k-means++ initialisation


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(N, M)``."""
    d = x.square().sum(-1, keepdim=True) - 2.0 * x @ c.mT + c.square().sum(-1)
    return d.clamp_min_(0.0)


def _kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, 2007), ``2 + log K`` trials a step."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = x.new_empty(k, x.shape[1])
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centers[0] = x[first[0]]
    closest = _sq_dist(x, centers[:1]).squeeze(1)
    for c in range(1, k):  # sequential by nature: each centre depends on the previous ones
        weights = closest + (closest.sum() <= 0).to(closest.dtype)  # all-duplicate data
        cand = torch.multinomial(weights, trials, replacement=True, generator=generator)
        new_closest = torch.minimum(closest.unsqueeze(1), _sq_dist(x, x[cand]))
        best = new_closest.sum(0).argmin()
        centers[c] = x[cand[best]]
        closest = new_closest[:, best]
    return centers


def kmeans_responsibilities(data: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Hard ``(N, K)`` responsibilities from seeded k-means++ and a few Lloyd iterations,
    computed in float64 whatever the data's dtype (so that float32 data and a float64 copy
    start from the same assignments), returned in the data's dtype."""
    generator = torch.Generator(device=data.device)
    generator.manual_seed(int(seed))
    x = data.to(torch.float64)
    x = x - x.mean(0)
    centers = _kmeans_plusplus(x, k, generator)
    for _ in range(_KMEANS_LLOYD_ITERS):
        onehot = torch.nn.functional.one_hot(_sq_dist(x, centers).argmin(1), k).to(x.dtype)
        counts = onehot.sum(0)
        new = torch.where(
            counts[:, None] > 0, (onehot.mT @ x) / counts.clamp_min(1.0)[:, None], centers
        )
        if torch.equal(new, centers):
            break
        centers = new
    return torch.nn.functional.one_hot(_sq_dist(x, centers).argmin(1), k).to(data.dtype)


# ----------------------------------------------------------------------------------------------
# CAVI


@dataclass
class CAVIResult:
    """What :func:`cavi` returns.

    :ivar posterior: the fitted :class:`GMMVariationalPosterior`.
    :ivar elbo_trace: the ELBO after each iteration, total nats over the data, all constants in.
    :ivar n_iter: iterations run.
    :ivar converged: whether the ELBO increase fell below ``tol`` before ``max_iter``.
    :ivar responsibilities: ``(N, K)``, the :math:`q(z)` paired with ``posterior`` in the last
        ELBO (``elbo(data, prior, posterior, responsibilities) == elbo_trace[-1]``).
    """

    posterior: GMMVariationalPosterior
    elbo_trace: list[float]
    n_iter: int
    converged: bool
    responsibilities: torch.Tensor

    def objective_per_iteration(self) -> list[float]:
        """The ELBO after each iteration, total nats (a :class:`ClosedFormResult`)."""
        return list(self.elbo_trace)

    def sample_globals(self, num_samples: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Draws of the globals from the variational posterior, with their log density."""
        samples = self.posterior.sample(num_samples)
        return samples, self.posterior.log_prob(samples)


def update_posterior(
    data: torch.Tensor, prior: GMMPrior, responsibilities: torch.Tensor
) -> GMMVariationalPosterior:
    r"""The optimal :math:`q(\pi)\,q(\mu,\Lambda)` given :math:`q(z)` (Bishop 10.58–10.63).

    .. math::

        N_k = \textstyle\sum_n r_{nk},\ \alpha_k = \alpha_0 + N_k,\ \beta_k = \beta_0 + N_k,\
        \nu_k = \nu_0 + N_k,\ m_k = (\beta_0 m_0 + N_k \bar x_k)/\beta_k, \\
        \Psi_k = \Psi_0 + N_k S_k + \tfrac{\beta_0 N_k}{\beta_0 + N_k}
        (\bar x_k - m_0)(\bar x_k - m_0)^\top \quad(\text{diag: the diagonal only}).

    :param data: ``(N, D)``.
    :param prior: the :class:`GMMPrior`.
    :param responsibilities: ``(N, K)``, rows summing to one.
    """
    data = check_tensor(data, "data", ndim=2)
    prior = _check_prior(prior, data)
    k = check_tensor(responsibilities, "responsibilities", ndim=2).shape[1]
    resp = _check_responsibilities(responsibilities, data, k, "responsibilities")
    stats = _sufficient_stats(data, resp, prior.covariance_type == "full")
    return _posterior_from_stats(stats, prior)


def update_responsibilities(data: torch.Tensor, posterior: GMMVariationalPosterior) -> torch.Tensor:
    r"""The optimal :math:`q(z)` given :math:`q(\pi)\,q(\mu,\Lambda)` (Bishop 10.46–10.49,
    10.64–10.66): :math:`r_{nk} \propto \exp\{E[\log\pi_k] + \tfrac12 E\log|\Lambda_k|
    - \tfrac D2 \log 2\pi - \tfrac12 E[(x_n-\mu_k)^\top\Lambda_k(x_n-\mu_k)]\}`.

    :param data: ``(N, D)``.
    :param posterior: a :class:`GMMVariationalPosterior` of dimension ``D``.
    :returns: ``(N, K)``.
    """
    data = check_tensor(data, "data", ndim=2, last_dim=posterior.dim)
    features = _Features.of(data.to(torch.float64), posterior.covariance_type == "full")
    post = _posterior_like(posterior, features.x)  # in float64, as in cavi()
    coefficients = features.log_rho_coefficients(post, _posterior_terms(post))
    resp = data.new_empty(data.shape[0], posterior.num_components)
    features.responsibilities(*coefficients, resp)
    return resp


def _posterior_like(post: GMMVariationalPosterior, like: torch.Tensor) -> GMMVariationalPosterior:
    if post.means.dtype == like.dtype and post.means.device == like.device:
        return post

    def conv(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=like.dtype)

    return GMMVariationalPosterior(
        conv(post.weight_concentration),
        conv(post.mean_precision),
        conv(post.means),
        conv(post.degrees_of_freedom),
        conv(post.covariance),
        post.prior,
    )


def elbo(
    data: torch.Tensor,
    prior: GMMPrior,
    posterior: GMMVariationalPosterior,
    responsibilities: torch.Tensor,
) -> torch.Tensor:
    r"""The evidence lower bound of :math:`q(z)\,q(\pi)\,q(\mu,\Lambda)`, total nats.

    .. math::

        \mathcal L = E_q[\log p(X \mid Z, \mu, \Lambda)] + E_q[\log p(Z \mid \pi)]
        + E_q[\log p(\pi)] + E_q[\log p(\mu, \Lambda)]
        - E_q[\log q(Z)] - E_q[\log q(\pi)] - E_q[\log q(\mu, \Lambda)]
        \le \log p(X),

    Bishop 10.70–10.77 with every normalising constant (the Wishart normaliser :math:`B(W,\nu)`
    of B.79 and the entropy B.82), valid for any responsibilities and posterior, not only at a
    CAVI fixed point. Computed in float64, returned in the data's dtype.

    :param data: ``(N, D)``.
    :param prior: the model's :class:`GMMPrior`.
    :param posterior: :math:`q(\pi)\,q(\mu,\Lambda)`.
    :param responsibilities: :math:`q(z)`, ``(N, K)``.
    :returns: a scalar tensor.
    """
    data = check_tensor(data, "data", ndim=2)
    prior = _check_prior(prior, data)
    if not isinstance(posterior, GMMVariationalPosterior):
        raise TypeError(f"posterior must be a GMMVariationalPosterior, got {type(posterior)}")
    if posterior.covariance_type != prior.covariance_type or posterior.dim != data.shape[1]:
        raise ValueError(
            f"posterior ({posterior.covariance_type!r}, dim {posterior.dim}) does not match the "
            f"prior ({prior.covariance_type!r}) and data (dim {data.shape[1]})"
        )
    resp = _check_responsibilities(
        responsibilities, data, posterior.num_components, "responsibilities"
    )
    wide = data.to(torch.float64)
    post = _posterior_like(posterior, wide)
    resp = resp.to(torch.float64)
    stats = _sufficient_stats(wide, resp, prior.covariance_type == "full")
    neg_entropy = torch.special.xlogy(resp, resp).sum()
    return _elbo_from_stats(stats, neg_entropy, prior, post).to(data.dtype)


@torch.no_grad()
def cavi(
    data: torch.Tensor,
    prior: GMMPrior,
    num_components: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    init_responsibilities: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CAVIResult:
    r"""Coordinate-ascent variational inference for the Bayesian Gaussian mixture.

    Each iteration is one E-step (:func:`update_responsibilities`) and one M-step
    (:func:`update_posterior`), computed together in one pass over chunks of rows in feature
    space (:class:`_Features`); then the full :func:`elbo` of the pair. Stops when the ELBO
    changes by less than ``tol`` total nats (scikit-learn's ``BayesianGaussianMixture``
    convention) or after ``max_iter`` iterations.

    :param data: ``(N, D)`` float tensor; the result follows its device and dtype.
    :param prior: :class:`GMMPrior` of dimension ``D``.
    :param num_components: :math:`K \le N`.
    :param max_iter: maximum number of iterations.
    :param tol: convergence threshold on the ELBO change, total nats. Everything is computed
        in float64 whatever the data's dtype, so float32 data converge like float64 data; a
        posterior that the data's dtype cannot hold is refused.
    :param init_responsibilities: ``(N, K)``; default: hard k-means++ assignments (seeded, then
        a few Lloyd iterations).
    :param seed: seed of the k-means++ ``torch.Generator``.
    :param progress: show a tqdm bar.
    :returns: :class:`CAVIResult`.
    """
    data, k = _check_data(data, num_components)
    prior = _check_prior(prior, data)
    tol, max_iter = _check_tol(tol, max_iter)
    if init_responsibilities is None:
        resp = kmeans_responsibilities(data, k, seed)
    else:
        resp = _check_responsibilities(init_responsibilities, data, k, "init_responsibilities")
    full = prior.covariance_type == "full"
    # Everything is computed in float64 whatever the data's dtype: the bound of a large float32
    # data set is otherwise resolved only to about 1e-6 of its size, far coarser than a tol in
    # nats, and float32 runs would not stop.
    features = _Features.of(data.to(torch.float64), full)
    post = _posterior_from_stats(features.stats(features.weighted_sums(resp)), prior)
    terms = _posterior_terms(post)
    resp = torch.empty_like(resp)
    trace: list[float] = []
    converged = False
    previous = -math.inf
    with tqdm(total=max_iter, desc="CAVI", disable=not progress, unit="it") as bar:
        for _ in range(max_iter):
            # E-step and the next M-step's statistics in one pass over chunks of rows
            weights, offset = features.log_rho_coefficients(post, terms)
            sums, _, neg_entropy = features.responsibilities(weights, offset, resp)
            stats = features.stats(sums)
            post = _posterior_from_stats(stats, prior)
            terms = _posterior_terms(post)
            value = _elbo_from_stats(stats, neg_entropy, prior, post, terms).item()
            trace.append(value)
            bar.update(1)
            bar.set_postfix(elbo=f"{value:.6g}", refresh=False)
            if abs(value - previous) < tol:
                converged = True
                break
            previous = value
    fitted = _posterior_like(post, data)
    if fitted is not post:
        try:
            _posterior_terms(fitted)
            if full:  # draws factorise Wishart precisions: the covariances' conditioning
                eig = torch.linalg.eigvalsh(post.covariance)
                if (eig[:, -1] / eig[:, 0] * torch.finfo(data.dtype).eps > 1e-2).any():
                    raise ValueError("ill-conditioned")
        except ValueError:
            raise ValueError(
                f"the fitted posterior cannot be held in {data.dtype}: a covariance is too "
                "ill-conditioned for it (is the prior's mean or scale far from the data's?); "
                "fit float64 data, or use a prior centred and scaled like the data"
            ) from None
    return CAVIResult(fitted, trace, len(trace), converged, resp)


# ----------------------------------------------------------------------------------------------
# Maximum-likelihood EM


@dataclass
class EMResult:
    """What :func:`em` returns.

    :ivar weights: ``(K,)``.
    :ivar means: ``(K, D)``.
    :ivar covariances: ``(K, D, D)`` (full) or ``(K, D)`` (diag), ``reg_covar`` included.
    :ivar log_likelihood_trace: mean log-likelihood per point of the parameters after each
        M-step.
    :ivar n_iter: M-steps run after the initial one.
    :ivar converged: whether the change fell below ``tol`` before ``max_iter``.
    :ivar responsibilities: ``(N, K)`` under the returned parameters.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    log_likelihood_trace: list[float]
    n_iter: int
    converged: bool
    responsibilities: torch.Tensor

    def objective_per_iteration(self) -> list[float]:
        """The log-likelihood after each M-step, total nats (a :class:`ClosedFormResult`)."""
        n = self.responsibilities.shape[0]
        return [value * n for value in self.log_likelihood_trace]

    def sample_globals(self, num_samples: int) -> tuple[dict[str, torch.Tensor], None]:
        """The point estimate as one draw (whatever ``num_samples``), no density."""
        return self.as_samples(), None

    def as_samples(self) -> dict[str, torch.Tensor]:
        """The point estimate as one draw: ``weights`` ``(1, K)``, ``locs`` ``(1, K, D)``,
        ``precisions`` ``(1, K, D, D)`` or ``(1, K, D)`` (inverse covariances)."""
        if self.covariances.dim() == 3:
            chol = _cholesky(self.covariances, "EMResult.covariances", "increase reg_covar")
            precisions = torch.cholesky_inverse(chol)
        else:
            precisions = self.covariances.reciprocal()
        return {
            "weights": self.weights.unsqueeze(0),
            "locs": self.means.unsqueeze(0),
            "precisions": precisions.unsqueeze(0),
        }


_EM_FIX = "increase reg_covar, lower num_components or rescale the data"


def _em_m_step(
    features: _Features, sums: _Sums, reg_covar: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, means and covariances (``reg_covar`` on the diagonal), scikit-learn's rules."""
    nk, xbar, scatter = features.stats(sums)
    nk = nk + 10.0 * torch.finfo(nk.dtype).eps
    weights = nk / nk.sum()
    if features.triu is not None:
        cov = scatter / nk[:, None, None]
        cov = cov + reg_covar * torch.eye(xbar.shape[1], dtype=cov.dtype, device=cov.device)
    else:
        cov = scatter / nk[:, None] + reg_covar
    return weights, xbar, cov


def _em_e_step(
    features: _Features,
    params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    resp: torch.Tensor,
) -> tuple[float, _Sums]:
    """Mean log-likelihood per point at ``params``, the responsibilities (into ``resp``) and
    the statistics of the next M-step, in one pass (:meth:`_Features.responsibilities`)."""
    weights, means, cov = params
    d = means.shape[1]
    full = features.triu is not None
    factor, logdet = _whiten_factor(cov, full, "a component covariance", _EM_FIX)
    constant = weights.log() - 0.5 * (d * _LOG_2PI + logdet)  # log w_k N(x | m_k, Σ_k)
    coefficients = features.coefficients(
        _precision_matrix(factor, full), means, torch.ones_like(weights), constant
    )
    sums, log_norm, _ = features.responsibilities(*coefficients, resp)
    return log_norm.item() / resp.shape[0], sums


@torch.no_grad()
def em(
    data: torch.Tensor,
    num_components: int,
    covariance_type: str = "full",
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    reg_covar: float = 1e-6,
    init_responsibilities: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> EMResult:
    r"""Maximum-likelihood EM for a Gaussian mixture, scikit-learn's ``GaussianMixture`` rules.

    M-step: :math:`w_k = N_k/N`, :math:`\mu_k = \bar x_k`, :math:`\Sigma_k = S_k +
    \text{reg\_covar}\, I`; E-step: :math:`r_{nk} \propto w_k\,\mathcal N(x_n\mid\mu_k,\Sigma_k)`
    through Cholesky factors, in feature space and float64 like :func:`cavi`. Stops when the
    mean log-likelihood per point changes by less than ``tol``.

    :param data: ``(N, D)`` float tensor.
    :param num_components: :math:`K \le N`.
    :param covariance_type: ``"full"`` or ``"diag"``.
    :param max_iter: maximum number of EM iterations.
    :param tol: threshold on the change of the mean log-likelihood per point.
    :param reg_covar: added to the covariance diagonals.
    :param init_responsibilities: ``(N, K)``; default: hard k-means++ assignments.
    :param seed: seed of the k-means++ ``torch.Generator``.
    :param progress: show a tqdm bar.
    :returns: :class:`EMResult`.
    """
    data, k = _check_data(data, num_components)
    if covariance_type not in _COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
    tol, max_iter = _check_tol(tol, max_iter)
    if isinstance(reg_covar, bool) or not isinstance(reg_covar, Real) or not reg_covar >= 0:
        raise ValueError(f"reg_covar must be a non-negative number, got {reg_covar!r}")
    full = covariance_type == "full"
    if init_responsibilities is None:
        resp = kmeans_responsibilities(data, k, seed)
    else:
        resp = _check_responsibilities(init_responsibilities, data, k, "init_responsibilities")
    # in feature space and float64, as cavi(): each E-step also gives the next M-step's sums
    features = _Features.of(data.to(torch.float64), full)
    params = _em_m_step(features, features.weighted_sums(resp), float(reg_covar))
    resp = torch.empty_like(resp)
    previous, sums = _em_e_step(features, params, resp)
    trace: list[float] = []
    converged = False
    with tqdm(total=max_iter, desc="EM", disable=not progress, unit="it") as bar:
        for _ in range(max_iter):
            params = _em_m_step(features, sums, float(reg_covar))
            value, sums = _em_e_step(features, params, resp)
            trace.append(value)
            bar.update(1)
            bar.set_postfix(loglik=f"{value:.6g}", refresh=False)
            if abs(value - previous) < tol:
                converged = True
                break
            previous = value
    weights, means, cov = (t.to(data.dtype) for t in params)
    return EMResult(weights, means, cov, trace, len(trace), converged, resp)
