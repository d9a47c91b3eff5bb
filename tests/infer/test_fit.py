"""The fit loop: checkpoint/resume, the non-finite guard, method objects by hand."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_attention.data import load_gmm2d
from pyro_attention.infer import NonFiniteLossError, fit, get_method, method_names
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.models import BayesianGMM


def test_registry_names_and_objects():
    assert {
        "enum",
        "reinforce",
        "rws",
        "gumbel",
        "dirichlet",
        "vi-enum",
        "soft",
        "hard",
        "cavi",
        "em",
        "nuts",
    } <= set(method_names())
    method = get_method("gumbel", temperature=0.7)
    assert method.temperature == 0.7
    assert get_method(method) is method
    for name in method_names():
        m = get_method(name)
        assert isinstance(m, InferenceMethod) and m.name == name


def test_svi_assembled_by_hand(device):
    data = load_gmm2d(device=device).train
    gmm = BayesianGMM(4, 2)
    gmm.initialize(data)
    method = get_method("reinforce")
    svi = SVI(
        method.prepare(gmm.model),
        method.guide(gmm),
        ClippedAdam({"lr": 0.05}),
        method.loss(gmm.max_plate_nesting),
    )
    losses = [svi.step(data) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_checkpoint_resume_continues_where_it_stopped(device, tmp_path):
    data = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2, "diag")
    path = tmp_path / "ckpt" / "enum.pt"
    full = fit(gmm, data, "enum", num_steps=40, seed=1, progress=False)
    reference = {k: v.detach().clone() for k, v in full.params["params"].items()}

    pyro.clear_param_store()
    first = fit(
        gmm, data, "enum", num_steps=20, seed=1, progress=False, checkpoint=path, checkpoint_every=5
    )
    assert first.steps == 20 and path.exists()
    assert not list(path.parent.glob("*.tmp"))
    pyro.clear_param_store()
    resumed = fit(gmm, data, "enum", num_steps=40, seed=123, progress=False, checkpoint=path)
    assert resumed.steps == 40
    assert resumed.losses[:20] == first.losses
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(full.losses))
    assert set(resumed.params["params"]) == set(reference)
    for name, value in resumed.params["params"].items():
        torch.testing.assert_close(value.detach(), reference[name])


def test_checkpoint_of_another_method_refused(device, tmp_path):
    data = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2, "diag")
    path = tmp_path / "run.pt"
    fit(gmm, data, "enum", num_steps=3, progress=False, checkpoint=path)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="written by method 'enum'"):
        fit(gmm, data, "reinforce", num_steps=3, progress=False, checkpoint=path)


def test_checkpoint_of_another_model_shape_refused(device, tmp_path):
    data = load_gmm2d(device=device).train
    path = tmp_path / "run.pt"
    fit(BayesianGMM(3, 2, "diag"), data, "enum", num_steps=3, progress=False, checkpoint=path)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"does not fit this model \(parameter .* has shape"):
        fit(BayesianGMM(4, 2, "diag"), data, "enum", num_steps=3, progress=False, checkpoint=path)


def test_non_finite_loss_stops_and_keeps_last_good_state(device, tmp_path):
    data = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2, "diag")
    calls = {"n": 0}
    original = gmm.model

    def poisoned(data, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:  # the objective turns infinite from the 12th step on
            pyro.factor("poison", data.new_tensor(float("-inf")))
        return original(data, **kwargs)

    gmm.model = poisoned
    path = tmp_path / "nan.pt"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+") as info:
        fit(gmm, data, "enum", num_steps=50, progress=False, checkpoint=path)
    result = info.value.result
    assert result.steps >= 1 and all(torch.isfinite(torch.tensor(result.losses)))
    for _, value in pyro.get_param_store().named_parameters():
        assert torch.isfinite(value).all()
    saved = torch.load(path, weights_only=False)
    assert saved["step"] == result.steps
    assert saved["optim"] is None  # the optimiser's moments after the bad step are not kept
    gmm.model = original  # the run resumes from the last good parameters
    resumed = fit(gmm, data, "enum", num_steps=result.steps + 5, progress=False, checkpoint=path)
    assert resumed.steps == result.steps + 5 and resumed.losses[: result.steps] == result.losses


def test_a_non_finite_gradient_leaves_the_parameters_of_the_step_before(device):
    """A step whose loss is finite but whose gradient is NaN is not applied: the parameters
    are exactly those of a run stopped one step earlier."""
    data = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2, "diag")
    original = gmm.model

    def poisoned_after(calls_before_poison):
        calls = {"n": 0}

        def model(data, **kwargs):
            calls["n"] += 1
            scale = pyro.param("poison_scale", data.new_tensor(1.0))
            if calls["n"] > calls_before_poison:  # value 0, gradient NaN (the where trap)
                value = torch.where(data.new_tensor(True).bool(), 0.0, torch.sqrt(-scale))
            else:
                value = 0.0 * scale
            pyro.factor("poison", value)
            return original(data, **kwargs)

        return model

    gmm.model = poisoned_after(12)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient at step") as info:
        fit(gmm, data, "enum", num_steps=50, progress=False, seed=3)
    cut = info.value.result
    gmm.model = poisoned_after(10**9)
    clean = fit(gmm, data, "enum", num_steps=cut.steps, progress=False, seed=3)
    assert clean.losses == cut.losses
    with cut.scope():
        after_cut = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with clean.scope():
        after_clean = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert after_cut.keys() == after_clean.keys() and "poison_scale" in after_cut
    for name, value in after_cut.items():
        assert torch.isfinite(value).all() and torch.equal(value, after_clean[name]), name


def test_a_loss_made_non_finite_by_an_update_keeps_the_parameters_before_it(device):
    """An update from finite gradients can move a parameter where the model is undefined
    (here a parameter under a square root goes negative): the parameters kept are those of the
    last finite loss, which score finitely, not those the update produced."""
    data = torch.randn(100, generator=torch.Generator().manual_seed(0)).to(device) - 3.0

    def model(data):
        a = pyro.param("a", data.new_tensor(1.0))
        mu = pyro.sample("mu", dist.Normal(data.new_tensor(0.0), 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu + torch.sqrt(a), 1.0), obs=data)

    with pytest.raises(NonFiniteLossError, match="non-finite loss at step") as info:
        fit(model, data, "map", num_steps=300, lr=0.05, progress=False, seed=0)
    cut = info.value.result
    with cut.scope():
        kept = pyro.param("a").item()
        mu = pyro.param("AutoAlignmentGuide.global_guide.mu")
        trace = poutine.trace(poutine.condition(model, {"mu": mu}))
        log_joint = trace.get_trace(data).log_prob_sum()
    assert kept > 0 and torch.isfinite(log_joint)
    clean = fit(model, data, "map", num_steps=cut.steps - 1, lr=0.05, progress=False, seed=0)
    with clean.scope():
        assert pyro.param("a").item() == kept  # the parameters the last finite loss was at


def test_an_update_that_leaves_a_parameter_non_finite_is_undone_at_the_end(device):
    """No later loss shows a non-finite parameter left by the last update: ``finish()`` does,
    and puts back the parameters that update started from."""
    from pyro_attention.infer.fit import GuardedStep

    data = torch.randn(20, generator=torch.Generator().manual_seed(0)).to(device)

    def model(data):
        loc = pyro.param("loc", data.new_tensor(0.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    pyro.clear_param_store()
    step = GuardedStep(SVI(model, lambda data: None, ClippedAdam({"lr": 0.1}), Trace_ELBO()))
    value, applied = step(data)
    assert applied and math.isfinite(value) and step.finish()
    before = pyro.param("loc").item()
    step(data)
    with torch.no_grad():
        pyro.param("loc").unconstrained().fill_(math.inf)  # as an overflowing update would
    assert not step.finish()
    assert pyro.param("loc").item() == before  # what the last update started from
    value, applied = step(data)  # the restored parameters step on
    assert applied and math.isfinite(value)


def test_the_guard_keeps_ELBO_state_and_survives_what_raises(device, tmp_path):
    """A decaying-average baseline that a glitched point made NaN is put back with the other
    parameters (the ELBO replaces that tensor every step), so the run resumes cleanly; a
    Cholesky that an update broke stops the run like a non-finite loss; a guide without
    parameters steps."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    data = centers[torch.randint(3, (300,), generator=g)] + torch.randn(300, 2, generator=g)
    data = data.to(device)
    gmm = BayesianGMM(3, 2, "diag")
    clean, calls = gmm.model, {"n": 0}

    def glitched(data, **kwargs):  # one call sees one overflowing point
        calls["n"] += 1
        if calls["n"] == 12:
            data = data.clone()
            data[5] = 3e19
        return clean(data, **kwargs)

    gmm.model = glitched
    path = tmp_path / "reinforce.pt"
    with pytest.raises(NonFiniteLossError, match="non-finite loss") as info:
        fit(gmm, data, "reinforce", num_steps=30, progress=False, seed=0, checkpoint=path)
    kept = info.value.result.params["params"]
    assert any("baseline" in name for name in kept)
    assert all(torch.isfinite(value).all() for value in kept.values())
    gmm.model = clean
    assert fit(gmm, data, "reinforce", num_steps=30, progress=False, checkpoint=path).steps == 30

    with pytest.raises(NonFiniteLossError, match="LinAlgError") as info:
        fit(BayesianGMM(3, 2), data, "enum", num_steps=150, lr=10.0, progress=False, seed=0)
    assert all(torch.isfinite(v).all() for v in info.value.result.params["params"].values())

    def model(data):
        mu = pyro.sample("mu", dist.Normal(data.new_tensor(0.0), 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    def fixed_guide(data):
        pyro.sample("mu", dist.Normal(data.new_tensor(-3.0), 0.1))

    points = data[:, 0]
    assert fit(model, points, "svi", num_steps=5, guide=fixed_guide, progress=False).steps == 5


def test_closed_form_and_nuts_results(device):
    data = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2)
    cavi = fit(gmm, data, "cavi", progress=False)
    assert cavi.status == "ok" and cavi.draws(7).samples["locs"].shape == (7, 3, 2)
    assert cavi.draws(7).log_density.shape == (7,)
    em = fit(gmm, data, "em", progress=False)
    assert em.draws(7).samples["locs"].shape == (1, 3, 2)
    nuts = fit(
        gmm, data, get_method("nuts", num_samples=10, warmup_steps=10, num_chains=2), progress=False
    )
    assert nuts.chains_shape() == (2, 10)
    assert nuts.chains["locs"].dtype == data.dtype
    assert nuts.chains is not None and nuts.extra["divergences"] >= 0
    assert np.isfinite(nuts.extra["max_rhat"]) and np.isfinite(nuts.extra["min_ess"])
    assert nuts.status == "ok" or nuts.status.startswith("warn: ")
    json.dumps({"steps": nuts.steps, "seconds": nuts.seconds})


def test_the_first_fit_of_a_process_does_not_time_torchs_lazy_import():
    """torch imports ``torch._dynamo`` when a process builds its first optimiser (about a
    second): fit's clock starts after that import, so the first method of a comparison is not
    charged for it."""
    code = """
import importlib, sys, time
import torch
fit_module = importlib.import_module("pyro_attention.infer.fit")
from pyro_attention.data import load_gmm2d
from pyro_attention.models import BayesianGMM
readings = []
real = time.perf_counter
class Clock:
    @staticmethod
    def perf_counter():
        readings.append("torch._dynamo" in sys.modules)
        return real()
assert "torch._dynamo" not in sys.modules
fit_module.time = Clock
fit_module.fit(BayesianGMM(3, 2), load_gmm2d().train, "enum", num_steps=2, progress=False)
print(readings)
assert readings and all(readings), readings
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("method", ["enum", "nuts"])
def test_each_seed_starts_from_its_own_initialisation(method, monkeypatch):
    """A model whose ``initialize`` takes a seed (the mixtures' k-means++ start) gets the fit's:
    the seeds of a comparison differ in their start, not only in their noise."""
    data = load_gmm2d().train[:200]
    starts = []
    original = BayesianGMM.initialize

    def recording(self, data, seed=0):
        original(self, data, seed=seed)
        starts.append((seed, self._init_values["locs"].clone()))

    monkeypatch.setattr(BayesianGMM, "initialize", recording)
    if method == "nuts":
        method_obj = get_method("nuts", num_samples=4, warmup_steps=1, num_chains=1)
        options = {}
    else:
        method_obj, options = get_method(method), {"num_steps": 1}
    for seed in (0, 1):
        fit(BayesianGMM(4, 2, "diag"), data, method_obj, seed=seed, progress=False, **options)
    assert [seed for seed, _ in starts] == [0, 1]
    assert not torch.allclose(starts[0][1], starts[1][1])
