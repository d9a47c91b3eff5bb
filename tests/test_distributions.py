"""The Wishart bijection and the straight-through categorical."""

import pyro.distributions as dist
import torch
from torch.autograd.functional import jacobian
from torch.distributions import biject_to

from pyro_attention.distributions import (
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
