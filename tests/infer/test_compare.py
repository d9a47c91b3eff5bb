"""compare(): rows, summary.json schema, ArviZ files and plots; the CLI."""

import json

import arviz_stats
import numpy as np
import pyro
import pytest
import torch

from pyro_attention.cli import main
from pyro_attention.data import load_gmm2d
from pyro_attention.diagnostics import load_datatree
from pyro_attention.infer import NUTS, compare
from pyro_attention.infer.evaluate import log_predictive_density
from pyro_attention.models import BayesianGMM


def test_log_predictive_density_is_log_mean_exp():
    ll = torch.log(torch.tensor([[0.1, 0.2], [0.3, 0.6]]))
    expected = (np.log(0.2) + np.log(0.4)) / 2
    assert log_predictive_density(ll) == pytest.approx(expected)


# short fits give poor posteriors; ArviZ rightly warns about the Pareto k of their LOO
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_compare_writes_summary_trees_and_plots(device, tmp_path):
    data = load_gmm2d(device=device)
    gmm = BayesianGMM(3, 2, "diag")
    methods = [
        "enum",
        "reinforce",
        "cavi",
        "em",
        NUTS(num_samples=15, warmup_steps=15, num_chains=2),
    ]
    result = compare(
        gmm,
        data.train,
        data.test,
        methods,
        num_steps=30,
        num_samples=30,
        grad_draws=3,
        out=tmp_path,
        progress=False,
        dataset="gmm2d",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "gmm" and summary["dataset"] == "gmm2d"
    assert summary["device"].startswith(device.type) and summary["seed"] == 0
    rows = {r["method"]: r for r in summary["results"]}
    assert set(rows) == {"enum", "reinforce", "cavi", "em", "nuts"}
    for row in rows.values():
        assert np.isfinite(row["heldout_log_lik"])
        assert row["steps"] > 0 and row["seconds"] > 0 and row["samples_per_second"] > 0
    assert rows["reinforce"]["grad_variance"] > 0
    assert rows["cavi"]["grad_variance"] is None and rows["cavi"]["psis_khat"] is not None
    assert rows["em"]["objective"] == "log-likelihood" and rows["em"]["point_estimate"]
    assert rows["cavi"]["objective"] == "ELBO" and np.isfinite(rows["cavi"]["train_objective"])
    assert rows["nuts"]["objective"] == "none" and rows["nuts"]["train_objective"] is None
    assert {"max_rhat", "min_ess", "divergences"} <= set(rows["nuts"])
    for name in rows:
        tree = load_datatree(tmp_path / f"{name}.nc")
        assert tree.attrs["method"] == name
        if name == "em":  # a point estimate has no posterior to cross-validate
            assert {"posterior", "observed_data"} <= set(tree.children)
            assert tree.attrs["point_estimate"] is True
        else:
            assert {"posterior", "log_likelihood", "observed_data"} <= set(tree.children)
            assert np.isfinite(arviz_stats.loo(tree).elpd)
    nuts_tree = load_datatree(tmp_path / "nuts.nc")
    assert nuts_tree.posterior.sizes["chain"] == 2 and "diverging" in nuts_tree.sample_stats
    # the tree's variables carry the model's dims, so ArviZ's summary has one labelled row per
    # scalar of every global site (3 components, 2 features, diag precisions), each finite and
    # equal to the posterior mean of the chains
    posterior = nuts_tree.posterior
    assert set(posterior.data_vars) == {"locs", "precisions", "weights"}
    assert not np.array_equal(posterior["locs"][0], posterior["locs"][1])  # two chains, not one
    assert posterior["locs"].dims == ("chain", "draw", "component", "feature")
    assert posterior["precisions"].dims == ("chain", "draw", "component", "feature")
    assert posterior["weights"].dims == ("chain", "draw", "component")
    summary_table = arviz_stats.summary(nuts_tree)
    pairs = [(k, d) for k in range(3) for d in range(2)]
    expected = [
        *(f"{site}[{k}, {d}]" for site in ("locs", "precisions") for k, d in pairs),
        *(f"weights[{k}]" for k in range(3)),
    ]
    assert sorted(map(str, summary_table.index)) == sorted(expected)
    columns = ["mean", "sd", "ess_bulk", "r_hat"]
    assert np.isfinite(summary_table[columns].to_numpy(dtype=float)).all()
    for site in ("locs", "precisions", "weights"):
        means = posterior[site].mean(("chain", "draw")).to_numpy()
        for index in np.ndindex(means.shape):
            label = f"{site}[{', '.join(map(str, index))}]"
            assert summary_table.loc[label, "mean"] == pytest.approx(means[index], abs=0.006)
    assert (tmp_path / "objective_traces.png").stat().st_size > 0
    assert (tmp_path / "posterior_fits.png").stat().st_size > 0
    assert "heldout_log_lik" in str(result)
    assert list(result.to_dataframe().index) == ["enum", "reinforce", "cavi", "em", "nuts"]


def test_compare_refuses_bad_pairs_before_work(tmp_path):
    data = load_gmm2d()
    gmm = BayesianGMM(3, 2)
    with pytest.raises(ValueError, match="'rws' cannot use mini-batches"):
        compare(
            gmm,
            data.train,
            data.test,
            ["enum", "rws"],
            subsample_size=50,
            out=tmp_path,
            progress=False,
        )
    assert not any(tmp_path.iterdir())


def test_train_and_test_must_match(device):
    data = load_gmm2d(device=device)
    with pytest.raises(ValueError, match=r"test is torch.float64 .* use test.to\(train\)"):
        compare(BayesianGMM(3, 2), data.train, data.test.double(), ["cavi"], progress=False)


def test_cli_compare_gmm(tmp_path, capsys):
    code = main(
        [
            "compare",
            "gmm",
            "--methods",
            "enum,cavi",
            "--steps",
            "20",
            "--num-samples",
            "20",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--components",
            "3",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "enum" in out and "cavi" in out and "heldout_log_lik" in out
    assert (tmp_path / "summary.json").exists() and (tmp_path / "enum.nc").exists()


def test_cli_reports_bad_method(tmp_path, capsys):
    code = main(
        ["compare", "gmm", "--methods", "enum,magic", "--out", str(tmp_path), "--no-progress"]
    )
    assert code == 2
    assert "unknown inference method 'magic'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tpu", "meta"])
def test_cli_refuses_a_bad_device(tmp_path, capsys, name):
    code = main(["compare", "gmm", "--device", name, "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert f"--device '{name}'" in capsys.readouterr().err


def test_the_gradient_variance_does_not_depend_on_the_test_set(device):
    """Scoring consumes random numbers in proportion to the data; the gradient variance of one
    fit under one seed is the same whatever the size of the test set."""
    from pyro_attention.infer import fit
    from pyro_attention.infer.compare import evaluate_fit

    data = load_gmm2d(device=device)
    gmm = BayesianGMM(3, 2)
    fitted = fit(gmm, data.train, "enum", num_steps=10, progress=False, seed=0)
    variances = []
    for test in (data.test[:50], data.test):
        pyro.set_rng_seed(0)
        row, _, _ = evaluate_fit(gmm, fitted, data.train, test, num_samples=20, grad_draws=5)
        variances.append(row["grad_variance"])
    assert variances[0] == variances[1] and variances[0] > 0
