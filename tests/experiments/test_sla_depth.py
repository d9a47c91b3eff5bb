"""The stacked-attention depth study in a tiny setting: rows, files, and that it learns."""

import json
import math

import pytest

from pyro_attention.experiments.sla_depth import COLUMNS, SLADepthStudy, sla_depth_study

TINY = {
    "num_items": 4,
    "key_dim": 4,
    "hidden_dim": 8,
    "batch_size": 16,
    "num_test": 64,
    "grad_batches": 2,
    "progress": False,
}


def test_tiny_study_rows_and_files(tmp_path, device):
    study = sla_depth_study(
        depths=(1, 2), hops=2, seeds=(0, 1), num_steps=4, device=device, out=tmp_path, **TINY
    )
    assert isinstance(study, SLADepthStudy)
    assert [(r["variant"], r["depth"]) for r in study.rows] == [
        ("plain", 1),
        ("plain", 2),
        ("latent", 1),
        ("latent", 2),
    ]
    assert len(study.runs) == 8
    for row in study.rows:
        for column in COLUMNS[2:]:
            assert math.isfinite(row[column]), (row, column)
        assert 0 <= row["accuracy"] <= 1 and row["nll"] > 0
        assert row["grad_norm_first_init"] > 0 and row["num_seeds"] == 2
        if row["depth"] == 1:  # the first layer is the last one
            assert row["grad_ratio_first_last"] == pytest.approx(1.0)
    assert {p.name for p in study.files} == {
        "summary.json",
        "sla_accuracy.png",
        "sla_gradients.png",
    }
    for path in study.files:
        assert path.parent == tmp_path and path.stat().st_size > 0
    for name in ("sla_accuracy.png", "sla_gradients.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["hops"] == 2 and summary["settings"]["depths"] == [1, 2]
    assert summary["rows"] == json.loads(json.dumps(study.rows))
    assert {"python", "torch", "device"} <= set(summary["environment"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    text = str(study)
    assert "plain" in text and "latent" in text and "accuracy_sd" in text


def test_runs_are_reproducible():
    kwargs = {"depths": (2,), "hops": 1, "seeds": (3,), "num_steps": 5, **TINY}
    a, b = sla_depth_study(**kwargs), sla_depth_study(**kwargs)
    keys = ("accuracy", "nll", "grad_norm_first_init", "grad_norm_first_trained")
    assert [[r[k] for k in keys] for r in a.runs] == [[r[k] for k in keys] for r in b.runs]


def test_one_hop_is_learned_by_one_layer(device):
    """With hops=1 a single attention layer solves the task: well above chance (1/4)."""
    study = sla_depth_study(
        depths=(1,),
        hops=1,
        seeds=(0,),
        variants=("plain",),
        num_steps=300,
        device=device,
        **{**TINY, "batch_size": 64, "num_test": 400, "hidden_dim": 16},
    )
    (row,) = study.rows
    assert row["accuracy"] > 0.6, row
    assert row["nll"] < math.log(4) - 0.3, row


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depths": ()}, "depths must be a non-empty sequence"),
        ({"depths": (1, 0)}, "every entry of depths must be an integer >= 1"),
        ({"depths": (2, 2)}, "depths has repeated entries"),
        ({"seeds": (-1,)}, "every entry of seeds must be an integer >= 0"),
        ({"variants": ("plain", "deep")}, "unknown variant 'deep'"),
        ({"variants": "plain"}, "variants must be a non-empty sequence"),
        ({"hops": 0}, "hops must be a positive integer"),
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"pointers": "tree"}, "pointers must be one of"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sla_depth_study(**{"num_steps": 1, **TINY, **kwargs})


def test_ablation_variants_run():
    study = sla_depth_study(
        (1, 2), variants=("latent-carry", "latent-pool"), seeds=(0,), num_steps=2, **TINY
    )
    assert [(r["variant"], r["depth"]) for r in study.rows] == [
        ("latent-carry", 1),
        ("latent-carry", 2),
        ("latent-pool", 1),
        ("latent-pool", 2),
    ]
    assert all(math.isfinite(r["nll"]) for r in study.rows)
