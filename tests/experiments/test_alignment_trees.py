"""Every comparison's trees open in ArviZ, carry what they claim, and rank the methods."""

from __future__ import annotations

import json
import math
import warnings

import arviz_stats
import numpy as np
import pyro
import pytest
import torch
import xarray as xr

from pyro_attention.data import get_task, load_gmm2d, make_alignment_dataset
from pyro_attention.diagnostics import load_datatree, save_datatree
from pyro_attention.diagnostics.elpd import heldout_elpd, rank_methods
from pyro_attention.experiments.alignment_metrics import score_alignments
from pyro_attention.experiments.alignment_trees import alignment_tree, heatmap_examples
from pyro_attention.experiments.compare_alignment import compare_alignment
from pyro_attention.infer import compare, get_method
from pyro_attention.models import BayesianGMM, LatentAlignmentSeq2Seq


def _data():
    task = get_task("reverse", alphabet_size=5, min_length=2, max_length=5)
    return make_alignment_dataset(task, num_train=24, num_valid=1, num_test=9, seed=1)


def _model(data, prior="independent"):
    return LatentAlignmentSeq2Seq(
        len(data.source_vocab), len(data.target_vocab), 8, 8, alignment_prior=prior
    )


def _summaries(tree: xr.DataTree) -> None:
    """``summary`` of the posterior and the diagnostics (constant draws give NaN ESS)."""
    with np.errstate(all="ignore"):
        assert len(arviz_stats.summary(tree)) > 0
    stats = arviz_stats.summary(
        tree,
        group="alignment_diagnostics",
        sample_dims=["token"],
        var_names=["posterior_entropy", "mode_matches_gold", "gold_probability"],
        kind="stats",
        skipna=True,
    )
    assert np.isfinite(stats["mean"].to_numpy()).all()


@pytest.mark.parametrize("prior", ["independent", "markov"])
@pytest.mark.parametrize("method", ["exact", "soft"])
def test_alignment_tree_round_trip_and_contents(tmp_path, prior, method):
    data = _data()
    pyro.set_rng_seed(0)
    model = _model(data, prior)
    batches = list(data.batches("test", 4))
    scores = score_alignments(model, get_method(method), batches, num_draws=7, keep_examples=2)
    tree = alignment_tree(
        scores.pointwise,
        source_vocab=data.source_vocab,
        target_vocab=data.target_vocab,
        attrs={"method": method},
    )
    path = save_datatree(tree, tmp_path / f"{method}.nc")
    with xr.open_datatree(path, engine="h5netcdf") as opened:
        assert set(opened.children) >= {"posterior", "heldout_log_likelihood", "observed_data"}
    loaded = load_datatree(path)
    _summaries(loaded)
    tokens = int(sum(int(b.target_mask.sum()) for b in batches))
    assert dict(loaded.posterior.sizes) == {"chain": 1, "draw": 7, "token": tokens}
    # the held-out log-likelihood is the score's, per sequence and per token
    per_sequence = heldout_elpd(loaded, "y")
    assert per_sequence.n_data_points == len(data.test)
    assert per_sequence.elpd == pytest.approx(scores.log_lik, rel=1e-6)
    assert heldout_elpd(loaded, "y_token").elpd == pytest.approx(scores.log_lik, rel=1e-6)
    # the agreement of the mode with gold is the accuracy column
    matches = loaded["alignment_diagnostics"]["mode_matches_gold"].values
    assert np.nanmean(matches) == pytest.approx(scores.alignment_accuracy)
    # heat-maps from the file are those the scorer kept
    examples, sources, targets = heatmap_examples(loaded, 2)
    for kept, read, source in zip(scores.examples, examples, sources, strict=True):
        T, S = read["posterior"].shape
        assert S == len(source) == int(kept["source_mask"].sum())
        for key in ("prior", "posterior"):
            torch.testing.assert_close(read[key], kept[key][:T, :S].double(), atol=1e-6, rtol=0)
        assert targets[0] == data.target_vocab.decode(examples and kept["target"][:T])
        break
    # no posterior draws of parameters: loo says so instead of failing obscurely
    with pytest.raises(TypeError, match="log likelihood"):
        arviz_stats.loo(loaded)


def test_compare_alignment_writes_trees_and_ranks_them(tmp_path):
    data = _data()
    methods = ["soft", "exact", "hard-sample"]
    result = compare_alignment(
        lambda: _model(data),
        data,
        methods,
        num_steps=4,
        batch_size=8,
        out=tmp_path,
        progress=False,
        num_draws=5,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    section = summary["elpd_compare"]
    assert section["kind"] == "heldout" and section["num_points"] == len(data.test)
    assert sorted(r["method"] for r in section["ranking"]) == sorted(methods)
    assert (tmp_path / "elpd_compare.png").is_file()
    assert {f"{m}.nc" for m in methods} | {"elpd_compare.png"} <= set(summary["files"])
    trees = {m: load_datatree(tmp_path / f"{m}.nc") for m in methods}
    for name, tree in trees.items():
        row = next(r for r in summary["results"] if r["method"] == name)
        tokens = row["test_tokens"]
        assert heldout_elpd(tree, "y").elpd / tokens == pytest.approx(row["heldout_log_lik"])
        _summaries(tree)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inplace keyword.*")
        table = arviz_stats.compare({m: heldout_elpd(t, "y") for m, t in trees.items()})
    assert list(table.index) == [r["method"] for r in section["ranking"]]
    assert "held-out ELPD ranking" in str(result)


def test_compare_writes_held_out_trees_for_every_family(tmp_path):
    """compare(): the GMM's trees carry the held-out log-likelihood beside the training one
    (LOO), a point estimate has one draw; a model of point-estimated networks (the seq2seq)
    gets draws of its test alignments as its posterior; both rank."""
    data = load_gmm2d()
    result = compare(
        BayesianGMM(3, 2),
        data.train,
        data.test,
        ["enum", "em"],
        num_steps=30,
        num_samples=60,
        out=tmp_path / "gmm",
        progress=False,
    )
    for name in ("enum", "em"):
        tree = load_datatree(tmp_path / "gmm" / f"{name}.nc")
        row = next(r for r in result.rows if r["method"] == name)
        elpd = heldout_elpd(tree)
        assert elpd.n_data_points == len(data.test)
        assert elpd.elpd / elpd.n_data_points == pytest.approx(row["heldout_log_lik"], rel=1e-6)
        with np.errstate(all="ignore"):
            arviz_stats.summary(tree)
    enum_tree = load_datatree(tmp_path / "gmm" / "enum.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k warnings with few draws
        assert math.isfinite(arviz_stats.loo(enum_tree).elpd)
    assert "log_likelihood" not in load_datatree(tmp_path / "gmm" / "em.nc").children
    assert list(result.ranking.index) == [
        r["method"] for r in result.sections["elpd_compare"]["ranking"]
    ]

    seq = _data()
    model = _model(seq)
    train, test = seq.tensors("train"), seq.tensors("test")
    result = compare(
        model, train, test, ["exact", "soft"], num_steps=3, out=tmp_path / "seq", progress=False
    )
    tree = load_datatree(tmp_path / "seq" / "exact.nc")
    draws = tree.posterior["heldout_alignment"]
    assert draws.sizes["draw"] == 100 and draws.shape[-2:] == tuple(test.target.shape)
    source_lengths = test.source_mask.sum(-1).numpy()[:, None]
    real = test.target_mask.numpy()  # padded target positions are not scored
    assert (draws.values[0] < source_lengths)[:, real].all()  # never a padded source
    elpd = heldout_elpd(tree)
    assert elpd.n_data_points == len(seq.test)  # one point per test sequence
    row = next(r for r in result.rows if r["method"] == "exact")
    tokens = int(test.target_mask.sum())
    assert elpd.elpd / tokens == pytest.approx(row["heldout_log_lik"], rel=1e-6)
    rank_methods(result.elpds)


def _no_parameters(x):
    """A plain Pyro model with an alignment site and nothing to train."""
    import pyro.distributions as dist

    from pyro_attention import alignment, attend

    centers = x.new_tensor([-3.0, 0.0, 3.0])
    with pyro.plate("data", x.shape[0], dim=-1):
        z = alignment("z", x.new_zeros(x.shape[0], 3))
        pyro.sample("obs", dist.Normal(attend(centers, z, event_dim=0), 1.0), obs=x)


def test_a_model_without_parameters_or_globals_is_scored_and_written(tmp_path):
    """Every method runs on it (nothing to train: zero gradient variance), its tree holds the
    test alignments' draws, and a single posterior draw writes no log_likelihood group."""
    generator = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randint(-1, 2, (60,), generator=generator) + torch.randn(
        60, generator=generator
    )
    result = compare(
        _no_parameters,
        x[:40],
        x[40:],
        ["enum", "exact", "hard-sample", "reinforce"],
        num_steps=3,
        num_samples=1,
        out=tmp_path,
        progress=False,
    )
    assert not result.failed, [row["status"] for row in result.rows]
    for name in ("enum", "exact", "hard-sample", "reinforce"):
        tree = load_datatree(tmp_path / f"{name}.nc")
        assert "heldout_z" in tree.posterior and "log_likelihood" not in tree.children
        assert heldout_elpd(tree).n_data_points == 20
    assert len(result.sections["elpd_compare"]["ranking"]) == 4


def test_one_posterior_draw_writes_no_log_likelihood_for_loo(tmp_path):
    data = load_gmm2d()
    compare(
        BayesianGMM(2, 2),
        data.train,
        data.test,
        ["enum"],
        num_steps=3,
        num_samples=1,
        out=tmp_path,
        progress=False,
    )
    tree = load_datatree(tmp_path / "enum.nc")
    assert "log_likelihood" not in tree.children
    with pytest.raises(TypeError, match="log likelihood"):
        arviz_stats.loo(tree)
    assert heldout_elpd(tree).n_samples == 1
