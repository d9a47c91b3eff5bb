r"""Sentence valence with negation: a sequence task whose Bayes posterior is known exactly.

Lexicon (seeded). ``vocab`` words :math:`v = 0..V-1` with valences
:math:`w_v \sim \mathcal{N}(0, \sigma_w^2)` (``valence_scale`` :math:`= \sigma_w`), a bias
:math:`b` and a temperature :math:`\tau`. Token ids: ``0`` is padding, word :math:`v` is id
:math:`v + 1`, and the negation token "not" is id :math:`V + 1`, so ``vocab_size`` is
:math:`V + 2`. The training words are the first :math:`V - H` (``H = heldout_words``); the last
:math:`H` are never used in ``train``/``val``/``test``.

Sentence. A length :math:`L \sim U\{\ell_{\min}, \dots, \ell_{\max}\}` counts every token,
negations included. Tokens are emitted left to right until :math:`L` are placed: while at least
two places remain, the next word is preceded by "not" with probability :math:`p_{\neg}`
(``p_neg``); the word itself is uniform over the word set of the split. The sequence is padded
with id 0 to :math:`\ell_{\max}` (``mask`` marks the :math:`L` real tokens), so a sentence never
exceeds ``max_len`` and always ends with a word.

Truth. With :math:`s_i = -1` when the token before word :math:`i` is "not" and :math:`+1`
otherwise,

.. math::

    f(x) = b + \sum_i s_i\, w_{v_i}, \qquad
    p^*(y = 1 \mid x) = \sigma\bigl(f(x) / \tau\bigr), \qquad
    y \sim \operatorname{Bernoulli}\bigl(p^*(y = 1 \mid x)\bigr).

``true_probs`` is :math:`(1 - p^*, p^*)` and :func:`bayes_posterior` recomputes it from the token
ids. The defaults (:math:`\sigma_w = 1`, :math:`b = 0`, :math:`\tau = 1`, lengths 4..12,
:math:`p_{\neg} = 0.2`, about 6.7 words a sentence, so :math:`f(x)` has a standard deviation of
about 2.6) give a mean :math:`\max(p^*, 1 - p^*)` of 0.80–0.82 on the training distribution
(0.81 for seed 0; 0.90 on ``"longer"``): labels are noisy, so a calibrated model cannot be
confident, while an over-confident one shows it. A larger :math:`\tau` (or smaller
:math:`\sigma_w`) moves :math:`p^*` towards 1/2, e.g. :math:`\tau = 1.5` gives about 0.75.

Out-of-distribution sets, ``task.ood`` (``num_test`` sentences each, true posterior known):

* ``"heldout_words"``: sentences of the held-out words only (absent when ``heldout_words=0``);
* ``"longer"``: training words, lengths :math:`2\ell_{\max} .. 3\ell_{\max}` (padded to
  :math:`3\ell_{\max}`): a shift in length, with larger :math:`|f(x)|`.

All randomness comes from CPU :class:`torch.Generator`\ s seeded from ``seed``: one for the
lexicon and one per split, so a split does not change with the sizes of the others.

>>> task = make_valence_task(num_train=8, num_val=4, num_test=4, seed=0)
>>> task.train.inputs.shape, task.train.vocab_size, task.train.true_probs.shape
(torch.Size([8, 12]), 202, torch.Size([8, 2]))
>>> torch.allclose(bayes_posterior(task, task.test.inputs, task.test.mask), task.test.true_probs)
True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_attention.data.classification import ClassificationData

__all__ = ["ValenceLexicon", "ValenceTask", "bayes_posterior", "make_valence_task"]

TEMPERATURE = 1.0


class ValenceLexicon(NamedTuple):
    """The truth of a valence task: word valences, the negation id, bias and temperature."""

    valences: torch.Tensor
    """``(V,)`` float64, :math:`w_v` of word :math:`v` (token id :math:`v + 1`)."""
    negation_id: int
    """Token id of "not" (:math:`V + 1`)."""
    bias: float
    """:math:`b`."""
    temperature: float
    """:math:`\\tau`."""
    num_train_words: int
    """Words ``0..num_train_words-1`` (ids ``1..num_train_words``) are the training words."""

    @property
    def vocab_size(self) -> int:
        """Number of token ids: padding, the words and "not"."""
        return int(self.valences.shape[0]) + 2


class ValenceTask(NamedTuple):
    """In-distribution splits, OOD sets and the lexicon of a valence task."""

    train: ClassificationData
    val: ClassificationData
    test: ClassificationData
    ood: dict[str, ClassificationData]
    """``"heldout_words"`` (when ``heldout_words > 0``) and ``"longer"``."""
    lexicon: ValenceLexicon


def _check_count(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_real(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def bayes_posterior(
    task_or_lexicon: ValenceTask | ValenceLexicon,
    inputs: torch.Tensor,
    mask: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""The exact posterior :math:`(1 - p^*, p^*)` of token-id sequences, ``(N, 2)``.

    A word counts with sign :math:`-1` when the real token right before it is "not"; padding
    (``mask`` false) and "not" itself contribute nothing. Computed in float64, returned with
    ``dtype`` on the device of ``inputs``.

    :param task_or_lexicon: a :class:`ValenceTask` or its :class:`ValenceLexicon`.
    :param inputs: ``(N, T)`` integer token ids in ``[0, vocab_size)``.
    :param mask: ``(N, T)`` bool, ``True`` for real tokens.
    """
    lex = task_or_lexicon.lexicon if isinstance(task_or_lexicon, ValenceTask) else task_or_lexicon
    if not isinstance(lex, ValenceLexicon):
        raise TypeError(f"task_or_lexicon must be a ValenceTask or ValenceLexicon, got {type(lex)}")
    if inputs.dim() != 2 or inputs.is_floating_point() or inputs.dtype == torch.bool:
        raise ValueError(
            f"inputs must be (N, T) integer token ids, got {inputs.dtype} {tuple(inputs.shape)}"
        )
    if mask.dtype != torch.bool or mask.shape != inputs.shape:
        raise ValueError(
            f"mask must be bool of shape {tuple(inputs.shape)}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    if inputs.numel() and (inputs.min() < 0 or inputs.max() >= lex.vocab_size):
        raise ValueError(f"token ids must lie in [0, {lex.vocab_size}) for this lexicon")
    ids = inputs.long()
    table = torch.cat([lex.valences.new_zeros(1), lex.valences, lex.valences.new_zeros(1)]).to(
        ids.device
    )
    value = table[ids] * mask  # padding and "not" are 0
    negated = torch.zeros_like(mask)
    negated[:, 1:] = (ids[:, :-1] == lex.negation_id) & mask[:, :-1]
    score = lex.bias + torch.where(negated, -value, value).sum(-1)
    p = torch.sigmoid(score / lex.temperature)
    return torch.stack([1 - p, p], dim=-1).to(dtype)


def _sentences(
    num: int,
    lexicon: ValenceLexicon,
    words: tuple[int, int],
    lengths: tuple[int, int],
    p_neg: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num, lengths[1])`` token ids and mask; word ids uniform in ``[words[0], words[1])``."""
    low, high = lengths
    total = torch.randint(low, high + 1, (num,), generator=generator)
    ids = torch.zeros(num, high, dtype=torch.long)
    pos = torch.zeros(num, dtype=torch.long)
    rows = torch.arange(num)
    for _ in range(high):  # at most one word per step
        remaining = total - pos
        active = remaining >= 1
        negate = (torch.rand(num, generator=generator, dtype=torch.float64) < p_neg) & (
            remaining >= 2
        )
        word = torch.randint(words[0], words[1], (num,), generator=generator)
        ids[rows[negate], pos[negate]] = lexicon.negation_id
        pos = pos + negate.long()
        ids[rows[active], pos[active]] = word[active]
        pos = pos + active.long()
    mask = torch.arange(high) < total[:, None]
    return ids, mask


def make_valence_task(
    *,
    num_train: int = 1000,
    num_val: int = 300,
    num_test: int = 1000,
    vocab: int = 200,
    heldout_words: int = 40,
    min_len: int = 4,
    max_len: int = 12,
    p_neg: float = 0.2,
    valence_scale: float = 1.0,
    bias: float = 0.0,
    temperature: float = TEMPERATURE,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ValenceTask:
    """The valence task (see the module docstring for the generative process).

    :param num_train: training sentences (>= 1); likewise ``num_val`` and ``num_test`` (each OOD
        set has ``num_test`` sentences).
    :param vocab: number of words :math:`V` (>= 2).
    :param heldout_words: the last ``heldout_words`` words (``0 <= H < vocab``) appear only in
        ``ood["heldout_words"]``.
    :param min_len: shortest sentence in tokens, negations included (>= 1).
    :param max_len: longest sentence (>= ``min_len``) and the padded length ``T``.
    :param p_neg: probability that a word is preceded by "not", in ``[0, 1)``.
    :param valence_scale: :math:`\\sigma_w > 0`.
    :param bias: :math:`b`.
    :param temperature: :math:`\\tau > 0`; larger spreads :math:`p^*` towards 1/2.
    :param seed: seed of the lexicon and of every split.
    :param dtype: floating dtype of ``true_probs``.
    :param device: device of every tensor.
    """
    num_train = _check_count(num_train, "num_train")
    num_val = _check_count(num_val, "num_val")
    num_test = _check_count(num_test, "num_test")
    vocab = _check_count(vocab, "vocab", 2)
    heldout_words = _check_count(heldout_words, "heldout_words", 0)
    if heldout_words >= vocab:
        raise ValueError(
            f"heldout_words must be < vocab ({vocab}) so that training words remain, got "
            f"{heldout_words}"
        )
    min_len = _check_count(min_len, "min_len")
    max_len = _check_count(max_len, "max_len")
    if min_len > max_len:
        raise ValueError(f"min_len ({min_len}) must be <= max_len ({max_len})")
    p_neg = _check_real(p_neg, "p_neg", positive=False)
    if not 0 <= p_neg < 1:
        raise ValueError(f"p_neg must lie in [0, 1), got {p_neg}")
    valence_scale = _check_real(valence_scale, "valence_scale", positive=True)
    bias = _check_real(bias, "bias", positive=False)
    temperature = _check_real(temperature, "temperature", positive=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype}")

    master = torch.Generator().manual_seed(seed)
    valences = valence_scale * torch.randn(vocab, generator=master, dtype=torch.float64)
    split_seeds = torch.randint(0, 2**62, (5,), generator=master).tolist()
    num_train_words = vocab - heldout_words
    lexicon = ValenceLexicon(valences, vocab + 1, bias, temperature, num_train_words)
    train_words = (1, num_train_words + 1)
    lengths = (min_len, max_len)

    def split(
        num: int, seed_index: int, words: tuple[int, int], lengths: tuple[int, int]
    ) -> ClassificationData:
        gen = torch.Generator().manual_seed(split_seeds[seed_index])
        ids, mask = _sentences(num, lexicon, words, lengths, p_neg, gen)
        probs = bayes_posterior(lexicon, ids, mask, dtype=torch.float64)
        labels = (torch.rand(num, generator=gen, dtype=torch.float64) < probs[:, 1]).long()
        return ClassificationData(
            ids.to(device),
            mask.to(device),
            labels.to(device),
            num_classes=2,
            vocab_size=lexicon.vocab_size,
            true_probs=probs.to(device=device, dtype=dtype),
        )

    ood = {}
    if heldout_words > 0:
        ood["heldout_words"] = split(num_test, 3, (num_train_words + 1, vocab + 1), lengths)
    ood["longer"] = split(num_test, 4, train_words, (2 * max_len, 3 * max_len))
    return ValenceTask(
        train=split(num_train, 0, train_words, lengths),
        val=split(num_val, 1, train_words, lengths),
        test=split(num_test, 2, train_words, lengths),
        ood=ood,
        lexicon=lexicon,
    )
