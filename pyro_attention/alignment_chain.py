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
  marginal with respect to the emissions (the forward–backward identity), and
  :meth:`~AlignmentChain.prior_marginals`, the same without emissions;
- :meth:`~AlignmentChain.viterbi`: the most probable alignment ``argmax_z p(z | y)``;
- :meth:`~AlignmentChain.sample`: exact draws from ``p(z | y)``, forward filtering, backward
  sampling.

Building the tables: :func:`jump_transition_logits` (content logits plus a learned jump
prior), :func:`hold_at_padding` (padded target positions keep the previous alignment) and
:func:`transition_row` (the row a sampled, enumerated, one-hot or soft ``z_{j-1}`` selects, for
models and guides written position by position in ``pyro.markov``).

Shapes: ``init_logits (B, S)``, ``transition_logits (B, T - 1, S, S)`` (``[j, i, k]`` is the
logit of ``z_{j+2} = k`` after ``z_{j+1} = i``; any leading shape that broadcasts), ``emission
(B, T, S)``, ``lengths (B,)`` (the targets of sequence ``b`` are its first ``lengths[b]``
positions; the rest are padding). The tests pin all four against a brute-force sum over all
``S^T`` alignments, Pyro's enumeration along ``pyro.markov`` and funsor's sum-product.
"""

from __future__ import annotations

import torch
from pyro.ops.indexing import Vindex

from pyro_attention._validation import check_count


def _check(
    init_logits: torch.Tensor,
    transition_logits: torch.Tensor,
    emission: torch.Tensor,
    lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-normalised ``init``, ``transition`` broadcast to ``(B, T-1, S, S)``, ``emission``,
    and the ``(B, T)`` mask of real target positions."""
    for name, value in (
        ("init_logits", init_logits),
        ("transition_logits", transition_logits),
        ("emission", emission),
    ):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {kind}")
    if emission.dim() != 3:
        raise ValueError(f"emission must be (B, T, S), got shape {tuple(emission.shape)}")
    batch, steps, sources = emission.shape
    if steps < 1 or sources < 1:
        raise ValueError(f"emission {tuple(emission.shape)} has no target or no source position")
    wanted = {
        "init_logits": (init_logits, (batch, sources)),
        "transition_logits": (transition_logits, (batch, steps - 1, sources, sources)),
    }
    for name, (value, shape) in wanted.items():
        try:
            torch.broadcast_shapes(value.shape, shape)
            fits = value.dim() <= len(shape)
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}; for emission {tuple(emission.shape)} "
                f"it must broadcast to {shape} (B, T - 1 steps, S, S for the transitions)"
            )
    log_init = init_logits.log_softmax(-1).expand(batch, sources)
    log_trans = transition_logits.log_softmax(-1).expand(batch, max(steps - 1, 0), sources, sources)
    if lengths is None:
        mask = torch.ones(batch, steps, dtype=torch.bool, device=emission.device)
    else:
        if (
            not isinstance(lengths, torch.Tensor)
            or lengths.shape != (batch,)
            or lengths.dtype.is_floating_point
            or lengths.dtype == torch.bool
        ):
            got = (
                f"{lengths.dtype} {tuple(lengths.shape)}"
                if isinstance(lengths, torch.Tensor)
                else type(lengths).__name__
            )
            raise ValueError(f"lengths must be a ({batch},) integer tensor, got {got}")
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

    def log_conditionals(self) -> torch.Tensor:
        """``log p(y_j | y_{<j})`` per position, ``(B, T)`` (0 at padding): the differences of
        the forward algorithm's running ``log p(y_{1:j})``; they sum to :meth:`log_marginal`."""
        alphas, _ = _forward(self.log_init, self.log_trans, self.emission, self.mask, "sum")
        running = torch.stack([torch.logsumexp(alpha, dim=-1) for alpha in alphas], dim=-1)
        return torch.diff(running, dim=-1, prepend=torch.zeros_like(running[:, :1]))

    def posterior_marginals(self) -> torch.Tensor:
        """``p(z_j = i | y)``, ``(B, T, S)`` (zero rows at padding): ``∂ log p(y) / ∂ e_j(i)``,
        which forward–backward computes; autograd does the backward pass."""
        with torch.enable_grad():
            leaf = self.emission.detach().requires_grad_(True)
            log_init, log_trans = self.log_init.detach(), self.log_trans.detach()
            alphas, _ = _forward(log_init, log_trans, leaf, self.mask, "sum")
            (marginals,) = torch.autograd.grad(torch.logsumexp(alphas[-1], -1).sum(), leaf)
        return marginals

    def silent(self) -> AlignmentChain:
        """The same chain without emissions: its posterior is this chain's prior."""
        return AlignmentChain(
            self.log_init, self.log_trans, torch.zeros_like(self.emission), self.mask.sum(-1)
        )

    def prior_marginals(self) -> torch.Tensor:
        """``p(z_j = i)`` under the prior alone, ``(B, T, S)`` (zero rows at padding): the
        posterior marginals of :meth:`silent`."""
        return self.silent().posterior_marginals()

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
        check_count(num_samples, "num_samples")
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


def jump_transition_logits(
    content_logits: torch.Tensor,
    jump_logits: torch.Tensor,
    start_logits: torch.Tensor | None = None,
    *,
    source_mask: torch.Tensor | None = None,
    monotonic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior of an HMM alignment model: content-based logits plus a learned jump prior.

    .. math:: A_j(i, k) \\propto \\exp\\big(c_j(k) + \\delta[\\mathrm{clamp}(k - i, -K, K)]\\big),
              \\qquad \\pi(k) \\propto \\exp\\big(c_1(k) + \\sigma[\\min(k, K)]\\big)

    (Vogel, Ney & Tillmann 1996, with the attention logits ``c_j`` of the decoder state mixed
    in; jumps beyond ``±K`` share the last bucket). With ``jump_logits`` all equal the rows no
    longer depend on ``i`` and the chain is the independent prior ``softmax(c_j)``.

    :param content_logits: ``(B, T, S)`` attention logits of each target position.
    :param jump_logits: ``(2K + 1,)`` logits of the jumps ``-K .. K`` (any leading batch shape).
    :param start_logits: ``(K + 1,)`` logits of the first position ``0 .. K`` (default none).
    :param source_mask: ``(B, S)`` boolean, True at real source positions (padding gets a
        finite floor, zero probability to floating-point precision).
    :param monotonic: forbid backward jumps (``k < i``): alignments are non-decreasing.
    :returns: ``init_logits (B, S)`` and ``transition_logits (B, T - 1, S, S)`` for
        :class:`AlignmentChain`.
    """
    if content_logits.dim() != 3:
        raise ValueError(f"content_logits must be (B, T, S), got {tuple(content_logits.shape)}")
    width = jump_logits.shape[-1]
    if width % 2 != 1:
        raise ValueError(f"jump_logits must have 2K + 1 entries (jumps -K..K), got {width}")
    reach = width // 2
    sources = content_logits.shape[-1]
    positions = torch.arange(sources, device=content_logits.device)
    jumps = (positions[None, :] - positions[:, None]).clamp(-reach, reach) + reach  # [i, k]
    floor = torch.finfo(content_logits.dtype).min / 4
    jump_table = jump_logits[..., jumps]  # (..., S, S)
    if monotonic:
        jump_table = jump_table.masked_fill(positions[None, :] < positions[:, None], floor)
    transition = content_logits[:, 1:, None, :] + jump_table[..., None, :, :]
    init = content_logits[:, 0]
    if start_logits is not None:
        if start_logits.shape[-1] != reach + 1:
            raise ValueError(
                f"start_logits must have K + 1 = {reach + 1} entries, got {start_logits.shape[-1]}"
            )
        init = init + start_logits[..., positions.clamp(max=reach)]
    if source_mask is not None:
        init = init.masked_fill(~source_mask, floor)
        transition = transition.masked_fill(~source_mask[:, None, None, :], floor)
    return init, transition


def hold_at_padding(transition_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``transition_logits (B, T - 1, S, S)`` with the step into every padded target position
    (``mask (B, T)`` False) replaced by the identity: ``z_j = z_{j-1}`` surely.

    A padded position then adds nothing to any objective, whether its alignment is enumerated
    (its prior sums to one) or sampled in the model and the guide alike (``log p = log q = 0``),
    and the chain needs no mask on its choices.
    """
    sources = transition_logits.shape[-1]
    floor = torch.finfo(transition_logits.dtype).min / 4
    eye = torch.eye(sources, dtype=torch.bool, device=transition_logits.device)
    hold = torch.full(eye.shape, floor, dtype=transition_logits.dtype, device=eye.device)
    hold = hold.masked_fill(eye, 0.0)
    padded = ~mask[:, 1:, None, None]
    return torch.where(padded, hold, transition_logits)


def transition_row(transition_logits: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Logits of ``z_j`` given ``z_{j-1}``: the row of ``transition_logits (B, S, S)`` (one step)
    that ``previous`` selects.

    ``previous`` is an index (``(..., B)``, enumeration or particle dims on the left) or a
    point on the simplex ``(..., B, S)`` (one-hot, relaxed, soft); for weights ``w`` the row
    is the mixture ``log Σ_i w_i softmax(A)(i, ·)``, exact for a one-hot ``w`` and the prior
    marginal of ``z_j`` when ``w`` is the marginal of ``z_{j-1}`` (soft attention).

    :returns: ``(..., B, S)``.
    """
    if not previous.is_floating_point():
        return Vindex(transition_logits)[..., previous, :]
    probs = transition_logits.softmax(-1)
    mixed = (previous.to(probs.dtype).unsqueeze(-1) * probs).sum(-2)
    return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()
