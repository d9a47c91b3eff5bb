"""Exact inference for a chain of alignments: ``z_j`` depends on ``z_{j-1}``.

A structured alignment prior (the HMM alignment model of Vogel, Ney & Tillmann 1996) makes the
alignment of target position ``j`` depend on the previous one. With ``S`` source positions and
``T`` target positions, the joint of alignments and targets is

.. math:: p(y, z) = \\pi(z_1)\\, e_1(z_1) \\prod_{j=2}^{T} A_j(z_{j-1}, z_j)\\, e_j(z_j),

where ``π = softmax(init_logits)``, ``A_j(i, ·) = softmax(transition_logits[j - 1, i])`` and
``e_j(i) = p(y_j | z_j = i)`` is the emission likelihood (``emission`` holds its log). All of it
works in log space on a batch of sequences, ``O(T S^2)`` per sequence.

:class:`AlignmentChain` holds a batch of chains; its methods are

- :meth:`~AlignmentChain.log_marginal`: ``log p(y) = log Σ_z p(y, z)``, the forward algorithm;
- :meth:`~AlignmentChain.posterior_marginals`: ``p(z_j = i | y)``, the gradient of the log
  marginal with respect to the emissions (the forward–backward identity);
- :meth:`~AlignmentChain.viterbi`: the most probable alignment ``argmax_z p(z | y)``;
- :meth:`~AlignmentChain.sample`: exact draws from ``p(z | y)``, forward filtering, backward
  sampling.

Shapes: ``init_logits (B, S)``, ``transition_logits (B, T - 1, S, S)`` (``[j, i, k]`` is the
logit of ``z_{j+2} = k`` after ``z_{j+1} = i``; any leading shape that broadcasts), ``emission
(B, T, S)``, ``lengths (B,)`` (the targets of sequence ``b`` are its first ``lengths[b]``
positions; the rest are padding). The tests pin all four against a brute-force sum over all
``S^T`` alignments, Pyro's enumeration along ``pyro.markov`` and funsor's sum-product.
"""

from __future__ import annotations

import torch


def _check(
    init_logits: torch.Tensor,
    transition_logits: torch.Tensor,
    emission: torch.Tensor,
    lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-normalised ``init``, ``transition`` broadcast to ``(B, T-1, S, S)``, ``emission``,
    and the ``(B, T)`` mask of real target positions."""
    if emission.dim() != 3:
        raise ValueError(f"emission must be (B, T, S), got shape {tuple(emission.shape)}")
    batch, steps, sources = emission.shape
    if steps < 1 or sources < 1:
        raise ValueError(f"emission {tuple(emission.shape)} has no target or no source position")
    if init_logits.shape[-1] != sources:
        raise ValueError(
            f"init_logits has {init_logits.shape[-1]} source positions, emission has {sources}"
        )
    if transition_logits.shape[-2:] != (sources, sources):
        raise ValueError(
            f"transition_logits must end in ({sources}, {sources}), got "
            f"{tuple(transition_logits.shape)}"
        )
    log_init = init_logits.log_softmax(-1).expand(batch, sources)
    log_trans = transition_logits.log_softmax(-1).expand(batch, max(steps - 1, 0), sources, sources)
    if lengths is None:
        mask = torch.ones(batch, steps, dtype=torch.bool, device=emission.device)
    else:
        if lengths.shape != (batch,) or lengths.dtype.is_floating_point:
            raise ValueError(f"lengths must be ({batch},) integers, got {tuple(lengths.shape)}")
        if bool((lengths < 1).any()) or bool((lengths > steps).any()):
            raise ValueError(f"lengths must lie in [1, {steps}], got {lengths.tolist()}")
        mask = torch.arange(steps, device=emission.device) < lengths[:, None]
    return log_init, log_trans, emission, mask


def _forward(
    log_init: torch.Tensor,
    log_trans: torch.Tensor,
    emission: torch.Tensor,
    mask: torch.Tensor,
    reduce: str,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward messages ``alpha_j (B, S)`` (carried unchanged over padding) with ``reduce``
    ``"sum"`` (log-sum-exp) or ``"max"`` (max-product, also returning back-pointers)."""
    alphas = [log_init + emission[:, 0]]
    pointers = []
    for j in range(1, emission.shape[1]):
        scores = alphas[-1][:, :, None] + log_trans[:, j - 1]  # (B, S_prev, S)
        if reduce == "sum":
            new = torch.logsumexp(scores, dim=1)
        else:
            new, pointer = scores.max(dim=1)
            pointers.append(pointer)
        new = new + emission[:, j]
        alphas.append(torch.where(mask[:, j, None], new, alphas[-1]))
    return alphas, pointers


class AlignmentChain:
    """A batch of alignment chains: their prior and emissions, checked once.

    :param init_logits: ``(B, S)`` logits of ``z_1`` (any shape that broadcasts).
    :param transition_logits: ``(B, T - 1, S, S)``; ``[j, i, k]`` is the logit of ``z_{j+2} = k``
        after ``z_{j+1} = i``, normalised over ``k``.
    :param emission: ``(B, T, S)``, ``log p(y_j | z_j = i)``.
    :param lengths: ``(B,)`` real target positions per sequence (default all ``T``).
    """

    def __init__(
        self,
        init_logits: torch.Tensor,
        transition_logits: torch.Tensor,
        emission: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> None:
        self.log_init, self.log_trans, self.emission, self.mask = _check(
            init_logits, transition_logits, emission, lengths
        )

    def log_marginal(self) -> torch.Tensor:
        """``log p(y)`` per sequence, ``(B,)``: the forward algorithm in log space."""
        alphas, _ = _forward(self.log_init, self.log_trans, self.emission, self.mask, "sum")
        return torch.logsumexp(alphas[-1], dim=-1)

    def posterior_marginals(self) -> torch.Tensor:
        """``p(z_j = i | y)``, ``(B, T, S)`` (zero rows at padding): ``∂ log p(y) / ∂ e_j(i)``,
        which forward–backward computes; autograd does the backward pass."""
        with torch.enable_grad():
            leaf = self.emission.detach().requires_grad_(True)
            log_init, log_trans = self.log_init.detach(), self.log_trans.detach()
            alphas, _ = _forward(log_init, log_trans, leaf, self.mask, "sum")
            (marginals,) = torch.autograd.grad(torch.logsumexp(alphas[-1], -1).sum(), leaf)
        return marginals

    def viterbi(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The most probable alignment and its log joint ``log p(y, z*)``: ``((B, T) long,
        (B,))``; padding positions hold ``0``."""
        alphas, pointers = _forward(self.log_init, self.log_trans, self.emission, self.mask, "max")
        best, current = alphas[-1].max(dim=-1)
        path = torch.zeros(self.mask.shape, dtype=torch.long, device=self.emission.device)
        for j in range(self.mask.shape[1] - 1, -1, -1):
            path[:, j] = torch.where(self.mask[:, j], current, 0)
            if j > 0:  # where position j is real, step back through its pointer
                previous = pointers[j - 1].gather(1, current[:, None]).squeeze(1)
                current = torch.where(self.mask[:, j], previous, current)
        return path, best

    def sample(
        self, num_samples: int = 1, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``num_samples`` exact draws from ``p(z | y)``, ``(num_samples, B, T)`` long (``0`` at
        padding): forward filtering, then each ``z_j`` from ``α_j(i) A_{j+1}(i, z_{j+1})``."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        alphas, _ = _forward(self.log_init, self.log_trans, self.emission, self.mask, "sum")
        batch, steps, sources = self.emission.shape
        draws = torch.zeros(
            num_samples, batch, steps, dtype=torch.long, device=self.emission.device
        )
        last = (self.mask.sum(1) - 1)[None].expand(num_samples, batch)

        def draw(logits: torch.Tensor) -> torch.Tensor:  # (n, B, S) -> (n, B)
            probs = logits.softmax(-1).reshape(-1, sources)
            return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])

        current = draw(alphas[-1].expand(num_samples, batch, sources))  # z at the last real j
        for j in range(steps - 1, -1, -1):
            if j < steps - 1:  # z_j given z_{j+1}: alpha_j(i) A_{j+1}(i, z_{j+1})
                column = self.log_trans[:, j][None].expand(num_samples, batch, sources, sources)
                index = current[..., None, None].expand(num_samples, batch, sources, 1)
                stepped = draw(alphas[j][None] + column.gather(3, index).squeeze(3))
                current = torch.where(j < last, stepped, current)
            draws[:, :, j] = torch.where(self.mask[None, :, j], current, 0)
        return draws
