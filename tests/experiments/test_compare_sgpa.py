"""The SGPA comparison at a small size: every row scored, files written, failures recorded, bad
options refused before any work; the temperature fit and the predictive average checked."""

from __future__ import annotations

import json
import warnings

import arviz_stats
import numpy
import pytest
import torch
import xarray

from pyro_attention.cli import main
from pyro_attention.diagnostics import load_datatree
from pyro_attention.diagnostics.elpd import heldout_elpd
from pyro_attention.experiments import compare_sgpa as module
from pyro_attention.experiments.compare_sgpa import (
    SGPA_METHODS,
    SGPASettings,
    compare_sgpa,
    fit_temperature,
    make_task,
    predict,
)
from pyro_attention.infer import fit
from pyro_attention.models import GPAttentionClassifier

TINY = SGPASettings(
    num_train=40, num_val=20, steps=4, d_model=8, num_inducing=4, ensemble_size=2, num_samples=3
)


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sgpa")
    return compare_sgpa("sequence", seeds=[0, 1], settings=TINY, out=out, progress=False), out


def test_every_row_is_scored_for_every_seed(sequence_run):
    result, out = sequence_run
    assert [(r["method"], r["seed"]) for r in result.rows] == [
        (m, s) for s in (0, 1) for m in SGPA_METHODS
    ]
    for row in result.rows:
        assert row["status"] == "ok", row
        for key in ("accuracy", "nll", "brier", "ece", "mce", "ece_all", "mce_all", "true_kl"):
            assert 0 <= row[key] < float("inf"), (key, row)
        assert row["heldout_log_lik"] == -row["nll"]
        assert {"ood_auroc_heldout_words", "ood_auroc_longer", "seconds", "steps"} <= set(row)
    ensemble = next(r for r in result.rows if r["method"] == "ensemble")
    assert ensemble["steps"] == 2 * TINY.steps and ensemble["num_samples"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["results"]) == 16 and summary["task"] == "sequence"
    assert summary["seeds"] == [0, 1] and summary["dtype"] == "float32"
    assert "heldout_classes" not in summary["settings"]
    aggregate = {row["method"]: row for row in summary["aggregate"]}
    accuracies = [r["accuracy"] for r in result.rows if r["method"] == "sgpa"]
    assert aggregate["sgpa"]["accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert aggregate["sgpa"]["accuracy_2se"] == pytest.approx(abs(accuracies[0] - accuracies[1]))
    assert "±" in str(result)


def test_trees_hold_the_inducing_posterior_and_the_heldout_likelihood(sequence_run):
    _, out = sequence_run
    assert {p.name for p in out.glob("*.nc")} == {f"{name}.nc" for name in SGPA_METHODS}
    tree = load_datatree(out / "sgpa.nc")
    assert tree.attrs["seed"] == 0 and not tree.attrs["point_estimate"]
    assert dict(tree.posterior["layer0.u"].sizes) == {
        "chain": 1,
        "draw": 3,
        "head": 2,
        "value_dim": 4,
        "inducing": 4,
    }
    sizes = {"chain": 1, "draw": 3, "sequence": 1000}
    assert dict(tree.heldout_log_likelihood["y"].sizes) == sizes
    assert dict(tree.posterior_predictive["y"].sizes) == sizes
    assert set(tree.posterior_predictive["y"].values.ravel().tolist()) <= {0, 1}
    assert (out / "reliability.png").stat().st_size > 0
    kernel = load_datatree(out / "kernel.nc")  # a point estimate: its one draw of the globals
    assert kernel.attrs["point_estimate"] and kernel.posterior.sizes["draw"] == 1
    assert "layer0.u" in kernel.posterior


#: draws per row with TINY: one for a deterministic row, num_samples (3) for a random
#: predictive, one per member (2) for the ensemble
TINY_DRAWS = {
    "softmax": 1,
    "kernel": 1,
    "sgpa": 3,
    "sgpa-official-kl": 3,
    "sgpa-standard": 3,
    "mc-dropout": 3,
    "temperature": 1,
    "ensemble": 2,
}


@pytest.mark.parametrize("name", SGPA_METHODS)
def test_every_row_writes_a_tree_that_arviz_reads(sequence_run, name):
    result, out = sequence_run
    path = out / f"{name}.nc"
    with xarray.open_datatree(path, engine="h5netcdf") as opened:
        assert {"posterior", "heldout_log_likelihood", "observed_data"} <= set(opened.children)
    tree = load_datatree(path)
    table = arviz_stats.summary(tree)
    assert len(table) > 0 and table["mean"].notna().all()
    row = next(r for r in result.rows if r["method"] == name and r["seed"] == 0)
    kept = {"task": "sequence", "method": name, **{k: row[k] for k in ("accuracy", "nll", "seed")}}
    assert {key: tree.attrs[key] for key in kept} == kept
    draws = TINY_DRAWS[name]
    assert tree.attrs["num_draws"] == draws
    assert dict(tree.heldout_log_likelihood["y"].sizes) == {
        "chain": 1,
        "draw": draws,
        "sequence": 1000,
    }
    assert dict(tree.posterior_predictive["y"].sizes) == {
        "chain": 1,
        "draw": draws,
        "sequence": 1000,
    }
    assert tree.observed_data["y"].sizes == {"sequence": 1000}
    if name in ("kernel", "sgpa", "sgpa-official-kl"):  # draws of the global inducing outputs
        assert list(tree.posterior.data_vars) == ["layer0.u"]
    else:  # the predictive class probabilities per draw
        probs = tree.posterior["p"]
        assert dict(probs.sizes) == {"chain": 1, "draw": draws, "sequence": 1000, "class": 2}
        numpy.testing.assert_allclose(probs.sum("class"), 1.0, rtol=1e-5)
        chosen = probs.isel(chain=0).values[:, numpy.arange(1000), tree.observed_data["y"].values]
        numpy.testing.assert_allclose(
            numpy.log(chosen), tree.heldout_log_likelihood["y"].isel(chain=0), atol=1e-5
        )
    # the held-out ELPD per test sequence is minus the row's NLL (float32 rounding apart)
    elpd = heldout_elpd(tree, "y")
    assert elpd.kind == "heldout" and elpd.n_data_points == 1000 and elpd.n_samples == draws
    assert elpd.elpd / 1000 == pytest.approx(-row["nll"], abs=1e-6)
    # the test data is held out: no log_likelihood group, so loo is not claimed on it
    assert "log_likelihood" not in tree.children
    assert "loo" in tree.attrs and "training" in tree.attrs["loo"]


def test_the_first_seeds_rows_are_ranked_by_heldout_elpd(sequence_run):
    result, out = sequence_run
    summary = json.loads((out / "summary.json").read_text())
    section = summary["elpd_compare"]
    assert section["kind"] == "heldout" and section["seed"] == 0
    assert section["variable"] == "y: log p(y | x) per test sequence (nats)"
    assert section["num_points"] == 1000 and "of 2 seeds" in section["rows"]
    ranking = section["ranking"]
    assert sorted(r["method"] for r in ranking) == sorted(SGPA_METHODS)
    assert [r["rank"] for r in ranking] == list(range(len(SGPA_METHODS)))
    elpds = {name: heldout_elpd(load_datatree(out / f"{name}.nc"), "y") for name in SGPA_METHODS}
    with warnings.catch_warnings():  # arviz-stats 0.8 sorts in place, which pandas 3.1 warns of
        warnings.filterwarnings("ignore", message=".*inplace keyword.*")
        table = arviz_stats.compare(elpds)
    assert list(table.index) == [r["method"] for r in ranking]
    for entry in ranking:
        assert entry["elpd"] == pytest.approx(elpds[entry["method"]].elpd, rel=1e-9)
        first = next(r for r in result.rows if r["method"] == entry["method"] and r["seed"] == 0)
        assert entry["elpd"] / 1000 == pytest.approx(-first["nll"], abs=1e-6)
    assert ranking[0]["elpd_diff"] == 0 and all(r["elpd_diff"] >= 0 for r in ranking)
    assert (out / "elpd_compare.png").stat().st_size > 0
    printed = str(result)
    assert "held-out ELPD ranking, seed 0" in printed
    assert printed.index("held-out ELPD ranking") > printed.index("ensemble")
    assert all(name in printed.split("held-out ELPD ranking")[1] for name in SGPA_METHODS)


def test_a_failing_row_keeps_the_others(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    original = module._fit_one

    def fit_one(name, *args, **kwargs):
        return broken() if name == "kernel" else original(name, *args, **kwargs)

    monkeypatch.setattr(module, "_fit_one", fit_one)
    result = compare_sgpa(
        "digits", ["softmax", "kernel"], settings=TINY, out=tmp_path, progress=False
    )
    assert result.failed == ["kernel"]
    assert result.rows[1]["status"] == "error: RuntimeError: broken on purpose"
    assert result.rows[0]["status"] == "ok"
    # digits 8 and 9 are held out: an 8-class task, their test images an OOD set
    assert {"ood_auroc_heldout", "ood_auroc_rotated", "ood_auroc_noise"} <= set(result.rows[0])
    assert "kernel (seed 0): error" in str(result)
    # the failed row has no tree and is left out of the ranking
    assert {p.name for p in tmp_path.glob("*.nc")} == {"softmax.nc"}
    ranking = json.loads((tmp_path / "summary.json").read_text())["elpd_compare"]["ranking"]
    assert [r["method"] for r in ranking] == ["softmax"]
    assert (tmp_path / "elpd_compare.png").stat().st_size > 0


def test_the_ranking_needs_no_folder_and_a_failing_one_is_recorded(tmp_path, monkeypatch):
    result = compare_sgpa("digits", ["softmax", "temperature"], settings=TINY, progress=False)
    assert set(result.trees) == {"softmax", "temperature"} and not result.files
    assert (
        result.elpd_compare is not None and result.elpd_compare["rows"] == "the first seed's rows"
    )
    assert [r["method"] for r in result.elpd_compare["ranking"]] == list(result.ranking.index)

    def broken(elpds, variable):
        raise ValueError("broken on purpose")

    monkeypatch.setattr(module, "ranking_section", broken)
    result = compare_sgpa(
        "digits", ["softmax"], seeds=[0, 1], settings=TINY, out=tmp_path, progress=False
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["seed"] for r in summary["results"]] == [0, 1]  # the next seed still ran
    assert summary["elpd_compare"]["error"] == "error: ValueError: broken on purpose"
    assert "ranking" not in summary["elpd_compare"] and not (tmp_path / "elpd_compare.png").exists()
    assert "held-out ELPD ranking, seed 0: error: ValueError" in str(result)


def test_temperature_is_recovered():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 5, generator=gen)
    labels = torch.distributions.Categorical(logits=logits / 2.5).sample()
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_prediction_averages_probabilities_over_draws():
    settings = TINY
    task = make_task("sequence", 0, settings)
    torch.manual_seed(0)
    model = GPAttentionClassifier(**task.model_options, d_model=8, num_heads=2, num_inducing=4)
    result = fit(model, task.train, "svi-kl", num_steps=3, progress=False, seed=0)
    prediction = predict(model, result, task.test, num_samples=4)
    assert prediction.log_lik.shape == (4, len(task.test))
    assert prediction.draws["layer0.u"].shape == (4, 2, 4, 4)
    # log of the averaged probability of the labels = logmeanexp of the per-draw likelihoods
    chosen = prediction.probs.gather(-1, task.test.labels[:, None]).squeeze(-1).log()
    want = prediction.log_lik.logsumexp(0) - torch.log(torch.tensor(4.0))
    torch.testing.assert_close(chosen, want, rtol=1e-5, atol=1e-5)
    # draws differ (the guide and the GP noise are random)
    assert not torch.allclose(prediction.log_lik[0], prediction.log_lik[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "images"}, "task must be one of"),
        ({"methods": ["softmax", "gp"]}, "unknown or no methods"),
        ({"methods": []}, "unknown or no methods"),
        ({"methods": ["sgpa", "sgpa"]}, "repeat a name"),
        ({"seeds": []}, "seeds must be"),
        ({"seeds": [-1]}, "seeds must be"),
        ({"seeds": [1, 1]}, "seeds repeat"),
    ],
)
def test_bad_options_are_refused_before_work(kwargs, match, monkeypatch):
    monkeypatch.setattr(module, "run_row", None)  # any work would fail differently
    with pytest.raises(ValueError, match=match):
        compare_sgpa(**{"task": "digits", "settings": TINY, **kwargs})


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", 0, "steps must be a positive integer"),
        ("num_samples", -3, "num_samples must be a positive integer"),
        ("ensemble_size", 0, "ensemble_size must be a positive integer"),
        ("num_val", 1, "num_val must be an integer >= 2"),
        ("lr", float("nan"), "lr must be a finite positive number"),
        ("lr", -1.0, "lr must be a finite positive number"),
        ("dropout", 0.0, "dropout must lie in"),
        ("covariance", "low-rank", "covariance must be"),
        ("heldout_classes", (8, 8), "distinct digits"),
        ("heldout_classes", tuple(range(9)), "leave at least 2"),
        ("heldout_classes", (10,), "digits 0..9"),
        ("heldout_classes", [8], "must be a tuple"),
    ],
)
def test_bad_settings_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        SGPASettings(**{field: value})


def test_out_naming_a_file_is_refused(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        compare_sgpa("digits", settings=TINY, out=path, progress=False)


def test_cli_runs_both_tasks_small(tmp_path, capsys):
    for task in ("digits", "sequence"):
        code = main(
            ["compare", "sgpa", "--task", task, "--methods", "softmax,sgpa,temperature"]
            + ["--steps", "3", "--num-train", "30", "--d-model", "8", "--inducing", "4"]
            + ["--num-samples", "2", "--seeds", "2", "--no-progress"]
            + ["--out", str(tmp_path / task)]
        )
        assert code == 0
        summary = json.loads((tmp_path / task / "summary.json").read_text())
        assert [r["seed"] for r in summary["results"]] == [0, 0, 0, 1, 1, 1]
    printed = capsys.readouterr().out
    assert "sgpa on digits" in printed and "auroc_rotated" in printed and "true_kl" in printed
    assert printed.count("held-out ELPD ranking, seed 0") == 2


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--seeds", "0"], "--seeds 0"),
        (["--seeds", "x"], "neither a count"),
        (["--d-model", "7"], "must be a multiple of --heads"),
        (["--steps", "-1"], "--steps must be an integer >= 1, got -1"),
        (["--methods", ""], "--methods softmax,kernel"),
        (["--subsample-size", "8"], "--subsample-size does not apply to compare sgpa"),
        (["--epochs", "2"], "--epochs does not apply to compare sgpa"),
        (["--components", "3"], "--components does not apply"),
        (["--task", "sequence", "--heldout-classes", "1"], "applies to --task digits only"),
    ],
)
def test_cli_refuses_bad_options(argv, match, tmp_path, capsys):
    assert main(["compare", "sgpa", "--out", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err
