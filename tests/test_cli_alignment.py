"""``pyro-attention compare alignment``: the nine objectives end to end, options and errors."""

import json
import math

import pytest

from pyro_attention.cli import main
from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.experiments.compare_alignment import PAPER_METHODS

SMALL = ["--num-train", "40", "--num-test", "10", "--hidden", "8", "--embed", "8"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(tmp_path, *extra):
    argv = ["compare", "alignment", "--task", "reverse", *SMALL, "--out", str(tmp_path)]
    return main([*argv, *extra, "--no-progress"])


def read_summary(tmp_path):
    return json.loads((tmp_path / "summary.json").read_text())


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_all_nine_paper_methods(tmp_path, capsys):
    assert run(tmp_path, "--steps", "3") == 0
    summary = read_summary(tmp_path)
    assert summary["model"] == "seq2seq" and summary["dataset"] == "reverse"
    assert summary["settings"]["num_steps"] == 3
    assert summary["settings"]["num_train"] == 40 and summary["settings"]["num_test"] == 10
    rows = summary["results"]
    assert [row["method"] for row in rows] == list(PAPER_METHODS)
    assert len(PAPER_METHODS) == 9
    test_tokens = {row["test_tokens"] for row in rows}
    assert len(test_tokens) == 1 and test_tokens.pop() > 0  # one test set for every method
    for row in rows:
        name = row["method"]
        for key in (
            "ppl",
            "alignment_accuracy",
            "prior_entropy",
            "tokens_per_second",
            "heldout_log_lik",
        ):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key)
        assert row["ppl"] == pytest.approx(math.exp(-row["heldout_log_lik"]), rel=1e-9)
        assert row["ppl"] >= 1 and row["prior_entropy"] >= 0
        assert 0 <= row["alignment_accuracy"] <= 1
        assert row["tokens_per_second"] > 0
        assert row["steps"] == 3 and row["status"] == "ok"
        # kmax_ppl: every method but soft (which has no latent alignment to restrict)
        assert (row["kmax_ppl"] is None) == (name == "soft"), name
        if name != "soft":
            assert row["kmax_ppl"] >= row["ppl"] * (1 - 1e-9)
        # the ELBO under q: only where the method has a categorical q
        has_q = name not in ("soft", "exact", "dirichlet")
        assert (row["elbo_q"] is not None) == has_q, name
        if has_q:
            assert row["elbo_q"] <= row["heldout_log_lik"] + 1e-6, name
        assert_png(tmp_path / f"alignments_{name}.png")
    assert_png(tmp_path / "objective_traces.png")
    out = capsys.readouterr().out
    assert "reverse: 40 training examples, 3 steps of 32" in out
    for name in PAPER_METHODS:
        assert name in out


def test_epochs_set_the_number_of_steps(tmp_path):
    """One epoch of 40 examples in batches of 16 is 3 steps that see every training token."""
    args = ("--methods", "soft,exact", "--epochs", "1", "--batch-size", "16")
    assert run(tmp_path, *args) == 0
    summary = read_summary(tmp_path)
    assert summary["settings"]["num_steps"] == 3 and summary["settings"]["batch_size"] == 16
    data = make_alignment_dataset(
        get_task("reverse"), num_train=40, num_valid=5, num_test=10, seed=0
    )
    train_tokens = int(data.tensors("train").target_mask.sum())
    rows = summary["results"]
    assert [row["method"] for row in rows] == ["soft", "exact"]
    for row in rows:
        assert row["steps"] == 3 and row["train_tokens"] == train_tokens
    assert_png(tmp_path / "alignments_soft.png")
    assert_png(tmp_path / "alignments_exact.png")
    assert not (tmp_path / "alignments_vi-enum.png").exists()


def test_kmax_option_and_exact_marginal(tmp_path):
    """With K at least every source length the top-K perplexity is the exact one."""
    assert run(tmp_path, "--methods", "exact", "--steps", "2", "--kmax", "50") == 0
    (row,) = read_summary(tmp_path)["results"]
    assert row["kmax"] == 50
    assert row["kmax_ppl"] == pytest.approx(row["ppl"], rel=1e-9)


def test_unknown_task_is_an_error(tmp_path, capsys):
    argv = ["compare", "alignment", "--task", "no-such-task", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no-such-task" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("methods", "named"),
    [("soft,no-such-method", "no-such-method"), ("exact,cavi", "cavi")],
)
def test_unknown_or_unsupported_method_is_an_error(tmp_path, capsys, methods, named):
    out = tmp_path / "out"
    assert (
        main(
            ["compare", "alignment", "--task", "reverse", *SMALL, "--steps", "1"]
            + ["--methods", methods, "--out", str(out), "--no-progress"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "error:" in err and repr(named) in err
    assert not out.exists()  # refused before any work
