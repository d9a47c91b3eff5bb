"""Sweep throughput: cells per minute of each executor against running the cells one after
another, and each executor's overhead per cell.

The cells are ``--cells`` seeds of ``pyro-attention compare gmm --methods <--methods> --steps
<--steps>`` at one thread each. The reference runs their commands one after another in this
process (``cli.main``, no sweep machinery). Then the same cells go through
:func:`pyro_attention.sweep.run_cells` with the serial executor (this process), a local process
pool of 1 and of 2 workers, and a local Ray instance of 2 CPUs, each into a fresh folder. For
each: the wall time (median over ``--rounds``, the variants' order rotating each round), cells
per minute, the speed-up over the reference, and the overhead per cell, ``(workers x wall - the
cells' own seconds) / cells``: process start-up, imports, moving the files back, idle workers.
Every variant's numbers are checked equal to the reference's (the same seeds give the same
held-out scores).

    python bench/bench_sweep_throughput.py --threads 1 --json results/bench/sweep_throughput.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import environment, print_machine, save_figures

from pyro_attention import cli
from pyro_attention.executors import ProcessExecutor, RayExecutor, SerialExecutor
from pyro_attention.sweep import Cell, run_cells


def cells_of(args: argparse.Namespace) -> list[Cell]:
    base = ("compare", "gmm", "--methods", args.methods, "--steps", str(args.steps))
    return [
        Cell(
            name=f"seed-{seed}",
            command="compare gmm",
            argv=(*base, "--num-samples", "50", "--seed", str(seed), "--threads", "1"),
            seed=seed,
        )
        for seed in range(args.cells)
    ]


def scores(folder: Path, cells: list[Cell]) -> list[float]:
    values = []
    for cell in cells:
        summary = json.loads((folder / cell.name / "summary.json").read_text())
        values += [row["heldout_log_lik"] for row in summary["results"]]
    return values


def reference(cells: list[Cell], folder: Path) -> tuple[float, float]:
    """The cells' commands one after another in this process: (wall, the cells' own seconds)."""
    start = time.perf_counter()
    for cell in cells:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main([*cell.argv, "--no-progress", "--out", str(folder / cell.name)])
        assert code == 0, cell
    wall = time.perf_counter() - start
    return wall, wall


def through(executor, cells: list[Cell], folder: Path) -> tuple[float, float]:
    """The cells through ``run_cells``: (wall, the sum of the cells' own seconds)."""
    start = time.perf_counter()
    sweep = run_cells(cells, cli.run_cell, executor, folder, progress=False)
    wall = time.perf_counter() - start
    assert not sweep.failed, str(sweep)
    return wall, sum(r.get("seconds", 0.0) for r in sweep.records.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=8, help="cells (seeds) per variant")
    parser.add_argument("--methods", default="enum", help="methods of each cell")
    parser.add_argument("--steps", type=int, default=1000, help="SVI steps of each cell")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (median of the walls)")
    parser.add_argument("--variants", nargs="+", default=["serial", "local-1", "local-2", "ray-2"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = print_machine()
    cells = cells_of(args)
    makers = {
        "serial": (SerialExecutor, 1),
        "local-1": (lambda: ProcessExecutor(1, threads=1), 1),
        "local-2": (lambda: ProcessExecutor(2, threads=1), 2),
        "ray-2": (lambda: RayExecutor(workers=2, num_cpus=1), 2),
    }
    names = ["reference", *args.variants]
    walls: dict[str, list[float]] = {name: [] for name in names}
    inside: dict[str, list[float]] = {name: [] for name in names}
    expected = None
    for r in range(args.rounds):
        for name in [names[(r + j) % len(names)] for j in range(len(names))]:
            folder = Path(tempfile.mkdtemp(prefix=f"sweep-bench-{name}-"))
            try:
                if name == "reference":
                    wall, own = reference(cells, folder)
                else:
                    maker, _ = makers[name]
                    wall, own = through(maker(), cells, folder)
                values = scores(folder, cells)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            expected = values if expected is None else expected
            assert values == expected, f"{name} gave other numbers than the others"
            walls[name].append(wall)
            inside[name].append(own)
            print(f"round {r}: {name:10s} {wall:7.1f} s")
    base = statistics.median(walls["reference"])
    rows = {}
    for name in names:
        wall = statistics.median(walls[name])
        workers = 1 if name == "reference" else makers[name][1]
        own = statistics.median(inside[name])
        rows[name] = {
            "wall_seconds": wall,
            "walls": walls[name],
            "workers": workers,
            "cells_per_minute": 60.0 * len(cells) / wall,
            "speedup": base / wall,
            "overhead_per_cell_seconds": (workers * wall - own) / len(cells),
            "cell_seconds": own / len(cells),
        }
    print(f"\n{len(cells)} cells of `compare gmm --methods {args.methods} --steps {args.steps}`")
    print(f"{'variant':10s} {'workers':>7s} {'wall s':>8s} {'cells/min':>9s} {'speed-up':>8s} "
          f"{'overhead/cell s':>15s}")  # fmt: skip
    for name, row in rows.items():
        print(
            f"{name:10s} {row['workers']:7d} {row['wall_seconds']:8.1f} "
            f"{row['cells_per_minute']:9.1f} {row['speedup']:8.2f} "
            f"{row['overhead_per_cell_seconds']:15.2f}"
        )
    save_figures(
        {
            "cells": len(cells),
            "cell_command": f"compare gmm --methods {args.methods} --steps {args.steps}",
            "rounds": args.rounds,
            "variants": rows,
            "load_average_before": list(load_before),
            "environment": environment(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
