"""Exact inference on a chain of alignments, three ways that must agree: the forward algorithm
of :mod:`pyro_attention.alignment_chain`, a brute-force sum over every joint alignment, Pyro's
enumeration along ``pyro.markov`` (and ``infer_discrete`` at temperature 0 for the MAP) and
funsor's sequential sum-product; forward filtering, backward sampling against the exact
posterior marginals within Monte Carlo error."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import funsor
import pyro
import pyro.distributions as dist
import pytest
import torch
from funsor.domains import Bint
from funsor.sum_product import sequential_sum_product
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate, infer_discrete
from pyro.ops.indexing import Vindex

from pyro_attention.alignment_chain import AlignmentChain, jump_transition_logits

B, T, S = 3, 4, 3
LENGTHS = torch.tensor([4, 2, 3])


def _chain(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits and emissions in float64, large enough that every term matters."""
    generator = torch.Generator().manual_seed(seed)
    init = 2 * torch.randn(B, S, generator=generator, dtype=torch.float64)
    trans = 2 * torch.randn(B, T - 1, S, S, generator=generator, dtype=torch.float64)
    emission = torch.randn(B, T, S, generator=generator, dtype=torch.float64) - 1.0
    return init, trans, emission


def _brute_force(init, trans, emission, lengths):
    """Every joint alignment of each sequence: (log joint by alignment, the alignments)."""
    out = []
    for b in range(B):
        length = int(lengths[b])
        log_init = init[b].log_softmax(-1)
        log_trans = trans[b].log_softmax(-1)
        paths = list(itertools.product(range(S), repeat=length))
        joint = torch.stack(
            [
                log_init[z[0]]
                + emission[b, 0, z[0]]
                + sum(
                    (
                        log_trans[j - 1, z[j - 1], z[j]] + emission[b, j, z[j]]
                        for j in range(1, length)
                    ),
                    torch.zeros((), dtype=torch.float64),
                )
                for z in paths
            ]
        )
        out.append((joint, paths))
    return out


def test_log_conditionals_are_the_brute_force_predictive_of_each_token():
    """``log p(y_j | y_{<j})`` is the brute-force ``log p(y_{1:j}) - log p(y_{1:j-1})``, each
    prefix summed over all of its alignments; 0 at padding."""
    init, trans, emission = _chain(2)
    conditionals = AlignmentChain(init, trans, emission, LENGTHS).log_conditionals()
    for b in range(B):
        prefix = [torch.zeros((), dtype=torch.float64)]
        for j in range(1, int(LENGTHS[b]) + 1):
            lengths = torch.full((B,), j)
            joint, _ = _brute_force(init, trans, emission, lengths)[b]
            prefix.append(torch.logsumexp(joint, 0))
        expected = torch.zeros(T, dtype=torch.float64)
        expected[: int(LENGTHS[b])] = torch.diff(torch.stack(prefix))
        torch.testing.assert_close(conditionals[b], expected, rtol=0, atol=1e-12)


def test_forward_marginals_and_viterbi_equal_the_brute_force_sum():
    init, trans, emission = _chain()
    log_marginal = AlignmentChain(init, trans, emission, LENGTHS).log_marginal()
    marginals = AlignmentChain(init, trans, emission, LENGTHS).posterior_marginals()
    path, best = AlignmentChain(init, trans, emission, LENGTHS).viterbi()
    for b, (joint, paths) in enumerate(_brute_force(init, trans, emission, LENGTHS)):
        length = int(LENGTHS[b])
        total = torch.logsumexp(joint, 0)
        torch.testing.assert_close(log_marginal[b], total, rtol=0, atol=1e-12)
        posterior = (joint - total).exp()
        expected = torch.zeros(T, S, dtype=torch.float64)
        for weight, z in zip(posterior, paths, strict=True):
            for j, i in enumerate(z):
                expected[j, i] += weight
        torch.testing.assert_close(marginals[b], expected, rtol=0, atol=1e-12)
        top = int(joint.argmax())
        assert path[b, :length].tolist() == list(paths[top])
        assert path[b, length:].tolist() == [0] * (T - length)
        torch.testing.assert_close(best[b], joint[top], rtol=0, atol=1e-12)


def _pyro_model(init, trans, emission, lengths):
    mask = torch.arange(T) < lengths[:, None]
    rows = torch.arange(B)

    @config_enumerate
    def model():
        with pyro.plate("sequences", B, dim=-1):
            z = pyro.sample("z_0", dist.Categorical(logits=init))
            pyro.factor("e_0", Vindex(emission[:, 0])[rows, z])
            for j in pyro.markov(range(1, T)):
                z = pyro.sample(f"z_{j}", dist.Categorical(logits=Vindex(trans[:, j - 1])[rows, z]))
                with poutine.mask(mask=mask[:, j]):  # padding: the choice sums to one, no data
                    pyro.factor(f"e_{j}", Vindex(emission[:, j])[rows, z])

    return model


def test_pyro_enumeration_along_the_chain_and_its_map_agree():
    init, trans, emission = _chain(1)
    model = _pyro_model(init, trans, emission, LENGTHS)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda: None)
    expected = AlignmentChain(init, trans, emission, LENGTHS).log_marginal().sum()
    assert -loss == pytest.approx(float(expected), abs=1e-9)
    decoded = infer_discrete(model, first_available_dim=-2, temperature=0)
    trace = poutine.trace(decoded).get_trace()
    pyro_path = torch.stack([trace.nodes[f"z_{j}"]["value"] for j in range(T)], dim=-1)
    path, _ = AlignmentChain(init, trans, emission, LENGTHS).viterbi()
    mask = torch.arange(T) < LENGTHS[:, None]
    assert torch.equal(pyro_path[mask], path[mask])


def test_funsor_sequential_sum_product_agrees():
    funsor.set_backend("torch")
    init, trans, emission = _chain(2)
    log_marginal = AlignmentChain(init, trans, emission, LENGTHS).log_marginal()
    for b in range(B):
        length = int(LENGTHS[b])
        start = funsor.Tensor(init[b].log_softmax(-1) + emission[b, 0], OrderedDict(prev=Bint[S]))
        if length == 1:
            total = start.reduce(funsor.ops.logaddexp)
        else:
            steps = trans[b, : length - 1].log_softmax(-1) + emission[b, 1:length, None, :]
            factors = funsor.Tensor(
                steps, OrderedDict(time=Bint[length - 1], prev=Bint[S], curr=Bint[S])
            )
            chain = sequential_sum_product(
                funsor.ops.logaddexp,
                funsor.ops.add,
                factors,
                funsor.Variable("time", Bint[length - 1]),
                {"prev": "curr"},
            )
            total = (start + chain).reduce(funsor.ops.logaddexp)
        assert float(total.data) == pytest.approx(float(log_marginal[b]), abs=1e-9)


def test_forward_filtering_backward_sampling_draws_from_the_posterior():
    init, trans, emission = _chain(3)
    generator = torch.Generator().manual_seed(0)
    n = 40000
    draws = AlignmentChain(init, trans, emission, LENGTHS).sample(n, generator=generator)
    marginals = AlignmentChain(init, trans, emission, LENGTHS).posterior_marginals()
    empirical = torch.nn.functional.one_hot(draws, S).double().mean(0)
    mask = torch.arange(T) < LENGTHS[:, None]
    error = 5 * (marginals * (1 - marginals) / n).sqrt() + 1e-3  # 5 standard errors
    assert ((empirical - marginals).abs() <= error)[mask].all()
    assert (draws[:, ~mask] == 0).all()
    # pairs of neighbours too: the chain's dependence, not only its marginals
    joint = _brute_force(init, trans, emission, LENGTHS)[0]
    log_joint, paths = joint
    posterior = (log_joint - torch.logsumexp(log_joint, 0)).exp()
    exact = torch.zeros(S, S, dtype=torch.float64)
    for weight, z in zip(posterior, paths, strict=True):
        exact[z[1], z[2]] += weight
    pairs = torch.zeros(S, S, dtype=torch.float64)
    pairs.index_put_(
        (draws[:, 0, 1], draws[:, 0, 2]), torch.ones(n, dtype=torch.float64), accumulate=True
    )
    torch.testing.assert_close(pairs / n, exact, rtol=0, atol=float(5 * (0.25 / n) ** 0.5 + 1e-3))


def test_bad_inputs_are_refused():
    init, trans, emission = _chain()
    with pytest.raises(ValueError, match="emission must be"):
        AlignmentChain(init, trans, emission[0])
    with pytest.raises(ValueError, match=r"init_logits has shape \(3, 2\).*broadcast to \(3, 3\)"):
        AlignmentChain(init[:, :2], trans, emission)
    with pytest.raises(ValueError, match="transition_logits has shape"):
        AlignmentChain(init, trans[..., :2], emission)
    with pytest.raises(ValueError, match=r"transition_logits .* \(3, 3, 3, 3\)"):
        AlignmentChain(init, trans[:, :2], emission)  # T - 2 steps
    with pytest.raises(ValueError, match="init_logits has shape"):
        AlignmentChain(init[:2], trans, emission)  # another batch size
    with pytest.raises(ValueError, match="must be a floating-point tensor"):
        AlignmentChain(init, trans, emission.long())
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        AlignmentChain(init, trans, emission, torch.tensor([0, 1, 2]))
    for lengths in ([1, 2, 3], torch.tensor([True, True, False]), torch.tensor([1.0, 2.0, 3.0])):
        with pytest.raises(ValueError, match="lengths must be a \\(3,\\) integer tensor"):
            AlignmentChain(init, trans, emission, lengths)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        AlignmentChain(init, trans, emission).sample(0)


def test_the_jump_prior_puts_each_jump_in_its_bucket():
    generator = torch.Generator().manual_seed(4)
    content = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    jumps = torch.randn(5, generator=generator, dtype=torch.float64)  # K = 2
    start = torch.randn(3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 4 + [False]])
    init, trans = jump_transition_logits(content, jumps, start, source_mask=mask)
    for b in range(2):
        for k in range(5):
            if not mask[b, k]:
                assert init[b, k] < -1e30 and (trans[b, :, :, k] < -1e30).all()
                continue
            assert init[b, k] == content[b, 0, k] + start[min(k, 2)]
            for j, i in itertools.product(range(2), range(5)):
                bucket = max(-2, min(2, k - i)) + 2
                assert trans[b, j, i, k] == content[b, j + 1, k] + jumps[bucket]


def test_equal_jump_logits_give_the_independent_prior():
    """The chain's exact marginal is then the product over positions of the independent
    alignments' marginals, log Σ_i softmax(c_j)_i e_j(i), as the seq2seq model computes it."""
    _, _, emission = _chain(5)
    content = torch.randn(B, T, S, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    init, trans = jump_transition_logits(content, torch.full((5,), 0.7, dtype=torch.float64))
    chain = AlignmentChain(init, trans, emission, LENGTHS).log_marginal()
    mask = torch.arange(T) < LENGTHS[:, None]
    independent = torch.logsumexp(content.log_softmax(-1) + emission, -1)
    torch.testing.assert_close(chain, (independent * mask).sum(-1), rtol=0, atol=1e-12)


def test_a_monotonic_prior_gives_non_decreasing_alignments():
    _, _, emission = _chain(6)
    content = torch.randn(B, T, S, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    init, trans = jump_transition_logits(
        content, torch.zeros(3, dtype=torch.float64), monotonic=True
    )
    chain = AlignmentChain(init, trans, emission)
    draws = chain.sample(500, generator=torch.Generator().manual_seed(0))
    assert (draws.diff(dim=-1) >= 0).all()
    path, _ = chain.viterbi()
    assert (path.diff(dim=-1) >= 0).all()
    free = AlignmentChain(
        *jump_transition_logits(content, torch.zeros(3, dtype=torch.float64)), emission
    )
    assert (free.sample(500, generator=torch.Generator().manual_seed(0)).diff(dim=-1) < 0).any()
    with pytest.raises(ValueError, match="2K \\+ 1 entries"):
        jump_transition_logits(content, torch.zeros(4))
