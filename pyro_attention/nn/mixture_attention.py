"""Attention read as a mixture model: the keys are components, the weights are responsibilities.

For a query ``q`` and keys ``k_1..k_K`` with log prior :math:`\\log\\pi_k`, Bayes' rule gives

.. math:: p(k \\mid q) = \\frac{\\pi_k\\, p(q \\mid k)}{\\sum_j \\pi_j\\, p(q \\mid j)},
          \\qquad \\mathrm{output}(q) = \\sum_k p(k \\mid q)\\, v_k .

* ``kind="gaussian"``, :math:`p(q \\mid k) = N(q; k_k, \\sigma^2 I)`:
  :math:`\\log p(k \\mid q) = q\\cdot k_k/\\sigma^2 - \\lVert k_k\\rVert^2/(2\\sigma^2) +
  \\log\\pi_k + c(q)`, i.e. softmax attention with scale :math:`1/\\sigma^2` plus a bias per key.
  Queries and keys far from the origin are first centred on the keys' mean (the posterior
  depends on :math:`q - k_k` only), so the two terms do not cancel to noise in float32.
* ``kind="bernoulli"``, :math:`p(x \\mid k) = \\prod_d \\mathrm{Bern}(x_d; \\mu_{kd})^{m_d}`
  with keys given as logits :math:`\\ell_k = \\mathrm{logit}(\\mu_k)` and an observed mask
  ``m``: :math:`\\log p(k \\mid x) = (m\\odot x)\\cdot\\ell_k - m\\cdot
  \\mathrm{softplus}(\\ell_k) + \\log\\pi_k + c(x)`, a dot product plus a bias (scale 1).

The soft output is one :func:`torch.nn.functional.scaled_dot_product_attention` call, in float32
at least, when no logit can overflow (a per-key bias that needs a gradient as one more feature of
the queries and keys, so the fused kernel differentiates it too; else an additive float mask);
otherwise the responsibilities are computed explicitly, in float64 if need be, so low-precision
inputs and extreme scales give the right weights or a ValueError, never a silent NaN or zero;
the output is cast back to the inputs' dtype.
With ``latent=True`` the choice of key is an :func:`~pyro_attention.alignment.alignment` site
instead, so every inference method of the
package applies (``soft()`` gives back the soft output, enumeration sums over the keys).

Self-attention is ``query = key = value = x`` (:meth:`MixtureAttention.self_attention`); in the
Gaussian case each token is then also a component, its own included.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pyro_attention.alignment import alignment, attend

KINDS = ("gaussian", "bernoulli")


def _broadcast_shapes(*shapes: tuple[int, ...]) -> torch.Size:
    """:func:`torch.broadcast_shapes` for plain shapes (that one costs ~40 us a call, a tenth
    of a small attention call); a RuntimeError when they do not broadcast."""
    out = [1] * max(map(len, shapes), default=0)
    for shape in shapes:
        for i, size in enumerate(shape, len(out) - len(shape)):
            if size != out[i]:
                if out[i] != 1 and size != 1:
                    raise RuntimeError(f"shapes {shapes} do not broadcast")
                out[i] = size if out[i] == 1 else out[i]
    return torch.Size(out)


def _check_input(arg: str, x: object) -> torch.Tensor:
    """``x`` if it is a floating tensor of shape ``(..., T, D)``, else a ValueError."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{arg} must have a floating dtype, got {x.dtype}; use {arg}.float()")
    if x.dim() < 2:
        raise ValueError(f"{arg} must have shape (..., T, D), got {tuple(x.shape)}")
    return x


def _check_qkv(query: object, key: object, value: object) -> None:
    query = _check_input("query", query)
    key = _check_input("key", key)
    value = _check_input("value", value)
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query has {query.shape[-1]} features but key has {key.shape[-1]}; "
            "the last dims of query and key must match"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key has {key.shape[-2]} items (dim -2) but value has {value.shape[-2]}; "
            "key and value need one row per item"
        )
    try:
        _broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"batch dims of query {tuple(query.shape[:-2])}, key {tuple(key.shape[:-2])} and "
            f"value {tuple(value.shape[:-2])} do not broadcast"
        ) from err


def dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention, :math:`\\mathrm{softmax}(s\\, q k^\\top) v`, checked.

    A thin wrapper over :func:`torch.nn.functional.scaled_dot_product_attention`.

    :param query: ``(..., Tq, D)``.
    :param key: ``(..., Tk, D)``.
    :param value: ``(..., Tk, Dv)``.
    :param mask: optional boolean ``(..., Tq, Tk)`` (broadcastable), True where a query may
        attend to a key; every query needs one True entry.
    :param scale: ``s > 0``; default :math:`1/\\sqrt{D}`.
    :returns: ``(..., Tq, Dv)``.
    """
    _check_qkv(query, key, value)
    if scale is not None and not (isinstance(scale, int | float) and 0 < scale < math.inf):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a boolean tensor (True = may attend); use mask.bool()")
        target = (*query.shape[:-1], key.shape[-2])
        try:
            _broadcast_shapes(mask.shape, target)
        except RuntimeError as err:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to (..., Tq, Tk) = {target}"
            ) from err
        if mask.shape[-1] != target[-1] or not mask.any(-1).all():
            raise ValueError(
                "mask needs a last dim of Tk with at least one True entry per query row"
            )
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


class _Heads(NamedTuple):
    """Checked inputs split into heads: ``q (..., H, Tq, d)``, ``k (..., H, Tk, d)``, ``v``,
    the observed mask like ``q`` (or None), the log prior ``(..., 1, 1, Tk)`` with ``-inf``
    moved into the key mask ``(..., 1, 1, Tk)`` (or None), and the largest ``|q|`` and ``|k|``
    entries."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    observed: torch.Tensor | None
    log_prior: torch.Tensor | None
    key_mask: torch.Tensor | None
    query_peak: float
    key_peak: float


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(..., T, D)`` to ``(..., H, T, D / H)``."""
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads)).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(..., H, T, d)`` to ``(..., T, H * d)``."""
    return x.transpose(-3, -2).flatten(-2)


_FEATURE_BLOCK = 8  # CPU flash attention is vectorised over blocks of features: D = 65 runs 2-3x
# slower than D = 72


def _attention_with_key_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """:math:`\\mathrm{softmax}(s\\, q k^\\top + b) v` for a per-key bias ``b`` that needs a
    gradient, by one fused kernel, forward and backward.

    A float mask that requires grad sends :func:`~torch.nn.functional.scaled_dot_product_attention`
    to its unfused path (the ``Tq x Tk`` scores materialised, 1.5-2x slower forward + backward).
    Instead the bias travels as one more feature: :math:`q' = [q, 1]`, :math:`k' = [k, b/s]`,
    so :math:`s\\, q'\\cdot k' = s\\, q\\cdot k + b` and the kernel's key gradient carries
    :math:`\\partial/\\partial b`. Queries, keys and values are zero-padded to a common width,
    a multiple of 8 (the kernel's fast widths); the output is cut back to ``Dv``.

    :param q: ``(..., H, Tq, D)``; ``k``: ``(..., H, Tk, D)``; ``v``: ``(..., H, Tk, Dv)``.
    :param bias: ``(..., H|1, 1, Tk)``, finite, with ``b/s`` finite.
    :param key_mask: optional boolean ``(..., 1, 1, Tk)``, False for excluded keys.
    :returns: ``(..., H, Tq, Dv)``.
    """
    d, dv = q.shape[-1], v.shape[-1]
    width = -(-max(d + 1, dv) // _FEATURE_BLOCK) * _FEATURE_BLOCK
    column = (bias / scale).mT.expand(*k.shape[:-1], 1)
    q = torch.cat([q, torch.ones_like(q[..., :1]), q.new_zeros(*q.shape[:-1], width - d - 1)], -1)
    k = torch.cat([k, column, k.new_zeros(*k.shape[:-1], width - d - 1)], -1)
    v = F.pad(v, (0, width - dv))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    return out[..., :dv]


class MixtureAttention(nn.Module):
    """Attention weights as posterior responsibilities :math:`p(k \\mid q)` of a mixture.

    :param kind: ``"gaussian"`` (keys are means of :math:`N(\\cdot, \\sigma^2 I)`) or
        ``"bernoulli"`` (keys are logits of Bernoulli means; queries in :math:`\\{0,1\\}^D`).
    :param sigma: Gaussian standard deviation :math:`\\sigma > 0` (default 1; gaussian only).
    :param num_heads: split the query/key/value features into ``H`` equal parts, one
        independent mixture per head; the outputs are concatenated.
    :param latent: if True, :meth:`forward` samples the key as an alignment site (see there).
    :param name: the alignment site's name (``latent=True``); with ``H > 1`` the heads are the
        sites ``f"{name}_head{h}"``.
    """

    def __init__(
        self,
        kind: str = "gaussian",
        *,
        sigma: float | None = None,
        num_heads: int = 1,
        latent: bool = False,
        name: str = "key",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "bernoulli" and sigma is not None:
            raise ValueError("sigma applies to kind='gaussian' only; drop sigma for 'bernoulli'")
        sigma = 1.0 if sigma is None else sigma
        if isinstance(sigma, bool) or not isinstance(sigma, int | float):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        if not 0 < sigma < math.inf:
            raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
        try:
            (1.0 / sigma) ** 2  # the softmax scale 1/σ², held in float64
        except OverflowError:
            raise ValueError(
                f"sigma={sigma!r} is too small: 1/sigma^2 overflows float64; rescale the "
                "queries and keys instead"
            ) from None
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.kind = kind
        self.sigma = float(sigma)
        self.num_heads = num_heads
        self.latent = bool(latent)
        self.name = name

    def extra_repr(self) -> str:
        sigma = f", sigma={self.sigma}" if self.kind == "gaussian" else ""
        return f"kind={self.kind!r}{sigma}, num_heads={self.num_heads}, latent={self.latent}"

    # -- the mixture in per-head form -------------------------------------------------------

    def _prepare(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        log_prior: torch.Tensor | None,
        key_mask: torch.Tensor | None,
        observed: torch.Tensor | None,
    ) -> _Heads:
        """The checked inputs split into heads; a ``-inf`` log prior becomes a masked key."""
        _check_qkv(query, key, value)
        H, (Tq, D), Tk = self.num_heads, query.shape[-2:], key.shape[-2]
        if Tk == 0:
            raise ValueError(
                "key has no items (shape (..., 0, D)); a mixture needs at least one component"
            )
        for arg, size in (("query/key", D), ("value", value.shape[-1])):
            if size % H:
                raise ValueError(
                    f"num_heads={H} does not divide the {size} features of {arg}; "
                    "pick num_heads dividing both feature dims"
                )
        batch = _broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
        query = query.expand(*batch, Tq, D)
        key = key.expand(*batch, Tk, D)
        value = value.expand(*batch, *value.shape[-2:])

        if observed is None:
            m = None
        else:
            if not isinstance(observed, torch.Tensor):
                raise ValueError("observed must be a tensor of 0/1 (or bool), shaped like query")
            try:
                fits = _broadcast_shapes(observed.shape, query.shape) == query.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"observed of shape {tuple(observed.shape)} does not broadcast to the query "
                    f"shape {tuple(query.shape)}"
                )
            if observed.dtype != torch.bool and not ((observed == 0) | (observed == 1)).all():
                raise ValueError("observed must be boolean or contain only 0 and 1 (1 = observed)")
            m = observed.to(query.dtype).expand_as(query)
            # unobserved entries are ignored, whatever they hold (even NaN)
            query = torch.where(m > 0, query, torch.zeros((), dtype=query.dtype))
        peaks = {}  # max |x|: NaN or inf exactly when x holds one (aminmax: one fast pass)
        for arg, x in (("query", query), ("key", key), ("value", value)):
            low, high = torch.aminmax(x.detach()) if x.numel() else (x.new_zeros(()),) * 2
            peak = float(torch.maximum(-low, high))  # propagates NaN
            if not math.isfinite(peak):
                where = " where observed" if arg == "query" and m is not None else ""
                raise ValueError(f"{arg} contains NaN or inf{where}; attention needs finite inputs")
            peaks[arg] = peak
        if self.kind == "bernoulli" and not ((query == 0) | (query == 1)).all():
            raise ValueError(
                "query must be binary (0/1) for kind='bernoulli' wherever observed; "
                "mask other entries with observed="
            )

        if log_prior is not None:
            if not isinstance(log_prior, torch.Tensor) or log_prior.shape[-1:] != (Tk,):
                raise ValueError(f"log_prior must be a tensor of shape (..., Tk) with Tk = {Tk}")
            if torch.isnan(log_prior).any() or (log_prior == math.inf).any():
                raise ValueError(
                    "log_prior contains NaN or +inf; it must be finite, or -inf for a key "
                    "that is not a component"
                )
            excluded = log_prior == -math.inf
            if excluded.any():  # -inf: the key is not a component, as with key_mask=False
                log_prior = log_prior.masked_fill(excluded, 0.0)
                key_mask = ~excluded if key_mask is None else key_mask & ~excluded
            log_prior = log_prior[..., None, None, :]
        if key_mask is not None:
            if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
                raise ValueError("key_mask must be a boolean tensor (True = key may be chosen)")
            if key_mask.shape[-1:] != (Tk,):
                raise ValueError(f"key_mask must have shape (..., Tk) with Tk = {Tk}")
            if not key_mask.any(-1).all():
                raise ValueError(
                    "every key of a row is excluded (key_mask False or log_prior -inf); each "
                    "query needs at least one component"
                )
            key_mask = key_mask[..., None, None, :]
        if self.kind == "gaussian":
            # q·k and |k|²/2 are formed apart: with queries and keys at an offset c from the
            # origin they carry about eps * scale * D * |c|² of rounding that cancels to noise.
            # p(k | q) depends on q - k only, so such inputs are centred on the mean of the
            # keys that are components (excluded keys may hold anything).
            wide = torch.promote_types(torch.result_type(query, key), torch.float32)
            if key_mask is None:
                center = key.detach().mean(-2, keepdim=True, dtype=wide)
            else:
                weight = key_mask[..., 0, 0, :, None].to(wide)  # (..., Tk, 1): 1 = component
                center = (key.detach().to(wide) * weight).sum(-2, keepdim=True)
                center = center / weight.sum(-2, keepdim=True)
            offset = float(center.abs().amax())  # inf when the sum overflowed: left as is
            if 8.0 < self.sigma**-2 * D * offset**2 < math.inf:
                center = center.to(key.dtype)
                query, key = query - center, key - center
                if m is not None:  # unobserved entries stay out of the dot products
                    query = torch.where(m > 0, query, torch.zeros((), dtype=query.dtype))
                for arg, x in (("query", query), ("key", key)):  # the overflow bound's peaks
                    peaks[arg] = float(x.detach().abs().amax()) if x.numel() else 0.0
        q, k, v = (_split_heads(x, H) for x in (query, key, value))
        target = (*q.shape[:-1], Tk)
        try:
            shape = _broadcast_shapes(
                target,
                () if log_prior is None else log_prior.shape,
                () if key_mask is None else key_mask.shape,
            )
        except RuntimeError as err:
            raise ValueError(
                "batch dims of log_prior / key_mask do not broadcast with those of query and key"
            ) from err
        if shape != target:
            raise ValueError(
                "log_prior / key_mask have more batch dims than query and key; "
                f"expected at most {tuple(q.shape[:-3])}"
            )
        mh = None if m is None else _split_heads(m, H)
        return _Heads(q, k, v, mh, log_prior, key_mask, peaks["query"], peaks["key"])

    def _scale_and_bias(self, heads: _Heads, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
        """The logits are ``scale * q @ k.T + bias``: the scale and the per-key bias
        ``(..., H, Tq|1, Tk)`` (key norms or softplus sums, and the log prior) in ``dtype``;
        masked keys are not marked here."""
        k = heads.k.to(dtype)
        m = None if heads.observed is None else heads.observed.to(dtype)
        if self.kind == "gaussian":
            scale = (1.0 / self.sigma) ** 2
            sq = k.square()
            bias = -0.5 * scale * (sq.sum(-1).unsqueeze(-2) if m is None else m @ sq.mT)
        else:
            scale = 1.0
            sp = F.softplus(k)
            bias = -(sp.sum(-1).unsqueeze(-2) if m is None else m @ sp.mT)
        if heads.log_prior is not None:
            bias = bias + heads.log_prior.to(dtype)
        return scale, bias

    def _log_responsibilities(self, heads: _Heads) -> torch.Tensor:
        """:math:`\\log p(k \\mid q)`, normalised, ``(..., H, Tq, Tk)``; masked keys ``-inf``.

        Computed in float32 at least (float16/bfloat16 inputs overflow in the key norms), and
        again in float64 when a logit overflows (e.g. a tiny ``sigma``); a ValueError when even
        float64 cannot hold them, never a silent NaN or zero.
        """
        first = torch.promote_types(heads.q.dtype, torch.float32)
        for dtype in dict.fromkeys((first, torch.float64)):
            scale, bias = self._scale_and_bias(heads, dtype)
            logits = scale * (heads.q.to(dtype) @ heads.k.to(dtype).mT) + bias
            finite = torch.isfinite(logits)
            if heads.key_mask is not None:
                logits = logits.masked_fill(~heads.key_mask, -math.inf)
                finite = finite | ~heads.key_mask
            if finite.all():
                return torch.log_softmax(logits, -1)
        raise ValueError(
            f"the attention logits overflow even in float64 (kind={self.kind!r}"
            + (f", sigma={self.sigma:g}" if self.kind == "gaussian" else "")
            + "); rescale the queries and keys"
            + (" or use a larger sigma" if self.kind == "gaussian" else "")
        )

    def _soft_output(self, heads: _Heads) -> torch.Tensor:
        """:math:`\\sum_k p(k \\mid q)\\, v_k`, ``(..., H, Tq, dv)`` in the inputs' dtype.

        When no logit can overflow (``|scale * q·k| <= scale * d * max|q| * max|k|`` and the
        bias far below the float maximum) this is one fused
        :func:`torch.nn.functional.scaled_dot_product_attention` call, in float32 at least:
        a per-key bias that needs a gradient rides as an extra feature
        (:func:`_attention_with_key_bias`), any other bias is a float mask; otherwise the safe
        path of :meth:`_log_responsibilities`.
        """
        out_dtype = torch.result_type(heads.q, heads.v)
        dtype = torch.promote_types(out_dtype, torch.float32)
        q, k, v = (x.to(dtype) for x in (heads.q, heads.k, heads.v))
        scale, bias = self._scale_and_bias(heads, dtype)
        largest = torch.finfo(dtype).max / 16
        bound = scale * q.shape[-1] * heads.query_peak * heads.key_peak  # >= |scale * q·k|
        peak_bias = float(bias.detach().abs().amax())
        if bound < largest and peak_bias < largest:  # NaN fails too
            per_key = heads.observed is None  # else the bias depends on the query too
            fused_grad = torch.is_grad_enabled() and bias.requires_grad
            if per_key and fused_grad and peak_bias / scale < largest:
                out = _attention_with_key_bias(q, k, v, bias, scale, heads.key_mask)
            else:
                # a float mask that needs no gradient keeps the fused kernel
                bias = bias if fused_grad else bias.detach()
                bias = bias.expand(*q.shape[:-1], k.shape[-2])
                if heads.key_mask is not None:
                    bias = bias.masked_fill(~heads.key_mask, torch.finfo(dtype).min / 4)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        else:
            weights = self._log_responsibilities(heads).exp()
            out = weights @ heads.v.to(weights.dtype)
        return out.to(out_dtype)

    def _head_logits(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        log_prior: torch.Tensor | None,
        key_mask: torch.Tensor | None,
        observed: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log responsibilities in the inputs' dtype, masked keys at a large negative number
        (finite, see :func:`~pyro_attention.alignment.masked_logits`); the values; the mask."""
        heads = self._prepare(query, key, value, log_prior, key_mask, observed)
        dtype = torch.result_type(heads.q, heads.v)
        floor = torch.finfo(dtype).min / 4
        logits = self._log_responsibilities(heads).clamp(min=floor).to(dtype)
        return logits, heads.v, heads.key_mask

    def _squeeze(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-3) if self.num_heads == 1 else x

    # -- public API ---------------------------------------------------------------------------

    def logits(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor | None = None,
        *,
        log_prior: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log posterior :math:`\\log p(k \\mid q)`, normalised over the keys, in the inputs'
        dtype; masked keys (``key_mask`` False, ``log_prior`` ``-inf``) get a large negative
        number.

        :returns: ``(..., Tq, Tk)``, or ``(..., H, Tq, Tk)`` when ``num_heads > 1``.
        """
        value = key if value is None else value
        logits, _, _ = self._head_logits(query, key, value, log_prior, key_mask, observed)
        return self._squeeze(logits)

    def responsibilities(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor | None = None,
        *,
        log_prior: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Posterior responsibilities :math:`p(k \\mid q)`, the attention weights.

        :returns: probabilities summing to 1 over the last dim, ``(..., Tq, Tk)``, or
            ``(..., H, Tq, Tk)`` when ``num_heads > 1``.
        """
        logits = self.logits(
            query, key, value, log_prior=log_prior, key_mask=key_mask, observed=observed
        )
        return torch.softmax(logits, -1)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        log_prior: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mixture's read-out :math:`\\sum_k p(k \\mid q)\\, v_k` (or, if ``latent``, the
        value of a sampled key).

        :param query: ``(..., Tq, D)``; binary where observed for ``kind="bernoulli"``.
        :param key: ``(..., Tk, D)``: Gaussian means, or Bernoulli logits.
        :param value: ``(..., Tk, Dv)``.
        :param log_prior: optional ``(..., Tk)`` log prior :math:`\\log\\pi_k` (unnormalised is
            fine), shared by the queries and heads.
        :param key_mask: optional boolean ``(..., Tk)``, False for keys that are not components.
        :param observed: optional 0/1 or boolean mask broadcastable to the query, 1 where a
            feature is observed; unobserved features are marginalised out.
        :returns: ``(..., Tq, Dv)``. With ``latent=True`` the key chosen by each query is an
            alignment site ``name`` of batch shape ``(..., Tq)`` (one site ``f"{name}_head{h}"``
            per head when ``num_heads > 1``) inside the plates the caller opens, and the output
            is ``attend(value, z)``: the chosen value under sampling, with enumeration dims on
            the left under ``TraceEnum_ELBO``, the soft output under ``handlers.soft()``.
        """
        if not self.latent:
            heads = self._prepare(query, key, value, log_prior, key_mask, observed)
            return _merge_heads(self._soft_output(heads))
        logits, v, mask = self._head_logits(query, key, value, log_prior, key_mask, observed)
        mask = None if mask is None else mask[..., 0, :, :]  # (..., 1, Tk)
        outs = []
        for h in range(self.num_heads):
            site = self.name if self.num_heads == 1 else f"{self.name}_head{h}"
            z = alignment(site, logits[..., h, :, :], mask=mask)
            outs.append(attend(v[..., h, :, :].unsqueeze(-3), z))
        # heads have their own enumeration dims: broadcast before concatenating
        batch = _broadcast_shapes(*(o.shape[:-1] for o in outs))
        return torch.cat([o.expand(*batch, o.shape[-1]) for o in outs], -1)

    def self_attention(
        self,
        x: torch.Tensor,
        *,
        log_prior: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention, ``forward(x, x, x)``: each token ``(..., T, D)`` is both a query and a
        component (Gaussian only; Bernoulli keys are logits, not binary data).

        :returns: ``(..., T, D)``.
        """
        if self.kind != "gaussian":
            raise ValueError(
                "self_attention needs kind='gaussian': bernoulli keys are logits while queries "
                "are binary; call forward(query, key_logits, value) instead"
            )
        return self(x, x, x, log_prior=log_prior, key_mask=key_mask)
