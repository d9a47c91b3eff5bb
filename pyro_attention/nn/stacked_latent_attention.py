r"""Stacked attention, plain (SAN) and with the latent map carried forward (SLA).

Both modules read a set of items :math:`v_1, \dots, v_N` (``items``, ``(B, N, item_dim)``)
with a query :math:`q` (``(B, query_dim)``) in :math:`L` rounds of additive attention, refining
the query after each round. Every layer :math:`l = 1, \dots, L` has its own parameters.

**Plain stacking** (:class:`StackedAttention`), the Stacked Attention Network of Yang et al.
(2016), with :math:`u^1 = q`:

.. math::

    h_i^l &= \tanh\big(W_v^l v_i + W_u^l u^l + b^l\big) \in \mathbb{R}^{H}
        && \text{(latent map, one column per item)} \\
    a^l &= \mathrm{softmax}_i\big(w^{l\top} h_i^l\big)
        && \text{(masked items get weight 0)} \\
    \tilde v^l &= \sum_i a_i^l v_i, \qquad
    u^{l+1} = u^l + P^l \tilde v^l .

:math:`P^l` is a bias-free linear map from ``item_dim`` to ``query_dim``; it is the identity
(no parameters) when ``item_dim == query_dim``, which is SAN exactly. The output is
:math:`u^{L+1}`. The only route from a layer's latent map to the output goes through its
softmax, so the gradient that reaches layer 1 passes through the chain of :math:`L` softmaxes.

**Stacked latent attention** (:class:`StackedLatentAttention`), after Fan & Zhou (2018). In
plain stacking the latent map :math:`h^l` is discarded once the weights :math:`a^l` are
computed. Here it is carried forward, to the next layer's latent map and to the next query:

.. math::

    h_i^1 &= \tanh\big(W_v^1 v_i + W_u^1 u^1 + b^1\big), \qquad
    h_i^l = \tanh\big(W_v^l [v_i ; h_i^{l-1}] + W_u^l u^l + b^l\big) \quad (l \ge 2), \\
    a^l &= \mathrm{softmax}_i\big(w^{l\top} h_i^l\big), \qquad
    \tilde v^l = \sum_i a_i^l v_i, \qquad g^l = \sum_i a_i^l h_i^l, \\
    u^{l+1} &= u^l + P^l \tilde v^l + G^l g^l
        = u^l + \big[P^l \; G^l\big] \begin{bmatrix} \tilde v^l \\ g^l \end{bmatrix} .

So the next layer sees :math:`[v_i ; h_i^{l-1}]`, the item features concatenated with the
carried latent map, and the next query is the residual update by a linear map (:math:`[P^l\,
G^l]`, bias-free) of the attended vector concatenated with the pooled latent map. :math:`h^L`
depends on :math:`h^1` through :math:`\tanh` layers only, and :math:`g^L` is a weighted sum of
:math:`h^L`, so the gradient of the output with respect to the first layer's :math:`W_v^1,
W_u^1, b^1` has a path that does not differentiate any softmax. With the latent-map columns of
:math:`W_v^l` and :math:`G^l` at zero it reduces to plain stacking.

What is and is not taken from the paper: Fan & Zhou build the latent map with convolutions over
an image grid and use it for VQA and image captioning; here items are an unordered set, the
maps are per-item affine + :math:`\tanh` (SAN's form), and the combination of attended vector
and pooled map into the next query is the residual linear update above. The idea kept is the
one the paper argues for: each layer's latent map (before the softmax reduction) feeds the
next layer and the output, giving the first layers a gradient path that avoids the chain of
softmaxes.

Shapes: ``items (B, N, item_dim)``, ``query (B, query_dim)``, optional boolean ``mask (B, N)``
(True = may attend; one True per row). Output ``(B, query_dim)``; with
``return_weights=True`` also the weights ``(B, L, N)``. Parameters, weights and output follow
the dtype and device of the inputs (move the module with ``.to(items)``); softmaxes are computed
in at least float32.

References
----------
* Z. Yang, X. He, J. Gao, L. Deng, A. Smola. *Stacked Attention Networks for Image Question
  Answering*. CVPR 2016.
* H. Fan, J. Zhou. *Stacked Latent Attention for Multimodal Reasoning*. CVPR 2018.

Example
-------
>>> layer = StackedLatentAttention(item_dim=6, query_dim=4, hidden_dim=8, num_layers=3)
>>> out, weights = layer(torch.randn(2, 5, 6), torch.randn(2, 4), return_weights=True)
>>> out.shape, weights.shape
(torch.Size([2, 4]), torch.Size([2, 3, 5]))
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from pyro_attention._validation import check_positive_int
from pyro_attention.alignment import masked_logits

__all__ = ["StackedAttention", "StackedLatentAttention"]


class _AttentionLayer(nn.Module):
    """One round: latent map, weights, read-out, query update (see the module docstring)."""

    def __init__(
        self, item_dim: int, query_dim: int, hidden_dim: int, carry_dim: int, pool: bool
    ) -> None:
        super().__init__()
        self.item_map = nn.Linear(item_dim + carry_dim, hidden_dim, bias=False)  # W_v^l
        self.query_map = nn.Linear(query_dim, hidden_dim)  # W_u^l, b^l
        self.score = nn.Linear(hidden_dim, 1, bias=False)  # w^l
        # P^l: identity when the dims agree (SAN), else a bias-free projection
        self.read = (
            nn.Identity() if item_dim == query_dim else nn.Linear(item_dim, query_dim, bias=False)
        )
        # G^l: the pooled latent map into the query (stacked latent attention only)
        self.pool = nn.Linear(hidden_dim, query_dim, bias=False) if pool else None

    def attention_parameters(self) -> list[nn.Parameter]:
        """The parameters that make the latent map and the weights: ``W_v, W_u, b, w``."""
        # nn.Linear declares ``weight`` as a Tensor; it is the layer's Parameter
        score_weight = cast(nn.Parameter, self.score.weight)
        return [*self.item_map.parameters(), *self.query_map.parameters(), score_weight]

    def forward(
        self,
        items: torch.Tensor,
        carried: torch.Tensor | None,
        query: torch.Tensor,
        mask: torch.Tensor | None,
        detach_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u^{l+1}, a^l, h^l)`` from ``u^l`` and the carried ``h^{l-1}`` (or None)."""
        inputs = items if carried is None else torch.cat([items, carried], -1)
        latent = torch.tanh(self.item_map(inputs) + self.query_map(query).unsqueeze(-2))
        scores = self.score(latent).squeeze(-1)
        # softmax in at least float32
        work = torch.promote_types(scores.dtype, torch.float32)
        weights = torch.softmax(masked_logits(scores.to(work), mask), -1).to(scores.dtype)
        w = weights.detach() if detach_weights else weights
        update = self.read((w.unsqueeze(-2) @ items).squeeze(-2))
        if self.pool is not None:
            update = update + self.pool((w.unsqueeze(-2) @ latent).squeeze(-2))
        return query + update, weights, latent


class _StackedAttentionBase(nn.Module):
    """Shared constructor, input checks and the layer loop of the two variants."""

    def __init__(
        self,
        item_dim: int,
        query_dim: int,
        hidden_dim: int,
        num_layers: int,
        *,
        carry: bool = False,
        pool: bool = False,
    ) -> None:
        super().__init__()
        self.carry, self.pool = bool(carry), bool(pool)
        self.item_dim = check_positive_int(item_dim, "item_dim")
        self.query_dim = check_positive_int(query_dim, "query_dim")
        self.hidden_dim = check_positive_int(hidden_dim, "hidden_dim")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.layers = nn.ModuleList(
            _AttentionLayer(
                item_dim,
                query_dim,
                hidden_dim,
                carry_dim=hidden_dim if (self.carry and l > 0) else 0,
                pool=self.pool,
            )
            for l in range(num_layers)
        )

    def extra_repr(self) -> str:
        return (
            f"item_dim={self.item_dim}, query_dim={self.query_dim}, "
            f"hidden_dim={self.hidden_dim}, num_layers={self.num_layers}"
            + (f", carry={self.carry}, pool={self.pool}" if self.carry or self.pool else "")
        )

    def attention_parameters(self, layer: int) -> list[nn.Parameter]:
        """Parameters of layer ``layer`` (0-based; negative counts from the end) that make its
        latent map and weights (:math:`W_v^l, W_u^l, b^l, w^l`), excluding the read-out maps
        :math:`P^l, G^l`. Their gradient is what a depth study measures."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layer must be an integer, got {layer!r}")
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(
                f"layer={layer} is out of range for num_layers={self.num_layers}; "
                f"use 0..{self.num_layers - 1} or a negative index"
            )
        return self._layer(layer).attention_parameters()

    def _layer(self, index: int) -> _AttentionLayer:
        """Layer ``index`` (``nn.ModuleList`` indexing is typed as a plain Module)."""
        return cast(_AttentionLayer, self.layers[index])

    @staticmethod
    def _check_input(arg: str, x: object, ndim: int, shape: str) -> torch.Tensor:
        """``x`` if it is a floating tensor with ``ndim`` dims, else a ValueError."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{arg} must have a floating dtype, got {x.dtype}; use {arg}.float()")
        if x.dim() != ndim:
            raise ValueError(f"{arg} must have shape {shape}, got {tuple(x.shape)}")
        return x

    def _check(
        self, items: object, query: object, mask: object
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        items = self._check_input("items", items, 3, f"(batch, num_items, {self.item_dim})")
        query = self._check_input("query", query, 2, f"(batch, {self.query_dim})")
        B, N, D = items.shape
        if D != self.item_dim:
            raise ValueError(
                f"items has {D} features but the module was built with item_dim={self.item_dim}; "
                f"build it with item_dim={D}"
            )
        if query.shape[-1] != self.query_dim:
            raise ValueError(
                f"query has {query.shape[-1]} features but the module was built with "
                f"query_dim={self.query_dim}; build it with query_dim={query.shape[-1]}"
            )
        if query.shape[0] != B:
            raise ValueError(
                f"items has batch size {B} but query has {query.shape[0]}; "
                "pass one query per set of items"
            )
        if B == 0 or N == 0:
            raise ValueError(f"items is empty (shape {tuple(items.shape)}); pass at least one item")
        if query.dtype != items.dtype or query.device != items.device:
            raise ValueError(
                f"query ({query.dtype}, {query.device}) and items ({items.dtype}, {items.device}) "
                "must share dtype and device; use query.to(items)"
            )
        param = self._layer(0).query_map.weight
        if param.dtype != items.dtype or param.device != items.device:
            raise ValueError(
                f"the module's parameters are {param.dtype} on {param.device} but items are "
                f"{items.dtype} on {items.device}; move the module with module.to(items)"
            )
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError(
                    "mask must be a boolean tensor (True = may attend); use mask.bool()"
                )
            if mask.shape != (B, N):
                raise ValueError(
                    f"mask must have shape (batch, num_items) = {(B, N)}, got {tuple(mask.shape)}"
                )
            if mask.device != items.device:
                raise ValueError(
                    f"mask is on {mask.device} but items are on {items.device}; "
                    "use mask.to(items.device)"
                )
            if not mask.any(-1).all():
                raise ValueError(
                    "mask has a row with no True entry; every set needs at least one item "
                    "it may attend to (drop empty sets)"
                )
        return items, query, mask

    def forward(
        self,
        items: torch.Tensor,
        query: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
        *,
        detach_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Refine ``query`` by ``num_layers`` rounds of attention over ``items``.

        :param items: ``(B, N, item_dim)`` item features :math:`v_i`.
        :param query: ``(B, query_dim)`` initial query :math:`u^1`.
        :param mask: optional boolean ``(B, N)``, True where an item may be attended to; each
            row needs one True entry.
        :param return_weights: also return the weights :math:`a^l`, ``(B, num_layers, N)``.
        :param detach_weights: diagnostic: use the weights as constants in the read-outs, so
            no gradient flows through any softmax (only paths that avoid them remain).
        :returns: the refined query :math:`u^{L+1}`, ``(B, query_dim)``, and the weights if
            asked for.
        """
        items, query, mask = self._check(items, query, mask)
        u, carried, all_weights = query, None, []
        for layer in self.layers:
            u, weights, latent = layer(items, carried, u, mask, detach_weights)
            carried = latent if self.carry else None
            all_weights.append(weights)
        if return_weights:
            return u, torch.stack(all_weights, -2)
        return u


class StackedAttention(_StackedAttentionBase):
    r"""Plain stacked attention (Yang et al. 2016): :math:`u^{l+1} = u^l + P^l \sum_i a_i^l v_i`
    with :math:`a^l = \mathrm{softmax}_i(w^{l\top}\tanh(W_v^l v_i + W_u^l u^l + b^l))`.

    See :mod:`pyro_attention.nn.stacked_latent_attention` for the equations and shapes.

    :param item_dim: features per item.
    :param query_dim: features of the query (and of the output).
    :param hidden_dim: size :math:`H` of the latent map.
    :param num_layers: number of attention rounds :math:`L \ge 1`.
    """

    def __init__(self, item_dim: int, query_dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__(item_dim, query_dim, hidden_dim, num_layers)


class StackedLatentAttention(_StackedAttentionBase):
    r"""Stacked latent attention (Fan & Zhou 2018): each layer's latent map :math:`h^l` is
    concatenated with the items for the next layer, and its attention-pooled form
    :math:`g^l = \sum_i a_i^l h_i^l` enters the next query next to the attended vector.

    See :mod:`pyro_attention.nn.stacked_latent_attention` for the equations and shapes.

    :param item_dim: features per item.
    :param query_dim: features of the query (and of the output).
    :param hidden_dim: size :math:`H` of the latent map.
    :param num_layers: number of attention rounds :math:`L \ge 1`.
    :param carry: feed :math:`h^{l-1}` into layer :math:`l`'s latent map (default True).
    :param pool: add :math:`G^l g^l` to the query update (default True). The two switches are
        for ablations; with both off this is :class:`StackedAttention`.
    """

    def __init__(
        self,
        item_dim: int,
        query_dim: int,
        hidden_dim: int,
        num_layers: int,
        *,
        carry: bool = True,
        pool: bool = True,
    ) -> None:
        super().__init__(item_dim, query_dim, hidden_dim, num_layers, carry=carry, pool=pool)
