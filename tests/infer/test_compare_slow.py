"""The main job at its default size: exact methods agree (run with -m slow)."""

import pytest

from pyro_attention.data import load_gmm2d
from pyro_attention.infer import NUTS, compare
from pyro_attention.models import BayesianGMM


@pytest.mark.slow
def test_default_comparison_exact_methods_agree(tmp_path):
    data = load_gmm2d()
    result = compare(
        BayesianGMM(4, 2),
        data.train,
        data.test,
        ["enum", "cavi", "em", NUTS(num_samples=150, warmup_steps=150)],
        num_steps=1000,
        out=tmp_path,
        progress=False,
    )
    scores = {row["method"]: row["heldout_log_lik"] for row in result.rows}
    for name in ("enum", "nuts", "em"):
        assert abs(scores[name] - scores["cavi"]) < 0.05, scores


@pytest.mark.slow
def test_default_method_list_runs_every_applicable_method(tmp_path):
    """compare() with no method list: every registered method the GMM meets runs (vi-sample and
    hard-sample included) and scores finitely; svi alone is refused by the model's alignments."""
    data = load_gmm2d()
    result = compare(
        BayesianGMM(4, 2), data.train, data.test, num_steps=100, out=tmp_path, progress=False
    )
    names = [row["method"] for row in result.rows]
    assert {"vi-sample", "hard-sample", "nuts", "cavi", "em"} <= set(names)
    assert "svi" not in names and not result.failed
    for row in result.rows:
        assert row["heldout_log_lik"] > -3.5, row
        assert (tmp_path / f"{row['method']}.nc").exists()
