"""The one primitive: a latent categorical choice among items, and reading the chosen item.

Attention weights, mixture responsibilities and seq2seq alignments are all the same object, a
categorical choice ``z`` over ``K`` items with prior ``p(z | ...) = Categorical(softmax(logits))``.
:func:`alignment` makes it a ``pyro.sample`` site tagged ``infer={"alignment": True}``, so that
inference methods and the handlers of :mod:`pyro_attention.handlers` can find and rewrite it;
:func:`attend` reads the chosen item whatever form ``z`` takes:

* an integer index (sampled, or enumerated by ``TraceEnum_ELBO`` with extra dims on the left),
* a one-hot vector (``OneHotCategorical``, straight-through Gumbel-softmax),
* a point on the simplex (soft attention, relaxed Gumbel-softmax, Dirichlet).

Example::

    with pyro.plate("data", N):
        z = alignment("assignment", logits)          # (N,) or (K, 1) under enumeration
        pyro.sample("obs", dist.Normal(attend(locs, z), 1.0).to_event(1), obs=x)
"""

from __future__ import annotations

from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from pyro.poutine.runtime import InferDict, Message

ALIGNMENT_TAG = "alignment"


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``logits`` with excluded items set to a large negative number (not ``-inf``).

    A finite value keeps relaxed samples and gradients free of NaN while giving masked
    items zero probability to floating-point precision.

    :param logits: ``(..., K)``.
    :param mask: boolean ``(..., K)`` (broadcastable), True where an item may be chosen.
    """
    if mask is None:
        return logits
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got dtype {mask.dtype}; use mask.bool()")
    if not mask.any(-1).all():
        raise ValueError(
            "mask excludes every item in at least one row; each row needs one True entry "
            "(drop all-padding rows before calling alignment)"
        )
    floor = torch.finfo(logits.dtype).min / 4
    return logits.masked_fill(~mask, floor)


def alignment(
    name: str,
    logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    obs: torch.Tensor | None = None,
    infer: dict | None = None,
) -> torch.Tensor:
    """Sample a latent choice among the ``K`` items of the last dimension of ``logits``.

    .. math:: z \\sim \\mathrm{Categorical}(\\mathrm{softmax}(\\ell)),\\quad
              \\ell_k = -\\infty \\text{ where } \\mathrm{mask}_k = \\text{False}

    :param name: the Pyro site name.
    :param logits: unnormalised log probabilities, ``batch_shape + (K,)``; softmax is taken in
        at least float32.
    :param mask: optional boolean ``batch_shape + (K,)``; False items get no probability.
    :param obs: optional observed index (a supervised alignment).
    :param infer: extra ``infer`` entries for the site (e.g. ``{"enumerate": "parallel"}``).
    :returns: the choice: an integer tensor of shape ``batch_shape`` (with enumeration dims on
        the left under ``TraceEnum_ELBO``), or a one-hot / simplex tensor ``batch_shape + (K,)``
        when a handler of :mod:`pyro_attention.handlers` rewrites the site.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError(f"alignment {name!r}: logits must be a tensor with a last dim of items")
    if logits.shape[-1] < 1:
        raise ValueError(f"alignment {name!r}: logits has no items (last dim is 0)")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logits = masked_logits(logits, mask)
    site_infer = {ALIGNMENT_TAG: True}
    site_infer.update(infer or {})
    # the alignment tag is this package's own key, unknown to pyro's InferDict
    return pyro.sample(
        name, dist.Categorical(logits=logits), obs=obs, infer=cast(InferDict, site_infer)
    )


def is_alignment_site(site: Message) -> bool:
    """Whether a trace site was made by :func:`alignment`."""
    if site["type"] != "sample":
        return False
    infer = site.get("infer") or {}
    return bool(infer.get(ALIGNMENT_TAG, False))


def has_chained_alignments(trace: Any) -> bool:
    """Whether, in a trace made under parallel enumeration of the alignment sites, some
    alignment site's distribution depends on another alignment site: its batch shape then spans
    that site's enumeration dim (a chain written in ``pyro.markov``, where dims are recycled,
    shows the same way)."""
    sites = [
        site
        for site in trace.nodes.values()
        if is_alignment_site(site) and site["infer"].get("_enumerate_dim") is not None
    ]
    dims = {site["name"]: site["infer"]["_enumerate_dim"] for site in sites}
    for site in sites:
        shape = site["fn"].batch_shape
        own = dims[site["name"]]
        for name, dim in dims.items():
            if name != site["name"] and dim != own and len(shape) >= -dim and shape[dim] > 1:
                return True
    return False


def attend(values: torch.Tensor, z: torch.Tensor, *, event_dim: int = 1) -> torch.Tensor:
    """Read the item(s) chosen by ``z`` from ``values``.

    :param values: ``batch_shape + (K,) + event_shape`` with ``len(event_shape) == event_dim``;
        items along dim ``-(event_dim + 1)``.
    :param z: an integer index tensor (any batch shape broadcastable with ``values``'
        batch shape, enumeration dims included) or a floating tensor ``(..., K)`` of weights
        (one-hot or a point on the simplex).
    :param event_dim: number of trailing dims of one item (1 for vectors, 2 for matrices).
    :returns: for an index ``z``: ``broadcast(batch, z.shape) + event_shape``
        (:class:`~pyro.ops.indexing.Vindex` semantics); for weights:
        :math:`\\sum_k z_k v_k`, shape ``broadcast(batch, z.shape[:-1]) + event_shape``.
    """
    if values.dim() < event_dim + 1:
        raise ValueError(
            f"values must have an item dim and {event_dim} event dim(s), "
            f"got shape {tuple(values.shape)}"
        )
    if not z.is_floating_point():
        index = (Ellipsis, z) + (slice(None),) * event_dim
        return Vindex(values)[index]
    num_items = values.shape[-(event_dim + 1)]
    if z.shape[-1] != num_items:
        raise ValueError(
            f"attention weights have {z.shape[-1]} items in their last dim but values have "
            f"{num_items} items (dim {-(event_dim + 1)})"
        )
    weights = z.reshape(z.shape + (1,) * event_dim).to(values.dtype)
    return (weights * values).sum(-(event_dim + 1))
