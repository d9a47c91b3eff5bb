"""The latent alignment seq2seq model: exact marginal, masks, every method's path, bad input."""

import itertools

import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import ClippedAdam

from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.guides import AutoAlignmentGuide
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer import Baseline, Reinforce, get_method
from pyro_attention.infer.evaluate import pointwise_log_likelihood
from pyro_attention.models.seq2seq import LatentAlignmentSeq2Seq


def tiny(device, dtype=torch.float64):
    task = get_task("reverse", alphabet_size=5, min_length=2, max_length=4)
    data = make_alignment_dataset(task, num_train=3, num_valid=1, num_test=1, seed=3)
    batch = data.tensors("train", device=device)
    assert batch.source.shape[0] == 3 and not batch.source_mask.all()  # padding is exercised
    model = LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab), 8, 12)
    model.to(device=device, dtype=dtype)
    return model, batch


def brute_force_log_marginal(model, batch):
    """log p(y | x) by summing over every joint alignment of each example's target tokens."""
    encoder = model.encode(batch.source)
    decoder = model.decode(batch.target_in)
    total = 0.0
    for b in range(batch.source.shape[0]):
        S = int(batch.source_mask[b].sum())
        T = int(batch.target_mask[b].sum())
        prior = torch.log_softmax(model.prior_logits(decoder[b], encoder[b])[:T, :S], -1)
        terms = []
        for z in itertools.product(range(S), repeat=T):
            log_p = 0.0
            for j, i in enumerate(z):
                emission = model.emission_logits(encoder[b, i], decoder[b, j])
                log_p = log_p + prior[j, i] + torch.log_softmax(emission, -1)[batch.target[b, j]]
            terms.append(log_p)
        total = total + torch.stack(terms).logsumexp(0)
    return total


def test_exact_marginal_equals_brute_force(device):
    model, batch = tiny(device)
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(
        enumerate_alignments(model.model), lambda batch: None, batch
    )
    expected = brute_force_log_marginal(model, batch)
    assert -loss == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)


def test_padding_gets_no_mass_and_no_likelihood(device):
    model, batch = tiny(device)
    trace = poutine.trace(model.model).get_trace(batch)
    probs = trace.nodes["alignment"]["fn"].probs
    assert torch.all(probs.masked_select(~batch.source_mask.unsqueeze(1).expand_as(probs)) == 0)
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(
        enumerate_alignments(model.model), lambda batch: None, batch
    )
    changed = batch._replace(target=torch.where(batch.target_mask, batch.target, 5))
    loss_changed = TraceEnum_ELBO(max_plate_nesting=2).loss(
        enumerate_alignments(model.model), lambda batch: None, changed
    )
    assert loss == pytest.approx(loss_changed, rel=1e-12)


@pytest.mark.parametrize("method", ["enum", "soft", "hard", "reinforce", "vi-enum", "gumbel"])
def test_every_method_takes_steps(device, method):
    model, batch = tiny(device, torch.float32)
    m = get_method(method)
    guide = AutoAlignmentGuide(model.model, m, local_features=model.local_features)
    svi = SVI(m.prepare(model.model), guide, ClippedAdam({"lr": 0.01}), m.loss(2))
    losses = [svi.step(batch) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_bad_batches_refused(device):
    model, batch = tiny(device)
    with pytest.raises(ValueError, match="rows"):
        model.check_data(batch._replace(target=batch.target[:1]))
    with pytest.raises(ValueError, match="outside"):
        model.check_data(batch._replace(target=batch.target + 1000))
    empty = batch.source.clone()
    empty[0] = 0
    with pytest.raises(ValueError, match="all padding"):
        model.check_data(batch._replace(source=empty, source_mask=empty != 0))
    # a mask may not mark padding (id 0) as real, nor a real token after padding
    real = batch.target_mask.clone()
    real[:, -1] = True
    assert not batch.target_mask[:, -1].all(), "the tiny batch needs a padded target"
    with pytest.raises(ValueError, match=r"target_mask marks .* padding position"):
        model.check_data(batch._replace(target_mask=real))
    with pytest.raises(ValueError, match="source_mask must be a boolean"):
        model.check_data(batch._replace(source_mask=batch.source_mask.long()))
    with pytest.raises(ValueError, match="source_mask has shape"):
        model.check_data(batch._replace(source_mask=batch.source_mask[:, :-1]))
    gap = batch.source.clone()
    gap[0, 0] = 0
    with pytest.raises(ValueError, match="source_mask has a real token after padding"):
        model.check_data(batch._replace(source=gap, source_mask=gap != 0))
    with pytest.raises(ValueError, match="target_in has shape"):
        model.check_data(batch._replace(target_in=batch.target_in[:, :-1]))
    with pytest.raises(ValueError, match="empty"):
        model.check_data(batch._replace(source=batch.source[:0], target=batch.target[:0]))
    with pytest.raises(TypeError, match="AlignmentBatch"):
        model.check_data(batch.source)


def test_method_independent_evaluator_on_sequences(device):
    """Per-token log-likelihoods by enumeration: padding is 0 and the sum is the exact marginal."""
    model, batch = tiny(device)
    pointwise = pointwise_log_likelihood(model.model, {}, batch, max_plate_nesting=2)
    assert pointwise.shape == (1, *batch.target.shape)
    assert torch.all(pointwise[0][~batch.target_mask] == 0)
    assert pointwise.sum().item() == pytest.approx(
        brute_force_log_marginal(model, batch).item(), rel=1e-9
    )


def test_vi_enum_elbo_never_exceeds_exact_marginal(device):
    """Before and while training (model and guide both move), ELBO <= log p(y | x)."""
    model, batch = tiny(device)
    method = get_method("vi-enum")
    guide = model.guide(method)
    svi = SVI(method.prepare(model.model), guide, ClippedAdam({"lr": 0.05}), method.loss(2))
    exact_loss = TraceEnum_ELBO(max_plate_nesting=2)
    for _ in range(5):
        exact = -exact_loss.loss(enumerate_alignments(model.model), lambda batch: None, batch)
        assert -svi.evaluate_loss(batch) <= exact + 1e-9
        svi.step(batch)


def test_inference_network_follows_changing_batches(device):
    data = make_alignment_dataset("reverse", num_train=16, num_valid=1, num_test=1, seed=1)
    model = LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab), 8, 12)
    model.to(device)
    method = Reinforce(baseline=Baseline())  # a running average cannot follow changing shapes
    guide = model.guide(method)
    svi = SVI(method.prepare(model.model), guide, ClippedAdam({"lr": 0.05}), method.loss(2))
    shapes = set()
    for batch in data.batches("train", batch_size=5, device=device):
        shapes.add(tuple(batch.target.shape))
        assert torch.isfinite(torch.tensor(svi.step(batch)))
    assert len(shapes) > 1  # the batches really differ in shape
    trained = model.encoder.bilinear.weight
    assert trained.grad is None or torch.isfinite(trained).all()
    q = poutine.trace(guide).get_trace(batch).nodes["alignment"]["fn"].probs
    source_padding = ~batch.source_mask.unsqueeze(1).expand_as(q)
    assert torch.all(q[source_padding] < 1e-30)


def test_vi_enum_elbo_equals_brute_force_over_real_tokens(device):
    """The guide masks padded targets as the model does: they add no entropy to the ELBO."""
    model, batch = tiny(device)
    guide = model.guide(get_method("vi-enum"))
    elbo = -TraceEnum_ELBO(max_plate_nesting=2).loss(model.model, guide, batch)
    encoder, decoder = model.encode(batch.source), model.decode(batch.target_in)
    log_q = torch.log_softmax(model.encoder("alignment", None, batch), -1)
    source_mask = batch.source_mask.unsqueeze(1)
    log_prior = torch.log_softmax(
        model.prior_logits(decoder, encoder).masked_fill(~source_mask, -1e30), -1
    )
    expected = 0.0
    for b, j in batch.target_mask.nonzero().tolist():
        for i in batch.source_mask[b].nonzero().flatten().tolist():
            emission = torch.log_softmax(model.emission_logits(encoder[b, i], decoder[b, j]), -1)
            log_joint = log_prior[b, j, i] + emission[batch.target[b, j]]
            expected = expected + log_q[b, j, i].exp() * (log_joint - log_q[b, j, i])
    assert elbo == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_emission_equals_unchunked_loss_and_gradient(device, chunk):
    model, batch = tiny(device)

    def loss_and_grad(chunk_size):
        model.emission_chunk_size = chunk_size
        loss = TraceEnum_ELBO(max_plate_nesting=2).differentiable_loss(
            enumerate_alignments(model.model), lambda batch: None, batch
        )
        return loss, torch.autograd.grad(loss, list(model.net.parameters()))

    loss, grads = loss_and_grad(None)
    chunked_loss, chunked_grads = loss_and_grad(chunk)
    assert chunked_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    for a, b in zip(grads, chunked_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    # sampled (not enumerated) alignments take the ordinary path
    trace = poutine.trace(model.model).get_trace(batch)
    assert isinstance(trace.nodes["target"]["fn"], torch.distributions.Categorical)


def test_emission_chunk_size_is_checked():
    with pytest.raises(ValueError, match="emission_chunk_size"):
        LatentAlignmentSeq2Seq(5, 5, emission_chunk_size=0)


@pytest.mark.parametrize("method", ["vi-enum", "vi-sample"])
def test_every_parameter_is_stored_once(device, method):
    """The inference network is one set of tensors under one name in the param store (a
    checkpoint holds it once) and every stored tensor is trained."""
    import pyro

    model, batch = tiny(device, torch.float32)
    m = get_method(method)
    guide = model.guide(m)
    svi = SVI(m.prepare(model.model), guide, ClippedAdam({"lr": 0.01}), m.loss(2))
    svi.step(batch)
    store = pyro.get_param_store()
    tensors = [store.get_param(name).unconstrained() for name in store.keys()]
    assert len({id(t) for t in tensors}) == len(tensors)
    encoder_names = [n for n in store.keys() if n.startswith("AutoAlignmentGuide.encoder$$$")]
    assert len(encoder_names) == len(list(model.encoder.parameters()))
    before = [t.detach().clone() for t in tensors]
    svi.step(batch)
    unchanged = [n for n, t, b in zip(store.keys(), tensors, before, strict=True) if t.equal(b)]
    assert not unchanged


def test_out_of_memory_of_the_enumerated_emission_names_the_chunk_option(device, monkeypatch):
    """The exact model holds S x B x T x V emission logits; when they do not fit, the error says
    that ``emission_chunk_size`` avoids it (the allocator's failure is simulated)."""
    model, batch = tiny(device)
    elbo = TraceEnum_ELBO(max_plate_nesting=2)

    def exhausted(context, decoder):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB")

    monkeypatch.setattr(model, "emission_logits", exhausted)
    with pytest.raises(MemoryError, match="emission_chunk_size=8"):
        elbo.loss(enumerate_alignments(model.model), lambda batch: None, batch)

    def broken(context, decoder):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(model, "emission_logits", broken)  # other errors pass through
    with pytest.raises(RuntimeError, match=r"^shape mismatch"):
        elbo.loss(enumerate_alignments(model.model), lambda batch: None, batch)
