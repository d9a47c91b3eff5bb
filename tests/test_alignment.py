"""The primitive: alignment sites and attend() for every form z takes."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_attention import alignment, attend
from pyro_attention.alignment import is_alignment_site


def test_site_is_tagged_categorical(device):
    logits = torch.randn(5, 3, device=device)
    trace = poutine.trace(lambda: alignment("z", logits)).get_trace()
    site = trace.nodes["z"]
    assert is_alignment_site(site)
    assert isinstance(site["fn"], dist.Categorical)
    assert site["value"].shape == (5,)
    assert site["value"].device.type == device.type


def test_mask_gives_no_mass(device):
    logits = torch.zeros(4, 3, device=device)
    mask = torch.tensor([True, False, True], device=device).expand(4, 3)
    trace = poutine.trace(lambda: alignment("z", logits, mask=mask)).get_trace()
    probs = trace.nodes["z"]["fn"].probs
    assert torch.all(probs[:, 1] == 0)
    torch.testing.assert_close(probs[:, 0], torch.full((4,), 0.5, device=device))
    for _ in range(20):
        z = poutine.trace(lambda: alignment("z", logits, mask=mask)).get_trace().nodes["z"]
        assert not (z["value"] == 1).any()


def test_bad_masks_refused(device):
    logits = torch.zeros(2, 3, device=device)
    with pytest.raises(TypeError, match="mask must be a boolean"):
        alignment("z", logits, mask=torch.ones(2, 3, device=device))
    empty_row = torch.tensor([[True, True, False], [False, False, False]], device=device)
    with pytest.raises(ValueError, match="excludes every item"):
        alignment("z", logits, mask=empty_row)


def test_attend_index_one_hot_and_simplex_agree(device):
    values = torch.randn(4, 3, 2, device=device, dtype=torch.float64)  # batch 4, K 3, event 2
    z = torch.tensor([0, 2, 1, 2], device=device)
    by_index = attend(values, z)
    one_hot = torch.nn.functional.one_hot(z, 3).to(values.dtype)
    torch.testing.assert_close(attend(values, one_hot), by_index)
    weights = torch.softmax(torch.randn(4, 3, device=device, dtype=torch.float64), -1)
    expected = torch.einsum("bk,bkd->bd", weights, values)
    torch.testing.assert_close(attend(values, weights), expected)


def test_attend_matrices_event_dim_2(device):
    values = torch.randn(3, 2, 2, device=device)
    z = torch.tensor([2, 0], device=device)
    torch.testing.assert_close(attend(values, z, event_dim=2), values[[2, 0]])


def test_attend_with_enumeration_dims(device):
    """Under TraceEnum, z has shape (K, 1) on the left of the plate: one result per value."""
    locs = torch.tensor([[-1.0], [0.0], [2.0]], device=device)
    data = torch.tensor([0.1, 1.9], device=device)
    shapes = {}

    @config_enumerate
    def model():
        with pyro.plate("data", 2):
            z = alignment("z", torch.zeros(3, device=device))
            loc = attend(locs, z)[..., 0]
            shapes["z"], shapes["loc"] = z.shape, loc.shape
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda: None)
    assert shapes["z"] == (3, 1)
    assert shapes["loc"] == (3, 1)


def test_attend_refuses_wrong_item_count(device):
    with pytest.raises(ValueError, match="items"):
        attend(torch.randn(3, 2, device=device), torch.full((4,), 0.25, device=device))
