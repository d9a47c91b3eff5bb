"""Sequence classification data: token sequences with a padding mask and a class label.

The common container of the GP-attention tasks (:mod:`.digits_patches`, :mod:`.valence`):
``inputs`` are either real-valued token features ``(N, T, F)`` (image patches) or integer token
ids ``(N, T)`` (words), ``mask`` marks the real tokens, and ``labels`` the classes. A task with a
known Bayes posterior also carries it (``true_probs``), so calibration can be measured against
the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class ClassificationData:
    """``N`` labelled sequences of at most ``T`` tokens.

    :ivar inputs: ``(N, T, F)`` floating token features, or ``(N, T)`` integer token ids.
    :ivar mask: ``(N, T)`` bool, ``True`` for real tokens; every row has at least one.
    :ivar labels: ``(N,)`` int64 classes in ``[0, num_classes)``.
    :ivar num_classes: number of classes ``C`` (>= 2).
    :ivar vocab_size: number of token ids (id 0 is padding) for integer inputs, else ``None``.
    :ivar true_probs: ``(N, C)`` the Bayes posterior :math:`p^*(y \\mid x)` where the task knows
        it, else ``None``.
    """

    inputs: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    vocab_size: int | None = None
    true_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        x, mask, y = self.inputs, self.mask, self.labels
        for name, value in (("inputs", x), ("mask", mask), ("labels", y)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"ClassificationData.{name} must be a tensor, got {type(value)}")
        if x.dim() not in (2, 3) or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(
                f"inputs must be (N, T) token ids or (N, T, F) features with N, T >= 1, got "
                f"shape {tuple(x.shape)}"
            )
        if x.dim() == 2 and x.is_floating_point():
            raise ValueError(
                "2-D inputs are token ids and must be integers; features are (N, T, F)"
            )
        if x.dim() == 3 and not x.is_floating_point():
            raise ValueError(f"(N, T, F) inputs are features and must be floating, got {x.dtype}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("inputs contain NaN or inf; clean or drop those sequences")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(x.shape[:2])} (True for real tokens), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if not mask.any(-1).all():
            rows = (~mask.any(-1)).nonzero().flatten()[:5].tolist()
            raise ValueError(f"sequences {rows} have no real token (all padding); drop them")
        if tuple(y.shape) != (x.shape[0],) or y.dtype != torch.int64:
            raise ValueError(
                f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
            )
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {y.min()}..{y.max()}"
            )
        if x.dim() == 2:
            if self.vocab_size is None or self.vocab_size < 2:
                raise ValueError("integer token inputs need vocab_size >= 2 (id 0 is padding)")
            if x.min() < 0 or x.max() >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        if x.dim() == 3 and self.vocab_size is not None:
            raise ValueError("vocab_size is for token ids; feature inputs (N, T, F) take none")
        probs = self.true_probs
        if probs is not None:
            if tuple(probs.shape) != (x.shape[0], self.num_classes):
                raise ValueError(
                    f"true_probs must have shape ({x.shape[0]}, {self.num_classes}), got "
                    f"{tuple(probs.shape)}"
                )
            if not torch.isfinite(probs).all() or (probs < 0).any():
                raise ValueError("true_probs must be finite and non-negative")
            if not torch.allclose(probs.sum(-1), probs.new_ones(()).expand(len(probs)), atol=1e-4):
                raise ValueError("true_probs rows must sum to 1 (probabilities, not logits)")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def seq_len(self) -> int:
        """``T``, the padded length."""
        return int(self.inputs.shape[1])

    @property
    def feature_dim(self) -> int | None:
        """``F`` for feature inputs, ``None`` for token ids."""
        return int(self.inputs.shape[2]) if self.inputs.dim() == 3 else None

    def subset(self, index: torch.Tensor | slice) -> ClassificationData:
        """The sequences at ``index`` (a slice, an index tensor or a bool mask)."""
        return replace(
            self,
            inputs=self.inputs[index],
            mask=self.mask[index],
            labels=self.labels[index],
            true_probs=None if self.true_probs is None else self.true_probs[index],
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ClassificationData:
        """On ``device``; floating inputs (and ``true_probs``) cast to ``dtype``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device) if device is not None else t
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return replace(
            self,
            inputs=move(self.inputs),
            mask=move(self.mask),
            labels=move(self.labels),
            true_probs=None if self.true_probs is None else move(self.true_probs),
        )
