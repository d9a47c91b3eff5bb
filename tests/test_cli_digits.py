"""``pyro-attention compare digits``: the Bernoulli mixture on the embedded digits."""

import json
import math

import pytest

from pyro_attention.cli import main
from pyro_attention.models import BernoulliMixture


def test_compare_digits_writes_rows_and_plots(tmp_path, capsys):
    code = main(
        [
            "compare",
            "digits",
            "--methods",
            "em,enum",
            "--steps",
            "5",
            "--components",
            "3",
            "--num-samples",
            "5",
            "--transformer-steps",
            "3",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"] == "digits8x8"
    rows = {row["method"]: row for row in summary["results"]}
    assert set(rows) == {"em", "enum"}
    assert all(math.isfinite(row["heldout_log_lik"]) for row in rows.values())
    # EM converges; five SVI steps do not get close
    assert rows["em"]["heldout_log_lik"] > rows["enum"]["heldout_log_lik"]
    for name in ("em.nc", "enum.nc", "objective_traces.png", "posterior_fits.png", "lookup.png"):
        assert (tmp_path / name).stat().st_size > 0
    lookup = summary["lookup"]["results"]
    methods = {"mixture (em)", "mixture (enum)", "transformer", "5-nearest-neighbour"}
    methods.add("pixel marginals")
    for scheme in ("top-half", "random"):
        cells = {row["method"]: row for row in lookup if row["scheme"] == scheme}
        assert set(cells) == methods
        assert all(
            0 < row["pixel_nll"] < 1 and 0.5 < row["pixel_accuracy"] for row in cells.values()
        )
        # a three-component mixture fitted by EM already beats the pixel marginals
        assert cells["mixture (em)"]["pixel_nll"] < cells["pixel marginals"]["pixel_nll"]
    assert json.loads((tmp_path / "lookup.json").read_text())["rows"] == lookup
    out = capsys.readouterr().out
    assert "em" in out and "5-nearest-neighbour" in out


def test_lookup_can_be_left_out(tmp_path):
    argv = ["compare", "digits", "--methods", "em", "--components", "3", "--num-samples", "2"]
    assert main([*argv, "--no-lookup", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "lookup" not in json.loads((tmp_path / "summary.json").read_text())
    assert not (tmp_path / "lookup.png").exists()


def test_bad_lookup_option_is_refused_before_training(tmp_path, capsys):
    assert main(["compare", "digits", "--knn", "0", "--out", str(tmp_path)]) == 2
    assert "--knn" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_unknown_method_is_refused(tmp_path, capsys):
    code = main(["compare", "digits", "--methods", "cavi", "--out", str(tmp_path)])
    assert code == 2
    assert "cavi" in capsys.readouterr().err


def test_image_shape_must_hold_the_pixels():
    with pytest.raises(ValueError, match="image_shape"):
        BernoulliMixture(3, 64, image_shape=(8, 7))
