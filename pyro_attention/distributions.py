"""A Wishart distribution that autoguides and NUTS can work with.

torch's ``Wishart`` has support ``positive_definite`` for which ``biject_to`` has no
transform, so ``AutoNormal`` and ``NUTS`` cannot handle it. :class:`Wishart` is the same
distribution with a support whose bijection is :class:`PositiveDefiniteTransform`:
:math:`\\mathbb{R}^{D(D+1)/2} \\to` positive-definite matrices, :math:`x \\mapsto LL^\\top`
with :math:`L` lower-triangular, :math:`L_{ii} = e^{x_{ii}}`. Its log-Jacobian is

.. math:: \\log|J| = D \\log 2 + \\sum_{i=1}^{D} (D - i + 2) \\log L_{ii}

(the Cholesky map contributes :math:`2^D \\prod_i L_{ii}^{D-i+1}`, the exponential
:math:`\\prod_i L_{ii}`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import biject_to, constraints, register_kl, transform_to
from torch.distributions.transforms import Transform

_NO_SAMPLE_SHAPE = torch.Size()
#: what ``torch.distributions.Distribution.sample`` accepts as ``sample_shape``
_SampleShape = torch.Size | list[int] | tuple[int, ...]


class _PositiveDefiniteMatrix(constraints._PositiveDefinite):
    """``positive_definite`` with a registered bijection."""


positive_definite = _PositiveDefiniteMatrix()


def _size_from_vector(length: int) -> int:
    size = round((math.sqrt(8 * length + 1) - 1) / 2)
    if size * (size + 1) // 2 != length:
        raise ValueError(f"a vector of length {length} is not a lower triangle")
    return size


class PositiveDefiniteTransform(Transform):
    """Unconstrained vector ``(..., D(D+1)/2)`` -> positive-definite matrix ``(..., D, D)``."""

    domain = constraints.real_vector
    codomain = positive_definite
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositiveDefiniteTransform)

    def __hash__(self) -> int:
        return hash(type(self))

    def _lower(self, x: torch.Tensor) -> torch.Tensor:
        size = _size_from_vector(x.shape[-1])
        rows, cols = torch.tril_indices(size, size, device=x.device)
        lower = x.new_zeros(x.shape[:-1] + (size, size))
        lower[..., rows, cols] = x
        diag = lower.diagonal(dim1=-2, dim2=-1)
        return lower - torch.diag_embed(diag) + torch.diag_embed(diag.exp())

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        lower = self._lower(x)
        return lower @ lower.transpose(-1, -2)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        lower = torch.linalg.cholesky(y)
        size = y.shape[-1]
        diag = lower.diagonal(dim1=-2, dim2=-1)
        lower = lower - torch.diag_embed(diag) + torch.diag_embed(diag.log())
        rows, cols = torch.tril_indices(size, size, device=y.device)
        return lower[..., rows, cols]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = y.shape[-1]
        rows, cols = torch.tril_indices(size, size, device=x.device)
        log_diag = x[..., rows == cols]
        powers = torch.arange(size + 1, 1, -1, device=x.device, dtype=x.dtype)
        return (powers * log_diag).sum(-1) + size * math.log(2.0)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        size = _size_from_vector(shape[-1])
        return torch.Size(shape[:-1] + (size, size))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(shape[:-2] + (shape[-1] * (shape[-1] + 1) // 2,))


@biject_to.register(_PositiveDefiniteMatrix)
@transform_to.register(_PositiveDefiniteMatrix)
def _to_positive_definite(constraint: _PositiveDefiniteMatrix) -> Transform:
    return PositiveDefiniteTransform()


class Wishart(dist.Wishart):
    """``pyro.distributions.Wishart`` whose support has a bijection (autoguides, NUTS).

    ``rsample`` redraws (Bartlett decomposition) only the draws that are numerically singular;
    torch 2.13's own ``rsample`` tests the opposite condition and warns "Singular sample
    detected" on every valid draw.
    """

    support = positive_definite

    def rsample(
        self, sample_shape: tuple[int, ...] = (), max_try_correction: int = 10
    ) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        sample = self._bartlett_sampling(sample_shape)
        for _ in range(max_try_correction):
            singular = ~self.support.check(sample)
            if not singular.any():
                break
            redraw = self._bartlett_sampling(sample_shape)
            sample = torch.where(singular[..., None, None], redraw, sample)
        return sample


class StraightThroughCategorical(dist.RelaxedOneHotCategoricalStraightThrough):
    """Straight-through Gumbel-softmax whose density is that of the discrete choice.

    ``rsample`` returns an exact one-hot vector whose gradient is the relaxed sample's
    (Jang et al. 2017; Bengio et al. 2013). Unlike Pyro's
    ``RelaxedOneHotCategoricalStraightThrough`` (which scores the *relaxed* point with the
    Concrete density), :meth:`log_prob` is the categorical pmf at the one-hot value,
    :math:`\\sum_k z_k \\log \\mathrm{softmax}(\\ell)_k`, so that with a ``OneHotCategorical``
    model site the single-sample ELBO is the true ELBO of a categorical guide.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (value * torch.log_softmax(self.logits, -1)).sum(-1)


@register_kl(StraightThroughCategorical, dist.OneHotCategorical)
def _kl_straight_through_one_hot(
    q: StraightThroughCategorical, p: dist.OneHotCategorical
) -> torch.Tensor:
    """KL of the categorical choices, from the logits (finite where ``p`` underflows)."""
    log_q = torch.log_softmax(q.logits, -1)
    return (log_q.exp() * (log_q - torch.log_softmax(p.logits, -1))).sum(-1)


class ClampedDirichlet(dist.Dirichlet):
    """A Dirichlet whose reparameterized draws keep tiny coordinates out of the gradient.

    With small concentrations many draws have coordinates near 0, where
    :math:`\\partial \\log p / \\partial z = (\\alpha - 1)/z` overflows float32; training the
    Dirichlet relaxation of a pre-trained (peaked) seq2seq model then hit NaN gradients
    (``_DirichletBackward``: ``inf * 0``) within 100 steps. Draws are made in float64, cast
    back, clamped to ``[eps, 1]`` (the clamped coordinates get no gradient; ``eps`` is the
    dtype's machine epsilon) and renormalised.
    """

    def rsample(self, sample_shape: _SampleShape = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        concentration = self.concentration
        shape = self._extended_shape(sample_shape)
        wide = concentration.double().expand(shape)
        value = torch.distributions.dirichlet._Dirichlet.apply(wide).to(concentration.dtype)
        value = value.clamp(min=torch.finfo(value.dtype).eps)
        return value / value.sum(-1, keepdim=True)


class ObservedLogProb(dist.TorchDistribution):
    """The distribution of an observation whose log-likelihood is already computed.

    ``log_prob(value)`` returns the given tensor (``value`` must be the observation it was
    computed for); used to score observations whose likelihood was computed in memory-capped
    chunks. It cannot be sampled.

    :param log_prob: ``batch_shape`` log-likelihoods of the observed values.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real

    def __init__(self, log_prob: torch.Tensor, validate_args: bool | None = None) -> None:
        self._log_prob = log_prob
        super().__init__(log_prob.shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return ObservedLogProb(self._log_prob.expand(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._log_prob

    def sample(self, sample_shape: _SampleShape = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        raise NotImplementedError(
            "ObservedLogProb only scores its observation; build the model without "
            "emission_chunk_size to sample targets"
        )


class DiagonalNormal(dist.TorchDistribution):
    r"""A normal with diagonal covariance, :math:`N(\mu, \mathrm{diag}(\sigma^2))`, whose
    parameters stay unbroadcast: ``Normal(loc, scale).to_event(1)`` for mixtures.

    Under enumeration the components' ``loc`` and ``scale`` are ``(K, 1, D)`` and the data
    ``(N, D)``; Pyro's plates expand the distribution to ``(K, N)`` and ``Normal.log_prob``
    then runs a dozen ``(K, N, D)`` passes over stride-0 views (``log`` of the expanded scale
    included), slow for small ``D``. Like ``MultivariateNormal``, :meth:`expand` keeps the
    parameters as they are, and :meth:`log_prob` expands the quadratic form,

    .. math:: \log p(x) = -\tfrac12 \textstyle\sum_d \lambda_d (x_d^2 - 2 x_d \mu_d + \mu_d^2)
              - \sum_d \log\sigma_d - \tfrac D2 \log 2\pi, \qquad \lambda = \sigma^{-2},

    as two ``einsum`` contractions over ``d`` (matrix products for the mixture's shapes), about
    the mean of ``loc`` and in float64 whatever the dtype, so that the expansion loses nothing
    to cancellation; the result is cast back. Same density, samples and gradients as
    ``Normal(loc, scale).to_event(1)``.

    :param loc: :math:`\mu`, ``(..., D)``.
    :param scale: :math:`\sigma > 0`, ``(..., D)`` (broadcastable with ``loc``).
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.independent(constraints.real, 1),
        "scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None
    ) -> None:
        loc = torch.as_tensor(loc)
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        if loc.dim() < 1 or scale.dim() < 1:
            raise ValueError(
                f"loc and scale need an event dim (..., D), got shapes {tuple(loc.shape)} and "
                f"{tuple(scale.shape)}; for a scalar normal use pyro.distributions.Normal"
            )
        try:
            event = torch.broadcast_shapes(loc.shape[-1:], scale.shape[-1:])
            batch = torch.broadcast_shapes(loc.shape[:-1], scale.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"loc {tuple(loc.shape)} and scale {tuple(scale.shape)} do not broadcast"
            ) from None
        self.loc, self.scale = loc, scale
        super().__init__(batch, event, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        try:
            fits = torch.broadcast_shapes(self.batch_shape, batch_shape) == batch_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"cannot expand DiagonalNormal of batch shape {tuple(self.batch_shape)} to "
                f"{tuple(batch_shape)}"
            )
        new = self._get_checked_instance(DiagonalNormal, _instance)
        new.loc, new.scale = self.loc, self.scale
        super(DiagonalNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def entropy(self) -> torch.Tensor:
        """:math:`\\sum_d \\log\\sigma_d + \\tfrac D2 (1 + \\log 2\\pi)`."""
        d = self.event_shape[0]
        log_scale = self.scale.log().expand(*self.scale.shape[:-1], d).sum(-1)
        return (log_scale + 0.5 * d * (1.0 + math.log(2 * math.pi))).expand(self.batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.square().expand(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape: _SampleShape = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        wide = torch.float64
        center = self.loc.detach().to(wide).reshape(-1, self.loc.shape[-1]).mean(0)
        x, mu = value.to(wide) - center, self.loc.to(wide) - center  # no offset to cancel
        precision = self.scale.to(wide).square().reciprocal()
        weighted = precision * mu
        quad = (
            torch.einsum("...d,...d->...", x * x, precision.expand_as(weighted))
            - 2.0 * torch.einsum("...d,...d->...", x, weighted)
            + (weighted * mu).sum(-1)
        )
        d = self.event_shape[0]
        log_scale = self.scale.log().expand(*self.scale.shape[:-1], d)  # a scale of event 1
        log_norm = log_scale.sum(-1) + 0.5 * d * math.log(2 * math.pi)
        out = (-0.5 * quad).to(torch.result_type(value, self.loc)) - log_norm
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))
