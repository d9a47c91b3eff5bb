"""k-hop pointer chasing: targets by brute force, structure of the pointers, seeding, checks."""

import pytest
import torch

from pyro_attention.data import PointerChasing, make_pointer_chasing


@pytest.mark.parametrize("pointers", ["cycle", "permutation", "function"])
@pytest.mark.parametrize("hops", [0, 1, 3, 7])
def test_target_is_brute_force_pointer_following(device, pointers, hops):
    data = make_pointer_chasing(
        50, num_items=6, key_dim=5, hops=hops, seed=3, pointers=pointers, device=device
    )
    assert isinstance(data, PointerChasing)
    for e in range(50):
        keys, items = data.keys[e].tolist(), data.items[e].tolist()
        # follow the pointers using the features only: find the item whose key is the query
        current = keys.index(data.query[e].tolist())
        visited = [current]
        for _ in range(hops):
            next_key = items[current][5:]
            current = keys.index(next_key)
            visited.append(current)
        assert current == data.target[e].item()
        assert visited == data.path[e].tolist()


def test_shapes_dtypes_and_features(device):
    data = make_pointer_chasing(
        7, num_items=4, key_dim=3, hops=2, seed=0, device=device, dtype=torch.float64
    )
    assert data.items.shape == (7, 4, 6) and data.items.dtype == torch.float64
    assert data.query.shape == (7, 3) and data.keys.shape == (7, 4, 3)
    assert data.target.shape == (7,) and data.target.dtype == torch.long
    assert data.pointers.shape == (7, 4) and data.path.shape == (7, 3)
    assert all(x.device.type == device.type for x in data)
    rows = torch.arange(7, device=device)[:, None]
    torch.testing.assert_close(data.items[..., :3], data.keys)
    torch.testing.assert_close(data.items[..., 3:], data.keys[rows, data.pointers])
    torch.testing.assert_close(
        data.query, data.keys[torch.arange(7, device=device), data.path[:, 0]]
    )


def test_pointer_structures():
    N = 7
    cyc = make_pointer_chasing(200, num_items=N, key_dim=4, seed=1, pointers="cycle")
    perm = make_pointer_chasing(200, num_items=N, key_dim=4, seed=1, pointers="permutation")
    func = make_pointer_chasing(200, num_items=N, key_dim=4, seed=1, pointers="function")
    for p in cyc.pointers.tolist():  # one cycle through every item
        seen, i = [], 0
        for _ in range(N):
            seen.append(i)
            i = p[i]
        assert i == 0 and sorted(seen) == list(range(N))
    assert all(sorted(p) == list(range(N)) for p in perm.pointers.tolist())
    fixed_points = (perm.pointers == torch.arange(N)).any(-1)
    assert fixed_points.any()  # a random permutation has fixed points now and then
    assert (func.pointers != torch.arange(N)).all()  # never points to itself
    assert any(len(set(p)) < N for p in func.pointers.tolist())  # collisions happen


def test_cycle_path_never_revisits():
    data = make_pointer_chasing(100, num_items=6, key_dim=4, hops=5, seed=2)
    assert all(len(set(p)) == 6 for p in data.path.tolist())


def test_sign_keys_are_distinct_signs():
    data = make_pointer_chasing(500, num_items=6, key_dim=4, seed=4, keys="sign")
    assert set(data.keys.unique().tolist()) == {-1.0, 1.0}
    same = (data.keys.unsqueeze(-2) == data.keys.unsqueeze(-3)).all(-1)
    assert (same.sum((-1, -2)) == 6).all()


def test_noise_touches_items_only():
    clean = make_pointer_chasing(20, num_items=5, key_dim=4, seed=9)
    noisy = make_pointer_chasing(20, num_items=5, key_dim=4, seed=9, noise=0.5)
    torch.testing.assert_close(noisy.query, clean.query)
    torch.testing.assert_close(noisy.keys, clean.keys)
    assert torch.equal(noisy.target, clean.target)
    diff = (noisy.items - clean.items).std().item()
    assert 0.4 < diff < 0.6


def test_seeded_reproducibility(device):
    kwargs = {"num_items": 5, "key_dim": 4, "hops": 3}
    a = make_pointer_chasing(30, seed=11, **kwargs)
    b = make_pointer_chasing(30, seed=11, device=device, **kwargs)
    c = make_pointer_chasing(30, seed=12, **kwargs)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y.cpu())
    assert not torch.equal(a.items, c.items)
    assert not torch.equal(a.target, c.target)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_examples": 0}, "num_examples must be a positive integer"),
        ({"num_items": 1}, "num_items must be an integer >= 2"),
        ({"key_dim": 0}, "key_dim must be a positive integer"),
        ({"hops": -1}, "hops must be an integer >= 0"),
        ({"hops": 1.5}, "hops must be an integer >= 0"),
        ({"seed": "a"}, "seed must be an integer"),
        ({"pointers": "tree"}, "pointers must be one of"),
        ({"keys": "onehot"}, "keys must be one of"),
        ({"keys": "sign", "key_dim": 2, "num_items": 5}, "only 4 distinct keys"),
        ({"noise": -0.1}, "noise must be a finite number >= 0"),
        ({"noise": float("nan")}, "noise must be a finite number >= 0"),
        ({"dtype": torch.int64}, "dtype must be a floating torch.dtype"),
    ],
)
def test_validation(kwargs, match):
    args = {"num_examples": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_pointer_chasing(**args)
