"""Per-token alignment yardsticks against hand computations on a tiny float64 model.

Every expected value is computed here from the model's pieces (``encode``, ``decode``,
``prior_logits``, ``emission_logits``) one target token and one source position at a time,
independently of the enumeration that :func:`score_alignments` uses.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_attention.alignment import alignment, attend
from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.experiments.alignment_metrics import (
    AlignmentScores,
    enumerated_alignment_terms,
    score_alignments,
)
from pyro_attention.handlers import soft
from pyro_attention.infer import get_method
from pyro_attention.models import LatentAlignmentSeq2Seq


def tiny_data(num_train=3, seed=3):
    task = get_task("reverse", alphabet_size=5, min_length=2, max_length=4)
    return make_alignment_dataset(task, num_train=num_train, num_valid=1, num_test=1, seed=seed)


def tiny(device, *, sharpen=4.0):
    """A float64 model whose weights are scaled up, so priors and posteriors are peaked."""
    data = tiny_data()
    batch = data.tensors("train", device=device)
    assert not batch.source_mask.all()  # source padding is exercised
    assert not batch.target_mask.all()  # target padding is exercised
    model = LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab), 8, 12)
    model.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(sharpen)
    return model, batch, data


def hand_tokens(model, batch):
    """One dict per real target token: log prior, log emission (over real source positions),
    log q of the inference network, soft-attention log-likelihood and the gold position."""
    tokens = []
    with torch.no_grad():
        encoder = model.encode(batch.source)
        decoder = model.decode(batch.target_in)
        q_logits = model.encoder("alignment", None, batch)
        for b in range(batch.source.shape[0]):
            S = int(batch.source_mask[b].sum())
            T = int(batch.target_mask[b].sum())
            prior = torch.log_softmax(model.prior_logits(decoder[b], encoder[b])[:T, :S], -1)
            log_q = torch.log_softmax(q_logits[b, :T, :S], -1)
            for j in range(T):
                y = batch.target[b, j]
                emission = torch.stack(
                    [
                        torch.log_softmax(model.emission_logits(x, decoder[b, j]), -1)[y]
                        for x in encoder[b, :S]
                    ]
                )
                context = (prior[j].exp().unsqueeze(-1) * encoder[b, :S]).sum(0)
                soft_ll = torch.log_softmax(model.emission_logits(context, decoder[b, j]), -1)[y]
                tokens.append(
                    {
                        "prior": prior[j],
                        "emission": emission,
                        "log_q": log_q[j],
                        "soft": soft_ll,
                        "gold": int(batch.alignment[b, j]),
                    }
                )
    return tokens


def log_lik(tok):
    return (tok["prior"] + tok["emission"]).logsumexp(-1).item()


def kmax_log_lik(tok, k):
    top = tok["prior"].topk(min(k, tok["prior"].shape[-1])).indices
    return (tok["prior"] + tok["emission"])[top].logsumexp(-1).item()


def elbo(tok, log_q):
    return (log_q.exp() * (tok["prior"] + tok["emission"] - log_q)).sum().item()


def entropy(tok):
    return -(tok["prior"].exp() * tok["prior"]).sum().item()


def posterior_argmax(tok):
    return int((tok["prior"] + tok["emission"]).argmax())


def prior_argmax(tok):
    return int(tok["prior"].argmax())


def gold_from(batch, per_token):
    """A ``(B, T)`` gold tensor with ``per_token`` values at real target positions, -1 else."""
    gold = torch.full_like(batch.target, -1)
    positions = batch.target_mask.nonzero().tolist()
    assert len(positions) == len(per_token)
    for (b, j), value in zip(positions, per_token, strict=True):
        gold[b, j] = value
    return gold


# ------------------------------------------------------------------------------ (a) ppl


@pytest.mark.parametrize("chunk", [None, 1])
def test_exact_ppl_is_the_brute_force_marginal_per_token(device, chunk):
    model, batch, _ = tiny(device)
    model.emission_chunk_size = chunk
    tokens = hand_tokens(model, batch)
    expected = sum(log_lik(t) for t in tokens)
    scores = score_alignments(model, get_method("exact"), [batch])
    assert isinstance(scores, AlignmentScores)
    assert scores.tokens == len(tokens) == int(batch.target_mask.sum())
    assert scores.log_lik == pytest.approx(expected, rel=1e-9)
    assert scores.ppl == pytest.approx(math.exp(-expected / len(tokens)), rel=1e-9)
    assert scores.log_lik_per_token == pytest.approx(expected / len(tokens), rel=1e-9)
    assert scores.elbo is None and scores.elbo_per_token is None  # exact has no q
    # "enum" is the same method under another name
    again = score_alignments(model, get_method("enum"), [batch])
    assert again.log_lik == pytest.approx(scores.log_lik, rel=1e-12)


def test_enumerated_terms_match_the_pieces(device):
    model, batch, _ = tiny(device)
    terms = enumerated_alignment_terms(model.model, batch, model.max_plate_nesting)
    B, T = batch.target.shape
    S = batch.source.shape[1]
    assert terms["prior"].shape == terms["emission"].shape == (B, T, S)
    assert torch.equal(terms["mask"], batch.target_mask)
    tokens = iter(hand_tokens(model, batch))
    for b, j in batch.target_mask.nonzero().tolist():
        tok = next(tokens)
        S_b = tok["prior"].shape[0]
        torch.testing.assert_close(terms["prior"][b, j, :S_b], tok["prior"])
        torch.testing.assert_close(terms["emission"][b, j, :S_b], tok["emission"])
        assert torch.all(terms["prior"][b, j, S_b:].exp() == 0)  # padded source: no mass


# ------------------------------------------------------------------------------ (b) kmax


def test_kmax_with_k_at_least_source_length_is_exact(device):
    model, batch, _ = tiny(device)
    S = batch.source.shape[1]
    exact = score_alignments(model, get_method("exact"), [batch])
    for k in (S, S + 3):
        scores = score_alignments(model, get_method("exact"), [batch], k=k)
        assert scores.k == k
        assert scores.kmax_log_lik == pytest.approx(exact.log_lik, rel=1e-12)
        assert scores.kmax_ppl == pytest.approx(exact.ppl, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_kmax_is_the_top_k_prior_sum(device, k):
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    scores = score_alignments(model, get_method("exact"), [batch], k=k)
    expected = sum(kmax_log_lik(t, k) for t in tokens)
    assert scores.kmax_log_lik == pytest.approx(expected, rel=1e-9)
    assert scores.kmax_ppl >= scores.ppl
    if k == 1:  # one alignment: the joint at the prior's mode
        mode = sum((t["prior"] + t["emission"])[prior_argmax(t)].item() for t in tokens)
        assert scores.kmax_log_lik == pytest.approx(mode, rel=1e-9)
        assert scores.kmax_ppl > scores.ppl


# ------------------------------------------------------------------------------ (c) ELBO


@pytest.mark.parametrize("method", ["hard-enum", "hard-sample", "hard"])
def test_hard_attention_elbo_is_the_jensen_bound(device, method):
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    jensen = sum((t["prior"].exp() * t["emission"]).sum().item() for t in tokens)
    scores = score_alignments(model, get_method(method), [batch])
    assert scores.elbo == pytest.approx(jensen, rel=1e-9)
    assert scores.elbo_per_token == pytest.approx(jensen / scores.tokens, rel=1e-9)
    assert scores.elbo < scores.log_lik  # a strict gap: the prior is not the posterior


@pytest.mark.parametrize("method", ["vi-enum", "vi-sample", "reinforce", "rws", "gumbel"])
def test_elbo_under_the_inference_network(device, method):
    model, batch, _ = tiny(device)
    m = get_method(method)
    guide = model.guide(m)
    tokens = hand_tokens(model, batch)
    expected = sum(elbo(t, t["log_q"]) for t in tokens)
    scores = score_alignments(model, m, [batch], guide=guide)
    assert scores.elbo == pytest.approx(expected, rel=1e-9)
    assert scores.elbo <= scores.log_lik + 1e-9
    # without the trained guide there is no q to score
    assert score_alignments(model, m, [batch]).elbo is None


def test_vi_enum_elbo_stays_below_log_lik_while_training(device):
    from pyro.infer import SVI
    from pyro.optim import ClippedAdam

    model, batch, _ = tiny(device, sharpen=1.0)
    method = get_method("vi-enum")
    guide = model.guide(method)
    svi = SVI(method.prepare(model.model), guide, ClippedAdam({"lr": 0.05}), method.loss(2))
    gaps = []
    for _ in range(4):
        scores = score_alignments(model, method, [batch], guide=guide)
        assert scores.elbo <= scores.log_lik + 1e-9
        gaps.append(scores.log_lik - scores.elbo)
        svi.step(batch)
    assert all(g >= -1e-9 for g in gaps)


def test_no_elbo_for_methods_without_a_categorical_q(device):
    model, batch, _ = tiny(device)
    for name in ("exact", "soft", "dirichlet"):
        m = get_method(name)
        guide = None if name in ("exact", "soft") else model.guide(m)
        scores = score_alignments(model, m, [batch], guide=guide)
        assert scores.elbo is None and scores.elbo_per_token is None
        assert scores.as_row()["elbo_q"] is None


# ------------------------------------------------------------------------------ (d) entropy


def test_prior_entropy_equals_hand_computation(device):
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    expected = sum(entropy(t) for t in tokens)
    scores = score_alignments(model, get_method("exact"), [batch])
    assert scores.prior_entropy == pytest.approx(expected, rel=1e-9)
    assert scores.prior_entropy_per_token == pytest.approx(expected / len(tokens), rel=1e-9)
    # every method reports the prior's entropy, whatever its q
    hard = score_alignments(model, get_method("hard-enum"), [batch])
    assert hard.prior_entropy == pytest.approx(expected, rel=1e-9)


def _pad_targets(batch, extra):
    """``batch`` with ``extra`` more padded target columns holding junk token ids."""
    B = batch.target.shape[0]
    junk = torch.full((B, extra), 3, dtype=batch.target.dtype, device=batch.target.device)
    return batch._replace(
        target=torch.cat([batch.target, junk], 1),
        target_in=torch.cat([batch.target_in, junk], 1),
        target_mask=torch.cat([batch.target_mask, torch.zeros_like(junk, dtype=torch.bool)], 1),
        alignment=torch.cat([batch.alignment, torch.zeros_like(junk)], 1),  # gold 0 at padding
    )


FIELDS = ("tokens", "log_lik", "kmax_log_lik", "elbo", "prior_entropy", "correct", "gold_tokens")


def assert_same_scores(a, b, rel=1e-10):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x == pytest.approx(y, rel=rel), name


@pytest.mark.parametrize("method", ["exact", "hard-enum", "soft"])
def test_padded_target_positions_contribute_nothing(device, method):
    """Junk tokens and gold positions at padded target positions change no score (the decoder
    reads left to right, so the real positions' states are untouched)."""
    model, batch, _ = tiny(device)
    m = get_method(method)
    plain = score_alignments(model, m, [batch], k=2)
    padded = score_alignments(model, m, [_pad_targets(batch, 2)], k=2)
    assert_same_scores(plain, padded)


class LookupAligner:
    """A seq2seq-shaped model whose per-example terms cannot depend on padding: the prior
    score of source token ``x_i`` for target input ``y_{j-1}`` and the emission of source token
    ``x_i`` are table look-ups."""

    max_plate_nesting = 2

    def __init__(self, source_vocab, target_vocab, device):
        g = torch.Generator().manual_seed(7)
        kw = {"generator": g, "dtype": torch.float64}
        self.score = (3 * torch.randn(target_vocab, source_vocab, **kw)).to(device)
        self.emit = (3 * torch.randn(source_vocab, target_vocab, **kw)).to(device)

    def check_data(self, batch):
        return batch

    def model(self, batch):
        B, T = batch.target.shape
        logits = self.score[batch.target_in.unsqueeze(-1), batch.source.unsqueeze(-2)]
        mask = batch.source_mask.unsqueeze(-2).expand_as(logits)
        with (
            pyro.plate("batch", B, dim=-2),
            pyro.plate("position", T, dim=-1),
            poutine.mask(mask=batch.target_mask),
        ):
            z = alignment("alignment", logits, mask=mask)
            emission = attend(self.emit[batch.source].unsqueeze(-3), z)
            pyro.sample("target", dist.Categorical(logits=emission), obs=batch.target)


@pytest.mark.parametrize("method", ["exact", "hard-enum", "soft"])
def test_batch_of_all_equals_one_by_one_when_the_model_ignores_padding(device, method):
    data = tiny_data(num_train=8, seed=5)
    model = LookupAligner(len(data.source_vocab), len(data.target_vocab), device)
    m = get_method(method)
    together = score_alignments(model, m, data.batches("train", 8, device=device), k=2)
    apart = score_alignments(model, m, data.batches("train", 1, device=device), k=2)
    pairs = score_alignments(model, m, data.batches("train", 3, device=device), k=2)
    batch = data.tensors("train", device=device)
    assert not batch.source_mask.all()
    assert together.tokens == int(batch.target_mask.sum())
    assert_same_scores(together, apart)
    assert_same_scores(together, pairs)


def test_seq2seq_scores_do_not_depend_on_batching(device):
    model, batch, data = tiny(device, sharpen=1.0)
    together = score_alignments(model, get_method("exact"), [batch])
    apart = score_alignments(model, get_method("exact"), data.batches("train", 1, device=device))
    assert together.tokens == apart.tokens
    assert together.log_lik == pytest.approx(apart.log_lik, rel=1e-10)


# ------------------------------------------------------------------------------ (e) accuracy


def test_alignment_accuracy_against_known_gold(device):
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    post = [posterior_argmax(t) for t in tokens]
    prior = [prior_argmax(t) for t in tokens]
    assert post != prior  # the tiny case tells the two apart
    S = [t["prior"].shape[0] for t in tokens]
    exact = get_method("exact")

    right = gold_from(batch, post)
    scores = score_alignments(model, exact, [batch], gold=lambda b: right)
    assert scores.gold_tokens == len(tokens)
    assert scores.alignment_accuracy == 1.0

    wrong = gold_from(batch, [(p + 1) % s for p, s in zip(post, S, strict=True)])
    assert score_alignments(model, exact, [batch], gold=lambda b: wrong).alignment_accuracy == 0

    # half of the tokens unscored (-1): only the others count
    half = gold_from(batch, [p if n % 2 else -1 for n, p in enumerate(post)])
    scores = score_alignments(model, exact, [batch], gold=lambda b: half)
    assert scores.gold_tokens == len(tokens) // 2
    assert scores.alignment_accuracy == 1.0

    # gold = the prior's mode: the prior is always right, the posterior where it agrees
    by_prior = gold_from(batch, prior)
    scores = score_alignments(model, exact, [batch], gold=lambda b: by_prior)
    assert scores.prior_alignment_accuracy == 1.0
    agree = sum(a == b for a, b in zip(post, prior, strict=True))
    assert scores.alignment_accuracy == pytest.approx(agree / len(tokens))
    assert scores.correct == agree and scores.prior_correct == len(tokens)


def test_default_gold_is_the_batch_alignment(device):
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    scored = [t for t in tokens if t["gold"] >= 0]
    scores = score_alignments(model, get_method("exact"), [batch])
    assert scores.gold_tokens == len(scored)
    assert scores.correct == sum(posterior_argmax(t) == t["gold"] for t in scored)
    assert scores.prior_correct == sum(prior_argmax(t) == t["gold"] for t in scored)
    row = scores.as_row()
    assert row["alignment_accuracy"] == scores.correct / len(scored)
    assert row["test_tokens"] == len(tokens)
    # no gold: no accuracy
    none = score_alignments(model, get_method("exact"), [batch], gold=None)
    assert none.alignment_accuracy is None and none.prior_alignment_accuracy is None


def test_soft_attention_scores(device):
    """Soft attention: its own likelihood (the mean alignment), the prior's argmax."""
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    method = get_method("soft")
    trace = poutine.trace(soft()(model.model)).get_trace(batch)
    trace.compute_log_prob()
    traced = trace.nodes["target"]["log_prob"].sum().item()
    by_hand = sum(t["soft"].item() for t in tokens)
    assert traced == pytest.approx(by_hand, rel=1e-9)

    prior = [prior_argmax(t) for t in tokens]
    post = [posterior_argmax(t) for t in tokens]
    gold = gold_from(batch, prior)
    scores = score_alignments(model, method, [batch], gold=lambda b: gold)
    assert scores.log_lik == pytest.approx(traced, rel=1e-9)
    assert scores.ppl == pytest.approx(math.exp(-traced / len(tokens)), rel=1e-9)
    exact = score_alignments(model, get_method("exact"), [batch])
    assert scores.log_lik != pytest.approx(exact.log_lik, rel=1e-6)  # not the latent marginal
    assert scores.kmax_log_lik is None and scores.kmax_ppl is None
    assert scores.elbo is None
    assert scores.alignment_accuracy == 1.0  # the prior's argmax is what soft attention aligns
    # with the posterior's argmax as gold, soft attention is right where the prior agrees
    gold_post = gold_from(batch, post)
    by_post = score_alignments(model, method, [batch], gold=lambda b: gold_post)
    agree = sum(a == b for a, b in zip(post, prior, strict=True))
    assert by_post.correct == agree < len(tokens)


def test_kept_examples_are_the_prior_and_posterior(device):
    model, batch, _ = tiny(device)
    scores = score_alignments(model, get_method("exact"), [batch, batch], keep_examples=4)
    assert len(scores.examples) == 4  # 3 from the first batch, 1 from the second
    B, T = batch.target.shape
    S = batch.source.shape[1]
    tokens = iter(hand_tokens(model, batch))
    for b in range(B):
        ex = scores.examples[b]
        assert ex["prior"].shape == ex["posterior"].shape == (T, S)
        torch.testing.assert_close(ex["prior"].sum(-1), torch.ones(T, dtype=torch.float64))
        assert torch.equal(ex["gold"], batch.alignment[b].cpu())
        assert torch.equal(ex["source"], batch.source[b].cpu())
        for j in range(int(batch.target_mask[b].sum())):
            tok = next(tokens)
            S_b = tok["prior"].shape[0]
            post = torch.softmax(tok["prior"] + tok["emission"], -1).cpu()
            torch.testing.assert_close(ex["posterior"][j, :S_b], post)
    assert score_alignments(model, get_method("exact"), [batch]).examples == []


# ------------------------------------------------------------------------------ (f) errors


def test_no_batches_and_bad_k_refused(device):
    model, batch, _ = tiny(device)
    with pytest.raises(ValueError, match="no target tokens"):
        score_alignments(model, get_method("exact"), [])
    with pytest.raises(ValueError, match="no target tokens"):
        score_alignments(model, get_method("exact"), iter(()))
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            score_alignments(model, get_method("exact"), [batch], k=k)


def test_models_with_other_latents_refused(device):
    _, batch, _ = tiny(device)

    class TwoAlignments(LookupAligner):
        def model(self, batch):
            super().model(batch)
            pyro.sample("other", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))

    data = tiny_data()
    model = TwoAlignments(len(data.source_vocab), len(data.target_vocab), device)
    with pytest.raises(ValueError, match="exactly one alignment site"):
        score_alignments(model, get_method("exact"), [batch])


# ------------------------------------------------------------------------------ pointwise


@pytest.mark.parametrize("method", ["exact", "soft"])
def test_pointwise_results_are_the_hand_computed_ones(device, method):
    """Per token: the log-likelihood (soft: the soft model's), the entropies and the mode of
    the hand computation; per example: the sum of its tokens; the draws
    follow the exact posterior (soft: the attention weights) within Monte Carlo error."""
    model, batch, _ = tiny(device)
    tokens = hand_tokens(model, batch)
    gold = gold_from(batch, [t["gold"] for t in tokens])
    pyro.set_rng_seed(0)
    scores = score_alignments(
        model, get_method(method), [batch], gold=lambda b: gold, num_draws=4000
    )
    t = scores.pointwise.tensors()
    soft = method == "soft"
    assert t["log_lik"].tolist() == pytest.approx(
        [t_["soft"].item() if soft else log_lik(t_) for t_ in tokens], abs=1e-9
    )
    assert float(t["example_log_lik"].sum()) == pytest.approx(scores.log_lik, abs=1e-9)
    for n, tok in enumerate(tokens):
        S = tok["prior"].shape[-1]
        belief = tok["prior"] if soft else (tok["prior"] + tok["emission"]).log_softmax(-1)
        entropy_q = -(belief.exp() * belief).sum().item()
        assert t["posterior_entropy"][n].item() == pytest.approx(entropy_q, abs=1e-9)
        assert t["prior_entropy"][n].item() == pytest.approx(entropy(tok), abs=1e-9)
        assert int(t["mode"][n]) == (prior_argmax(tok) if soft else posterior_argmax(tok))
        frequencies = torch.bincount(t["draws"][:, n], minlength=S)[:S].double() / 4000
        assert (t["draws"][:, n] < S).all()  # never a padded source position
        torch.testing.assert_close(frequencies, belief.exp().cpu(), rtol=0, atol=0.035)
    assert t["example"].tolist() == batch.target_mask.nonzero()[:, 0].tolist()
    assert t["position"].tolist() == batch.target_mask.nonzero()[:, 1].tolist()
