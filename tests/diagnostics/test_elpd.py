"""Held-out ELPD objects and the ranking of methods, against independent references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from pyro_attention.diagnostics import load_datatree, save_datatree, to_datatree
from pyro_attention.diagnostics.arviz import add_heldout_log_likelihood
from pyro_attention.diagnostics.elpd import (
    HELDOUT_KIND,
    heldout_elpd,
    plot_elpd_compare,
    rank_methods,
    ranking_rows,
)


def _pointwise(seed: int, draws: int = 30, points: int = 50, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(-1.0 + shift, 0.5, (points,)) + rng.normal(0, 0.3, (draws, points))


def test_heldout_elpd_is_the_log_mean_of_the_predictive_per_point():
    values = _pointwise(0)
    elpd = heldout_elpd(values)
    per_point = logsumexp(values, axis=0) - math.log(values.shape[0])
    assert elpd.kind == HELDOUT_KIND
    assert elpd.n_samples == 30 and elpd.n_data_points == 50
    np.testing.assert_allclose(elpd.elpd_i.values, per_point, rtol=1e-12)
    assert elpd.elpd == pytest.approx(per_point.sum(), rel=1e-12)
    assert elpd.se == pytest.approx(math.sqrt(50 * np.var(per_point)), rel=1e-12)
    # a point estimate: one draw, the values themselves
    single = heldout_elpd(values[0])
    assert single.n_samples == 1
    np.testing.assert_allclose(single.elpd_i.values, values[0])


def test_a_tree_gives_the_same_elpd_and_sums_the_parts_of_a_point(tmp_path):
    values = torch.as_tensor(_pointwise(1, points=12)).reshape(30, 4, 3)  # 4 sequences of 3
    tree = to_datatree(
        {"mu": torch.randn(30)},
        heldout_log_likelihood={"y": values},
        dims={"y": ["sequence", "token"]},
    )
    loaded = load_datatree(save_datatree(tree, tmp_path / "m.nc"))
    elpd = heldout_elpd(loaded)
    expected = heldout_elpd(values.sum(-1).numpy())
    assert elpd.n_data_points == 4
    assert elpd.elpd == pytest.approx(expected.elpd, rel=1e-12)
    assert list(elpd.elpd_i.dims) == ["sequence"]
    # a group with its own draws beside a posterior of others
    point = values[0].sum(-1)[None]  # one draw of the 4 sequences
    add_heldout_log_likelihood(tree, {"y": point}, dims={"y": ["sequence"]})
    assert dict(tree.posterior.sizes)["draw"] == 30  # the posterior keeps its draws
    replaced = heldout_elpd(tree)
    assert replaced.n_samples == 1
    np.testing.assert_allclose(replaced.elpd_i.values, point[0].numpy())


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        heldout_elpd(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="heldout_log_likelihood"):
        heldout_elpd(to_datatree({"mu": torch.randn(5)}))
    tree = to_datatree(
        {"mu": torch.randn(5)},
        heldout_log_likelihood={"a": torch.randn(5, 3), "b": torch.randn(5, 3)},
    )
    with pytest.raises(ValueError, match="var_name"):
        heldout_elpd(tree)
    assert heldout_elpd(tree, "b").n_data_points == 3
    with pytest.raises(ValueError, match="different numbers of points"):
        rank_methods({"a": heldout_elpd(np.zeros(3)), "b": heldout_elpd(np.zeros(4))})


def test_ranking_orders_by_elpd_with_the_paired_difference_se(tmp_path):
    values = {"good": _pointwise(2), "bad": _pointwise(2, shift=-0.2), "mid": _pointwise(3)}
    table = rank_methods({name: heldout_elpd(v) for name, v in values.items()})
    rows = ranking_rows(table)
    per_point = {n: logsumexp(v, axis=0) - math.log(v.shape[0]) for n, v in values.items()}
    order = sorted(per_point, key=lambda n: -per_point[n].sum())
    assert [r["method"] for r in rows] == order
    best = per_point[order[0]]
    for row in rows:
        diff = best - per_point[row["method"]]
        assert row["elpd_diff"] == pytest.approx(diff.sum(), rel=1e-9, abs=1e-12)
        assert row["dse"] == pytest.approx(math.sqrt(50 * np.var(diff)), rel=1e-9, abs=1e-12)
        assert row["se"] == pytest.approx(math.sqrt(50 * np.var(per_point[row["method"]])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_elpd_compare(table, tmp_path / "elpd_compare.png", "three methods")
    assert path.stat().st_size > 1000


def test_arviz_notes_are_kept_with_the_ranking_not_raised():
    """With more than 11 methods arviz-stats checks for selection by chance; its note comes
    back in ``table.attrs["warnings"]`` (pytest turns any raised warning into an error)."""
    base, rng = _pointwise(0), np.random.default_rng(5)
    elpds = {f"m{i}": heldout_elpd(base + rng.normal(0, 0.01, base.shape)) for i in range(12)}
    table = rank_methods(elpds)
    assert len(table) == 12
    assert any("chance" in note for note in table.attrs["warnings"])
    assert not rank_methods({"a": elpds["m0"], "b": elpds["m1"]}).attrs["warnings"]


def test_empty_and_impossible_points_are_refused_by_name():
    with pytest.raises(ValueError, match="empty"):
        heldout_elpd(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="empty"):
        heldout_elpd(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="zero probability"):
        heldout_elpd(np.array([[0.0, -np.inf], [-1.0, -np.inf]]))
