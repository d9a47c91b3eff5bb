"""Peak memory and time of held-out scoring: the data in pieces against the data whole.

``compare()`` scores every method by :func:`~pyro_attention.infer.evaluate.model_log_likelihood`:
the pointwise log-likelihood of each test point under each posterior draw, the assignments
summed out by enumeration, ``64`` draws at a time and the data ``EVAL_POINTS`` (8192) rows at a
time (``model.split_data``). Scoring the data whole (``max_points = N``) holds ``64 x K x N``
enumerated log-probabilities and the likelihood's temporaries at once, so its memory grows with
``N``; in pieces it is capped.

For each ``--n`` (test points of a ``--components``-component, ``--dim``-dimensional diagonal
``BayesianGMM``, standard-normal data) and ``--draws`` posterior draws (from the prior), each
variant runs in a fresh process: the peak resident memory over the scoring minus the resident
memory just before it (glibc's freed memory returned and the high-water mark reset first, as in
``bench_seq2seq_step.py``), and the wall time. ``whole`` runs up to ``--whole-max`` points only
(at 10^6 it needs several GB).

    python bench/bench_eval_memory.py --threads 1 --out results/bench/eval_memory.json
    python bench/bench_eval_memory.py --n 10000 100000 --whole-max 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pyro
import torch
from _common import MemoryProbe, environment, print_machine, save_figures

from pyro_attention.infer.evaluate import EVAL_POINTS, model_log_likelihood
from pyro_attention.models import BayesianGMM

MB = 2.0**20


def measure(n: int, variant: str, args: argparse.Namespace) -> dict:
    """Score ``n`` points in this process; peak memory growth and seconds."""
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    gmm = BayesianGMM(args.components, args.dim, "diag")
    data = torch.randn(n, args.dim)
    traces = [pyro.poutine.trace(gmm.model).get_trace(data[:2]) for _ in range(args.draws)]
    samples = {  # prior draws of the globals
        name: torch.stack([trace.nodes[name]["value"] for trace in traces])
        for name in ("weights", "precisions", "locs")
    }
    max_points = EVAL_POINTS if variant == "pieces" else n
    probe = MemoryProbe(torch.device("cpu"))
    before = probe.start()
    start = time.perf_counter()
    with torch.no_grad():
        pointwise = model_log_likelihood(gmm, gmm.model, samples, data, max_points=max_points)
    seconds = time.perf_counter() - start
    peak = probe.peak()
    assert pointwise.shape == (args.draws, n) and torch.isfinite(pointwise).all()
    return {
        "n": n,
        "variant": variant,
        "max_points": max_points,
        "peak_mb": (peak - before) / MB,
        "seconds": seconds,
        "peak_reset": probe.reset_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--draws", type=int, default=100, help="posterior draws scored")
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--whole-max", type=int, default=1_000_000, help="largest n scored whole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="0 keeps torch's default")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        n, variant = args.child.split(",")
        print(json.dumps(measure(int(n), variant, args)))
        return
    load = print_machine()
    rows = []
    print(f"{'n':>9} {'variant':>7} {'peak MB':>9} {'seconds':>8}")
    for n in args.n:
        for variant in ("pieces", "whole"):
            if variant == "whole" and n > args.whole_max:
                continue
            command = [sys.executable, __file__, "--child", f"{n},{variant}"]
            for option in ("draws", "components", "dim", "seed", "threads"):
                command += [f"--{option}", str(getattr(args, option))]
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise SystemExit(f"n={n} {variant} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>9} {variant:>7} {row['peak_mb']:>9.1f} {row['seconds']:>8.2f}", flush=True)
    figures = {"environment": environment(), "args": vars(args), "rows": rows}
    figures["load_average"] = [load, print_machine()]
    save_figures(figures, args.out)


if __name__ == "__main__":
    main()
