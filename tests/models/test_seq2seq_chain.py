"""Markov and monotonic alignment priors of the seq2seq model: exact inference three ways,
chain guides, estimator gradients against exact ones, evaluation and bad input (float64)."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO

from pyro_attention import alignment, attend
from pyro_attention.alignment_chain import AlignmentChain, transition_row
from pyro_attention.cli import main
from pyro_attention.data.alignment_tasks import AlignmentBatch
from pyro_attention.experiments.alignment_metrics import chain_prior_entropy, score_alignments
from pyro_attention.guides import GuideSpec
from pyro_attention.guides.chain import AlignmentChainGuide
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer import Baseline, HardSample, Reinforce, compare, fit, get_method
from pyro_attention.infer.compare import format_table
from pyro_attention.infer.evaluate import model_log_likelihood, pointwise_log_likelihood
from pyro_attention.models import LatentAlignmentSeq2Seq
from pyro_attention.models.structure import inspect_model

VOCAB = 6


def make_batch(lengths, seed=0):
    """Random ids with the given ``(source, target)`` lengths, padded at the end."""
    gen = torch.Generator().manual_seed(seed)
    num_source = max(s for s, _ in lengths)
    num_target = max(t for _, t in lengths)
    source = torch.zeros(len(lengths), num_source, dtype=torch.long)
    target = torch.zeros(len(lengths), num_target, dtype=torch.long)
    for b, (s, t) in enumerate(lengths):
        source[b, :s] = torch.randint(1, VOCAB, (s,), generator=gen)
        target[b, :t] = torch.randint(1, VOCAB, (t,), generator=gen)
    target_in = torch.cat([torch.ones(len(lengths), 1, dtype=torch.long), target[:, :-1]], 1)
    target_in = target_in * (target != 0)
    gold = torch.where(target != 0, torch.zeros_like(target), -1)
    index = torch.arange(len(lengths))
    return AlignmentBatch(source, source != 0, target, target_in, target != 0, gold, index)


def make_model(prior, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = LatentAlignmentSeq2Seq(
        VOCAB, VOCAB, embed_dim=4, hidden_dim=5, alignment_prior=prior, max_jump=2, **kwargs
    ).double()
    with torch.no_grad():  # jumps and starts that matter
        for module in (model.net, model.encoder):
            if hasattr(module, "jump_logits"):
                module.jump_logits.copy_(torch.randn(5, dtype=torch.float64))
                module.start_logits.copy_(torch.randn(3, dtype=torch.float64))
    return model


def one_example(batch, b):
    """Example ``b`` of ``batch`` alone, its padding cut."""
    s, t = int(batch.source_mask[b].sum()), int(batch.target_mask[b].sum())
    return AlignmentBatch(
        batch.source[b : b + 1, :s],
        batch.source_mask[b : b + 1, :s],
        batch.target[b : b + 1, :t],
        batch.target_in[b : b + 1, :t],
        batch.target_mask[b : b + 1, :t],
        batch.alignment[b : b + 1, :t],
        batch.index[b : b + 1],
    )


def brute_force_log_marginal(model, example):
    """log Σ_z p(y, z | x) over every joint alignment, each scored by running the model on it
    (the sampled-alignment path of the model, not its tables)."""
    num_source, num_target = example.source.shape[1], example.target.shape[1]
    terms = []
    with torch.no_grad():
        for path in itertools.product(range(num_source), repeat=num_target):
            if model.chained:
                values = {model.site_name(j): torch.tensor([i]) for j, i in enumerate(path)}
            else:
                values = {"alignment": torch.tensor([path])}
            trace = poutine.trace(poutine.condition(model.model, values)).get_trace(example)
            terms.append(trace.log_prob_sum())
    return torch.stack(terms).logsumexp(0)


LENGTHS = [(3, 3), (2, 3), (3, 2)]


@pytest.mark.parametrize("prior", ["markov", "monotonic", "independent"])
def test_pyro_enumeration_forward_and_brute_force_agree(prior):
    """Pyro's enumeration along pyro.markov, the forward algorithm and a brute-force sum over
    every joint alignment (27 per example, each a run of the model) give one log-likelihood,
    and padding an example in a batch changes nothing."""
    model, batch = make_model(prior), make_batch(LENGTHS)
    pyro.clear_param_store()
    with torch.no_grad():
        enum = -TraceEnum_ELBO(max_plate_nesting=2).loss(
            enumerate_alignments(model.model), lambda batch: None, batch
        )
        forward = model.alignment_chain(batch).log_marginal()
    brute = torch.stack([brute_force_log_marginal(model, one_example(batch, b)) for b in range(3)])
    torch.testing.assert_close(forward, brute, rtol=0, atol=1e-9)
    assert enum == pytest.approx(float(brute.sum()), abs=1e-9)


def test_flat_jumps_are_the_independent_prior():
    independent, markov = make_model("independent"), make_model("markov")
    markov.load_state_dict(independent.state_dict(), strict=False)
    with torch.no_grad():
        for module in (markov.net, markov.encoder):
            module.jump_logits.zero_()
            module.start_logits.zero_()
    batch = make_batch(LENGTHS, seed=1)
    pyro.clear_param_store()
    with torch.no_grad():
        expected = -TraceEnum_ELBO(max_plate_nesting=2).loss(
            enumerate_alignments(independent.model), lambda batch: None, batch
        )
        chain = markov.alignment_chain(batch).log_marginal()
    assert float(chain.sum()) == pytest.approx(expected, abs=1e-9)
    torch.testing.assert_close(chain, independent.alignment_chain(batch).log_marginal())


def test_monotonic_alignments_never_go_back():
    model, batch = make_model("monotonic"), make_batch([(5, 6), (4, 6), (5, 3)], seed=2)
    with torch.no_grad():
        path, _ = model.alignment_chain(batch).viterbi()
        draws = [model.guide("prior")(batch) for _ in range(20)] + [
            model.guide("categorical")(batch) for _ in range(20)
        ]
    for b, (_, length) in enumerate([(5, 6), (4, 6), (5, 3)]):
        assert (path[b, 1:length] >= path[b, : length - 1]).all()
    for values in draws:
        z = torch.stack([values[model.site_name(j)] for j in range(6)], -1)
        assert (z[:, 1:] >= z[:, :-1]).all()  # padded positions hold the last alignment
        assert (z < batch.source_mask.sum(-1, keepdim=True)).all()  # never on padding


@pytest.mark.parametrize("kind", ["categorical", "prior", "relaxed"])
def test_padded_positions_add_nothing_to_a_sampled_objective(kind):
    """A padded target position holds the previous alignment in the model and in the guide,
    so its log p(z_j | z_{j-1}) and log q(z_j | z_{j-1}) are 0 and the chain's ELBO of a padded
    example is that of the example alone."""
    model, batch = make_model("markov"), make_batch([(3, 4), (3, 2)], seed=6)
    model_fn = get_method("gumbel").prepare(model.model) if kind == "relaxed" else model.model
    for _ in range(5):
        with torch.no_grad():
            guide_trace = poutine.trace(model.guide(kind)).get_trace(batch)
            model_trace = poutine.trace(poutine.replay(model_fn, guide_trace)).get_trace(batch)
        for trace in (guide_trace, model_trace):
            for j in (2, 3):
                site = trace.nodes[model.site_name(j)]
                log_prob = site["fn"].log_prob(site["value"])
                assert log_prob[1] == 0.0 and log_prob[0] < 0.0, (kind, j, log_prob)


def test_structure_sees_the_chain_and_methods_refuse_what_they_get_wrong():
    batch = make_batch(LENGTHS)
    assert not inspect_model(make_model("independent"), batch).chained_alignments
    structure = inspect_model(make_model("markov"), batch)
    assert structure.chained_alignments and len(structure.alignment_sites) == 3
    for name in ("vi-enum", "hard-enum", "vi-sample", "dirichlet"):
        with pytest.raises(ValueError, match="alignments independent of each other"):
            get_method(name).check(structure)
    with pytest.raises(ValueError, match="exactly one alignment site"):
        get_method("rws", local=True).check(structure)
    for name in ("enum", "exact", "soft", "hard", "hard-sample", "reinforce", "rws", "gumbel"):
        get_method(name).check(structure)
    get_method("vi-sample", estimator="tracegraph").check(structure)


def path_log_prob(log_init, log_trans, path):
    """log of a chain's probability of ``path`` from its normalised tables, (B,) for (B, T)."""
    total = log_init.gather(-1, path[:, :1]).squeeze(-1)
    for j in range(1, path.shape[1]):
        rows = log_trans[:, j - 1].gather(1, path[:, j - 1, None, None].expand(-1, 1, 3))
        total = total + rows.squeeze(1).gather(-1, path[:, j : j + 1]).squeeze(-1)
    return total


def exact_chain_objective(model, batch, *, jensen=False):
    """The ELBO Σ_z q(z) [log p(y, z) - log q(z)] (or the Jensen bound Σ_z p(z) log p(y | z))
    by a sum over all 27 joint alignments of each example (every example has S = T = 3)."""
    encoder = model.encode(batch.source, batch.source_mask)
    decoder = model.decode(batch.target_in)
    prior = AlignmentChain(
        *model.prior_tables(batch), model.emission_table(encoder, decoder, batch.target)
    )
    guide = prior if jensen else AlignmentChain(*model.guide_tables(batch), prior.emission)
    total = torch.zeros(())
    for path in itertools.product(range(3), repeat=3):
        z = torch.tensor(path).expand(batch.source.shape[0], 3)
        log_p = path_log_prob(prior.log_init, prior.log_trans, z)
        log_q = path_log_prob(guide.log_init, guide.log_trans, z)
        log_lik = prior.emission.gather(-1, z[..., None]).squeeze(-1).sum(-1)
        total = total + (log_q.exp() * (log_lik if jensen else log_lik + log_p - log_q)).sum()
    return total


def estimated_gradient(model, guide, loss, batch, params, num_draws):
    draws = []
    for _ in range(num_draws):
        for p in params:
            p.grad = None
        loss.loss_and_grads(model.model, guide, batch)
        draws.append(torch.cat([p.grad.reshape(-1) for p in params]))
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / math.sqrt(num_draws)


@pytest.mark.parametrize("method", ["reinforce", "hard-sample"])
def test_chain_score_function_gradients_are_unbiased(method):
    """Pyro's score-function ELBO through the chain guide (and the paper's Jensen-bound
    estimator with the prior as guide) match the gradient of the exact objective, a sum over
    every joint alignment, within Monte Carlo error."""
    pyro.set_rng_seed(0)
    model, batch = make_model("markov"), make_batch([(3, 3), (3, 3)], seed=3)
    method_obj = Reinforce(baseline=Baseline()) if method == "reinforce" else HardSample()
    guide = method_obj.guide(model)
    params = [model.net.jump_logits, model.net.start_logits, model.net.output.bias]
    if method == "reinforce":
        params += [model.encoder.jump_logits, model.encoder.start_logits]
    pyro.clear_param_store()
    objective = exact_chain_objective(model, batch, jensen=method == "hard-sample")
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(-objective, params)])
    loss = TraceGraph_ELBO(max_plate_nesting=2) if method == "reinforce" else method_obj.loss(2)
    mean, stderr = estimated_gradient(model, guide, loss, batch, params, 400)
    assert torch.all((mean - exact).abs() <= 4.5 * stderr + 1e-6), (mean - exact) / stderr
    assert exact.abs().max() > 0.01  # the test has something to find


def test_chain_prior_entropy_against_brute_force():
    model, batch = make_model("markov"), make_batch([(3, 3), (3, 2)], seed=4)
    with torch.no_grad():
        chain = model.alignment_chain(batch)
        entropy = chain_prior_entropy(chain)
    for b, length in enumerate((3, 2)):
        paths = torch.tensor(list(itertools.product(range(3), repeat=length)))
        log_p = path_log_prob(
            chain.log_init[b : b + 1].expand(len(paths), -1),
            chain.log_trans[b : b + 1].expand(len(paths), -1, -1, -1),
            paths,
        )
        assert log_p.exp().sum() == pytest.approx(1.0, abs=1e-9)
        assert float(entropy[b]) == pytest.approx(float(-(log_p.exp() * log_p).sum()), abs=1e-9)


def test_scores_and_evaluator_use_the_exact_chain():
    model, batch = make_model("markov"), make_batch(LENGTHS, seed=5)
    with torch.no_grad():
        chain = model.alignment_chain(batch)
        expected = chain.log_marginal()
        path, _ = chain.viterbi()
    scores = score_alignments(model, get_method("exact"), [batch])
    assert scores.log_lik == pytest.approx(float(expected.sum()), abs=1e-9)
    assert scores.tokens == int(batch.target_mask.sum())
    correct = int(((path == 0) & batch.target_mask).sum())  # gold is position 0 everywhere
    assert scores.correct == correct and scores.gold_tokens == scores.tokens
    assert scores.kmax_ppl is None and scores.elbo_per_token is None
    pointwise = model_log_likelihood(model, model.model, {}, batch)
    torch.testing.assert_close(pointwise, expected[None])


def test_generic_evaluator_refuses_a_chain_it_would_sum_wrongly():
    model, batch = make_model("markov"), make_batch(LENGTHS)
    with pytest.raises(ValueError, match="share an enumeration dim"):
        pointwise_log_likelihood(model.model, {}, batch, max_plate_nesting=2)


def test_bad_priors_and_guides_are_refused():
    with pytest.raises(ValueError, match="alignment_prior must be one of"):
        LatentAlignmentSeq2Seq(VOCAB, VOCAB, alignment_prior="hmm")
    with pytest.raises(ValueError, match="max_jump"):
        LatentAlignmentSeq2Seq(VOCAB, VOCAB, alignment_prior="markov", max_jump=0)
    model = make_model("markov")
    with pytest.raises(ValueError, match="no 'dirichlet' guide"):
        model.guide("dirichlet")
    with pytest.raises(ValueError, match="no 'enumerated' guide"):
        model.guide("enumerated")
    with pytest.raises(ValueError, match="cannot be enumerated"):
        model.guide(GuideSpec(kind="prior", enumerate=True))
    bare = make_model("markov", inference_network=False)
    with pytest.raises(ValueError, match="needs q's tables"):
        bare.guide("categorical")
    assert isinstance(model.guide("prior"), AlignmentChainGuide)


def test_cli_markov_prior(tmp_path):
    out = tmp_path / "markov"
    argv = ["compare", "alignment", "--task", "dates", "--num-train", "24", "--num-test", "8"]
    argv += ["--hidden", "6", "--embed", "4", "--steps", "2", "--no-progress"]
    assert main([*argv, "--alignment-prior", "markov", "--max-jump", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["alignment_prior"] == "markov"
    rows = {row["method"]: row for row in summary["results"]}
    assert list(rows) == ["soft", "exact", "hard-sample", "vi-sample", "rws", "gumbel"]
    for row in rows.values():
        assert row["status"] == "ok" and math.isfinite(row["ppl"]), row
    assert "estimator='tracegraph'" in rows["vi-sample"]["settings"]
    assert "local=False" in rows["rws"]["settings"]
    assert main([*argv, "--max-jump", "3", "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()
    refused = [*argv, "--alignment-prior", "monotonic", "--methods", "vi-enum"]
    assert main([*refused, "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b" / "summary.json").exists()


def sticky_copy(data):
    """A user's chain: each step copies one of three items, staying with probability ``stick``
    (a global latent) — alignment sites in pyro.markov, no alignment_chain."""
    stick = pyro.sample("stick", dist.Beta(2.0, 2.0))
    items = torch.tensor([-2.0, 0.0, 2.0])
    eye = torch.eye(3)
    rows = (stick * eye + (1 - stick) * (1 - eye) / 2).log()
    z = None
    with pyro.plate("sequences", data.shape[0], dim=-1):
        for t in pyro.markov(range(data.shape[1])):
            logits = torch.zeros(3) if z is None else transition_row(rows, z)
            z = alignment(f"z_{t}", logits)
            pyro.sample(f"x_{t}", dist.Normal(attend(items, z, event_dim=0), 0.5), obs=data[:, t])


def test_a_users_chain_is_seen_and_refused_where_it_would_be_scored_wrongly():
    data = torch.tensor([[-2.0, -2.1, 0.1, 2.0], [0.0, 0.2, 2.1, 1.9]] * 4)
    structure = inspect_model(sticky_copy, data)  # a plain function: nesting from its trace
    assert structure.chained_alignments and structure.global_sites == ("stick",)
    with pytest.raises(ValueError, match="alignments form a chain"):
        compare(sticky_copy, data, data, ["enum"], num_steps=2, progress=False)
    with pytest.raises(ValueError, match="not the prior of a chain"):
        fit(sticky_copy, data, "hard", num_steps=2, progress=False)
    assert math.isfinite(fit(sticky_copy, data, "enum", num_steps=2, progress=False).losses[-1])


def test_compare_scores_the_seq2seq_chain_exactly():
    model, train = make_model("markov"), make_batch([(3, 3), (2, 3), (3, 2), (3, 3)], seed=7)
    result = compare(
        model,
        train,
        make_batch(LENGTHS, seed=8),
        ["exact", "rws"],
        num_steps=2,
        num_samples=2,
        grad_draws=2,
        progress=False,
    )
    assert [row["status"] for row in result.rows] == ["ok", "ok"]
    assert all(math.isfinite(row["heldout_log_lik"]) for row in result.rows)


def test_runs_of_several_seeds_and_sweeps_check_the_chain_first(tmp_path, capsys):
    argv = ["compare", "alignment", "--task", "reverse", "--num-train", "8", "--num-test", "4"]
    argv += ["--steps", "1", "--no-progress", "--out", str(tmp_path / "s")]
    assert main([*argv, "--alignment-prior", "markov", "--methods", "vi-enum", "--seeds", "2"]) == 2
    assert "alignments independent of each other" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'seeds = 1\n[[run]]\ncommand = "compare alignment"\nmethods = ["exact"]\n'
        "options = { steps = 1, max_jump = 2 }\n"
        'grid = { alignment_prior = ["independent", "markov"] }\n'
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "w")]) == 2
    assert "--max-jump applies to --alignment-prior markov" in capsys.readouterr().err
    assert format_table([], ["method", "ppl"]).splitlines()[0].split() == ["method", "ppl"]
