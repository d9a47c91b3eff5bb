"""The SGPA classifier as a Pyro model: its sites, the methods the contract derives for it, an
ELBO in which the noise cancels and the KL scale weights the KL alone, and a held-out
likelihood without the variational terms."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroParam

from pyro_attention import handlers
from pyro_attention.data import ClassificationData
from pyro_attention.gp import is_gp_noise_site, is_variational_term
from pyro_attention.infer import applicable_methods, check_model, fit, get_method
from pyro_attention.infer.evaluate import pointwise_log_likelihood
from pyro_attention.models import GPAttentionClassifier, inspect_model
from pyro_attention.nn.sgpa import whitened_kl


def _data(n: int = 12, seed: int = 0) -> ClassificationData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(n, 4, dtype=torch.bool)
    mask[::2, 3] = False
    return ClassificationData(x, mask, (x[..., 0].sum(-1) > 0).long(), 3)


def _model(**kw) -> GPAttentionClassifier:
    torch.manual_seed(0)
    options = {"num_classes": 3, "feature_dim": 3, "max_len": 4, "d_model": 4, "num_heads": 2}
    options.update(num_inducing=3, num_layers=2)
    options.update(kw)
    return GPAttentionClassifier(**options).double()


def test_sites_and_the_methods_the_contract_derives():
    model, data = _model(), _data()
    structure = inspect_model(model, data)
    assert structure.global_sites == ("layer0.u", "layer1.u")
    assert set(structure.local_sites) == {"layer0.eps", "layer1.eps"}
    assert not structure.alignment_sites and structure.network_parameters
    assert list(applicable_methods(structure)) == ["svi", "svi-kl", "map"]
    with pytest.raises(ValueError, match=r"method .enum. does not apply.*alignment sites"):
        get_method("enum").check(structure)
    with pytest.raises(ValueError, match=r"method .nuts. does not apply.*network parameters"):
        get_method("nuts").check(structure)
    check_model(model, data)  # the evaluator can vectorize it over draws


def test_noise_cancels_and_the_kl_terms_are_variational():
    model, data = _model(), _data()
    guide = model.guide(get_method("svi").guide_spec())
    guide_trace = poutine.trace(guide).get_trace(data)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(data)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    noise = [n for n, s in model_trace.nodes.items() if is_gp_noise_site(s)]
    assert noise == ["layer0.eps", "layer1.eps"]
    for name in noise:
        torch.testing.assert_close(
            model_trace.nodes[name]["log_prob"], guide_trace.nodes[name]["log_prob"]
        )
    terms = [n for n, s in model_trace.nodes.items() if is_variational_term(s)]
    assert terms == ["layer0.kl", "layer1.kl"]
    # the guide of each u is one MVN per head and output dim, under the model's scale
    fn = guide_trace.nodes["layer0.u"]["fn"]
    assert fn.base_dist.scale_tril.shape == (2, 2, 3, 3)


def test_heldout_likelihood_is_the_predictive_without_the_kl_terms():
    """Under map's predictive (noise at zero) the pointwise log-likelihood is exactly
    log softmax(logits)[y] of a hand-run forward pass: no KL term leaks into it."""
    model, data = _model(), _data()
    u = {
        f"layer{i}.u": torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=g)
        for i, g in enumerate([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    }
    predictive = get_method("map").predictive(model.model)
    got = pointwise_log_likelihood(predictive, u, data, max_plate_nesting=1)
    with poutine.block(), handlers.gp_mean():
        logits = model.logits(data, [u["layer0.u"][0], u["layer1.u"][0]])
    want = torch.log_softmax(logits, -1).gather(-1, data.labels[:, None]).squeeze(-1)
    torch.testing.assert_close(got[0], want, rtol=1e-12, atol=1e-12)


def test_kl_scale_weights_the_global_kl_only():
    """With the noise and the guide's draws fixed by the seed, the svi-kl loss at κ differs
    from the loss at 1 by exactly (κ − 1) · KL(q(u) ‖ p(u))."""
    data = _data()
    losses, kls = [], []
    for scale in (1.0, 7.0):
        model = _model(kl_scale=scale)
        guide = model.guide(get_method("svi-kl").guide_spec())
        guide(data)  # set up, then move the guide off the prior so the KL is not 0
        gen = torch.Generator().manual_seed(3)
        for i in range(2):
            loc = 0.3 * torch.randn(2, 2, 3, generator=gen, dtype=torch.float64)
            tril = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(
                2, 2, 3, 3, generator=gen, dtype=torch.float64
            ).tril(-1)
            deep_setattr(guide.global_guide.locs, f"layer{i}.u", PyroParam(loc))
            deep_setattr(
                guide.global_guide.scale_trils,
                f"layer{i}.u",
                PyroParam(tril, constraints.lower_cholesky),
            )
        pyro.set_rng_seed(4)
        losses.append(TraceMeanField_ELBO().differentiable_loss(model.model, guide, data))
        inner = guide.global_guide
        kls.append(
            sum(
                whitened_kl(
                    getattr(inner.locs, f"layer{i}").u,
                    getattr(inner.scale_trils, f"layer{i}").u,
                )
                for i in range(2)
            )
        )
    torch.testing.assert_close(kls[0], kls[1])
    torch.testing.assert_close(losses[1] - losses[0], 6.0 * kls[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["svi", "svi-kl", "map"])
@pytest.mark.parametrize(
    "options",
    [
        {"variant": "decoupled", "covariance": "diag"},
        {"variant": "standard", "covariance": "full", "kernel": "rbf"},
        {"attention": "softmax", "num_layers": 1},
    ],
)
def test_every_variant_trains_under_every_method(method, options, device):
    model, data = _model(**options).to(device), _data(24).to(device)
    result = fit(model, data, method, num_steps=40, lr=0.02, seed=0, progress=False)
    assert result.status == "ok"
    assert result.losses[-1] < result.losses[0]
    draws = result.draws(2)
    assert all(value.device.type == device.type for value in draws.samples.values())


def test_map_is_deterministic_and_svi_is_not():
    model, data = _model(), _data()
    with poutine.block():
        runs = [poutine.trace(model.model).get_trace(data) for _ in range(2)]
        fixed = [poutine.trace(handlers.gp_mean()(model.model)).get_trace(data) for _ in range(2)]
    u = {n: runs[0].nodes[n]["value"] for n in ("layer0.u", "layer1.u")}

    def y_logits(trace_fn):
        return trace_fn(poutine.condition(model.model, u)).get_trace(data).nodes["y"]["fn"].logits

    with poutine.block():
        a = y_logits(lambda m: poutine.trace(handlers.gp_mean()(m)))
        b = y_logits(lambda m: poutine.trace(handlers.gp_mean()(m)))
        c = y_logits(poutine.trace)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert fixed[0].nodes["layer0.eps"]["is_observed"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_dim": None}, "exactly one of feature_dim"),
        ({"vocab_size": 9}, "exactly one of feature_dim"),
        ({"attention": "linear"}, "attention must be one of"),
        ({"kernel": "cosine"}, "kernel one of"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"max_len": 0}, "max_len must be a positive integer"),
        ({"d_model": 5}, "multiple of num_heads"),
        ({"num_inducing": 0}, "num_inducing must be a positive integer"),
        ({"dropout": 1.0}, "dropout must lie in"),
        ({"kl_scale": 0.0}, "kl_scale must be a finite positive number"),
        ({"kl_scale": float("inf")}, "kl_scale must be a finite positive number"),
        ({"init_scale": 0.0}, "init_scale must be a finite positive number"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


def test_bad_data_is_refused_before_work():
    model = _model()
    data = _data()
    with pytest.raises(TypeError, match="ClassificationData"):
        model.check_data(data.inputs)
    with pytest.raises(ValueError, match="reads 3 features per token"):
        model.check_data(ClassificationData(data.inputs[..., :2], data.mask, data.labels, 3))
    longer = ClassificationData(
        torch.randn(2, 6, 3, dtype=torch.float64),
        torch.ones(2, 6, dtype=torch.bool),
        torch.zeros(2, dtype=torch.long),
        3,
    )
    with pytest.raises(ValueError, match="padded to length 6 > max_len=4"):
        model.check_data(longer)
    with pytest.raises(ValueError, match=r"are torch\.float32 but the model is torch\.float64"):
        model.check_data(data.to(dtype=torch.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        ClassificationData(data.inputs * float("nan"), data.mask, data.labels, 3)
    with pytest.raises(ValueError, match="no real token"):
        ClassificationData(data.inputs, torch.zeros_like(data.mask), data.labels, 3)
    with pytest.raises(TypeError, match="ClassificationData"):
        fit(model, data.inputs, "svi", num_steps=1, progress=False)


def test_map_drops_the_variational_terms():
    """A point estimate has no posterior whose KL the terms would be: gp_mean zeroes them."""
    model, data = _model(), _data()
    with poutine.block():
        plain = poutine.trace(model.model).get_trace(data)
        fixed = poutine.trace(handlers.gp_mean()(model.model)).get_trace(data)
    plain.compute_log_prob()
    fixed.compute_log_prob()
    assert (plain.nodes["layer0.kl"]["log_prob"] < 0).all()
    assert (fixed.nodes["layer0.kl"]["log_prob"] == 0).all()


@pytest.mark.parametrize("options", [{"variant": "standard"}, {"attention": "softmax"}])
def test_compare_scores_models_without_global_latents(options):
    from pyro_attention.infer import compare

    comparison = compare(
        _model(num_layers=1, **options), _data(24), _data(12, seed=1), num_steps=3,
        num_samples=3, progress=False,
    )
    assert [row["method"] for row in comparison.rows] == ["svi", "svi-kl", "map"]
    assert all(row["status"] == "ok" for row in comparison.rows)


def test_compare_writes_trees_with_named_dims(tmp_path):
    import xarray as xr

    from pyro_attention.infer import compare

    comparison = compare(
        _model(num_layers=1), _data(24), _data(12, seed=1), ["svi-kl", "map"],
        num_steps=3, num_samples=3, out=tmp_path, progress=False,
    )
    assert all(row["status"] == "ok" for row in comparison.rows)
    tree = xr.open_datatree(tmp_path / "svi-kl.nc")
    assert dict(tree.posterior["layer0.u"].sizes) == {
        "chain": 1, "draw": 3, "head": 2, "value_dim": 2, "inducing": 3
    }
    assert "sequence" in tree.log_likelihood["y"].dims
