"""Sentence valence with negation: the known posterior, the sentences, OOD sets, bad options."""

import math

import pytest
import torch

from pyro_attention.data import (
    ClassificationData,
    ValenceLexicon,
    bayes_posterior,
    make_valence_task,
)


@pytest.fixture(scope="module")
def task():
    return make_valence_task()


def _naive_posterior(lexicon, ids, mask):
    """Loop reference: sign −1 for a word right after "not"."""
    out = []
    for row, keep in zip(ids.tolist(), mask.tolist(), strict=True):
        score, previous = lexicon.bias, None
        for token, real in zip(row, keep, strict=True):
            if not real:
                continue
            if 1 <= token < lexicon.negation_id:
                sign = -1.0 if previous == lexicon.negation_id else 1.0
                score += sign * float(lexicon.valences[token - 1])
            previous = token
        p = 1 / (1 + math.exp(-score / lexicon.temperature))
        out.append([1 - p, p])
    return torch.tensor(out, dtype=torch.float64)


def test_shapes_and_types(task):
    lex = task.lexicon
    assert lex.valences.shape == (200,) and lex.negation_id == 201 and lex.vocab_size == 202
    assert lex.num_train_words == 160
    for part, n, t in (
        (task.train, 1000, 12),
        (task.val, 300, 12),
        (task.test, 1000, 12),
        (task.ood["heldout_words"], 1000, 12),
        (task.ood["longer"], 1000, 36),
    ):
        assert isinstance(part, ClassificationData)
        assert part.inputs.shape == (n, t) and part.inputs.dtype == torch.long
        assert part.mask.shape == (n, t) and part.labels.dtype == torch.long
        assert part.num_classes == 2 and part.vocab_size == 202
        assert part.true_probs.shape == (n, 2) and part.true_probs.dtype == torch.float32
        assert torch.allclose(part.true_probs.sum(-1), torch.ones(n))


def test_sentences_are_well_formed(task):
    lex = task.lexicon
    for part, (low, high) in (
        (task.train, (4, 12)),
        (task.test, (4, 12)),
        (task.ood["longer"], (24, 36)),
    ):
        ids, mask = part.inputs, part.mask
        lengths = mask.sum(-1)
        assert lengths.min() == low and lengths.max() == high
        assert torch.equal(mask, torch.arange(ids.shape[1]) < lengths[:, None])  # left-aligned
        assert ((ids == 0) == ~mask).all()  # id 0 exactly at the padding
        last = ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
        assert (last != lex.negation_id).all()  # a sentence ends with a word
        negation = ids == lex.negation_id
        assert not (negation[:, 1:] & negation[:, :-1]).any()  # "not" is followed by a word
    words = (task.train.inputs > 0) & (task.train.inputs != lex.negation_id)
    negations = task.train.inputs == lex.negation_id
    frac = negations.sum() / words.sum()  # close to p_neg (a bit less: no room at the end)
    assert 0.15 < frac < 0.2


def test_bayes_posterior_equals_true_probs_and_loop_reference(task):
    for part in (task.train, task.test, *task.ood.values()):
        exact = bayes_posterior(task, part.inputs, part.mask)
        assert torch.equal(exact, part.true_probs)
    naive = _naive_posterior(task.lexicon, task.val.inputs, task.val.mask)
    ours = bayes_posterior(task.lexicon, task.val.inputs, task.val.mask, dtype=torch.float64)
    assert torch.allclose(ours, naive, atol=1e-12)


def test_negation_flips_the_sign():
    lex = ValenceLexicon(
        valences=torch.tensor([2.0, -0.5, 1.0], dtype=torch.float64),
        negation_id=4,
        bias=0.25,
        temperature=2.0,
        num_train_words=3,
    )
    ids = torch.tensor([[1, 2, 0, 0], [4, 1, 2, 0], [1, 4, 2, 3], [4, 4, 1, 0], [1, 2, 3, 4]])
    mask = ids != 0
    scores = torch.tensor(
        [
            0.25 + 2.0 - 0.5,  # plain
            0.25 - 2.0 - 0.5,  # "not" flips word 1 only
            0.25 + 2.0 + 0.5 + 1.0,  # "not" flips the negative word 2
            0.25 - 2.0,  # "not not 1": the word right after a "not" is flipped once
            0.25 + 2.0 - 0.5 + 1.0,  # trailing "not" flips nothing
        ],
        dtype=torch.float64,
    )
    expected = torch.sigmoid(scores / 2.0)
    p = bayes_posterior(lex, ids, mask, dtype=torch.float64)
    assert torch.allclose(p[:, 1], expected, atol=1e-12)
    # padding is ignored even where it hides a token
    two = torch.tensor([[True, True, False, False]])
    hidden, padded = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 0, 0]])
    assert torch.equal(bayes_posterior(lex, hidden, two), bayes_posterior(lex, padded, two))


def test_labels_follow_the_posterior():
    big = make_valence_task(num_train=40000, num_val=1, num_test=1, seed=3)
    p = big.train.true_probs[:, 1].double()
    y = big.train.labels.double()
    stderr = p.mul(1 - p).sum().sqrt() / len(p)
    assert (y.mean() - p.mean()).abs() < 4 * stderr
    # and within bins of p*, so the labels are calibrated against p*, not just on average
    for low in (0.0, 0.2, 0.4, 0.6, 0.8):
        inside = (p >= low) & (p < low + 0.2)
        pb, yb = p[inside], y[inside]
        assert (yb.mean() - pb.mean()).abs() < 4 * pb.mul(1 - pb).sum().sqrt() / len(pb)


def test_default_posterior_is_spread_not_saturated(task):
    confidence = task.train.true_probs.max(-1).values
    assert 0.75 < confidence.mean() < 0.85
    assert (confidence < 0.6).float().mean() > 0.1  # many genuinely ambiguous sentences


def test_heldout_words_never_in_distribution(task):
    lex = task.lexicon

    def is_heldout(ids):
        return (ids > lex.num_train_words) & (ids < lex.negation_id)

    for part in (task.train, task.val, task.test, task.ood["longer"]):
        assert not is_heldout(part.inputs).any()
    ood = task.ood["heldout_words"].inputs
    words = (ood > 0) & (ood != lex.negation_id)
    assert torch.equal(is_heldout(ood), words)
    none = make_valence_task(num_train=5, num_val=5, num_test=5, heldout_words=0)
    assert sorted(none.ood) == ["longer"]


def test_seeds_reproduce_and_differ(task):
    again = make_valence_task()
    assert torch.equal(task.lexicon.valences, again.lexicon.valences)
    for a, b in ((task.train, again.train), (task.ood["longer"], again.ood["longer"])):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    other = make_valence_task(seed=1)
    assert not torch.equal(task.lexicon.valences, other.lexicon.valences)
    assert not torch.equal(task.train.inputs, other.train.inputs)
    # a split does not depend on the size of another
    resized = make_valence_task(num_train=10)
    assert torch.equal(resized.test.inputs, task.test.inputs)


def test_dtype_device_honoured(device):
    small = make_valence_task(
        num_train=4, num_val=4, num_test=4, dtype=torch.float64, device=device
    )
    for part in (small.train, small.val, small.test, *small.ood.values()):
        assert part.inputs.device.type == device.type and part.labels.device.type == device.type
        assert part.true_probs.dtype == torch.float64 and part.mask.device.type == device.type
    p = bayes_posterior(small, small.test.inputs, small.test.mask)
    assert p.device.type == device.type


def test_longer_has_more_extreme_posterior(task):
    def mean_abs(part):
        return torch.logit(part.true_probs[:, 1].double()).abs().mean()

    assert mean_abs(task.ood["longer"]) > 1.3 * mean_abs(task.test)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": 0}, "num_val"),
        ({"num_test": 0}, "num_test"),
        ({"num_train": 2.5}, "num_train"),
        ({"vocab": 1}, "vocab"),
        ({"heldout_words": 200}, "heldout_words"),
        ({"heldout_words": -1}, "heldout_words"),
        ({"min_len": 0}, "min_len"),
        ({"min_len": 5, "max_len": 4}, "min_len"),
        ({"p_neg": 1.0}, "p_neg"),
        ({"p_neg": -0.1}, "p_neg"),
        ({"p_neg": float("nan")}, "p_neg"),
        ({"valence_scale": 0.0}, "valence_scale"),
        ({"temperature": -1.0}, "temperature"),
        ({"bias": float("inf")}, "bias"),
        ({"seed": 1.0}, "seed"),
        ({"dtype": torch.long}, "dtype"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_valence_task(**kwargs)


def test_bayes_posterior_refuses_bad_inputs(task):
    ids, mask = task.test.inputs, task.test.mask
    with pytest.raises(ValueError, match="inputs"):
        bayes_posterior(task, ids.float(), mask)
    with pytest.raises(ValueError, match="mask"):
        bayes_posterior(task, ids, mask.long())
    with pytest.raises(ValueError, match="token ids"):
        bayes_posterior(task, ids + 500, mask)
    with pytest.raises(TypeError, match="task_or_lexicon"):
        bayes_posterior("lexicon", ids, mask)
