"""``pyro-attention sla``: the stacked-attention depth study from the command line."""

import json
import math

from pyro_attention.cli import main


def test_sla_writes_the_depth_table_and_plots(tmp_path, capsys):
    argv = ["sla", "--depths", "1,2", "--hops", "1", "--seeds", "0", "--steps", "5"]
    code = main([*argv, "--batch-size", "16", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    cells = {(row["variant"], row["depth"]) for row in summary["rows"]}
    assert cells == {("plain", 1), ("plain", 2), ("latent", 1), ("latent", 2)}
    for row in summary["rows"]:
        assert 0 <= row["accuracy"] <= 1 and math.isfinite(row["grad_norm_first_init"])
    assert summary["settings"]["hops"] == 1 and summary["settings"]["num_steps"] == 5
    for name in ("sla_accuracy.png", "sla_gradients.png"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "latent" in out and "wrote 3 files" in out


def test_sla_refuses_bad_options_before_training(tmp_path, capsys):
    assert main(["sla", "--depths", "1,x", "--out", str(tmp_path)]) == 2
    assert "--depths" in capsys.readouterr().err
    assert main(["sla", "--variants", "deep", "--out", str(tmp_path)]) == 2
    assert "deep" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_compare_refuses_zero_threads(capsys):
    assert main(["compare", "digits", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
