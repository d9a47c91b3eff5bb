"""AutoAlignmentGuide gives every method to a model that exists only in these tests."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDelta
from pyro.optim import ClippedAdam

from pyro_attention import alignment, attend
from pyro_attention.guides import AutoAlignmentGuide
from pyro_attention.infer import get_method

KEYS = torch.tensor([-2.0, -0.5, 0.5, 2.0])
TRUE_VALUES = torch.tensor([-3.0, 1.0, -1.0, 3.0])


def lookup_model(queries, targets, subsample_size=None):
    """Each query attends to one of four keys (prior: closeness) and emits that key's value."""
    keys = KEYS.to(queries)
    values = pyro.sample("values", dist.Normal(queries.new_zeros(4), 3.0).to_event(1))
    noise = pyro.sample("noise", dist.LogNormal(queries.new_tensor(-1.0), 0.5))
    with pyro.plate("data", len(queries), subsample_size=subsample_size) as idx:
        q = queries.index_select(0, idx)
        logits = -((q.unsqueeze(-1) - keys) ** 2)
        z = alignment("choice", logits)
        pyro.sample(
            "y",
            dist.Normal(attend(values.unsqueeze(-1), z)[..., 0], noise),
            obs=targets.index_select(0, idx),
        )


def make_data(device, n=300):
    g = torch.Generator().manual_seed(0)
    queries = 4 * torch.rand(n, generator=g) - 2
    z = torch.distributions.Categorical(logits=-((queries.unsqueeze(-1) - KEYS) ** 2)).sample()
    targets = TRUE_VALUES[z] + 0.3 * torch.randn(n, generator=g)
    return queries.to(device), targets.to(device)


def run(method_name, device, steps=150, **kwargs):
    queries, targets = make_data(device)
    method = get_method(method_name)
    guide = AutoAlignmentGuide(lookup_model, method)
    svi = SVI(method.prepare(lookup_model), guide, ClippedAdam({"lr": 0.05}), method.loss(1))
    losses = []
    for _ in range(steps):
        value = svi.step(queries, targets, **kwargs)
        losses.append(value[0] if isinstance(value, tuple) else value)
    trace = poutine.trace(guide).get_trace(queries, targets, **kwargs)
    return guide, losses, trace


EXPECTED_GUIDE_SITE = {
    "enum": None,
    "soft": None,
    "vi-enum": dist.Categorical,
    "reinforce": dist.Categorical,
    "rws": dist.Categorical,
    "hard": dist.Categorical,
    "gumbel": dist.RelaxedOneHotCategoricalStraightThrough,
    "dirichlet": dist.Dirichlet,
}


@pytest.mark.parametrize("method", list(EXPECTED_GUIDE_SITE))
def test_every_method_gets_a_matching_guide(device, method):
    guide, losses, trace = run(method, device, steps=40)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert sorted(guide.global_site_names()) == ["noise", "values"]
    expected = EXPECTED_GUIDE_SITE[method]
    if expected is None:
        assert "choice" not in trace.nodes
    else:
        assert isinstance(trace.nodes["choice"]["fn"], expected)
        assert trace.nodes["choice"]["value"].shape[0] == 300
    if method == "vi-enum":
        assert trace.nodes["choice"]["infer"]["enumerate"] == "parallel"
    if method in ("reinforce", "hard"):
        assert "baseline" in trace.nodes["choice"]["infer"]


def test_enum_recovers_the_values(device):
    guide, losses, _ = run("enum", device, steps=600)
    learned = guide.global_guide.median()["values"]
    torch.testing.assert_close(learned.cpu(), TRUE_VALUES, atol=0.35, rtol=0)
    assert losses[-1] < losses[0]


def test_hard_samples_from_the_model_prior(device):
    """q(z) of 'hard' is the model's own prior given the sampled globals."""
    queries, targets = make_data(device)
    guide = AutoAlignmentGuide(lookup_model, "prior")
    trace = poutine.trace(guide).get_trace(queries, targets)
    expected = torch.softmax(-((queries.unsqueeze(-1) - KEYS.to(queries)) ** 2), -1)
    torch.testing.assert_close(trace.nodes["choice"]["fn"].probs, expected)


def test_local_parameters_follow_the_subsample(device):
    queries, targets = make_data(device)
    guide = AutoAlignmentGuide(lookup_model, "categorical")
    trace = poutine.trace(guide).get_trace(queries, targets, subsample_size=50)
    assert trace.nodes["choice"]["value"].shape == (50,)
    full = guide.local.choice
    assert full.shape == (300, 4)
    with torch.no_grad():
        full[:, 2] = 50.0  # every point now prefers item 2
    trace = poutine.trace(guide).get_trace(queries, targets, subsample_size=50)
    idx = trace.nodes["data"]["value"]
    assert torch.equal(trace.nodes["choice"]["fn"].logits.argmax(-1), torch.full_like(idx, 2))


def test_subsampled_svi_runs(device):
    _, _, trace = run("reinforce", device, steps=30, subsample_size=64)
    assert trace.nodes["choice"]["value"].shape == (64,)


class Encoder(torch.nn.Module):
    """q(choice | query, target): a linear map of the pair, for the current subsample."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 4)

    def forward(self, name, plates, queries, targets, subsample_size=None):
        idx = plates["data"].indices
        return self.net(torch.stack([queries[idx], targets[idx]], -1))


def test_amortized_encoder_is_trained(device):
    queries, targets = make_data(device)
    encoder = Encoder().to(device)
    method = get_method("reinforce")
    guide = AutoAlignmentGuide(lookup_model, method, encoder=encoder)
    before = encoder.net.weight.detach().clone()
    svi = SVI(lookup_model, guide, ClippedAdam({"lr": 0.05}), method.loss(1))
    for _ in range(5):
        svi.step(queries, targets, subsample_size=32)
    assert not torch.equal(before, encoder.net.weight.detach())
    assert not hasattr(guide.local, "choice")


def test_custom_global_guide(device):
    queries, targets = make_data(device)
    guide = AutoAlignmentGuide(lookup_model, "marginalized", global_guide=AutoDelta)
    guide(queries, targets)
    assert isinstance(guide.global_guide, AutoDelta)


def test_unknown_method_refused():
    with pytest.raises(ValueError, match=r"guide kind .magic. is unknown"):
        AutoAlignmentGuide(lookup_model, "magic")
    pyro.clear_param_store()
