"""Models written for the tests only, as a user would write them, and small data for each.

* ``poisson_mixture`` — a plain Pyro function: Dirichlet/Gamma globals, one alignment per point.
* :class:`KeyValueAttention` — a subclass with a learned bilinear score (network parameters)
  and a global noise scale: attention over fixed key/value items.
* :class:`ScaleMixture` — a mixture with a continuous latent per point (a Student-t mixture
  written as a Gaussian scale mixture).
* ``linear_regression`` — no alignment at all, continuous globals only.
* ``keyless_lookup`` — no global latent, one alignment per point, nothing to learn but a
  network's logits.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_attention import alignment, attend
from pyro_attention.models import AlignmentModel


def poisson_mixture(counts: torch.Tensor) -> None:
    """Counts from a mixture of 3 Poissons."""
    weights = pyro.sample("weights", dist.Dirichlet(counts.new_ones(3)))
    rates = pyro.sample("rates", dist.Gamma(counts.new_full((3,), 2.0), 0.5).to_event(1))
    with pyro.plate("data", counts.shape[0], dim=-1):
        z = alignment("z", weights.log())
        pyro.sample("obs", dist.Poisson(attend(rates, z, event_dim=0)), obs=counts)


def poisson_data(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rates = torch.tensor([1.0, 6.0, 15.0])
    z = torch.randint(0, 3, (n,), generator=gen)
    return torch.poisson(rates[z], generator=gen)


class KeyValueAttention(AlignmentModel):
    """``y_n ~ Normal(v[z_n], σ)``, ``z_n ~ Cat(softmax(q_n W kᵀ))``, ``σ ~ LogNormal(0, 1)``;
    ``W`` is a network parameter. Data ``(N, D + 1)``: the query, then the target."""

    name = "kv-attention"

    def __init__(self, num_items: int = 4, dim: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.register_buffer("keys", torch.randn(num_items, dim, generator=gen))
        self.register_buffer("values", torch.linspace(-3.0, 3.0, num_items))
        self.score = nn.Linear(dim, dim, bias=False)
        self.dim = dim

    def model(self, data: torch.Tensor) -> None:
        pyro.module("score", self.score)
        queries, targets = data[:, : self.dim], data[:, self.dim]
        scale = pyro.sample("scale", dist.LogNormal(data.new_zeros(()), 1.0))
        logits = self.score(queries) @ self.keys.to(data).T
        with pyro.plate("data", data.shape[0], dim=-1):
            z = alignment("choice", logits)
            pyro.sample("obs", dist.Normal(attend(self.values.to(data), z, event_dim=0), scale),
                        obs=targets)

    def num_points(self, data: torch.Tensor) -> int:
        return data.shape[0]


def kv_data(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    model = KeyValueAttention()
    queries = torch.randn(n, 3, generator=gen)
    choice = (queries @ model.keys.T).argmax(-1)
    targets = model.values[choice] + 0.3 * torch.randn(n, generator=gen)
    return torch.cat([queries, targets[:, None]], -1)


class ScaleMixture(AlignmentModel):
    """Two Student-t components: ``u_n ~ Gamma(2, 2)`` per point, ``x_n ~ N(μ_z, 1/√u_n)``."""

    name = "scale-mixture"

    def model(self, data: torch.Tensor) -> None:
        locs = pyro.sample("locs", dist.Normal(data.new_zeros(2), 5.0).to_event(1))
        with pyro.plate("data", data.shape[0], dim=-1):
            u = pyro.sample("precision", dist.Gamma(data.new_tensor(2.0), 2.0))
            z = alignment("z", data.new_zeros(2))
            pyro.sample("obs", dist.Normal(attend(locs, z, event_dim=0), u.rsqrt()), obs=data)

    def num_points(self, data: torch.Tensor) -> int:
        return data.shape[0]


def scale_data(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (n,), generator=gen)
    return torch.tensor([-2.0, 2.0])[z] + torch.randn(n, generator=gen)


def linear_regression(data: torch.Tensor) -> None:
    """``y = w₀ + w₁ x + ε``; data ``(N, 2)`` holds ``x`` and ``y``."""
    w = pyro.sample("w", dist.Normal(data.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", data.shape[0], dim=-1):
        pyro.sample("y", dist.Normal(w[..., 0] + w[..., 1] * data[:, 0], 0.5), obs=data[:, 1])


def regression_data(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen)
    return torch.stack([x, 0.5 - x + 0.5 * torch.randn(n, generator=gen)], -1)


class KeylessLookup(AlignmentModel):
    """No global latent: ``z_n ~ Cat(net(x_n))``, ``y_n ~ N(v[z_n], 0.5)``, ``net`` learned.
    Data ``(N, 2)``: the input, then the target."""

    name = "keyless-lookup"

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 3)

    def model(self, data: torch.Tensor) -> None:
        pyro.module("net", self.net)
        values = data.new_tensor([-2.0, 0.0, 2.0])
        with pyro.plate("data", data.shape[0], dim=-1):
            z = alignment("z", self.net(data[:, :1]))
            pyro.sample("y", dist.Normal(attend(values, z, event_dim=0), 0.5), obs=data[:, 1])

    def num_points(self, data: torch.Tensor) -> int:
        return data.shape[0]


def lookup_data(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen)
    y = torch.tensor([-2.0, 0.0, 2.0])[(x > -0.5).long() + (x > 0.5).long()]
    return torch.stack([x, y + 0.3 * torch.randn(n, generator=gen)], -1)
