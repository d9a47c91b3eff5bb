"""Stacked attention, plain and latent: shapes, weights, a loop reference, gradient paths."""

import functools

import pytest
import torch

from pyro_attention.nn import StackedAttention, StackedLatentAttention

B, N, DV, DQ, H = 3, 5, 6, 4, 7
CLASSES = [StackedAttention, StackedLatentAttention]


def inputs(device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(B, N, DV, generator=g, dtype=dtype).to(device)
    query = torch.randn(B, DQ, generator=g, dtype=dtype).to(device)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, :4] = False
    return items, query, mask.to(device)


def build(cls, num_layers, device, dtype=torch.float64, seed=0, **dims):
    dims = {"item_dim": DV, "query_dim": DQ, "hidden_dim": H, **dims}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**dims, num_layers=num_layers).to(device=device, dtype=dtype)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_shapes_and_weights(device, cls, num_layers):
    items, query, mask = inputs(device)
    layer = build(cls, num_layers, device)
    out, weights = layer(items, query, mask, return_weights=True)
    assert out.shape == (B, DQ) and out.dtype == items.dtype and out.device == items.device
    assert weights.shape == (B, num_layers, N)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
    assert (weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all()
    assert (weights[mask.unsqueeze(1).expand_as(weights)] > 0).all()
    torch.testing.assert_close(layer(items, query, mask), out)


@pytest.mark.parametrize("cls", CLASSES)
def test_float32_follows_input(device, cls):
    items, query, mask = inputs(device, dtype=torch.float32)
    out = build(cls, 2, device, dtype=torch.float32)(items, query, mask)
    assert out.dtype == torch.float32 and out.device.type == device.type


def loop_reference(layer, items, query, mask):
    """Naive per-example, per-item loop of the module docstring's equations."""
    outs, all_weights = [], []
    for b in range(items.shape[0]):
        u, carried, per_layer = query[b], None, []
        for lay in layer.layers:
            allowed = [i for i in range(items.shape[1]) if mask[b, i]]
            latents, scores = {}, {}
            for i in allowed:
                x = items[b, i] if carried is None else torch.cat([items[b, i], carried[i]])
                latents[i] = torch.tanh(
                    lay.item_map.weight @ x + lay.query_map.weight @ u + lay.query_map.bias
                )
                scores[i] = (lay.score.weight[0] * latents[i]).sum()
            top = max(scores.values())
            z = sum(torch.exp(scores[i] - top) for i in allowed)
            a = {i: torch.exp(scores[i] - top) / z for i in allowed}
            read = sum(a[i] * items[b, i] for i in allowed)
            update = read if isinstance(lay.read, torch.nn.Identity) else lay.read.weight @ read
            if lay.pool is not None:
                update = update + lay.pool.weight @ sum(a[i] * latents[i] for i in allowed)
            u = u + update
            carried = latents if layer.carry else None
            per_layer.append(torch.stack([a.get(i, u.new_zeros(())) for i in range(N)]))
        outs.append(u)
        all_weights.append(torch.stack(per_layer))
    return torch.stack(outs), torch.stack(all_weights)


ABLATIONS = [
    functools.partial(StackedLatentAttention, pool=False),
    functools.partial(StackedLatentAttention, carry=False),
]


@pytest.mark.parametrize("cls", CLASSES + ABLATIONS, ids=["plain", "latent", "carry", "pool"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("item_dim", [DV, DQ])
def test_agrees_with_loop_reference(device, cls, num_layers, item_dim):
    items, query, mask = inputs(device)
    items = items[..., :item_dim]
    layer = build(cls, num_layers, device, item_dim=item_dim)
    out, weights = layer(items, query, mask, return_weights=True)
    ref_out, ref_weights = loop_reference(layer, items, query, mask)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-10, atol=1e-10)


def test_ablation_switches_build_the_named_paths():
    carry_only, pool_only = (cls(DV, DQ, H, 3) for cls in ABLATIONS)
    assert all(lay.pool is None for lay in carry_only.layers)
    assert [lay.item_map.in_features for lay in carry_only.layers] == [DV, DV + H, DV + H]
    assert all(lay.pool is not None for lay in pool_only.layers)
    assert all(lay.item_map.in_features == DV for lay in pool_only.layers)
    assert "carry=True, pool=False" in repr(carry_only)
    neither = StackedLatentAttention(DV, DQ, H, 2, carry=False, pool=False)
    plain = StackedAttention(DV, DQ, H, 2)
    assert [p.shape for p in neither.parameters()] == [p.shape for p in plain.parameters()]


def test_identity_read_when_dims_agree(device):
    layer = build(StackedAttention, 2, device, item_dim=DQ)
    assert all(isinstance(lay.read, torch.nn.Identity) for lay in layer.layers)
    assert all(lay.pool is None for lay in layer.layers)


def test_depth_one_variants_differ_only_by_pooled_latent(device):
    """At depth 1 nothing is carried: the latent variant is the plain one plus G g."""
    items, query, mask = inputs(device)
    plain = build(StackedAttention, 1, device)
    latent = build(StackedLatentAttention, 1, device)
    latent.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.zeros_(latent.layers[0].pool.weight)
    torch.testing.assert_close(latent(items, query, mask), plain(items, query, mask))
    with torch.no_grad():
        latent.layers[0].pool.weight.fill_(0.1)
    assert not torch.allclose(latent(items, query, mask), plain(items, query, mask))


def test_latent_reduces_to_plain_without_carry(device):
    """Zero latent-map columns of W_v and zero G give plain stacking at any depth."""
    items, query, mask = inputs(device)
    plain = build(StackedAttention, 3, device)
    latent = build(StackedLatentAttention, 3, device)
    with torch.no_grad():
        for lp, ll in zip(plain.layers, latent.layers, strict=True):
            ll.item_map.weight.zero_()
            ll.item_map.weight[:, :DV] = lp.item_map.weight
            ll.query_map.load_state_dict(lp.query_map.state_dict())
            ll.score.load_state_dict(lp.score.state_dict())
            ll.read.load_state_dict(lp.read.state_dict())
            ll.pool.weight.zero_()
    torch.testing.assert_close(latent(items, query, mask), plain(items, query, mask))
    assert latent.layers[1].item_map.weight.shape == (H, DV + H)
    assert latent.layers[0].item_map.weight.shape == (H, DV)


def first_layer_grad_norm(layer, items, query, mask, **kwargs):
    out = layer(items, query, mask, **kwargs)
    grads = torch.autograd.grad(
        out.square().sum(), layer.attention_parameters(0), allow_unused=True
    )
    return sum(0.0 if g is None else g.square().sum().item() for g in grads) ** 0.5


@pytest.mark.parametrize("cls", CLASSES)
def test_gradients_reach_first_layer(device, cls):
    items, query, mask = inputs(device)
    assert first_layer_grad_norm(build(cls, 4, device), items, query, mask) > 1e-6


@pytest.mark.parametrize("num_layers", [2, 4])
def test_carried_path_avoids_softmax(device, num_layers):
    """With the weights detached, only the latent variant's first layer still gets gradient."""
    items, query, mask = inputs(device)
    plain = build(StackedAttention, num_layers, device)
    latent = build(StackedLatentAttention, num_layers, device)
    assert first_layer_grad_norm(plain, items, query, mask, detach_weights=True) == 0.0
    assert first_layer_grad_norm(latent, items, query, mask, detach_weights=True) > 1e-6
    # the plain variant does get gradient when the softmax path is open
    assert first_layer_grad_norm(plain, items, query, mask) > 1e-6
    # without the first layer's own pooled map G^1 g^1, the gradient arrives through the
    # latent map carried into the later layers
    with torch.no_grad():
        latent.layers[0].pool.weight.zero_()
    assert first_layer_grad_norm(latent, items, query, mask, detach_weights=True) > 1e-6


def test_pooled_map_is_the_only_softmax_free_path_at_depth_one(device):
    items, query, mask = inputs(device)
    layer = build(StackedLatentAttention, 1, device)
    assert first_layer_grad_norm(layer, items, query, mask, detach_weights=True) > 1e-6
    with torch.no_grad():
        layer.layers[0].pool.weight.zero_()
    assert first_layer_grad_norm(layer, items, query, mask, detach_weights=True) == 0.0


def test_attention_parameters_index():
    layer = StackedLatentAttention(DV, DQ, H, 3)
    assert layer.attention_parameters(-1)[0] is layer.layers[2].item_map.weight
    with pytest.raises(ValueError, match="layer=3 is out of range"):
        layer.attention_parameters(3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"num_layers": 2.0}, "num_layers must be a positive integer"),
        ({"num_layers": True}, "num_layers must be a positive integer"),
        ({"hidden_dim": -1}, "hidden_dim must be a positive integer"),
        ({"item_dim": None}, "item_dim must be a positive integer"),
    ],
)
@pytest.mark.parametrize("cls", CLASSES)
def test_bad_constructor_arguments(cls, kwargs, match):
    args = {"item_dim": DV, "query_dim": DQ, "hidden_dim": H, "num_layers": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(**args)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_inputs(device, cls):
    items, query, mask = inputs(device)
    layer = build(cls, 2, device)
    cases = [
        ((items.tolist(), query), "items must be a torch.Tensor"),
        ((items.long(), query), "items must have a floating dtype"),
        ((items[0], query), r"items must have shape \(batch, num_items, 6\)"),
        ((items, query[0]), r"query must have shape \(batch, 4\)"),
        ((items[..., :5], query), "items has 5 features .* item_dim=6"),
        ((items, query[:, :3]), "query has 3 features .* query_dim=4"),
        ((items, query[:2]), "items has batch size 3 but query has 2"),
        ((items[:, :0], query), "items is empty"),
        ((items, query.float()), "must share dtype and device"),
        ((items.float(), query.float()), r"move the module with module.to\(items\)"),
        ((items, query, mask.long()), "mask must be a boolean tensor"),
        ((items, query, mask[:, :4]), r"mask must have shape \(batch, num_items\)"),
        ((items, query, mask & (torch.arange(B, device=device) != 1)[:, None]), "no True"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            layer(*args)
