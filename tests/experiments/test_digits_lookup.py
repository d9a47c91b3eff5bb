"""The digits dictionary lookup: masks, the mixture read-out against brute force, the nearest
neighbours against a loop, the transformer's masking, and the comparison's rows and files."""

import json
import math

import pytest
import torch

from pyro_attention.data import load_digits_binary
from pyro_attention.experiments.digits_lookup import (
    SCHEMES,
    PixelTransformer,
    digits_lookup,
    mixture_lookup,
    nearest_neighbour_lookup,
    observation_mask,
    score_predictions,
    train_pixel_transformer,
)


def _random_mixture(S, K, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(S, K, generator=g, dtype=torch.float64) + 0.1
    probs = torch.rand(S, K, D, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return weights / weights.sum(-1, keepdim=True), probs


def _binary(N, D, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N, D, generator=g) < 0.4).double().to(device)


def test_top_half_mask_observes_the_top_rows():
    mask = observation_mask(3, (8, 8), "top-half")
    assert mask.shape == (3, 64) and mask.dtype == torch.bool
    assert mask[:, :32].all() and not mask[:, 32:].any()


def test_random_mask_observes_half_of_each_image_at_random():
    mask = observation_mask(200, (8, 8), "random", generator=torch.Generator().manual_seed(0))
    assert (mask.sum(-1) == 32).all()
    assert len({tuple(row.tolist()) for row in mask}) == 200
    # every pixel is observed about half of the time
    assert (mask.double().mean(0) - 0.5).abs().max() < 0.2
    again = observation_mask(200, (8, 8), "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert observation_mask(5, (8, 8), "random", fraction=0.25).sum(-1).eq(16).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"scheme": "left-half"}, "scheme"), ({"scheme": "random", "fraction": 1.0}, "fraction")],
)
def test_bad_mask_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        observation_mask(3, (8, 8), **kwargs)


def test_mixture_lookup_equals_brute_force(device):
    S, K, D, N = 3, 4, 10, 6
    weights, probs = _random_mixture(S, K, D)
    images = _binary(N, D, device=device)
    observed = torch.rand(N, D, generator=torch.Generator().manual_seed(2)) < 0.5
    observed[0] = False  # nothing observed: the prediction is the prior mixture
    observed = observed.to(device)
    result = mixture_lookup(weights.to(device), probs.to(device), images, observed)
    assert result.probs.device.type == torch.device(device).type
    expected_probs = torch.zeros(N, D, dtype=torch.float64)
    expected_resp = torch.zeros(N, K, dtype=torch.float64)
    for s in range(S):
        for n in range(N):
            joint = []
            for k in range(K):
                p = weights[s, k]
                for d in range(D):
                    if observed[n, d]:
                        mu = probs[s, k, d]
                        p = p * (mu if images[n, d] == 1 else 1 - mu)
                joint.append(p)
            joint = torch.stack(joint)
            resp = joint / joint.sum()
            expected_resp[n] += resp / S
            expected_probs[n] += (resp[:, None] * probs[s]).sum(0) / S
    torch.testing.assert_close(result.probs.cpu(), expected_probs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.responsibilities.cpu(), expected_resp, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.probs[0].cpu(), (weights[:, :, None] * probs).sum(1).mean(0))


def test_mixture_lookup_ignores_the_missing_pixels_and_chunks_the_draws():
    weights, probs = _random_mixture(5, 3, 8)
    images = _binary(4, 8)
    observed = torch.rand(4, 8, generator=torch.Generator().manual_seed(3)) < 0.5
    flipped = torch.where(observed, images, 1 - images)
    a = mixture_lookup(weights, probs, images, observed)
    b = mixture_lookup(weights, probs, flipped, observed, draws_per_chunk=2)
    torch.testing.assert_close(a.probs, b.probs, rtol=1e-12, atol=1e-12)
    single = mixture_lookup(weights[0], probs[0], images, observed)
    torch.testing.assert_close(
        single.probs, mixture_lookup(weights[:1], probs[:1], images, observed).probs
    )


def test_mixture_lookup_refuses_mismatched_shapes():
    weights, probs = _random_mixture(2, 3, 8)
    images = _binary(4, 8)
    with pytest.raises(ValueError, match="probs"):
        mixture_lookup(weights, probs[..., :7], images, torch.ones(4, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="observed"):
        mixture_lookup(weights, probs, images, torch.ones(4, 8))
    with pytest.raises(ValueError, match="binary"):
        mixture_lookup(weights, probs, images + 0.5, torch.ones(4, 8, dtype=torch.bool))


def test_nearest_neighbour_lookup_equals_a_loop(device):
    train, images = _binary(30, 12, seed=4, device=device), _binary(5, 12, seed=5, device=device)
    observed = (torch.rand(5, 12, generator=torch.Generator().manual_seed(6)) < 0.5).to(device)
    k, a = 3, 0.5
    pred = nearest_neighbour_lookup(train, images, observed, k=k, smoothing=a)
    for n in range(5):
        distance = [int(((train[j] != images[n]) & observed[n]).sum()) for j in range(len(train))]
        order = sorted(range(len(train)), key=lambda j: (distance[j], j))[:k]
        torch.testing.assert_close(pred[n], (train[order].sum(0) + a) / (k + 2 * a))


def test_nearest_neighbour_finds_a_training_image_seen_whole():
    train = _binary(20, 12, seed=7)
    pred = nearest_neighbour_lookup(train, train[3:4], torch.ones(1, 12, dtype=torch.bool), k=1)
    torch.testing.assert_close(pred[0], (train[3] + 0.5) / 2)
    with pytest.raises(ValueError, match="k=21"):
        nearest_neighbour_lookup(train, train[:1], torch.ones(1, 12, dtype=torch.bool), k=21)


def test_score_predictions_by_hand():
    images = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    observed = torch.tensor([[True, False, False, False]])
    probs = torch.tensor([[0.5, 0.2, 0.6, 0.9]])
    scores = score_predictions(probs, images, observed)
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.1)) / 3
    assert scores["pixel_nll"] == pytest.approx(expected, rel=1e-6)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3)
    assert scores["missing_pixels"] == 3
    with pytest.raises(ValueError, match="nothing to predict"):
        score_predictions(probs, images, torch.ones(1, 4, dtype=torch.bool))


def test_pixel_transformer_reads_only_the_observed_pixels(device):
    torch.manual_seed(0)
    model = PixelTransformer(64, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32)
    model = model.to(device).eval()
    images = _binary(4, 64, device=device).float()
    observed = observation_mask(4, (8, 8), "random").to(device)
    flipped = torch.where(observed, images, 1 - images)
    with torch.no_grad():
        logits = model(images, observed)
        torch.testing.assert_close(logits, model(flipped, observed))
        assert logits.shape == (4, 64)
        assert not torch.allclose(logits, model(images, ~observed))


def test_pixel_transformer_training_lowers_its_loss():
    train = load_digits_binary().train[:300]
    options = {"d_model": 16, "num_heads": 2, "num_layers": 1, "dim_feedforward": 32}
    _, losses = train_pixel_transformer(
        train, (8, 8), num_steps=100, batch_size=16, lr=1e-2, progress=False, **options
    )
    assert sum(losses[-20:]) / 20 < 0.85 * sum(losses[:20]) / 20


def test_digits_lookup_rows_and_files(tmp_path):
    digits = load_digits_binary(dtype=torch.float64)
    train, test = digits.train[:400], digits.test[:60]
    weights, probs = _random_mixture(2, 5, 64)
    result = digits_lookup(
        {"random": {"weights": weights, "probs": probs}},
        train,
        test,
        transformer_steps=2,
        transformer_options={"d_model": 8, "num_heads": 2, "num_layers": 1},
        num_plot=2,
        out=tmp_path,
        progress=False,
    )
    assert {(r["method"], r["scheme"]) for r in result.rows} == {
        (m, s)
        for m in ("mixture (random)", "transformer", "5-nearest-neighbour", "pixel marginals")
        for s in SCHEMES
    }
    assert all(math.isfinite(r["pixel_nll"]) for r in result.rows)
    # the nearest neighbours of real digits beat the pixel marginals
    for scheme in SCHEMES:
        cells = {r["method"]: r for r in result.rows if r["scheme"] == scheme}
        assert cells["5-nearest-neighbour"]["pixel_nll"] < cells["pixel marginals"]["pixel_nll"]
    assert json.loads((tmp_path / "lookup.json").read_text())["rows"] == result.rows
    assert (tmp_path / "lookup.png").stat().st_size > 0
    assert "transformer" in str(result)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schemes": ("bottom",)}, "schemes"),
        ({"mixtures": {"m": {"weights": torch.ones(1, 2)}}}, "probs"),
        ({"test": torch.full((3, 64), 0.5, dtype=torch.float64)}, "binary"),
        ({"plot_mixture": "other"}, "plot_mixture"),
    ],
)
def test_digits_lookup_refuses_bad_input(change, match, tmp_path):
    weights, probs = _random_mixture(1, 2, 64)
    kwargs = {
        "mixtures": {"m": {"weights": weights, "probs": probs}},
        "train": _binary(10, 64),
        "test": _binary(3, 64, seed=9),
        "transformer_steps": 0,
        "out": tmp_path,
        "progress": False,
    }
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        digits_lookup(**kwargs)
