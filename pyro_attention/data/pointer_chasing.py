r"""Synthetic :math:`k`-hop pointer chasing over a set of items, generated from a seed.

Each example is a set of :math:`N` items. Item :math:`i` has a random key
:math:`\kappa_i \in \mathbb{R}^d` (i.i.d. standard normal entries, or random signs drawn
until the keys of an example are distinct) and points to item :math:`p(i)`. Its features are
its own key next to the key of the item it points to,

.. math:: v_i = [\kappa_i ; \kappa_{p(i)}] + \sigma \varepsilon_i \in \mathbb{R}^{2d},

the query is the key of a uniformly drawn start item :math:`s`, :math:`q = \kappa_s`, and the
target is the item reached after :math:`k` hops, :math:`p^k(s)`. One round of attention can
find the item whose key matches the query and read the key it points to, i.e. perform one hop,
so a model needs at least :math:`k` rounds (the depth study
:mod:`pyro_attention.experiments.sla_depth`).

Pointers (``pointers=``):

* ``"cycle"`` (default): a uniformly random cyclic permutation (one cycle through all items),
  so that for :math:`k < N` the target is never the start or an item visited on the way;
* ``"permutation"``: a uniformly random permutation (may have fixed points and short cycles);
* ``"function"``: :math:`p(i)` uniform over the other items, independently (several items may
  point to the same one).

All randomness comes from a CPU :class:`torch.Generator` seeded with ``seed``, so the data are
the same on every device; they are then moved to ``device`` and ``dtype``.

>>> data = make_pointer_chasing(8, num_items=5, key_dim=4, hops=2, seed=0)
>>> data.items.shape, data.query.shape, data.target.shape, data.path.shape
(torch.Size([8, 5, 8]), torch.Size([8, 4]), torch.Size([8]), torch.Size([8, 3]))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_attention._validation import check_positive_int

__all__ = ["POINTER_KINDS", "PointerChasing", "make_pointer_chasing"]

POINTER_KINDS = ("cycle", "permutation", "function")
KEY_KINDS = ("gaussian", "sign")


class PointerChasing(NamedTuple):
    """A batch of pointer-chasing examples (``E`` examples, ``N`` items, keys of size ``d``)."""

    items: torch.Tensor
    """``(E, N, 2d)`` item features :math:`[\\kappa_i ; \\kappa_{p(i)}]` (plus noise)."""
    query: torch.Tensor
    """``(E, d)`` the key of the start item."""
    target: torch.Tensor
    """``(E,)`` long, index of the item reached after ``hops`` hops."""
    keys: torch.Tensor
    """``(E, N, d)`` the noise-free keys :math:`\\kappa_i`."""
    pointers: torch.Tensor
    """``(E, N)`` long, :math:`p(i)`."""
    path: torch.Tensor
    """``(E, hops + 1)`` long, the visited items: start, ..., target."""


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r}; pass e.g. {name}={minimum}"
        )
    return value


def make_pointer_chasing(
    num_examples: int,
    *,
    num_items: int = 8,
    key_dim: int = 16,
    hops: int = 3,
    seed: int = 0,
    pointers: str = "cycle",
    keys: str = "gaussian",
    noise: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PointerChasing:
    """Generate ``num_examples`` independent ``hops``-hop pointer-chasing examples.

    :param num_examples: number of examples ``E >= 1``.
    :param num_items: items per example ``N >= 2``.
    :param key_dim: key size ``d >= 1``; item features have ``2 d``.
    :param hops: number of hops ``k >= 0`` (``0``: the target is the start item).
    :param seed: integer seed; the same seed gives the same data on any device.
    :param pointers: ``"cycle"``, ``"permutation"`` or ``"function"`` (module docstring).
    :param keys: ``"gaussian"`` (standard normal entries) or ``"sign"`` (random :math:`\\pm 1`,
        redrawn until the keys of an example are distinct; needs ``2**key_dim >= num_items``).
    :param noise: standard deviation :math:`\\sigma \\ge 0` of Gaussian noise added to the item
        features (the query and ``keys`` stay noise-free).
    :param device: where the tensors go (default cpu).
    :param dtype: floating dtype of ``items``, ``query`` and ``keys``.
    :returns: a :class:`PointerChasing`.
    """
    E = check_positive_int(num_examples, "num_examples")
    N = _check_int(num_items, "num_items", 2)
    d = check_positive_int(key_dim, "key_dim")
    k = _check_int(hops, "hops", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if pointers not in POINTER_KINDS:
        raise ValueError(f"pointers must be one of {POINTER_KINDS}, got {pointers!r}")
    if keys not in KEY_KINDS:
        raise ValueError(f"keys must be one of {KEY_KINDS}, got {keys!r}")
    if keys == "sign" and N > 2 ** min(d, 62):
        raise ValueError(
            f"keys='sign' with key_dim={d} has only {2**d} distinct keys for num_items={N}; "
            "use a larger key_dim or keys='gaussian'"
        )
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise < math.inf:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}; use torch.float32")

    gen = torch.Generator().manual_seed(seed)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if keys == "gaussian":
        key = torch.randn(E, N, d, generator=gen, dtype=work)
    else:
        key = torch.randint(0, 2, (E, N, d), generator=gen).to(work) * 2 - 1
        # distinct keys within an example: redraw the examples that have a repeated key
        while True:
            same = (key.unsqueeze(-2) == key.unsqueeze(-3)).all(-1)
            repeated = (same.sum((-1, -2)) > N).nonzero().squeeze(-1)
            if repeated.numel() == 0:
                break
            redraw = torch.randint(0, 2, (len(repeated), N, d), generator=gen)
            key[repeated] = redraw.to(work) * 2 - 1

    rows = torch.arange(E).unsqueeze(-1)
    if pointers == "function":
        # uniform over the other N - 1 items: draw an offset in 1..N-1
        offset = torch.randint(1, N, (E, N), generator=gen)
        ptr = (torch.arange(N) + offset) % N
    else:
        order = torch.rand(E, N, generator=gen).argsort(-1)
        ptr = torch.empty(E, N, dtype=torch.long)
        if pointers == "cycle":
            # visit the items in a random order: order[j] points to order[j + 1]
            ptr[rows, order] = order.roll(-1, -1)
        else:
            ptr = order
    start = torch.randint(0, N, (E,), generator=gen)

    visited = [start]
    for _ in range(k):
        visited.append(ptr.gather(-1, visited[-1].unsqueeze(-1)).squeeze(-1))
    path = torch.stack(visited, -1)

    items = torch.cat([key, key[rows, ptr]], -1)
    if noise > 0:
        items = items + noise * torch.randn(items.shape, generator=gen, dtype=work)
    query = key[torch.arange(E), start]
    device = torch.device("cpu") if device is None else torch.device(device)
    return PointerChasing(
        items=items.to(device=device, dtype=dtype),
        query=query.to(device=device, dtype=dtype),
        target=path[:, -1].to(device),
        keys=key.to(device=device, dtype=dtype),
        pointers=ptr.to(device),
        path=path.to(device),
    )
