"""The contract between models and methods: derived applicability, registered methods, user
models, one param store per fit, failing methods that leave the others' rows."""

import importlib.util
import json
from pathlib import Path

import arviz_stats
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal
from zoo import (
    KeyValueAttention,
    ScaleMixture,
    kv_data,
    linear_regression,
    poisson_data,
    poisson_mixture,
    regression_data,
    scale_data,
)

from pyro_attention import alignment, attend
from pyro_attention.cli import main
from pyro_attention.data import load_gmm2d
from pyro_attention.diagnostics import load_datatree
from pyro_attention.infer import (
    EM,
    NUTS,
    Dirichlet,
    InferenceMethod,
    VISample,
    compare,
    fit,
    get_method,
    method_names,
    register_method,
)
from pyro_attention.infer.evaluate import check_model, pointwise_log_likelihood
from pyro_attention.infer.fit import mcmc_diagnostics
from pyro_attention.infer.registry import applicable_methods, unregister_method
from pyro_attention.infer.score_function_kl import ScoreFunctionKL_ELBO
from pyro_attention.models import AlignmentModel, BayesianGMM, FunctionModel, as_model
from pyro_attention.models.structure import inspect_model

WARMUP = Path(__file__).with_name("warmup_method.py")


def load_warmup_module():
    spec = importlib.util.spec_from_file_location("warmup_method", WARMUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- structure
def test_structure_sorts_the_sites():
    gmm = BayesianGMM(3, 2)
    s = inspect_model(gmm, load_gmm2d().train)
    assert s.alignment_sites == ("assignment",)
    assert set(s.global_sites) == {"weights", "locs", "precisions"}
    assert s.local_sites == () and s.network_parameters == ()
    assert s.closed_form_updates == {"cavi", "em"}
    kv = inspect_model(KeyValueAttention(), kv_data(20))
    assert kv.global_sites == ("scale",) and kv.network_parameters
    sm = inspect_model(ScaleMixture(), scale_data(20))
    assert sm.local_sites == ("precision",) and sm.global_sites == ("locs",)


def test_applicable_methods_are_derived_not_listed():
    gmm = inspect_model(BayesianGMM(2, 2), load_gmm2d().train)
    assert {"enum", "vi-sample", "hard-sample", "nuts", "cavi", "em"} <= set(
        applicable_methods(gmm)
    )
    assert "svi" not in applicable_methods(gmm)
    kv = inspect_model(KeyValueAttention(), kv_data(20))
    assert "nuts" not in applicable_methods(kv) and "cavi" not in applicable_methods(kv)
    reg = inspect_model(as_model(linear_regression), regression_data(20))
    assert set(applicable_methods(reg)) == {"svi", "svi-kl", "map", "nuts"}


def test_refusals_name_the_missing_capability_and_the_fix():
    data = kv_data(30)
    with pytest.raises(ValueError, match=r"network parameters.*gradient method"):
        fit(KeyValueAttention(), data, "nuts")
    with pytest.raises(ValueError, match=r"closed-form 'cavi' update.*define cavi"):
        fit(KeyValueAttention(), data, "cavi")
    with pytest.raises(ValueError, match=r"alignment sites.*pyro_attention.alignment"):
        fit(linear_regression, regression_data(30), "enum")
    with pytest.raises(ValueError, match="no discrete latent sites"):
        fit(KeyValueAttention(), data, "svi")
    with pytest.raises(ValueError, match="takes no option num_stpes"):
        fit(BayesianGMM(2, 2), load_gmm2d().train, "cavi", num_stpes=10)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"num_steps": -1}, "num_steps must be an integer >= 1"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"subsample_size": 0}, "subsample_size must be an integer >= 1"),
        ({"subsample_size": 10**6}, "larger than the"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32 - 1\], got -1"),
    ],
)
def test_bad_svi_options_are_refused_before_work(options, match):
    with pytest.raises(ValueError, match=match):
        fit(BayesianGMM(2, 2), load_gmm2d().train, "enum", progress=False, **options)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("gumbel", {"temperature": float("inf")}, "temperature must be a finite number > 0"),
        ("gumbel", {"temperature": 0.0}, "temperature must be a finite number > 0"),
        ("rws", {"num_particles": 0}, "num_particles must be an integer >= 1"),
        ("nuts", {"num_samples": 0}, "num_samples must be an integer >= 1"),
        ("nuts", {"num_chains": 0}, "num_chains must be an integer >= 1"),
        ("nuts", {"num_samples": 3}, "num_samples must be at least 4 draws per chain"),
        ("nuts", {"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ("dirichlet", {"concentration": 0.0}, "concentration"),
        ("cavi", {"max_iter": 0}, "max_iter must be an integer >= 1"),
        ("reinforce", {"num_particles": -3}, "num_particles must be an integer >= 1"),
        ("enum", {"bogus": 1}, "bad options for method 'enum'"),
    ],
)
def test_bad_method_options_are_refused(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_method(name, **options)


def test_pretraining_longer_than_the_run_is_refused():
    method = get_method("dirichlet", pretrain_steps=50)
    with pytest.raises(ValueError, match="pretrain_steps=50 leaves none of num_steps=10"):
        fit(BayesianGMM(2, 2), load_gmm2d().train, method, num_steps=10, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_data_is_refused_with_the_fix(dtype):
    data = load_gmm2d().train.to(dtype)
    with pytest.raises(TypeError, match=f"data has dtype {dtype}; inference needs float32"):
        fit(BayesianGMM(2, 2), data, "cavi", progress=False)


# ----------------------------------------------------------------------------- the fixes
def test_score_function_kl_elbo_counts_the_autoguide_log_density():
    """With continuous globals the paper's ELBO equals Trace_ELBO's estimate on the same draws
    when q(z) is a point mass (then KL(q || p) = -log p(z*) exactly): the autoguide's
    unconstrained sites are part of log q(θ) and must be counted, not looked up in the model."""
    data = load_gmm2d().train[:200].double()
    gmm = BayesianGMM(3, 2)
    guide = VISample(baseline="none").guide(gmm)
    guide(data)
    with torch.no_grad():  # q(z_n) puts all its mass on one component per point
        logits = guide.local.assignment_unconstrained
        peaked = torch.full_like(logits, -1e4)
        peaked.scatter_(-1, torch.randint(0, 3, (logits.shape[0], 1)), 0.0)
        logits.copy_(peaked)
    pyro.set_rng_seed(3)
    ours = ScoreFunctionKL_ELBO(baseline="none", max_plate_nesting=1).loss(gmm.model, guide, data)
    pyro.set_rng_seed(3)
    reference = Trace_ELBO(max_plate_nesting=1).loss(gmm.model, guide, data)
    assert ours == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("name", ["vi-sample", "hard-sample"])
def test_paper_estimators_run_on_models_with_globals(name):
    result = fit(BayesianGMM(3, 2), load_gmm2d().train, name, num_steps=5, progress=False)
    assert len(result.losses) == 5 and np.isfinite(result.losses).all()


def test_fits_have_their_own_param_store_and_leave_the_users_alone():
    data = load_gmm2d().train
    pyro.param("users_own", torch.ones(2))
    first = fit(BayesianGMM(2, 2), data, "vi-enum", num_steps=5, seed=1, progress=False)
    fit(BayesianGMM(3, 2), data, "vi-enum", num_steps=5, seed=1, progress=False)  # K=3 after K=2
    again = fit(BayesianGMM(2, 2), data, "vi-enum", num_steps=5, seed=1, progress=False)
    assert first.losses == again.losses
    assert list(pyro.get_param_store().keys()) == ["users_own"]
    with first.scope():
        assert any(name.startswith("AutoAlignmentGuide") for name in pyro.get_param_store())
    draws = first.draws(4)
    assert draws.samples["locs"].shape == (4, 2, 2)


def test_global_guide_family_is_the_models_choice():
    data = load_gmm2d().train
    gmm = BayesianGMM(2, 2)
    gmm.global_guide = AutoDelta
    result = fit(gmm, data, "enum", num_steps=3, progress=False)
    assert isinstance(result.guide.global_guide, AutoDelta)
    draws = result.draws(10)
    assert draws.point_estimate and draws.samples["weights"].shape == (1, 2)
    model = FunctionModel(poisson_mixture, global_guide=AutoMultivariateNormal)
    result = fit(model, poisson_data(50), "enum", num_steps=3, progress=False)
    assert isinstance(result.guide.global_guide, AutoMultivariateNormal)
    assert result.draws(6).log_density.shape == (6,)


def test_mcmc_diagnostics_against_arviz():
    gen = torch.Generator().manual_seed(0)
    mixed = torch.randn(2, 300, 3, generator=gen, dtype=torch.float64)
    stuck = mixed.clone()
    stuck[1] += 3.0  # the second chain sits elsewhere
    for chains in (mixed, stuck):
        ours = mcmc_diagnostics({"x": chains}, torch.zeros(2, 300, dtype=torch.bool))
        reference = arviz_stats.rhat(chains.numpy(), method="split")
        assert ours["max_rhat"] == pytest.approx(float(np.max(reference)), rel=1e-2)
    assert mcmc_diagnostics({"x": stuck}, torch.zeros(2, 300, dtype=torch.bool))["max_rhat"] > 2
    bad = torch.zeros(2, 300, dtype=torch.bool)
    bad[0, :4] = True
    assert mcmc_diagnostics({"x": mixed}, bad)["divergences"] == 4
    # the ESS is ArviZ's bulk ESS (what arviz_stats.summary shows), about the draw count for
    # independent draws; 3 draws leave it undefined (Pyro's estimate went negative): 0
    ess = mcmc_diagnostics({"x": mixed}, torch.zeros(2, 300, dtype=torch.bool))["min_ess"]
    assert ess == pytest.approx(float(np.min(arviz_stats.ess(mixed.numpy(), method="bulk"))))
    assert 400 < ess < 800
    few = torch.tensor([[[0.1], [-1.0], [0.9]], [[-0.2], [1.1], [-0.8]]], dtype=torch.float64)
    assert mcmc_diagnostics({"x": few}, torch.zeros(2, 3, dtype=torch.bool))["min_ess"] == 0


# ----------------------------------------------------------------------------- compare
class Exploding(InferenceMethod):
    """A method whose every step raises, to test that compare() keeps the other rows."""

    name = "exploding"

    def loss(self, max_plate_nesting=None):
        class Boom(TraceMeanField_ELBO):
            def loss_and_grads(self, *args, **kwargs):
                raise RuntimeError("the estimator blew up")

        return Boom()


def test_a_failing_method_keeps_every_other_row_and_file(tmp_path):
    data = load_gmm2d()
    result = compare(
        BayesianGMM(2, 2),
        data.train,
        data.test,
        ["enum", Exploding(), "em"],
        num_steps=5,
        num_samples=5,
        grad_draws=2,
        out=tmp_path,
        progress=False,
    )
    assert result.failed == ["exploding"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {row["method"]: row for row in summary["results"]}
    assert rows["exploding"]["status"] == "error: RuntimeError: the estimator blew up"
    assert np.isfinite(rows["enum"]["heldout_log_lik"])
    assert np.isfinite(rows["em"]["heldout_log_lik"])
    assert (tmp_path / "enum.nc").exists() and (tmp_path / "em.nc").exists()
    assert not (tmp_path / "exploding.nc").exists()


def test_rows_say_what_each_objective_is():
    data = load_gmm2d()
    result = compare(
        BayesianGMM(2, 2),
        data.train,
        data.test,
        ["enum", "hard-enum", "dirichlet", "rws", "em"],
        num_steps=3,
        num_samples=5,
        grad_draws=2,
        progress=False,
    )
    kinds = {row["method"]: row["objective"] for row in result.rows}
    assert kinds == {
        "enum": "ELBO",
        "hard-enum": "Jensen bound",
        "dirichlet": "relaxed-model ELBO",
        "rws": "importance-weighted bound",
        "em": "log-likelihood",
    }
    assert "objective" in str(result).splitlines()[0]


def test_point_estimates_are_written_so_that_arviz_does_not_crash(tmp_path):
    data = load_gmm2d()
    compare(
        BayesianGMM(2, 2), data.train, data.test, [EM()], num_samples=5, out=tmp_path,
        progress=False,
    )
    tree = load_datatree(tmp_path / "em.nc")
    assert tree.attrs["point_estimate"] is True and "log_likelihood" not in tree.children
    arviz_stats.summary(tree)
    with pytest.raises(TypeError, match="log likelihood not found"):
        arviz_stats.loo(tree)


def test_compare_refuses_bad_output_and_duplicates_before_work(tmp_path):
    data = load_gmm2d()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        compare(BayesianGMM(2, 2), data.train, data.test, ["em"], out=blocker, progress=False)
    with pytest.raises(ValueError, match="named twice"):
        compare(BayesianGMM(2, 2), data.train, data.test, ["em", "em"], progress=False)
    with pytest.raises(ValueError, match="methods is empty"):
        compare(BayesianGMM(2, 2), data.train, data.test, [], progress=False)


# ----------------------------------------------------------------------------- user models
def test_a_plain_pyro_function_gets_every_applicable_method():
    train, test = poisson_data(120), poisson_data(60, seed=1)
    applicable = applicable_methods(inspect_model(poisson_mixture, train))
    small_nuts = NUTS(num_samples=10, warmup_steps=10, jit_compile=False)
    methods = [small_nuts if name == "nuts" else name for name in applicable]
    result = compare(
        poisson_mixture, train, test, methods, num_steps=3, num_samples=4, grad_draws=2,
        progress=False,
    )
    names = {row["method"] for row in result.rows}
    assert {"enum", "vi-enum", "reinforce", "rws", "gumbel", "nuts"} <= names
    assert not {"cavi", "em", "svi"} & names
    assert not result.failed
    for row in result.rows:
        assert np.isfinite(row["heldout_log_lik"])


def test_the_model_check_refuses_globals_that_are_not_batch_safe():
    def unsafe(counts):
        # a global with a batch shape and no .to_event: it collides with the draw dimension
        rates = pyro.sample("rates", dist.Gamma(counts.new_full((3,), 2.0), 0.5))
        with pyro.plate("data", counts.shape[0], dim=-1):
            z = alignment("z", counts.new_zeros(3))
            pyro.sample("obs", dist.Poisson(attend(rates, z, event_dim=0)), obs=counts)

    with pytest.raises(ValueError, match=r"(?s)cannot score this model.*\.to_event"):
        check_model(FunctionModel(unsafe), poisson_data(40))
    check_model(FunctionModel(poisson_mixture), poisson_data(40))


def test_as_model_refuses_what_is_not_a_model():
    with pytest.raises(ValueError, match="Pyro model function"):
        as_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Pyro model function"):
        compare(42, poisson_data(10), poisson_data(10))


def test_continuous_local_latents_are_integrated_by_importance_sampling():
    """The evaluator's estimate for a Gaussian scale mixture against the exact marginal: with
    u ~ Gamma(2, 2) and x | u ~ N(μ, 1/√u), x - μ is Student-t with 4 d.o.f., scale 1."""
    x = scale_data(40).double()
    locs = torch.tensor([[-2.0, 2.0]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    ll = pointwise_log_likelihood(
        ScaleMixture().model, {"locs": locs}, x, max_plate_nesting=1, local_draws=4000
    )
    student = dist.StudentT(torch.tensor(4.0, dtype=torch.float64), locs[0].unsqueeze(-1), 1.0)
    exact = (student.log_prob(x).logsumexp(0) - np.log(2.0)).unsqueeze(0)
    assert ll.shape == (1, 40)
    assert torch.allclose(ll, exact, atol=0.02)


# ----------------------------------------------------------------------------- registry
def test_a_method_registered_outside_the_package_runs_by_name():
    module = load_warmup_module()
    assert "vi-enum-warmup" in method_names()
    data = load_gmm2d()
    result = compare(
        BayesianGMM(2, 2),
        data.train,
        data.test,
        ["vi-enum", "vi-enum-warmup"],
        num_steps=6,
        num_samples=5,
        grad_draws=2,
        progress=False,
    )
    assert not result.failed and len(result.rows) == 2
    # the warm-up weights the global KL by beta < 1 at first, then exactly 1
    loss = module.VIEnumWarmup(warmup_steps=2).loss(1)
    assert loss.beta() == 0.5
    loss.step = 5
    assert loss.beta() == 1.0
    # and it runs on a user's own model too
    fit(poisson_mixture, poisson_data(60), "vi-enum-warmup", num_steps=3, progress=False)


def test_the_cli_runs_a_method_registered_in_an_imported_file(tmp_path, capsys):
    code = main(
        [
            "compare",
            "gmm",
            "--import",
            str(WARMUP),
            "--methods",
            "vi-enum-warmup,em",
            "--steps",
            "5",
            "--num-samples",
            "5",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert [row["method"] for row in rows] == ["vi-enum-warmup", "em"]


def test_register_method_refuses_bad_registrations():
    with pytest.raises(ValueError, match="already registered"):
        register_method("enum", InferenceMethod)
    with pytest.raises(ValueError, match="not an InferenceMethod"):
        register_method("not-a-method", lambda: object())

    class Odd(InferenceMethod):
        name = "odd"
        runner = "quantum"

    with pytest.raises(ValueError, match="runner='quantum'"):
        register_method("odd", Odd)
    register_method("odd-but-fine", InferenceMethod)
    unregister_method("odd-but-fine")
    assert "odd-but-fine" not in method_names()


def test_the_cli_exits_non_zero_when_a_method_failed_and_keeps_the_rest(tmp_path, capsys):
    plugin = tmp_path / "exploding_plugin.py"
    plugin.write_text(
        "from pyro.infer import Trace_ELBO\n"
        "from pyro_attention.infer import InferenceMethod, register_method\n\n\n"
        "class Boom(Trace_ELBO):\n"
        "    def loss_and_grads(self, *args, **kwargs):\n"
        "        raise RuntimeError('no luck')\n\n\n"
        "class Exploding(InferenceMethod):\n"
        "    name = 'exploding-cli'\n\n"
        "    def loss(self, max_plate_nesting=None):\n"
        "        return Boom()\n\n\n"
        "register_method('exploding-cli', Exploding, replace=True)\n"
    )
    out = tmp_path / "run"
    code = main(
        ["compare", "gmm", "--import", str(plugin), "--methods", "exploding-cli,em",
         "--steps", "3", "--num-samples", "5", "--no-progress", "--out", str(out)]
    )
    assert code == 1
    assert "1 method(s) failed: exploding-cli" in capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())["results"]
    assert [row["status"].split(":")[0] for row in rows] == ["error", "ok"]
    assert (out / "em.nc").exists()
    unregister_method("exploding-cli")


def test_an_interrupt_keeps_the_rows_of_the_methods_that_finished(tmp_path):
    class Interrupted(Exploding):
        name = "interrupted"

        def loss(self, max_plate_nesting=None):
            class Stop(TraceMeanField_ELBO):
                def loss_and_grads(self, *args, **kwargs):
                    raise KeyboardInterrupt

            return Stop()

    data = load_gmm2d()
    with pytest.raises(KeyboardInterrupt):
        compare(BayesianGMM(2, 2), data.train, data.test, ["em", Interrupted(), "cavi"],
                num_samples=5, out=tmp_path, progress=False)
    rows = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert [row["method"] for row in rows] == ["em"]
    assert (tmp_path / "em.nc").exists()


def test_a_bad_import_is_refused_clearly(tmp_path, capsys):
    code = main(["compare", "gmm", "--import", str(tmp_path / "missing.py"), "--out",
                 str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "--import" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_steps": 0}, "num_steps must be"),
        ({"lr": -1.0}, "lr must be"),
        ({"methods": ["em", Dirichlet(pretrain_steps=50)], "num_steps": 20}, "leaves none"),
        ({"num_samples": 0}, "num_samples must be"),
        ({"grad_draws": 1}, "grad_draws must be"),  # a variance needs two draws
        ({"local_draws": 0}, "local_draws must be"),
        ({"num_samples": 2.5}, "num_samples must be"),
    ],
)
def test_compare_refuses_bad_options_before_any_method_runs(tmp_path, options, match):
    data = load_gmm2d()
    options = {"methods": ["em", "enum"], **options}
    with pytest.raises(ValueError, match=match):
        compare(BayesianGMM(2, 2), data.train, data.test, out=tmp_path / "o", progress=False,
                **options)
    assert not (tmp_path / "o" / "em.nc").exists()


def test_compare_leaves_the_users_param_store_alone():
    """Models with network parameters register them while they run; none reach the store."""
    pyro.param("users_own", torch.ones(2))
    compare(KeyValueAttention(), kv_data(60), kv_data(30, 1), ["enum", "reinforce"],
            num_steps=3, num_samples=4, grad_draws=2, progress=False)
    assert list(pyro.get_param_store().keys()) == ["users_own"]


def test_rows_report_the_draws_of_the_local_importance_sampler():
    result = compare(ScaleMixture(), scale_data(60), scale_data(30, 1), ["enum", "vi-enum"],
                     num_steps=3, num_samples=4, grad_draws=2, local_draws=16, progress=False)
    assert [row["local_draws"] for row in result.rows] == [16, 16]
    assert all(np.isfinite(row["heldout_log_lik"]) for row in result.rows)


# ----------------------------------------------------------------------------- networks
def test_each_fit_keeps_its_own_network_weights_and_compare_starts_each_from_the_same():
    data, test = kv_data(80), kv_data(40, 1)
    model = KeyValueAttention()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    first = fit(model, data, "enum", num_steps=5, seed=0, progress=False)
    second = fit(model, data, "enum", num_steps=5, seed=0, progress=False)
    assert second.losses[0] != first.losses[0]  # trained in place: the second goes on
    with first.scope():
        torch.testing.assert_close(model.score.weight, first.module_state["score.weight"])
    torch.testing.assert_close(model.score.weight, second.module_state["score.weight"])

    model.load_state_dict(initial)
    options = {"num_steps": 5, "num_samples": 4, "grad_draws": 2, "progress": False}
    forward = compare(model, data, test, ["enum", "hard-enum"], **options)
    backward = compare(model, data, test, ["hard-enum", "enum"], **options)
    scores = {row["method"]: row["heldout_log_lik"] for row in forward.rows}
    for row in backward.rows:
        assert row["heldout_log_lik"] == pytest.approx(scores[row["method"]], abs=1e-6)
    for name, value in model.state_dict().items():  # compare() leaves the model as it was
        torch.testing.assert_close(value, initial[name])


# ----------------------------------------------------------------------------- bad input
def counts_with_subsampling(counts, subsample_size=None):
    weights = pyro.sample("weights", dist.Dirichlet(counts.new_ones(3)))
    rates = pyro.sample("rates", dist.Gamma(counts.new_full((3,), 2.0), 0.5).to_event(1))
    with pyro.plate("data", counts.shape[0], subsample_size=subsample_size, dim=-1) as idx:
        z = alignment("z", weights.log())
        pyro.sample("obs", dist.Poisson(attend(rates, z, event_dim=0)), obs=counts[idx])


def test_subsample_size_needs_a_model_that_takes_it():
    with pytest.raises(ValueError, match=r"model\(data, \*, subsample_size=None\)"):
        fit(poisson_mixture, poisson_data(60), "enum", num_steps=2, subsample_size=10)
    result = fit(counts_with_subsampling, poisson_data(60), "enum", num_steps=2,
                 subsample_size=10, progress=False)
    assert result.points_seen == 20


def test_default_methods_with_subsample_size_are_those_that_can_use_it():
    result = compare(counts_with_subsampling, poisson_data(60), poisson_data(30, 1),
                     subsample_size=20, num_steps=2, num_samples=4, grad_draws=2, progress=False)
    names = {row["method"] for row in result.rows}
    assert "enum" in names and not {"rws", "nuts"} & names and not result.failed


def test_a_method_that_learns_nothing_gets_an_error_row():
    class NaNLoss(Exploding):
        name = "nan-loss"

        def loss(self, max_plate_nesting=None):
            class Nan(TraceMeanField_ELBO):
                def loss_and_grads(self, *args, **kwargs):
                    return float("nan")

            return Nan()

    data = load_gmm2d()
    result = compare(BayesianGMM(2, 2), data.train, data.test, [NaNLoss(), "em"],
                     num_steps=3, num_samples=4, progress=False)
    assert result.failed == ["nan-loss"]
    assert result.rows[0]["status"].startswith("error: NonFiniteLossError: nan-loss on gmm")
    assert result.rows[0]["heldout_log_lik"] is None


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([1.0, float("nan"), 2.0]), "NaN or inf"),
        (torch.tensor([]), "no data points"),
        (torch.tensor([1.0, -2.0, 3.0]), r"(?s)the model fails on this data.*support"),
    ],
)
def test_bad_held_out_data_is_refused_before_any_training(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        compare(poisson_mixture, poisson_data(40), bad, ["enum"], out=tmp_path / "o",
                progress=False)
    assert not (tmp_path / "o").exists()


def test_batches_need_a_model_that_builds_its_plates_per_batch():
    data = poisson_data(60)
    with pytest.raises(ValueError, match="define create_plates"):
        fit(poisson_mixture, data, "enum", batches=[data[:30], data[30:]], num_steps=2)


def test_the_model_check_draws_a_number_no_dim_of_the_model_has():
    def two_rates(counts):  # indexes the rates' first dim: not batch-safe, and K == 2
        rates = pyro.sample("rates", dist.Gamma(counts.new_full((2,), 2.0), 0.5).to_event(1))
        both = torch.stack([rates[0], rates[1]])
        with pyro.plate("data", counts.shape[0], dim=-1):
            z = alignment("z", counts.new_zeros(2))
            pyro.sample("obs", dist.Poisson(attend(both, z, event_dim=0)), obs=counts)

    with pytest.raises(ValueError, match="cannot score this model"):
        check_model(FunctionModel(two_rates), poisson_data(40))


def test_fit_refuses_options_its_runner_does_not_take():
    data = load_gmm2d().train
    with pytest.raises(ValueError, match="takes no option num_steps"):
        fit(BayesianGMM(2, 2), data, "cavi", num_steps=10)
    with pytest.raises(ValueError, match="takes no option checkpoint"):
        fit(BayesianGMM(2, 2), data, "nuts", checkpoint="x.pt")
    with pytest.raises(ValueError, match="lr or optim, not both"):
        fit(BayesianGMM(2, 2), data, "enum", lr=0.1, optim=pyro.optim.Adam({"lr": 0.01}))


def test_checkpoints_of_other_data_or_no_checkpoint_are_refused(tmp_path):
    data = load_gmm2d().train
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a checkpoint of fit"):
        fit(BayesianGMM(2, 2), data, "enum", num_steps=2, checkpoint=junk, progress=False)
    path = tmp_path / "run.pt"
    fit(BayesianGMM(2, 2), data, "enum", num_steps=2, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="written for 800 data points, not 400"):
        fit(BayesianGMM(2, 2), data[:400], "enum", num_steps=4, checkpoint=path, progress=False)


def test_bad_compare_arguments_are_refused():
    data = load_gmm2d()
    with pytest.raises(ValueError, match="methods must be a list"):
        compare(BayesianGMM(2, 2), data.train, data.test, "enum")
    with pytest.raises(ValueError, match="seed must be an integer"):
        compare(BayesianGMM(2, 2), data.train, data.test, ["em"], seed="a")
    with pytest.raises(ValueError, match="without commas or spaces"):
        register_method("bad name", InferenceMethod)


def test_trees_name_the_observed_site(tmp_path):
    compare(linear_regression, regression_data(60), regression_data(30, 1), ["svi"],
            num_steps=3, num_samples=30, grad_draws=2, out=tmp_path, progress=False)
    tree = load_datatree(tmp_path / "svi.nc")
    assert list(tree.log_likelihood.data_vars) == ["y"]
    assert list(tree.observed_data.data_vars) == ["y"]
    assert tree.observed_data["y"].shape == (60,)


def test_a_model_nesting_more_plates_than_it_declares_is_refused():
    class TwoPlates(AlignmentModel):
        name = "two-plates"  # declares the default max_plate_nesting = 1

        def model(self, data):
            loc = pyro.sample("loc", dist.Normal(data.new_zeros(2), 1.0).to_event(1))
            with pyro.plate("rows", data.shape[0], dim=-2), pyro.plate("cols", data.shape[1]):
                z = alignment("z", data.new_zeros(2))
                pyro.sample("x", dist.Normal(attend(loc, z, event_dim=0), 1.0), obs=data)

    data = torch.randn(6, 3)
    with pytest.raises(ValueError, match="nests 2 plates but declares max_plate_nesting=1"):
        fit(TwoPlates(), data, "enum", num_steps=2)
    with pytest.raises(ValueError, match="max_plate_nesting = 2"):
        check_model(TwoPlates(), data)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda c: c - 5.0, r"within the support.*outside the likelihood's support"),
        (lambda c: c + 0.5, r"within the support \(IntegerGreaterThan"),
        (lambda c: c.half(), r"the data are torch.float16: use data.float\(\)"),
    ],
)
def test_bad_training_data_is_blamed_on_the_data_not_the_model(bad, match):
    """The model check scores the plain data before the vectorized draws, so data outside the
    likelihood's support get the data's message, not advice on writing the model."""
    counts = poisson_data(60)
    with pytest.raises(ValueError, match=match) as info:
        compare(poisson_mixture, bad(counts), bad(counts), ["enum"], num_steps=2, progress=False)
    assert "batch-safe" not in str(info.value)
