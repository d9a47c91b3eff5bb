"""A transformer classifier whose attention is a sparse Gaussian process (SGPA; Chen & Li,
ICLR 2023), written as a Pyro generative model — and the same classifier with softmax
attention, its baseline.

For a sequence :math:`x_{1:T}` (token ids or patch features; padding masked) and its class
:math:`y`, with pre-norm blocks :math:`h \\leftarrow h + \\mathrm{Attn}_\\ell(\\mathrm{LN}(h))`,
:math:`h \\leftarrow h + \\mathrm{MLP}_\\ell(\\mathrm{LN}(h))`:

.. math::

    \\tilde u_\\ell &\\sim \\mathcal N(0, I_M) \\ \\text{per head and output dim}
        &&\\text{(site ``layer{l}.u``: whitened global inducing outputs, decoupled SGPA)}\\\\
    \\varepsilon_\\ell &\\sim \\mathcal N(0, I) \\ \\text{per sequence}
        &&\\text{(site ``layer{l}.eps``: the GP output noise, } F_\\ell = m(\\tilde u_\\ell) +
        A\\varepsilon_\\ell)\\\\
    y \\mid x, \\tilde u, \\varepsilon &\\sim \\mathrm{Categorical}(\\mathrm{softmax}(W\\,
        \\mathrm{pool}(h_L)))
        &&\\text{(site ``y``; mean over real tokens)}

plus, per sequence and layer, the KL of the amortised inducing outputs (the values) as a
variational term ``layer{l}.kl`` (:func:`~pyro_attention.gp.variational_term`): in every ELBO,
never in the held-out likelihood. :class:`~pyro_attention.nn.sgpa.SGPAttention` has the
layer's math.

Inference, by method name (:mod:`pyro_attention.infer.methods`): ``svi`` (``Trace_ELBO``,
reparameterised), ``svi-kl`` (``TraceMeanField_ELBO``: the global KL in closed form), ``map``
(the globals as points and the noise at zero: maximum-likelihood kernel attention). The guide
comes with the model: a full-covariance Gaussian per head and output dimension for
:math:`\\tilde u` (:class:`~pyro_attention.guides.AutoBlockMultivariateNormal`, the official
:math:`\\mathcal N(\\tilde m, \\tilde S\\tilde S^\\top)`), and the noise drawn from its prior.

``kl_scale`` weights the global KL against the summed log-likelihood: 1 (default) is the ELBO of
the data set; the authors' code adds the KL to the *mean* cross-entropy, i.e. ``kl_scale =``
number of training sequences.

Data are :class:`~pyro_attention.data.classification.ClassificationData`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, cast

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_attention.data.classification import ClassificationData
from pyro_attention.gp import gp_noise, variational_term
from pyro_attention.guides import AutoBlockMultivariateNormal
from pyro_attention.models.base import AlignmentModel
from pyro_attention.nn.sgpa import COVARIANCES, KERNELS, VARIANTS, SGPAttention

ATTENTIONS = ("sgpa", "softmax")


class SoftmaxSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with a padding mask (the baseline)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            part.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)
            for part in self.qkv(tokens).chunk(3, dim=-1)
        )
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, T): attend to real keys only
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(-3, -2).flatten(-2))
        return out * mask.unsqueeze(-1).to(out.dtype)


class _Block(nn.Module):
    def __init__(self, d_model: int, mlp_dim: int, attention: nn.Module, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = attention
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)


class _Network(nn.Module):
    def __init__(self, model: GPAttentionClassifier, dropout: float, options: dict) -> None:
        super().__init__()
        d = model.d_model
        if model.feature_dim is not None:
            self.embed: nn.Module = nn.Linear(model.feature_dim, d)
        else:
            self.embed = nn.Embedding(int(model.vocab_size or 0), d, padding_idx=0)
        self.position = nn.Parameter(0.02 * torch.randn(model.max_len, d))
        blocks = []
        for _ in range(model.num_layers):
            attention: nn.Module = (
                SGPAttention(d, model.num_heads, **options)
                if model.attention == "sgpa"
                else SoftmaxSelfAttention(d, model.num_heads)
            )
            blocks.append(_Block(d, model.mlp_dim, attention, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, model.num_classes)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class GPAttentionClassifier(AlignmentModel):
    """Sequence classifier with SGPA (or softmax) self-attention, as a Pyro model.

    :param num_classes: ``C``; :param max_len: the longest sequence ``T``.
    :param feature_dim: ``F`` of real-valued token features (image patches), or
    :param vocab_size: the number of token ids (id 0 is padding) — exactly one of the two.
    :param d_model: token width; :param num_heads: heads; :param num_layers: blocks.
    :param attention: ``"sgpa"`` or ``"softmax"``.
    :param variant: ``"decoupled"`` or ``"standard"`` SGPA; :param kernel: ``"exponential"``
        or ``"rbf"``; :param num_inducing: ``M`` (decoupled); :param covariance: ``"diag"`` or
        ``"full"`` output noise (see :class:`~pyro_attention.nn.sgpa.SGPAttention`).
    :param mlp_dim: hidden width of the blocks' MLP (default ``2 · d_model``).
    :param dropout: dropout after attention and MLP (MC dropout keeps it on to predict).
    :param kl_scale: weight of the global KL (1: the ELBO; the authors' code: the number of
        training sequences).
    :param jitter: relative Cholesky jitter (default by dtype).
    :param init_scale: initial :math:`\\tilde S = ` ``init_scale`` :math:`\\cdot I` of the guide
        (0.1: close to deterministic at the start, as Salimbeni & Deisenroth (2017) start the
        inner layers of deep GPs; at 1, the prior, the global part adds the prior's variance to
        every output and decoupled SGPA on the digits reached accuracy 0.80 instead of 0.93).

    Example::

        model = GPAttentionClassifier(num_classes=10, feature_dim=4, max_len=16)
        result = fit(model, task.train, "svi-kl", num_steps=500, lr=3e-3)
    """

    name: ClassVar[str] = "gp-attention"
    max_plate_nesting: ClassVar[int] = 1
    data_plate: ClassVar[str] = "data"

    def __init__(
        self,
        *,
        num_classes: int,
        max_len: int,
        feature_dim: int | None = None,
        vocab_size: int | None = None,
        d_model: int = 32,
        num_heads: int = 2,
        num_layers: int = 1,
        attention: str = "sgpa",
        variant: str = "decoupled",
        kernel: str = "exponential",
        num_inducing: int = 16,
        covariance: str = "diag",
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        kl_scale: float = 1.0,
        jitter: float | None = None,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if (feature_dim is None) == (vocab_size is None):
            raise ValueError(
                "pass exactly one of feature_dim (real-valued tokens) and vocab_size (token ids)"
            )
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if variant not in VARIANTS or kernel not in KERNELS or covariance not in COVARIANCES:
            raise ValueError(
                f"variant must be one of {VARIANTS}, kernel one of {KERNELS}, covariance one of "
                f"{COVARIANCES}; got {variant!r}, {kernel!r}, {covariance!r}"
            )
        if num_classes is None or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.max_len = _positive_int(max_len, "max_len")
        self.feature_dim = (
            None if feature_dim is None else _positive_int(feature_dim, "feature_dim")
        )
        if vocab_size is not None and (isinstance(vocab_size, bool) or vocab_size < 2):
            raise ValueError(f"vocab_size must be an integer >= 2 (0 is padding), got {vocab_size}")
        self.vocab_size = vocab_size
        self.d_model = _positive_int(d_model, "d_model")
        self.num_heads = _positive_int(num_heads, "num_heads")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of num_heads={num_heads}")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.mlp_dim = _positive_int(mlp_dim if mlp_dim is not None else 2 * d_model, "mlp_dim")
        if not (0 <= dropout < 1):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if not (kl_scale > 0 and math.isfinite(kl_scale)):
            raise ValueError(f"kl_scale must be a finite positive number, got {kl_scale!r}")
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"init_scale must be a finite positive number, got {init_scale!r}")
        self.attention, self.variant = attention, variant
        self.kernel, self.covariance = kernel, covariance
        self.kl_scale = float(kl_scale)
        options = {
            "kernel": kernel,
            "variant": variant,
            "num_inducing": _positive_int(num_inducing, "num_inducing"),
            "covariance": covariance,
            "jitter": jitter,
        }
        self.net = _Network(self, dropout, options)
        self.global_guide = functools.partial(AutoBlockMultivariateNormal, init_scale=init_scale)

    # ------------------------------------------------------------------ structure
    def sgpa_layers(self) -> list[SGPAttention]:
        """The SGPA layers, first to last (none with softmax attention)."""
        blocks: Any = self.net.blocks
        return [b.attention for b in blocks if isinstance(b.attention, SGPAttention)]

    def jitter_escalations(self) -> int:
        """How often a Cholesky factor needed more than the base jitter, over all layers."""
        return sum(layer.jitter_escalations for layer in self.sgpa_layers())

    def create_plates(
        self, data: ClassificationData, *, subsample_size: int | None = None, **kwargs: Any
    ) -> pyro.plate:
        """The plate over this call's sequences (subsampled if ``subsample_size``)."""
        return pyro.plate(self.data_plate, len(data), subsample_size=subsample_size, dim=-1)

    def noise_event_shape(self, name: str, data: ClassificationData, **kwargs: Any) -> tuple:
        """``(H, T, d_v)`` of the noise site ``layer{l}.eps`` for ``data``."""
        index = int(name.split(".")[0].removeprefix("layer"))
        layer = self.sgpa_layers()[index]
        return (layer.num_heads, data.seq_len, layer.value_dim)

    # ------------------------------------------------------------------ model
    def model(self, data: ClassificationData, *, subsample_size: int | None = None) -> None:
        """The generative model of the labels of ``data`` given its sequences."""
        pyro.module("gp_attention", self.net)
        layers = self.sgpa_layers()
        like = self.net.head.weight
        globals_: list[torch.Tensor | None] = []
        with poutine.scale(scale=self.kl_scale):
            for index, layer in enumerate(layers):
                if layer.variant != "decoupled":
                    globals_.append(None)
                    continue
                prior = dist.MultivariateNormal(
                    like.new_zeros(layer.num_inducing),
                    scale_tril=torch.eye(layer.num_inducing, dtype=like.dtype, device=like.device),
                )
                shape = layer.global_shape[:2]
                globals_.append(pyro.sample(f"layer{index}.u", prior.expand(shape).to_event(2)))
        with self.create_plates(data, subsample_size=subsample_size) as indices:
            subsampled = subsample_size is not None
            batch = data.subset(cast(torch.Tensor, indices)) if subsampled else data
            logits = self.logits(batch, globals_)
            pyro.sample("y", dist.Categorical(logits=logits), obs=batch.labels)

    def logits(
        self,
        batch: ClassificationData,
        globals_: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """Class logits ``(..., B, C)``, drawing each SGPA layer's noise site (inside the data
        plate) and adding its amortised KL as a variational term."""
        net: Any = self.net
        x = batch.inputs
        h = net.embed(x) + net.position[: batch.seq_len]
        mask = batch.mask
        layer_index = 0
        for block in net.blocks:
            normed = block.norm1(h)
            if isinstance(block.attention, SGPAttention):
                layer = block.attention
                shape = layer.noise_shape(len(batch), batch.seq_len)
                eps = gp_noise(f"layer{layer_index}.eps", shape, like=h, event_dim=3)
                attended, kl = layer(normed, mask, globals_[layer_index], eps)
                variational_term(f"layer{layer_index}.kl", -kl)
                layer_index += 1
            else:
                attended = block.attention(normed, mask)
            h = h + block.dropout(attended)
            h = h + block.dropout(block.mlp(block.norm2(h)))
        keep = mask.unsqueeze(-1).to(h.dtype)
        pooled = (net.norm(h) * keep).sum(-2) / keep.sum(-2)
        return net.head(pooled)

    # ------------------------------------------------------------------ data
    def check_data(self, data: Any) -> ClassificationData:
        """Refuse data of another task shape: wrong container, feature width or vocabulary,
        too many classes, sequences longer than ``max_len``, another device."""
        if not isinstance(data, ClassificationData):
            raise TypeError(
                f"data must be a pyro_attention.data.ClassificationData, got {type(data).__name__}"
            )
        if self.feature_dim is not None and data.feature_dim != self.feature_dim:
            raise ValueError(
                f"the model reads {self.feature_dim} features per token; the data has "
                f"{data.feature_dim if data.feature_dim is not None else 'token ids'}"
            )
        if self.vocab_size is not None:
            if data.feature_dim is not None:
                raise ValueError("the model reads token ids; the data has real-valued features")
            if int(data.inputs.max()) >= self.vocab_size:
                raise ValueError(
                    f"token id {int(data.inputs.max())} is outside the model's vocabulary "
                    f"(vocab_size={self.vocab_size})"
                )
        if data.num_classes > self.num_classes:
            raise ValueError(
                f"the data has {data.num_classes} classes; the model {self.num_classes}"
            )
        if data.seq_len > self.max_len:
            longest = int(data.mask.sum(-1).max())
            raise ValueError(
                f"the data is padded to length {data.seq_len} > max_len={self.max_len} (its "
                f"longest sequence has {longest} real tokens); build the model with a larger "
                "max_len, or trim the padding"
            )
        device = self.net.head.weight.device
        if data.labels.device != device:
            raise ValueError(
                f"data is on {data.labels.device} but the model on {device}; move one with .to()"
            )
        if data.inputs.is_floating_point() and data.inputs.dtype != self.net.head.weight.dtype:
            raise ValueError(
                f"inputs are {data.inputs.dtype} but the model is "
                f"{self.net.head.weight.dtype}; use data.to(dtype=...) or model.to(...)"
            )
        return data

    def num_points(self, data: ClassificationData) -> int:
        return len(data)

    def arviz_dims(self) -> dict[str, list[str]]:
        """Named dims of the inducing outputs and the labels, for the ArviZ trees."""
        dims: dict[str, list[str]] = {"y": ["sequence"]}
        for index, layer in enumerate(self.sgpa_layers()):
            if layer.variant == "decoupled":
                dims[f"layer{index}.u"] = ["head", "value_dim", "inducing"]
        return dims
