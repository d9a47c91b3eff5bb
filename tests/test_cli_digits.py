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
    for name in ("em.nc", "enum.nc", "objective_traces.png", "posterior_fits.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "em" in capsys.readouterr().out


def test_unknown_method_is_refused(tmp_path, capsys):
    code = main(["compare", "digits", "--methods", "cavi", "--out", str(tmp_path)])
    assert code == 2
    assert "cavi" in capsys.readouterr().err


def test_image_shape_must_hold_the_pixels():
    with pytest.raises(ValueError, match="image_shape"):
        BernoulliMixture(3, 64, image_shape=(8, 7))
