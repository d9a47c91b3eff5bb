"""The Wishart bijection, the straight-through categorical, the clamped Dirichlet, the
precomputed observation log-likelihood and the unbroadcast diagonal normal."""

import pyro.distributions as dist
import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import biject_to

from pyro_attention.distributions import (
    ClampedDirichlet,
    DiagonalNormal,
    ObservedLogProb,
    PositiveDefiniteTransform,
    StraightThroughCategorical,
    Wishart,
)


def test_transform_round_trip_and_shapes(device):
    t = PositiveDefiniteTransform()
    x = torch.randn(5, 6, device=device, dtype=torch.float64)  # D = 3
    y = t(x)
    assert y.shape == (5, 3, 3)
    assert torch.all(torch.linalg.eigvalsh(y) > 0)
    torch.testing.assert_close(t.inv(y), x)
    assert t.forward_shape(x.shape) == y.shape
    assert t.inverse_shape(y.shape) == x.shape


def test_log_det_jacobian_matches_autograd(device):
    """log|J| of x -> lower triangle of L L^T, against the autograd Jacobian."""
    t = PositiveDefiniteTransform()
    x = torch.randn(6, device=device, dtype=torch.float64)
    rows, cols = torch.tril_indices(3, 3, device=device)
    jac = jacobian(lambda v: t(v)[rows, cols], x)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), expected)


def test_wishart_support_has_bijection(device):
    df = torch.tensor(6.0, device=device, dtype=torch.float64)
    eye = torch.eye(3, device=device, dtype=torch.float64)
    w = Wishart(df, precision_matrix=eye)
    assert isinstance(biject_to(w.support), PositiveDefiniteTransform)
    value = w.sample()
    plain = dist.Wishart(df, precision_matrix=eye)
    torch.testing.assert_close(w.log_prob(value), plain.log_prob(value))


def test_straight_through_samples_one_hot_with_categorical_density(device):
    logits = torch.randn(1000, 4, device=device, dtype=torch.float64, requires_grad=True)
    d = StraightThroughCategorical(torch.tensor(0.5, device=device), logits=logits)
    z = d.rsample()
    assert torch.all((z == 0) | (z == 1)) and torch.all(z.sum(-1) == 1)
    expected = dist.Categorical(logits=logits).log_prob(z.argmax(-1))
    torch.testing.assert_close(d.log_prob(z), expected)
    z.sum().backward()  # the relaxed path carries a gradient
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_wishart_samples_without_warning_and_right_mean(device):
    """E[W] = df * scale; no spurious singular-sample warning."""
    df = torch.tensor(5.0, device=device, dtype=torch.float64)
    scale = torch.tensor([[1.0, 0.3], [0.3, 0.5]], device=device, dtype=torch.float64)
    draws = Wishart(df, covariance_matrix=scale).sample((20000,))
    torch.testing.assert_close(draws.mean(0), df * scale, atol=0.08, rtol=0)


def test_clamped_dirichlet_is_finite_with_tiny_concentrations():
    concentration = torch.tensor([[6.0, 0.05, 0.05, 0.05]] * 2000, requires_grad=True)
    value = ClampedDirichlet(concentration).rsample()
    assert value.dtype == torch.float32 and torch.all(value > 0)
    torch.testing.assert_close(value.sum(-1), torch.ones(2000))
    log_prob = ClampedDirichlet(concentration).log_prob(value)
    assert torch.isfinite(log_prob).all()
    (grad,) = torch.autograd.grad(log_prob.sum() + value[:, 0].sum(), concentration)
    assert torch.isfinite(grad).all()
    floor = value == value.min()
    assert value.min() >= torch.finfo(torch.float32).eps * 0.99 and floor.sum() > 10
    (value_grad,) = torch.autograd.grad(
        ClampedDirichlet(concentration).rsample().clamp(max=0.5).sum(), concentration
    )
    assert torch.isfinite(value_grad).all()


def test_observed_log_prob_scores_and_refuses_to_sample():
    log_lik = torch.randn(3, 4)
    fn = ObservedLogProb(log_lik)
    assert fn.batch_shape == (3, 4)
    assert torch.equal(fn.log_prob(torch.zeros(3, 4)), log_lik)
    assert fn.expand((2, 3, 4)).log_prob(None).shape == (2, 3, 4)
    with pytest.raises(NotImplementedError, match="emission_chunk_size"):
        fn.sample()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "loc_shape, scale_shape, value_shape, batch",
    [
        ((4, 1, 3), (4, 1, 3), (50, 3), (4, 50)),  # enumerated components against data
        ((50, 3), (50, 3), (50, 3), (50,)),  # one component per point (sampled z)
        ((3,), (1,), (2, 7, 3), (2, 7)),  # shared scale, value wider than the batch
    ],
)
def test_diagonal_normal_is_normal_to_event(
    device, dtype, loc_shape, scale_shape, value_shape, batch
):
    """Density, gradients and shapes of ``Normal(loc, scale).to_event(1)``, by torch, on data
    far from the origin (where an uncentred expansion of the square would cancel)."""
    g = torch.Generator().manual_seed(0)
    value = (100.0 + 2 * torch.randn(value_shape, generator=g, dtype=torch.float64)).to(dtype)
    loc = (100.0 + torch.randn(loc_shape, generator=g, dtype=torch.float64)).to(dtype)
    scale = (0.3 + torch.rand(scale_shape, generator=g, dtype=torch.float64)).to(dtype)
    results = []
    for make in (DiagonalNormal, lambda m, s: dist.Normal(m, s).to_event(1)):
        m, s = (t.to(device).requires_grad_() for t in (loc, scale))
        d = make(m, s).expand(batch)
        assert d.batch_shape == batch and d.event_shape == (value_shape[-1],)
        log_prob = d.log_prob(value.to(device))
        log_prob.sum().backward()
        results.append((log_prob.detach(), m.grad, s.grad))
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-10}
    assert (
        results[0][0].shape
        == results[1][0].shape
        == torch.broadcast_shapes(batch, value_shape[:-1])
    )
    for got, expected in zip(results[0], results[1], strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, **tol)


def test_diagonal_normal_samples_and_checks(device):
    loc = torch.tensor([[1.0, -2.0]], device=device, dtype=torch.float64)
    scale = torch.tensor([[0.5, 3.0]], device=device, dtype=torch.float64)
    d = DiagonalNormal(loc, scale).expand((3,))
    torch.manual_seed(0)
    draws = d.rsample((20000,))
    assert draws.shape == (20000, 3, 2)
    torch.testing.assert_close(draws.mean((0, 1)), loc[0], atol=0.05, rtol=0)
    torch.testing.assert_close(draws.std((0, 1)), scale[0], atol=0.05, rtol=0)
    assert d.mean.shape == d.variance.shape == (3, 2)
    reference = dist.Normal(loc, scale).to_event(1).expand((3,))
    torch.testing.assert_close(d.entropy(), reference.entropy())
    with pytest.raises(ValueError, match="scale"):
        DiagonalNormal(loc, -scale, validate_args=True)
    with pytest.raises(ValueError, match=r"cannot expand .* \(3,\) to \(5,\)"):
        d.expand((5,))
    with pytest.raises(ValueError, match="need an event dim"):
        DiagonalNormal(0.0, 1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        DiagonalNormal(loc, torch.ones(3, device=device, dtype=torch.float64))
