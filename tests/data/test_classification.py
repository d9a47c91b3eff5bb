"""The sequence classification container refuses what would fail or mislead later."""

from __future__ import annotations

import pytest
import torch

from pyro_attention.data import ClassificationData


def _parts(n: int = 4, t: int = 3):
    tokens = torch.randint(1, 5, (n, t))
    mask = torch.ones(n, t, dtype=torch.bool)
    return tokens, mask, torch.zeros(n, dtype=torch.long)


def test_a_valid_set_subsets_and_moves():
    tokens, mask, labels = _parts()
    probs = torch.full((4, 2), 0.5)
    data = ClassificationData(tokens, mask, labels, 2, vocab_size=5, true_probs=probs)
    part = data.subset(torch.tensor([0, 2]))
    assert len(part) == 2 and part.true_probs.shape == (2, 2) and part.seq_len == 3
    assert data.to(dtype=torch.float64).inputs.dtype == torch.long  # ids stay integers


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t, m, y: (t.float(), m, y, {}), "token ids and must be integers"),
        (lambda t, m, y: (t, m.long(), y, {}), "mask must be a bool tensor"),
        (lambda t, m, y: (t, m & False, y, {}), "no real token"),
        (lambda t, m, y: (t, m, y + 2, {}), "labels must lie in"),
        (lambda t, m, y: (t, m, y.int(), {}), "labels must be int64"),
        (lambda t, m, y: (t + 9, m, y, {}), "token ids must lie in"),
        (lambda t, m, y: (t, m, y, {"vocab_size": None}), "need vocab_size"),
        (lambda t, m, y: (t[..., None].float(), m, y, {}), "vocab_size is for token ids"),
        (lambda t, m, y: (t, m, y, {"true_probs": torch.ones(4, 2)}), "sum to 1"),
        (lambda t, m, y: (t, m, y, {"true_probs": torch.full((4, 2), float("nan"))}), "finite"),
        (lambda t, m, y: (t, m, y, {"true_probs": torch.ones(3, 2) / 2}), "true_probs must have"),
    ],
)
def test_bad_parts_are_refused(change, match):
    tokens, mask, labels, extra = change(*_parts())
    options = {"vocab_size": 5, **extra}
    with pytest.raises(ValueError, match=match):
        ClassificationData(tokens, mask, labels, 2, **options)
