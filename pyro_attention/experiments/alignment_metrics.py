"""Per-token yardsticks of latent-alignment models, as Deng et al. (2018) evaluate them.

For a model with one ``alignment`` site :math:`z_j` per target token and observations
:math:`y_j` (no global latents), every quantity is exact, by enumerating :math:`z_j`:

* log-likelihood :math:`\\log p(y_j) = \\log \\sum_i p(z_j = i)\\, p(y_j \\mid z_j = i)` under the
  **prior** (perplexity :math:`\\exp(-\\frac1N \\sum_j \\log p(y_j))`); for soft attention the
  soft model's own likelihood;
* top-K ("K-max") log-likelihood: the sum restricted to the K most probable alignments under
  the prior;
* the ELBO under the method's :math:`q(z_j)` where it has a categorical one
  (:math:`E_q[\\log p(y_j, z_j) - \\log q(z_j)]`; the prior for hard attention: the Jensen
  bound);
* prior alignment entropy :math:`H(p(z_j))`;
* alignment accuracy: the argmax of the exact posterior :math:`p(z_j \\mid y)` (of the attention
  weights for soft attention) against gold positions.

Sums are accumulated over batches, so memory stays that of one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample

from pyro_attention.alignment import is_alignment_site
from pyro_attention.alignment_chain import AlignmentChain
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.traces import observed_sites, site_dist, site_infer, site_value


@dataclass
class AlignmentPointwise:
    """Per-token and per-example results on a data set, the content of an ArviZ tree
    (:func:`~pyro_attention.experiments.alignment_trees.alignment_tree`).

    Tokens are the real (unpadded) target tokens in data order; every per-token tensor is
    ``(N,)`` (``draws`` ``(D, N)``, the probability tables ``(N, S_max)``); per-example tensors
    are ``(E,)`` (``source`` ``(E, S_max)``, padded with 0).
    """

    num_draws: int
    #: what the draws, the mode and the posterior entropy are of
    draws_of: str = "exact posterior p(z | x, y)"
    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def _put(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self.parts.setdefault(name, []).append(value.detach().cpu())

    def add(
        self,
        batch: Any,
        *,
        token_log_lik: torch.Tensor,
        prior: torch.Tensor,
        posterior: torch.Tensor,
        belief: torch.Tensor,
        draws: torch.Tensor,
        mode: torch.Tensor,
        gold: torch.Tensor | None,
    ) -> None:
        """One batch: ``token_log_lik`` (0 at padding; a sequence's sum is its log-likelihood),
        ``mode`` ``(B, T)``; ``prior``, ``posterior`` (the heat-maps' tables) and ``belief``
        (the distribution the draws come from) ``(B, T, S)``; ``draws`` ``(D, B, T)``."""
        mask = batch.target_mask.bool()
        positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
        index = batch.index[:, None].expand_as(mask)
        if gold is None:
            gold = torch.full_like(mode, -1)
        entropy = -(belief * belief.clamp_min(1e-30).log()).sum(-1)
        prior_entropy = -(prior * prior.clamp_min(1e-30).log()).sum(-1)
        self._put(
            example=index[mask],
            position=positions[mask],
            target=batch.target[mask],
            gold=gold[mask],
            mode=mode[mask],
            log_lik=token_log_lik[mask],
            posterior_entropy=entropy[mask],
            prior_entropy=prior_entropy[mask],
            draws=draws[:, mask].T,  # (N_b, D): token-major, so that batches concatenate
            posterior_probs=posterior[mask],
            prior_probs=prior[mask],
            example_index=batch.index,
            example_log_lik=token_log_lik.sum(-1),
            source=batch.source,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The batches joined: tables padded to the longest source, examples in data order."""
        width = max(part.shape[-1] for part in self.parts["source"])
        out = {}
        for name, parts in self.parts.items():
            if name in ("posterior_probs", "prior_probs", "source"):
                parts = [torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts]
            out[name] = torch.cat(parts)
        out["draws"] = out["draws"].T.contiguous()
        order = out.pop("example_index").argsort()
        for name in ("example_log_lik", "source"):
            out[name] = out[name][order]
        tokens = (out["example"] * (out["position"].max() + 1) + out["position"]).argsort()
        for name, value in out.items():
            if name not in ("example_log_lik", "source"):
                out[name] = value[:, tokens] if name == "draws" else value[tokens]
        return out


@dataclass
class AlignmentScores:
    """Token sums of the yardsticks over a data set; properties give per-token values."""

    tokens: int = 0
    log_lik: float = 0.0
    kmax_log_lik: float | None = 0.0
    elbo: float | None = 0.0
    prior_entropy: float = 0.0
    correct: int = 0
    prior_correct: int = 0
    gold_tokens: int = 0
    k: int = 5
    examples: list[dict[str, torch.Tensor]] = field(default_factory=list)
    #: per-token and per-example results (``score_alignments(..., num_draws=n)``), else None
    pointwise: AlignmentPointwise | None = None

    @property
    def log_lik_per_token(self) -> float:
        return self.log_lik / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(-self.log_lik_per_token)

    @property
    def kmax_ppl(self) -> float | None:
        return None if self.kmax_log_lik is None else math.exp(-self.kmax_log_lik / self.tokens)

    @property
    def elbo_per_token(self) -> float | None:
        return None if self.elbo is None else self.elbo / self.tokens

    @property
    def prior_entropy_per_token(self) -> float:
        return self.prior_entropy / self.tokens

    @property
    def alignment_accuracy(self) -> float | None:
        return self.correct / self.gold_tokens if self.gold_tokens else None

    @property
    def prior_alignment_accuracy(self) -> float | None:
        return self.prior_correct / self.gold_tokens if self.gold_tokens else None

    def as_row(self) -> dict[str, Any]:
        """The ``summary.json`` fields."""
        return {
            "heldout_log_lik": self.log_lik_per_token,
            "ppl": self.ppl,
            "kmax_ppl": self.kmax_ppl,
            "kmax": self.k,
            "elbo_q": self.elbo_per_token,
            "prior_entropy": self.prior_entropy_per_token,
            "alignment_accuracy": self.alignment_accuracy,
            "prior_alignment_accuracy": self.prior_alignment_accuracy,
            "test_tokens": self.tokens,
        }


def _alignment_site(trace: poutine.Trace) -> Message:
    sites = [s for _, s in trace.iter_stochastic_nodes() if is_alignment_site(s)]
    others = [
        name
        for name, s in trace.iter_stochastic_nodes()
        if not is_alignment_site(s) and not site_is_subsample(s)
    ]
    if len(sites) != 1 or others:
        raise ValueError(
            "alignment metrics need a model with exactly one alignment site and no other latent "
            f"sites; found alignment sites {[s['name'] for s in sites]} and others {others}"
        )
    return sites[0]


def _mask(site: Message, shape: torch.Size, device: torch.device) -> torch.Tensor:
    mask = site["mask"]
    if not isinstance(mask, torch.Tensor):  # None or True: every cell; False: none
        return torch.full(shape, mask is not False, dtype=torch.bool, device=device)
    return mask.expand(shape).bool()


def enumerated_alignment_terms(
    model: Callable, data: Any, max_plate_nesting: int
) -> dict[str, torch.Tensor]:
    """Prior and emission terms of every alignment value, by one enumerated trace.

    :returns: ``prior`` log p(z = i) and ``emission`` log p(y | z = i), both ``(*batch, S)``,
        and ``mask`` ``(*batch,)`` (True at scored cells).
    """
    enumerated = poutine.enum(
        enumerate_alignments(model), first_available_dim=-(max_plate_nesting + 1)
    )
    with torch.no_grad():
        trace = poutine.trace(enumerated).get_trace(data)
    site = _alignment_site(trace)
    prior = torch.log_softmax(site_dist(site).logits, -1)
    batch_shape = prior.shape[:-1]
    dim = site_infer(site)["_enumerate_dim"]
    emission = prior.new_zeros(())
    for obs in observed_sites(trace):
        with torch.no_grad():
            log_p = site_dist(obs).log_prob(site_value(obs))
        emission = emission + log_p.movedim(dim, -1).reshape(*batch_shape, -1)
    return {"prior": prior, "emission": emission, "mask": _mask(site, batch_shape, prior.device)}


def _soft_token_log_lik(model: Callable, data: Any, mask: torch.Tensor) -> torch.Tensor:
    """``log p(y_j | x, y_{<j})`` of the soft model per target position, ``(B, T)`` (0 at
    padding): one observed site ``(B, T)``, or one per position ``(B,)`` (a chain)."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(data)
        trace.compute_log_prob()
    terms = [site["log_prob"] for site in observed_sites(trace)]
    if all(term.shape == mask.shape for term in terms):
        per_token = sum(terms, torch.zeros_like(terms[0]))
    else:  # one site per position, in order
        per_token = torch.stack([term.expand(mask.shape[:1]) for term in terms], dim=-1)
    return per_token * mask


def _guide_kind(method: InferenceMethod) -> str | None:
    """What the method's guide does with the alignments (None: it has no guide)."""
    try:
        return method.guide_spec().kind
    except ValueError:
        return None


def _guide_logits(
    method: InferenceMethod, guide: Callable | None, data: Any, prior: torch.Tensor
) -> torch.Tensor | None:
    """Logits of the method's categorical q(z), or None when it has none."""
    kind = _guide_kind(method)
    if kind == "prior":
        return prior
    if guide is None or kind not in ("categorical", "enumerated", "relaxed"):
        return None
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(data)
    site = next(s for _, s in trace.iter_stochastic_nodes() if not site_is_subsample(s))
    return torch.log_softmax(site_dist(site).logits, -1)


def score_alignments(
    model_obj: Any,
    method: InferenceMethod,
    batches: Iterable[Any],
    *,
    guide: Callable | None = None,
    k: int = 5,
    gold: Callable[[Any], torch.Tensor] | None = lambda batch: batch.alignment,
    keep_examples: int = 0,
    num_draws: int = 0,
) -> AlignmentScores:
    """Score a fitted ``model_obj`` (trained with ``method``) on ``batches``.

    :param guide: the trained guide (for the ELBO under q).
    :param k: K of the top-K perplexity.
    :param gold: ``batch -> (*batch,) long`` gold positions (-1: none), or None.
    :param keep_examples: keep prior and posterior alignment matrices of this many first
        examples (for heat-maps) in :attr:`AlignmentScores.examples`.
    :param num_draws: with ``n >= 1``, keep the per-token and per-example results and ``n``
        draws of every alignment in :attr:`AlignmentScores.pointwise` (for the ArviZ tree):
        from the exact posterior ``p(z | x, y)``, or the attention weights under soft
        attention (which has no posterior).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 0:
        raise ValueError(f"num_draws must be an integer >= 0, got {num_draws!r}")
    soft = _guide_kind(method) == "deterministic"  # soft attention: its own likelihood
    pointwise = None
    if num_draws:
        draws_of = "attention weights (soft attention)" if soft else "exact posterior p(z | x, y)"
        pointwise = AlignmentPointwise(num_draws, draws_of)
    if getattr(model_obj, "chained", False):
        return score_chain_alignments(
            model_obj, method, batches, gold=gold, keep_examples=keep_examples, pointwise=pointwise
        )
    scores = AlignmentScores(k=k, pointwise=pointwise)
    nesting = model_obj.max_plate_nesting
    predictive = method.predictive(model_obj.model)
    for batch in batches:
        batch = model_obj.check_data(batch)
        terms = enumerated_alignment_terms(model_obj.model, batch, nesting)
        prior, emission, mask = terms["prior"], terms["emission"], terms["mask"]
        joint = prior + emission
        tokens = int(mask.sum())
        scores.tokens += tokens
        if soft:
            token_log_lik = _soft_token_log_lik(predictive, batch, mask)
            scores.kmax_log_lik = None
            scores.log_lik += float(token_log_lik.sum())
        else:
            marginal = joint.logsumexp(-1)
            token_log_lik = torch.where(mask, marginal, 0.0)
            scores.log_lik += float(marginal[mask].sum())  # summed as the top-K sum is
        if not soft:
            top = prior.topk(min(k, prior.shape[-1]), -1).indices
            kmax = joint.gather(-1, top).logsumexp(-1)
            if scores.kmax_log_lik is not None:
                scores.kmax_log_lik += float(kmax[mask].sum())
        q = None if soft else _guide_logits(method, guide, batch, prior)
        if q is None or scores.elbo is None:
            scores.elbo = None
        else:
            terms_q = (q.exp() * (joint - q)).nan_to_num(0.0).sum(-1)
            scores.elbo += float(terms_q[mask].sum())
        probs = prior.exp()
        scores.prior_entropy += float((-(probs * prior).nan_to_num(0.0).sum(-1))[mask].sum())
        posterior = torch.softmax(joint, -1)
        chosen = prior.argmax(-1) if soft else joint.argmax(-1)
        _count_correct(scores, batch, gold, chosen, prior, mask)
        _keep_examples(scores, keep_examples, batch, probs, posterior, gold)
        if pointwise is not None:
            belief = probs if soft else posterior
            draws = torch.distributions.Categorical(probs=belief).sample((num_draws,))
            pointwise.add(
                batch,
                token_log_lik=token_log_lik,
                prior=probs,
                posterior=posterior,
                belief=belief,
                draws=draws,
                mode=chosen,
                gold=None if gold is None else gold(batch),
            )
    if scores.tokens == 0:
        raise ValueError("no target tokens to score; pass at least one non-empty batch")
    return scores


def _count_correct(
    scores: AlignmentScores,
    batch: Any,
    gold: Callable[[Any], torch.Tensor] | None,
    chosen: torch.Tensor,
    prior: torch.Tensor,
    mask: torch.Tensor,
) -> None:
    """Add the agreement of ``chosen`` and of the prior's mode with gold to ``scores``."""
    if gold is None:
        return
    target = gold(batch)
    scored = mask & (target >= 0)
    scores.correct += int((chosen == target)[scored].sum())
    scores.prior_correct += int((prior.argmax(-1) == target)[scored].sum())
    scores.gold_tokens += int(scored.sum())


def _keep_examples(
    scores: AlignmentScores,
    keep_examples: int,
    batch: Any,
    prior: torch.Tensor,
    posterior: torch.Tensor,
    gold: Callable[[Any], torch.Tensor] | None,
) -> None:
    """Keep the prior and posterior alignment matrices ``(B, T, S)`` of the first examples."""
    for b in range(min(keep_examples - len(scores.examples), prior.shape[0])):
        example = {"prior": prior[b].cpu(), "posterior": posterior[b].cpu()}
        for name in ("source", "target", "source_mask", "target_mask"):
            if hasattr(batch, name):
                example[name] = getattr(batch, name)[b].cpu()
        if gold is not None:
            example["gold"] = gold(batch)[b].cpu()
        scores.examples.append(example)


def chain_prior_entropy(
    chain: AlignmentChain, marginals: torch.Tensor | None = None
) -> torch.Tensor:
    """The entropy of the chain's prior, ``(B,)``: :math:`H(z_{1:T}) = H(\\pi) + \\sum_{j \\ge 2}
    \\sum_i p(z_{j-1} = i)\\, H(A_j(i, \\cdot))`, with the prior marginals ``marginals``
    (default ``chain.prior_marginals()``); padded positions (held fixed) add nothing."""
    if marginals is None:
        marginals = chain.prior_marginals()
    init = -(chain.log_init.exp() * chain.log_init).nan_to_num(0.0).sum(-1)
    rows = -(chain.log_trans.exp() * chain.log_trans).nan_to_num(0.0).sum(-1)  # (B, T-1, S)
    later = (marginals[:, :-1] * rows).sum(-1) * chain.mask[:, 1:]
    return init + later.sum(-1)


def score_chain_alignments(
    model_obj: Any,
    method: InferenceMethod,
    batches: Iterable[Any],
    *,
    gold: Callable[[Any], torch.Tensor] | None = lambda batch: batch.alignment,
    keep_examples: int = 0,
    pointwise: AlignmentPointwise | None = None,
) -> AlignmentScores:
    """The yardsticks of a model whose alignments form a chain, from its exact
    :class:`~pyro_attention.alignment_chain.AlignmentChain` (``model_obj.alignment_chain``):
    the log-likelihood by the forward algorithm (soft attention: the soft model's own), prior
    entropy per token of the whole chain (:func:`chain_prior_entropy`), alignment accuracy of
    the Viterbi alignment (soft attention: of the prior marginals' argmax), heat-maps of the
    prior and posterior marginals. The top-K perplexity and the ELBO under ``q`` are not
    computed for chains (``None``). With ``pointwise``, the per-token results go there
    (``log p(y_j | x, y_{<j})`` from the forward algorithm; draws of whole chains)."""
    scores = AlignmentScores(kmax_log_lik=None, elbo=None, pointwise=pointwise)
    soft = _guide_kind(method) == "deterministic"
    predictive = method.predictive(model_obj.model)
    for batch in batches:
        batch = model_obj.check_data(batch)
        with torch.no_grad():
            chain = model_obj.alignment_chain(batch)
            mask = chain.mask
            scores.tokens += int(mask.sum())
            if soft:
                token_log_lik = _soft_token_log_lik(predictive, batch, mask)
            else:
                token_log_lik = chain.log_conditionals()
            scores.log_lik += float(token_log_lik.sum())
            prior = chain.prior_marginals()
            scores.prior_entropy += float(chain_prior_entropy(chain, prior).sum())
            posterior = chain.posterior_marginals()
            chosen = prior.argmax(-1) if soft else chain.viterbi()[0]
            _count_correct(scores, batch, gold, chosen, prior, mask)
            if pointwise is not None:
                # the prior chain (soft attention's weights) or the exact posterior, whole chains
                source = chain.silent() if soft else chain
                pointwise.add(
                    batch,
                    token_log_lik=token_log_lik,
                    prior=prior,
                    posterior=posterior,
                    belief=prior if soft else posterior,
                    draws=source.sample(pointwise.num_draws),
                    mode=chosen,
                    gold=None if gold is None else gold(batch),
                )
        _keep_examples(scores, keep_examples, batch, prior, posterior, gold)
    if scores.tokens == 0:
        raise ValueError("no target tokens to score; pass at least one non-empty batch")
    return scores
