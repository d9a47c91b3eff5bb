"""Every benchmark script runs end to end at a tiny size and writes its figures, so that none
rots unnoticed between the runs that measure (the figures themselves are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

TINY = {  # script: (options, the flag that names the JSON file)
    "bench_alignment_chain.py": ("--lengths 3 --repeats 1 --batch 2".split(), "--json"),
    "bench_cavi_sklearn.py": ("--n 2000 --dim 3 --components 3 --rounds 2".split(), "--json"),
    "bench_pyro_overhead.py": (
        "--n 200 --k 2 --covariance diag --guides delta --rounds 1 --steps 2 --warmup 1".split(),
        "--json",
    ),
    "bench_seq2seq_step.py": (
        "--methods soft vi-sample exact --steps 1 --warmup 1 --num-train 40 --batch-size 4".split(),
        "--out",
    ),
    "bench_mixture_attention.py": (["--repeats", "1"], "--out"),
    "bench_eval_memory.py": ("--n 1000 --draws 3 --whole-max 1000".split(), "--out"),
    "bench_svi_vs_cavi.py": (
        "--methods enum --max-steps 10 --eval-every 5 --cavi-repeats 1 --draws 10".split(),
        "--json",
    ),
    "bench_vi_sample_estimators.py": (
        "--steps 3 --draws 2 --num-train 60 --batch-size 4".split(),
        "--out",
    ),
    "bench_em_vs_svi_digits.py": (
        "--methods enum --steps 10 --eval-every 5 --em-repeats 1 --draws 5".split(),
        "--out",
    ),
    "bench_sweep_throughput.py": (
        "--cells 2 --steps 5 --methods cavi --variants serial local-2".split(),
        "--json",
    ),
    "bench_sgpa.py": (
        "--lengths 8 --repeats 1 --rounds 1 --train-length 8 --train-batch 2".split(),
        "--json",
    ),
}


def test_every_script_is_covered():
    assert sorted(TINY) == sorted(p.name for p in BENCH.glob("bench_*.py"))


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_at_a_tiny_size(script, tmp_path):
    options, flag = TINY[script]
    out = tmp_path / "figures.json"
    command = [sys.executable, str(BENCH / script), *options, "--threads", "1", flag, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures and "Traceback" not in proc.stderr
    assert "crashed" not in proc.stdout, proc.stdout[-3000:]
