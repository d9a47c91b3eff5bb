"""A Bayesian mixture of multivariate Bernoullis for binary images.

.. math::

    \\pi &\\sim \\mathrm{Dir}(\\alpha_0 \\mathbf 1_K), \\qquad
    \\mu_{kd} \\sim \\mathrm{Beta}(a_0, b_0) \\\\
    z_n &\\sim \\mathrm{Categorical}(\\pi) \\qquad(\\text{an ``alignment`` site}) \\\\
    x_{nd} \\mid z_n &\\sim \\mathrm{Bernoulli}(\\mu_{z_n d})

The responsibilities :math:`p(z_n = k \\mid x_n)` are attention weights whose keys are the
components (Hennig, Probabilistic ML, lecture 24). :meth:`BernoulliMixture.em` is the
closed-form MAP EM (Bishop, PRML §9.3.3, with the Beta and Dirichlet priors as pseudo-counts);
the same model runs under ``enum``, ``reinforce``, ``gumbel`` and the other generic methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from tqdm import tqdm

from pyro_attention._validation import check_mixture_data, check_positive_int
from pyro_attention.alignment import alignment, attend
from pyro_attention.models.base import PointMixtureModel


@dataclass
class BernoulliEMResult:
    """What :meth:`BernoulliMixture.em` returns.

    :ivar weights: ``(K,)``; :ivar probs: ``(K, D)`` Bernoulli means.
    :ivar log_likelihood_trace: mean log-likelihood per point after each M-step.
    :ivar objective_trace: mean log posterior (log-likelihood + log prior) per point; EM never
        decreases it.
    :ivar responsibilities: ``(N, K)`` under the returned parameters.
    """

    weights: torch.Tensor
    probs: torch.Tensor
    log_likelihood_trace: list[float]
    objective_trace: list[float]
    n_iter: int
    converged: bool
    responsibilities: torch.Tensor

    def objective_per_iteration(self) -> list[float]:
        """The log-likelihood after each M-step, total nats (a ``ClosedFormResult``)."""
        n = self.responsibilities.shape[0]
        return [value * n for value in self.log_likelihood_trace]

    def sample_globals(self, num_samples: int) -> tuple[dict[str, torch.Tensor], None]:
        """The point estimate as one draw (whatever ``num_samples``), no density."""
        return self.as_samples(), None

    def as_samples(self) -> dict[str, torch.Tensor]:
        """The point estimate as one draw: ``weights`` ``(1, K)``, ``probs`` ``(1, K, D)``."""
        return {"weights": self.weights.unsqueeze(0), "probs": self.probs.unsqueeze(0)}


class BernoulliMixture(PointMixtureModel):
    """Mixture of ``K`` products of ``D`` Bernoullis with conjugate priors.

    :param num_components: ``K``; :param dim: ``D`` (pixels).
    :param weight_concentration: :math:`\\alpha_0` (1: uniform over the simplex).
    :param beta_prior: :math:`(a_0, b_0)`; the default ``(2, 2)`` keeps MAP means off 0 and 1.
    :param image_shape: ``(H, W)`` with ``H * W = D`` to draw the components as images.
    """

    name: ClassVar[str] = "bernoulli_mixture"

    def __init__(
        self,
        num_components: int,
        dim: int,
        weight_concentration: float = 1.0,
        beta_prior: tuple[float, float] = (2.0, 2.0),
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_components = check_positive_int(num_components, "num_components")
        self.dim = check_positive_int(dim, "dim")
        if not weight_concentration > 0 or not all(b > 0 for b in beta_prior):
            raise ValueError(
                f"weight_concentration ({weight_concentration}) and beta_prior ({beta_prior}) "
                "must be positive"
            )
        self.weight_concentration = float(weight_concentration)
        self.beta_prior = (float(beta_prior[0]), float(beta_prior[1]))
        if image_shape is not None and image_shape[0] * image_shape[1] != dim:
            raise ValueError(f"image_shape {image_shape} does not hold dim={dim} pixels")
        self.image_shape = image_shape

    def model(self, data: torch.Tensor, *, subsample_size: int | None = None) -> None:
        """The generative model of binary ``data`` ``(N, D)``."""
        K, D = self.num_components, self.dim
        a0, b0 = self.beta_prior
        weights = pyro.sample(
            "weights", dist.Dirichlet(data.new_full((K,), self.weight_concentration))
        )
        probs = pyro.sample(
            "probs", dist.Beta(data.new_full((K, D), a0), data.new_full((K, D), b0)).to_event(2)
        )
        logits = weights.clamp(min=torch.finfo(weights.dtype).tiny).log()
        with pyro.plate(self.data_plate, data.shape[0], subsample_size=subsample_size, dim=-1) as i:
            if i is None:  # a vectorized plate always yields its indices
                raise RuntimeError(f"plate {self.data_plate!r} gave no subsample indices")
            z = alignment("assignment", logits)
            pixel_probs = attend(probs, z)
            pyro.sample(
                "obs",
                dist.Bernoulli(probs=pixel_probs, validate_args=False).to_event(1),
                obs=data.index_select(0, i),
            )

    def check_data(self, data: Any) -> torch.Tensor:
        """Refuse non-binary, NaN, wrong-shape or too-small data."""
        data = check_mixture_data(data, self.dim, self.num_components)
        if not torch.all((data == 0) | (data == 1)):
            raise ValueError("data must be binary (0/1); binarize it first, e.g. (x > 0.5).float()")
        return data

    def _initial_probs(self, data: torch.Tensor, seed: int) -> torch.Tensor:
        """Farthest-point seeding: a random first point, then each next point the farthest (in
        Hamming distance) from those chosen, shrunk towards 1/2 (identical starts would stay
        identical under EM)."""
        generator = torch.Generator().manual_seed(seed)
        chosen = [int(torch.randint(data.shape[0], (1,), generator=generator))]
        distance = (data - data[chosen[0]]).abs().sum(-1)
        for _ in range(1, self.num_components):
            chosen.append(int(distance.argmax()))
            distance = torch.minimum(distance, (data - data[chosen[-1]]).abs().sum(-1))
        return 0.5 * data[chosen] + 0.25

    def initialize(self, data: torch.Tensor, seed: int = 0) -> None:
        """Initial globals: ``K`` far-apart points, shrunk towards 1/2, and uniform weights."""
        self._init_values = {
            "weights": data.new_full((self.num_components,), 1.0 / self.num_components),
            "probs": self._initial_probs(data, seed),
        }

    # ------------------------------------------------------------------ closed form
    def log_joint_terms(
        self, data: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor
    ) -> torch.Tensor:
        """:math:`\\log \\pi_k + \\log p(x_n \\mid \\mu_k)`, ``(N, K)``: the attention logits."""
        log_mu, log_one_minus = probs.log(), torch.log1p(-probs)
        return weights.log() + data @ (log_mu - log_one_minus).T + log_one_minus.sum(-1)

    def _log_prior(self, weights: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        a0, b0 = self.beta_prior
        alpha = weights.new_full(weights.shape, self.weight_concentration)
        beta = dist.Beta(probs.new_tensor(a0), probs.new_tensor(b0))
        return dist.Dirichlet(alpha).log_prob(weights) + beta.log_prob(probs).sum()

    def em(
        self,
        data: torch.Tensor,
        *,
        max_iter: int = 500,
        tol: float = 1e-6,
        seed: int = 0,
        progress: bool = False,
    ) -> BernoulliEMResult:
        """MAP expectation-maximisation.

        E-step :math:`r_{nk} \\propto \\pi_k \\prod_d \\mu_{kd}^{x_{nd}}(1-\\mu_{kd})^{1-x_{nd}}`;
        M-step :math:`\\mu_k = (\\sum_n r_{nk} x_n + a_0 - 1) / (N_k + a_0 + b_0 - 2)`,
        :math:`\\pi_k \\propto N_k + \\alpha_0 - 1`. Stops when the mean log posterior gains
        less than ``tol``.
        """
        data = self.check_data(data)
        a0, b0 = self.beta_prior
        n = data.shape[0]
        probs = self._initial_probs(data, seed)
        weights = data.new_full((self.num_components,), 1.0 / self.num_components)
        log_liks, objectives, converged = [], [], False
        for _ in tqdm(range(max_iter), desc="em", disable=not progress):
            joint = self.log_joint_terms(data, weights, probs)
            resp = torch.softmax(joint, -1)
            counts = resp.sum(0)
            probs = ((resp.T @ data + a0 - 1) / (counts[:, None] + a0 + b0 - 2)).clamp(
                1e-6, 1 - 1e-6
            )
            weights = (counts + self.weight_concentration - 1).clamp(min=1e-12)
            weights = weights / weights.sum()
            log_lik = self.log_joint_terms(data, weights, probs).logsumexp(-1).sum()
            log_liks.append(float(log_lik) / n)
            objectives.append(float(log_lik + self._log_prior(weights, probs)) / n)
            if len(objectives) > 1 and abs(objectives[-1] - objectives[-2]) < tol:
                converged = True
                break
        resp = torch.softmax(self.log_joint_terms(data, weights, probs), -1)
        return BernoulliEMResult(
            weights, probs, log_liks, objectives, len(objectives), converged, resp
        )

    def plot_posterior(self, ax: Any, data: torch.Tensor, samples: dict) -> None:
        """The posterior-mean components in a row, heaviest first (as images if
        ``image_shape`` is set, else as a components × pixels matrix)."""
        probs = samples["probs"].mean(0).detach().cpu()
        order = samples["weights"].mean(0).detach().cpu().argsort(descending=True)
        probs = probs[order]
        if self.image_shape is None:
            ax.imshow(probs.numpy(), cmap="gray_r", vmin=0, vmax=1, aspect="auto")
            ax.set_xlabel("pixel")
            ax.set_ylabel("component")
            return
        height, width = self.image_shape
        tiles = torch.ones(len(probs), height, width + 1) * 0.0
        tiles[:, :, :width] = probs.reshape(-1, height, width)
        ax.imshow(tiles.permute(1, 0, 2).reshape(height, -1).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_axis_off()

    def arviz_dims(self) -> dict[str, list[str]]:
        return {"weights": ["component"], "probs": ["component", "pixel"]}
