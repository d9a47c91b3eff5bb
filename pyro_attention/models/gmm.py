"""The Bayesian Gaussian mixture model, written once for every inference method.

.. math::

    \\pi &\\sim \\mathrm{Dir}(\\alpha_0 \\mathbf 1_K) \\\\
    \\Lambda_k &\\sim \\mathcal W(\\nu_0, \\Psi_0^{-1})
        \\quad(\\text{diag: } \\lambda_{kd} \\sim \\mathrm{Gamma}(\\nu_0/2, \\Psi_{0,d}/2)) \\\\
    \\mu_k \\mid \\Lambda_k &\\sim \\mathcal N(m_0, (\\beta_0 \\Lambda_k)^{-1}) \\\\
    z_n &\\sim \\mathrm{Categorical}(\\pi) \\qquad(\\text{an ``alignment`` site}) \\\\
    x_n \\mid z_n &\\sim \\mathcal N(\\mu_{z_n}, \\Lambda_{z_n}^{-1})

The assignment :math:`z_n` is the lecture's "attention weight": the responsibilities
:math:`p(z_n = k \\mid x_n)` are conditional cluster probabilities (Hennig, Probabilistic ML,
lecture 24; Bishop, PRML §10.2). The priors are conjugate, so :meth:`BayesianGMM.cavi` is exact
free-form VI; the same model runs under ``enum``, ``reinforce``, ``rws``, ``gumbel``,
``dirichlet``, ``hard``, ``em`` and ``nuts``.

Example::

    gmm = BayesianGMM(num_components=3, dim=2)
    result = fit(gmm, data, "enum", num_steps=500)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch

from pyro_attention._validation import check_mixture_data, check_positive_int
from pyro_attention.alignment import alignment, attend
from pyro_attention.distributions import DiagonalNormal, Wishart
from pyro_attention.models.base import PointMixtureModel
from pyro_attention.models.gmm_conjugate import (
    CAVIResult,
    EMResult,
    GMMPrior,
    kmeans_responsibilities,
)
from pyro_attention.models.gmm_conjugate import cavi as _cavi
from pyro_attention.models.gmm_conjugate import em as _em


def precision_to_scale_tril(precision: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of the covariance :math:`\\Lambda^{-1}`, ``(..., D, D)``."""
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    return torch.linalg.cholesky(covariance)


class BayesianGMM(PointMixtureModel):
    """Bayesian Gaussian mixture with conjugate priors.

    :param num_components: ``K >= 1``.
    :param dim: ``D >= 1``, features per point.
    :param covariance_type: ``"full"`` (Normal-Wishart prior) or ``"diag"`` (Normal-Gamma).
    :param prior: a :class:`~pyro_attention.models.gmm_conjugate.GMMPrior`; default
        ``GMMPrior.default(dim, covariance_type)`` (suits standardised data).
    :param encoder: optional ``torch.nn.Module`` mapping points ``(B, D)`` to assignment logits
        ``(B, K)``: amortizes the local guides of ``reinforce``/``rws``/``gumbel``/...
    """

    name: ClassVar[str] = "gmm"

    def __init__(
        self,
        num_components: int,
        dim: int,
        covariance_type: str = "full",
        prior: GMMPrior | None = None,
        encoder: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.num_components = check_positive_int(num_components, "num_components")
        self.dim = check_positive_int(dim, "dim")
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        self.covariance_type = covariance_type
        self.prior = GMMPrior.default(dim, covariance_type) if prior is None else prior
        if self.prior.covariance_type != covariance_type or self.prior.mean_prior.shape != (dim,):
            raise ValueError(
                f"prior is for covariance_type={self.prior.covariance_type!r} and dim="
                f"{self.prior.mean_prior.shape[0]} but the model has {covariance_type!r} and "
                f"dim={dim}; build it with GMMPrior.default({dim}, {covariance_type!r})"
            )
        self._encoder_module = encoder
        if encoder is not None:
            self.encoder = self._encode

    # ------------------------------------------------------------------ model
    def model(self, data: torch.Tensor, *, subsample_size: int | None = None) -> None:
        """The generative model; ``data`` is ``(N, D)``, mini-batched by ``subsample_size``."""
        num_points = data.shape[0]
        K, D = self.num_components, self.dim
        prior = self.prior
        m0, psi0 = prior.tensors_like(data)
        nu0 = data.new_tensor(prior.degrees_of_freedom)
        weights = pyro.sample(
            "weights", dist.Dirichlet(data.new_full((K,), prior.weight_concentration))
        )
        if self.covariance_type == "diag":
            precisions = pyro.sample(
                "precisions",
                dist.Gamma((nu0 / 2).expand(K, D), (psi0 / 2).expand(K, D)).to_event(2),
            )
            locs = pyro.sample(
                "locs",
                dist.Normal(m0.expand(K, D), (prior.mean_precision * precisions).rsqrt()).to_event(
                    2
                ),
            )
            spread = precisions.rsqrt()
        else:
            precisions = pyro.sample(
                "precisions",
                Wishart(nu0.expand(K), precision_matrix=psi0.expand(K, D, D)).to_event(1),
            )
            locs = pyro.sample(
                "locs",
                dist.MultivariateNormal(
                    m0.expand(K, D), precision_matrix=prior.mean_precision * precisions
                ).to_event(1),
            )
            spread = precision_to_scale_tril(precisions)
        logits = weights.clamp(min=torch.finfo(weights.dtype).tiny).log()
        with pyro.plate(self.data_plate, num_points, subsample_size=subsample_size, dim=-1) as idx:
            if idx is None:  # a vectorized plate always yields its indices
                raise RuntimeError(f"plate {self.data_plate!r} gave no subsample indices")
            points = data.index_select(0, idx)
            z = alignment("assignment", logits)
            loc = attend(locs, z)
            if self.covariance_type == "diag":
                likelihood = DiagonalNormal(loc, attend(spread, z))
            else:
                likelihood = dist.MultivariateNormal(loc, scale_tril=attend(spread, z, event_dim=2))
            pyro.sample("obs", likelihood, obs=points)

    # ------------------------------------------------------------------ data
    def check_data(self, data: Any) -> torch.Tensor:
        """Refuse non-tensors, non-float, wrong shape, empty, NaN/inf, too few points."""
        return check_mixture_data(data, self.dim, self.num_components)

    def initialize(self, data: torch.Tensor, seed: int = 0) -> None:
        """Initial globals: k-means++ centres as ``locs``, uniform weights, prior precisions."""
        resp = kmeans_responsibilities(data, self.num_components, seed)
        centers = (resp.mT @ data) / resp.sum(0).clamp_min(1.0)[:, None]
        nu0 = self.prior.degrees_of_freedom
        _, psi0 = self.prior.tensors_like(data)
        if self.covariance_type == "diag":
            precisions = (nu0 / psi0).expand(self.num_components, self.dim)
        else:
            precisions = (nu0 * torch.linalg.inv(psi0)).expand(
                self.num_components, self.dim, self.dim
            )
        self._init_values = {
            "weights": data.new_full((self.num_components,), 1.0 / self.num_components),
            "locs": centers,
            "precisions": precisions.clone(),
        }

    def _encode(self, name: str, plates: dict, data: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self._encoder_module is None:
            raise RuntimeError("the model was built without an encoder: pass encoder= to use one")
        encoder = pyro.module("gmm_encoder", self._encoder_module)
        return encoder(self.local_features(plates, data))

    # ------------------------------------------------------------------ closed forms
    def cavi(self, data: torch.Tensor, **options: Any) -> CAVIResult:
        """Coordinate-ascent VI (Bishop, PRML §10.2); options of ``gmm_conjugate.cavi``."""
        data = self.check_data(data)
        prior = self.prior
        m0, psi0 = prior.tensors_like(data)
        on_data = GMMPrior(
            prior.weight_concentration,
            m0,
            prior.mean_precision,
            prior.degrees_of_freedom,
            psi0,
            prior.covariance_type,
        )
        return _cavi(data, on_data, self.num_components, **options)

    def em(self, data: torch.Tensor, **options: Any) -> EMResult:
        """Maximum-likelihood EM; options of ``gmm_conjugate.em``."""
        return _em(self.check_data(data), self.num_components, self.covariance_type, **options)

    # ------------------------------------------------------------------ outputs
    def arviz_dims(self) -> dict[str, list[str]]:
        feature = ["component", "feature"]
        precision = feature if self.covariance_type == "diag" else [*feature, "feature_bis"]
        return {
            "weights": ["component"],
            "locs": feature,
            "precisions": precision,
            "obs": [self.data_plate, "feature"],
        }

    def plot_posterior(
        self, ax: Any, data: torch.Tensor, samples: dict[str, torch.Tensor], num_draws: int = 5
    ) -> None:
        """The data (first two features) and 2-σ ellipses of a few posterior draws."""
        import math

        points = data.detach().cpu()
        ax.scatter(points[:, 0], points[:, 1], s=2, c="0.6", rasterized=True)
        total = samples["locs"].shape[0]
        for s in torch.linspace(0, total - 1, min(num_draws, total)).round().long().tolist():
            locs = samples["locs"][s].detach().cpu().double()
            precisions = samples["precisions"][s].detach().cpu().double()
            weights = samples["weights"][s].detach().cpu()
            if self.covariance_type == "diag":
                precisions = torch.diag_embed(precisions)
            cov = torch.linalg.inv(precisions)[:, :2, :2]
            values, vectors = torch.linalg.eigh(cov)
            for k in range(self.num_components):
                angle = math.degrees(math.atan2(vectors[k, 1, 1], vectors[k, 0, 1]))
                width, height = (4 * values[k].clamp(min=0).sqrt()).tolist()[::-1]
                ax.add_patch(
                    matplotlib_ellipse(
                        locs[k, :2].tolist(),
                        width,
                        height,
                        angle,
                        alpha=float(0.15 + 0.6 * weights[k]),
                    )
                )
        ax.set_xticks([])
        ax.set_yticks([])


def matplotlib_ellipse(
    center: Sequence[float], width: float, height: float, angle: float, alpha: float
) -> Any:
    """An unfilled ellipse patch centred on ``center`` ``(x, y)``."""
    from matplotlib.patches import Ellipse

    return Ellipse(
        (center[0], center[1]), width, height, angle=angle, fill=False, color="C3", alpha=alpha
    )
