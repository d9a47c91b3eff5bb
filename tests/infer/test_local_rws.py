"""Per-alignment reweighted wake-sleep, and the straight-through Gumbel ELBO with exact KL."""

import math

import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.distributions import StraightThroughCategorical
from pyro_attention.experiments.alignment_metrics import enumerated_alignment_terms
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer import get_method
from pyro_attention.infer.local_rws import LocalReweightedWakeSleep
from pyro_attention.models import BayesianGMM, LatentAlignmentSeq2Seq


def tiny(device):
    task = get_task("reverse", alphabet_size=5, min_length=2, max_length=4)
    data = make_alignment_dataset(task, num_train=3, num_valid=1, num_test=1, seed=3)
    batch = data.tensors("train", device=device)
    model = LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab), 8, 12)
    model.to(device=device, dtype=torch.float64)
    with torch.no_grad():  # informative weights: the posterior differs from q
        for param in model.parameters():
            param.normal_(0.0, 0.8)
    return model, batch


def exact_log_marginal(model, batch):
    return -TraceEnum_ELBO(max_plate_nesting=2).loss(
        enumerate_alignments(model.model), lambda batch: None, batch
    )


def test_bound_is_below_the_marginal_and_tightens_with_particles(device):
    model, batch = tiny(device)
    method = get_method("rws", num_particles=1, local=True)
    guide = method.guide(model)
    exact = exact_log_marginal(model, batch)
    bounds = {}
    for k in (1, 10, 2000):
        loss = LocalReweightedWakeSleep(k, max_plate_nesting=2)
        bounds[k] = sum(-loss.loss(model.model, guide, batch) for _ in range(20)) / 20
    assert bounds[1] < bounds[10] < bounds[2000]
    assert bounds[1] < exact and bounds[10] < exact
    assert bounds[2000] == pytest.approx(exact, abs=0.05)  # within Monte Carlo error


def test_wake_phi_gradient_is_that_of_kl_posterior_to_q(device):
    """With many particles, wake-phi's gradient is -grad KL(p(z|x,y) || q) over the guide."""
    model, batch = tiny(device)
    method = get_method("rws", num_particles=4000, local=True)
    guide = method.guide(model)
    loss = method.loss(2)
    loss.loss_and_grads(model.model, guide, batch)  # creates the parameters
    params = dict(model.encoder.named_parameters())
    for p in params.values():
        p.grad = None
    loss.loss_and_grads(model.model, guide, batch)
    sampled = torch.cat([p.grad.reshape(-1) for p in params.values()])
    # the exact gradient: KL(posterior || q) summed over real tokens
    terms = enumerated_alignment_terms(model.model, batch, 2)
    posterior = torch.softmax(terms["prior"] + terms["emission"], -1).detach()
    for p in params.values():
        p.grad = None
    logits = model.encoder("alignment", {}, batch)
    log_q = torch.log_softmax(logits, -1)
    cross = -(posterior * log_q).nan_to_num(0.0).sum(-1)[terms["mask"]].sum()
    cross.backward()
    exact = torch.cat([p.grad.reshape(-1) for p in params.values()])
    cosine = torch.nn.functional.cosine_similarity(sampled, exact, dim=0)
    assert cosine > 0.98
    assert sampled.norm() == pytest.approx(exact.norm().item(), rel=0.1)


def test_models_with_global_latents_are_refused():
    x = torch.randn(20, 2)
    gmm = BayesianGMM(2, 2, "diag")
    method = get_method("rws", num_particles=2, local=True)
    with pytest.raises(ValueError, match="local=False"):
        method.loss(1).loss(gmm.model, method.guide(gmm), x)


def test_local_rws_refuses_a_sleep_phase():
    with pytest.raises(ValueError, match="insomnia"):
        get_method("rws", local=True, insomnia=0.5)
    assert get_method("rws", local=False, insomnia=0.5).insomnia == 0.5


def test_straight_through_gumbel_uses_the_exact_kl_of_the_choices():
    assert isinstance(get_method("gumbel").loss(2), TraceMeanField_ELBO)
    logits_q, logits_p = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6).double()
    q = StraightThroughCategorical(torch.tensor(0.5, dtype=torch.float64), logits=logits_q)
    p = dist.OneHotCategorical(logits=logits_p)
    expected = torch.distributions.kl_divergence(
        dist.Categorical(logits=logits_q), dist.Categorical(logits=logits_p)
    )
    torch.testing.assert_close(torch.distributions.kl_divergence(q, p), expected)
    # finite where the prior's probability underflows (torch's categorical KL gives inf)
    p = dist.OneHotCategorical(logits=torch.tensor([0.0, -200.0, -3e37]))
    q = StraightThroughCategorical(torch.tensor(0.5), logits=torch.tensor([0.0, 0.0, -3e37]))
    assert torch.distributions.kl_divergence(q, p).item() == pytest.approx(
        100 + math.log(0.5), rel=1e-5
    )
