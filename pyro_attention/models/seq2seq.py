"""Latent alignment sequence-to-sequence model (Deng, Kim, Chiu, Guo, Rush; NeurIPS 2018).

For a source :math:`x_{1:S}` and target :math:`y_{1:T}`, with encoder states
:math:`\\tilde x_i` (bidirectional LSTM) and decoder states :math:`h_j` (LSTM over
:math:`y_{<j}`, teacher forcing, all positions at once):

.. math::

    z_j \\mid x, y_{<j} &\\sim \\mathrm{Categorical}(\\mathrm{softmax}_i\\, h_j^\\top W \\tilde x_i)
        \\qquad(\\text{an ``alignment`` site; padded } i \\text{ masked}) \\\\
    y_j \\mid z_j, x, y_{<j} &\\sim \\mathrm{Categorical}(\\mathrm{softmax}(
        W_o \\tanh(W_c [\\tilde x_{z_j}; h_j])))

There is no input feeding, so the :math:`z_j` are independent given :math:`x, y` and the exact
marginal :math:`\\log p(y \\mid x) = \\sum_j \\log \\sum_i p(z_j = i)\\, p(y_j \\mid x_i, h_j)`
costs one enumeration of ``S`` values per target token (memory ``O(S B T V)``). The emission
reads the chosen state with :func:`~pyro_attention.alignment.attend`, so the same model runs
with soft attention (``z_j`` replaced by its mean: :math:`\\tilde x` averaged before the MLP),
hard attention (sampled ``z_j``), exact enumeration and relaxations. Padded target positions
are masked out of every log-probability.

Data are :class:`~pyro_attention.data.alignment_tasks.AlignmentBatch` objects.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from pyro_attention._validation import check_positive_int
from pyro_attention.alignment import alignment, attend, masked_logits
from pyro_attention.alignment_chain import (
    AlignmentChain,
    hold_at_padding,
    jump_transition_logits,
    transition_row,
)
from pyro_attention.distributions import ObservedLogProb
from pyro_attention.guides import GuideSpec
from pyro_attention.guides.chain import AlignmentChainGuide
from pyro_attention.models.base import AlignmentModel

#: the alignment priors of :class:`LatentAlignmentSeq2Seq`
ALIGNMENT_PRIORS = ("independent", "markov", "monotonic")


def run_bidirectional(rnn: nn.LSTM, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A bidirectional LSTM over the real tokens of each row only (packed), so the states of
    a sequence do not depend on the padding of the batch it is in; zeros at padding."""
    lengths = mask.sum(-1).cpu()
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    states, _ = rnn(packed)
    states, _ = pad_packed_sequence(states, batch_first=True, total_length=inputs.shape[-2])
    return states


def _is_enumerated(z: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``z`` holds integer alignments with enumeration dims left of the batch."""
    return not z.is_floating_point() and z.dim() > target.dim()


def _out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is torch's out-of-memory error (CUDA's class, or the CPU allocator's)."""
    return isinstance(err, torch.OutOfMemoryError) or "not enough memory" in str(err)


class _Network(nn.Module):
    """Encoder, decoder, alignment scores and emission of the model."""

    def __init__(self, source_vocab: int, target_vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.source_embed = nn.Embedding(source_vocab, embed, padding_idx=0)
        self.encoder = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.encoder_out = nn.Linear(2 * hidden, hidden)
        self.target_embed = nn.Embedding(target_vocab, embed, padding_idx=0)
        self.decoder = nn.LSTM(embed, hidden, batch_first=True)
        self.score = nn.Linear(hidden, hidden, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.output = nn.Linear(hidden, target_vocab)


class InferenceNetwork(nn.Module):
    """Amortized posterior :math:`q(z_j = i \\mid x, y) \\propto \\exp(u_j^\\top V s_i)`.

    Bidirectional LSTMs over the source (:math:`s_i`) and over the *whole* target
    (:math:`u_j`, so ``q`` sees the future tokens the prior cannot), and a bilinear score
    (Deng et al. 2018, App. B). Padded source positions get no mass. Called by the autoguide as
    ``network(site_name, plates, batch) -> logits (B, T, S)``.
    """

    def __init__(self, source_vocab: int, target_vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.source_embed = nn.Embedding(source_vocab, embed, padding_idx=0)
        self.source_rnn = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.target_embed = nn.Embedding(target_vocab, embed, padding_idx=0)
        self.target_rnn = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.bilinear = nn.Linear(2 * hidden, 2 * hidden, bias=False)

    def forward(self, name: str, plates: dict, batch: Any, **kwargs: Any) -> torch.Tensor:
        source = run_bidirectional(
            self.source_rnn, self.source_embed(batch.source), batch.source_mask
        )
        target = run_bidirectional(
            self.target_rnn, self.target_embed(batch.target), batch.target_mask
        )
        logits = self.bilinear(target) @ source.transpose(-1, -2)
        return masked_logits(logits, batch.source_mask.unsqueeze(-2).expand_as(logits))


class LatentAlignmentSeq2Seq(AlignmentModel):
    """Sequence-to-sequence model whose attention is a latent alignment per target token.

    :param source_vocab_size: source vocabulary size (id 0 is padding).
    :param target_vocab_size: target vocabulary size (id 0 is padding).
    :param embed_dim: token embedding size.
    :param hidden_dim: LSTM and MLP width.
    :param inference_network: give the guides of ``reinforce``, ``vi-enum``, ``rws``, ``gumbel``
        and ``dirichlet`` the amortized :class:`InferenceNetwork` (default True: per-example
        parameters cannot follow changing mini-batches).
    :param emission_chunk_size: when the alignments are enumerated, compute the emission
        log-likelihoods of this many source positions at a time (recomputed in the backward
        pass), so memory is ``O(chunk * B * T * V)`` instead of ``O(S * B * T * V)``; ``None``
        computes all at once.
    :param alignment_prior: ``"independent"`` (the paper's: :math:`z_j` given the decoder
        state only), ``"markov"`` (the HMM alignment model of Vogel, Ney & Tillmann 1996 mixed
        with the attention logits: :math:`p(z_j = k \\mid z_{j-1} = i) \\propto
        \\exp(h_j^\\top W \\tilde x_k + \\delta[k - i])` with learned jump logits
        :math:`\\delta` and a start distribution, see
        :func:`~pyro_attention.alignment_chain.jump_transition_logits`) or ``"monotonic"`` (the
        same with backward jumps forbidden). The chain priors write one ``alignment_{j}`` site
        per target position inside ``pyro.markov``; ``enum`` sums the chain exactly in
        ``O(T S^2)``, the guides of the sampling methods are chains too
        (:class:`~pyro_attention.guides.chain.AlignmentChainGuide`).
    :param max_jump: ``K``: jumps beyond ``±K`` share the last bucket (chain priors only).
    """

    name: ClassVar[str] = "seq2seq"
    max_plate_nesting: ClassVar[int] = 2
    data_plate: ClassVar[str] = "batch"

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        embed_dim: int = 32,
        hidden_dim: int = 64,
        inference_network: bool = True,
        emission_chunk_size: int | None = None,
        alignment_prior: str = "independent",
        max_jump: int = 4,
    ) -> None:
        super().__init__()
        if alignment_prior not in ALIGNMENT_PRIORS:
            raise ValueError(
                f"alignment_prior must be one of {ALIGNMENT_PRIORS}, got {alignment_prior!r}"
            )
        self.alignment_prior = alignment_prior
        self.max_jump = check_positive_int(max_jump, "max_jump")
        if emission_chunk_size is not None:
            check_positive_int(emission_chunk_size, "emission_chunk_size")
        self.emission_chunk_size = emission_chunk_size
        self.source_vocab_size = check_positive_int(source_vocab_size, "source_vocab_size")
        self.target_vocab_size = check_positive_int(target_vocab_size, "target_vocab_size")
        sizes = (
            source_vocab_size,
            target_vocab_size,
            check_positive_int(embed_dim, "embed_dim"),
            check_positive_int(hidden_dim, "hidden_dim"),
        )
        self.net = _Network(*sizes)
        if inference_network:
            self.encoder = InferenceNetwork(*sizes)
        if self.chained:  # the jump and start logits of p and (with the network) of q
            for module in (self.net, self.encoder):
                if isinstance(module, nn.Module):
                    module.jump_logits = nn.Parameter(torch.zeros(2 * max_jump + 1))
                    module.start_logits = nn.Parameter(torch.zeros(max_jump + 1))

    @property
    def chained(self) -> bool:
        """Whether each alignment depends on the previous one (a Markov or monotonic prior)."""
        return self.alignment_prior != "independent"

    @staticmethod
    def site_name(position: int) -> str:
        """The alignment site of target ``position`` under a chain prior."""
        return f"alignment_{position}"

    def create_plates(self, batch: Any, **kwargs: Any) -> list[pyro.plate]:
        """The plates of one batch (its shape changes from batch to batch)."""
        num_batch, num_target = batch.target.shape
        if self.chained:  # the positions are a chain, not a plate
            return [pyro.plate(self.data_plate, num_batch, dim=-1)]
        return [
            pyro.plate(self.data_plate, num_batch, dim=-2),
            pyro.plate("position", num_target, dim=-1),
        ]

    # ------------------------------------------------------------------ pieces
    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder states :math:`\\tilde x`, ``(B, S, H)``, over the real tokens only
        (``source_mask``, default ``source != 0``)."""
        mask = source != 0 if source_mask is None else source_mask
        states = run_bidirectional(self.net.encoder, self.net.source_embed(source), mask)
        return self.net.encoder_out(states)

    def decode(self, target_in: torch.Tensor) -> torch.Tensor:
        """Decoder states :math:`h_j` from :math:`y_{<j}` (teacher forcing), ``(B, T, H)``."""
        states, _ = self.net.decoder(self.net.target_embed(target_in))
        return states

    def prior_logits(self, decoder: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        """Alignment scores :math:`h_j^\\top W \\tilde x_i`, ``(B, T, S)`` (unmasked)."""
        return self.net.score(decoder) @ encoder.transpose(-1, -2)

    def emission_logits(self, context: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the attended source state and the decoder state.

        Shapes broadcast: ``context (..., B, T or 1, H)`` with ``decoder (B, T, H)``.
        """
        context, decoder = torch.broadcast_tensors(context, decoder)
        hidden = torch.tanh(self.net.combine(torch.cat([context, decoder], -1)))
        return self.net.output(hidden)

    def emission_table(
        self, encoder: torch.Tensor, decoder: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """:math:`\\log p(y_j \\mid x_i, h_j)` for every source position, ``(B, T, S)``.

        Computed :attr:`emission_chunk_size` source positions at a time; with gradients each
        chunk's ``(chunk, B, T, V)`` logits are recomputed in the backward pass (activation
        checkpointing) rather than kept.
        """
        chunk = self.emission_chunk_size or encoder.shape[-2]
        index = target.unsqueeze(-1)

        def piece(states: torch.Tensor) -> torch.Tensor:  # (B, c, H) -> (c, B, T)
            logits = self.emission_logits(states.movedim(-2, 0).unsqueeze(-2), decoder)
            log_probs = torch.log_softmax(logits, -1)
            return log_probs.gather(-1, index.expand(*log_probs.shape[:-1], 1)).squeeze(-1)

        parts = []
        for start in range(0, encoder.shape[-2], chunk):
            states = encoder[..., start : start + chunk, :]
            if torch.is_grad_enabled() and self.emission_chunk_size is not None:
                parts.append(checkpoint(piece, states, use_reentrant=False))
            else:
                parts.append(piece(states))
        return torch.cat(parts, 0).movedim(0, -1)

    # ------------------------------------------------------------------ chains
    def chain_tables(
        self, content_logits: torch.Tensor, batch: Any, module: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``init (B, S)`` and ``transition (B, T - 1, S, S)`` logits of a chain whose content
        logits are ``content_logits (B, T, S)`` and whose jump and start logits are
        ``module``'s (the model's network for p, the inference network for q); padded source
        positions get no mass, padded target positions hold the previous alignment
        (:func:`~pyro_attention.alignment_chain.hold_at_padding`). For the independent prior
        every row of a step is the same, ``softmax(content_logits[:, j])``."""
        source_mask = batch.source_mask
        if not self.chained:
            masked = masked_logits(content_logits, source_mask.unsqueeze(-2))
            sources = masked.shape[-1]
            rows = masked[:, 1:, None, :].expand(-1, -1, sources, -1)
            return masked[:, 0], hold_at_padding(rows, batch.target_mask)
        init, transition = jump_transition_logits(
            content_logits,
            cast(torch.Tensor, module.jump_logits),
            cast(torch.Tensor, module.start_logits),
            source_mask=source_mask,
            monotonic=self.alignment_prior == "monotonic",
        )
        return init, hold_at_padding(transition, batch.target_mask)

    def prior_tables(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior chain of ``batch``: :meth:`chain_tables` of the attention logits."""
        encoder = self.encode(batch.source, batch.source_mask)
        logits = self.prior_logits(self.decode(batch.target_in), encoder)
        return self.chain_tables(logits, batch, self.net)

    def guide_tables(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain of ``q(z | x, y)``: :meth:`chain_tables` of the inference network's
        logits with its own jump and start logits."""
        if self.encoder is None:
            raise ValueError("the guide tables need the inference network (inference_network=True)")
        logits = self.encoder("alignment", {}, batch)
        return self.chain_tables(logits, batch, cast(nn.Module, self.encoder))

    def alignment_chain(self, batch: Any) -> AlignmentChain:
        """The exact posterior of ``batch``'s alignments as an
        :class:`~pyro_attention.alignment_chain.AlignmentChain` (prior tables and the emission
        table :math:`\\log p(y_j \\mid x_i, h_j)`), for any prior: its ``log_marginal`` is
        :math:`\\log p(y \\mid x)` per sequence, ``viterbi`` the best alignment. The batch
        is checked first (:meth:`check_data`)."""
        batch = self.check_data(batch)
        encoder = self.encode(batch.source, batch.source_mask)
        decoder = self.decode(batch.target_in)
        init, transition = self.chain_tables(self.prior_logits(decoder, encoder), batch, self.net)
        emission = self.emission_table(encoder, decoder, batch.target)
        return AlignmentChain(init, transition, emission, lengths=batch.target_mask.sum(-1))

    def guide(self, spec: GuideSpec | str) -> Any:
        """The guide for ``spec``: a chain guide under a chain prior, else the autoguide."""
        if not self.chained:
            return super().guide(spec)
        return AlignmentChainGuide(
            spec,
            prior_tables=self.prior_tables,
            guide_tables=self.guide_tables if self.encoder is not None else None,
            network=cast(nn.Module, self.encoder) if self.encoder is not None else None,
            create_plate=lambda batch: self.create_plates(batch)[0],
            num_positions=lambda batch: batch.target.shape[-1],
            site_name=self.site_name,
            local_features=lambda batch: self.decode(batch.target_in).detach(),
        )

    def _chain_model(
        self, batch: Any, encoder: torch.Tensor, decoder: torch.Tensor, logits: torch.Tensor
    ) -> None:
        """The model under a chain prior: ``alignment_{j}`` and ``target_{j}`` per position,
        in ``pyro.markov``."""
        init, transition = self.chain_tables(logits, batch, self.net)
        (batch_plate,) = self.create_plates(batch)
        table: torch.Tensor | None = None
        z: torch.Tensor | None = None
        with batch_plate:
            for j in pyro.markov(range(batch.target.shape[-1])):
                row = init if z is None else transition_row(transition[:, j - 1], z)
                z = alignment(self.site_name(j), row)
                target = batch.target[:, j]
                with poutine.mask(mask=batch.target_mask[:, j]):
                    if _is_enumerated(z, target):  # one emission table for every position
                        if table is None:
                            table = self.emission_table(encoder, decoder, batch.target)
                        log_lik = attend(table[:, j], z, event_dim=0)
                        pyro.sample(f"target_{j}", ObservedLogProb(log_lik), obs=target)
                    else:
                        emission = self.emission_logits(attend(encoder, z), decoder[:, j])
                        pyro.sample(f"target_{j}", dist.Categorical(logits=emission), obs=target)

    # ------------------------------------------------------------------ model
    def model(self, batch: Any) -> None:
        """The generative model of the target tokens of ``batch`` given its sources."""
        pyro.module("seq2seq", self.net)
        encoder = self.encode(batch.source, batch.source_mask)  # (B, S, H)
        decoder = self.decode(batch.target_in)  # (B, T, H)
        logits = self.prior_logits(decoder, encoder)  # alignment() softmaxes in >= float32
        if self.chained:
            self._chain_model(batch, encoder, decoder, logits)
            return
        mask = batch.source_mask.unsqueeze(-2).expand_as(logits)
        batch_plate, position_plate = self.create_plates(batch)
        with batch_plate, position_plate, poutine.mask(mask=batch.target_mask):
            z = alignment("alignment", logits, mask=mask)
            if self.emission_chunk_size is not None and _is_enumerated(z, batch.target):
                table = self.emission_table(encoder, decoder, batch.target)
                log_lik = attend(table, z, event_dim=0)
                pyro.sample("target", ObservedLogProb(log_lik), obs=batch.target)
            else:
                try:
                    context = attend(encoder.unsqueeze(-3), z)
                    emission = self.emission_logits(context, decoder)
                except RuntimeError as err:  # torch.OutOfMemoryError is one too
                    if not (_out_of_memory(err) and _is_enumerated(z, batch.target)):
                        raise
                    raise MemoryError(
                        f"out of memory computing the emission of all {encoder.shape[-2]} "
                        "source positions at once (the alignments are enumerated: memory S x "
                        "B x T x V); build the model with emission_chunk_size=8 (or "
                        "--emission-chunk-size 8) to compute a few positions at a time, or "
                        f"use smaller batches ({str(err).splitlines()[0]})"
                    ) from err
                pyro.sample("target", dist.Categorical(logits=emission), obs=batch.target)

    # ------------------------------------------------------------------ data
    def check_data(self, batch: Any) -> Any:
        """Refuse mismatched batch sizes, empty batches, masks that mark padding (id 0) as real
        or real tokens after padding, all-padding rows, ids out of range. Ids under a False
        mask are ignored, whatever they hold."""
        for name in ("source", "source_mask", "target", "target_in", "target_mask"):
            if not hasattr(batch, name):
                raise TypeError(f"data must be an AlignmentBatch; it has no field {name!r}")
        source, target = batch.source, batch.target
        if source.dim() != 2 or target.dim() != 2:
            raise ValueError(
                f"source and target must be (batch, length), got {tuple(source.shape)} and "
                f"{tuple(target.shape)}"
            )
        if source.shape[0] != target.shape[0]:
            raise ValueError(
                f"source has {source.shape[0]} rows but target has {target.shape[0]}; "
                "batch them together"
            )
        if source.shape[0] == 0 or source.shape[1] == 0 or target.shape[1] == 0:
            raise ValueError("the batch is empty; pass at least one example with tokens")
        for name, ids, size in (
            ("source", source, self.source_vocab_size),
            ("target", target, self.target_vocab_size),
            ("target_in", batch.target_in, self.target_vocab_size),
        ):
            if ids.min() < 0 or ids.max() >= size:
                raise ValueError(
                    f"{name} has token ids outside [0, {size}); build the model with the "
                    "dataset's vocabulary sizes"
                )
        for name, ids, mask in (
            ("source", source, batch.source_mask),
            ("target", target, batch.target_mask),
        ):
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                kind = type(mask).__name__ if not isinstance(mask, torch.Tensor) else mask.dtype
                raise ValueError(
                    f"{name}_mask must be a boolean tensor (True at real tokens), got {kind}; "
                    f"use {name}_mask.bool() or {name} != 0"
                )
            if mask.shape != ids.shape:
                raise ValueError(
                    f"{name}_mask has shape {tuple(mask.shape)} but {name} has "
                    f"{tuple(ids.shape)}; they must match"
                )
            padding = mask & (ids == 0)
            if padding.any():
                raise ValueError(
                    f"{name}_mask marks {int(padding.sum())} padding position(s) of {name} (id "
                    f"0) as real tokens; use {name}_mask = {name} != 0"
                )
            if (mask[:, 1:] & ~mask[:, :-1]).any():
                raise ValueError(
                    f"{name}_mask has a real token after padding; pad at the end of each row"
                )
        if batch.target_in.shape != target.shape:
            raise ValueError(
                f"target_in has shape {tuple(batch.target_in.shape)} but target has "
                f"{tuple(target.shape)}; target_in is <bos> followed by target[:-1]"
            )
        if not batch.source_mask.any(-1).all():
            raise ValueError("a source row is all padding; drop empty examples")
        if not batch.target_mask.any(-1).all():
            raise ValueError("a target row is all padding; drop examples with empty targets")
        return batch

    def num_points(self, batch: Any) -> int:
        """Target tokens (the unit of perplexity)."""
        return int(batch.target_mask.sum())

    def local_mask(self, name: str, batch: Any, **kwargs: Any) -> torch.Tensor:
        """The model masks padded target positions; guides mask their alignments the same way."""
        return batch.target_mask

    def local_features(self, plates: dict, batch: Any, **kwargs: Any) -> torch.Tensor:
        """Decoder states ``(B, T, H)`` (inputs of neural baselines)."""
        return self.decode(batch.target_in).detach()
