"""Shared by the benchmark scripts: the environment behind the figures, writing them, and the
loop that trains an SVI until it reaches a reference score."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch

from pyro_attention._io import write_json


def environment() -> dict[str, object]:
    """Versions, threads and cores, stored with every set of figures."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }


def save_figures(figures: dict, path: str | None) -> dict:
    """Write ``figures`` as JSON to ``path`` (if given) and return them."""
    if path:
        write_json(path, figures)
        print(f"wrote {path}")
    return figures


def print_machine() -> tuple[float, float, float]:
    """Print versions, threads and the load average; return the load average."""
    load = os.getloadavg()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}"
        f", threads={torch.get_num_threads()}, cpus={os.cpu_count()}, load average (1, 5, 15 "
        f"min) {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    return load


def run_to_target(
    svi: Any,
    data: Any,
    evaluate: Callable[[], dict[str, float]],
    target: float,
    *,
    score: str,
    max_steps: int,
    eval_every: int,
    stop_at_target: bool = False,
    wall: float = 0.0,
    cpu: float = 0.0,
) -> dict:
    """Step ``svi`` on ``data`` until ``max_steps``, calling ``evaluate()`` every ``eval_every``
    steps (outside the timing, the training's random state kept) and recording when
    ``evaluate()[score]`` first reaches ``target``. ``wall``/``cpu`` are set-up seconds already
    spent. Returns the timing, the target fields, final/best score and the trace."""
    trace: list[dict] = []
    reached, status, step, value = None, "ok", 0, math.nan
    while step < max_steps:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(min(eval_every, max_steps - step)):
            value = svi.step(data)
            value = value[0] if isinstance(value, tuple) else value  # rws: (theta, phi) losses
            step += 1
            if not math.isfinite(value):
                status = f"non-finite loss at step {step}"
                break
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        if status != "ok":
            break
        rng = pyro.util.get_rng_state()  # evaluation must not move the training's random state
        scores = evaluate()
        pyro.util.set_rng_state(rng)
        trace.append(
            {"step": step, "seconds": wall, "cpu_seconds": cpu, "loss": float(value), **scores}
        )
        if reached is None and scores[score] >= target:
            reached = trace[-1]
            if stop_at_target:
                break
    return {
        "status": status,
        "reached": reached is not None,
        "steps_to_target": None if reached is None else reached["step"],
        "seconds_to_target": None if reached is None else reached["seconds"],
        "cpu_seconds_to_target": None if reached is None else reached["cpu_seconds"],
        "steps": step,
        "seconds": wall,
        "cpu_seconds": cpu,
        "ms_per_step": 1e3 * wall / max(step, 1),
        "final_score": trace[-1][score] if trace else math.nan,
        "best_score": max((t[score] for t in trace), default=math.nan),
        "trace": trace,
    }
