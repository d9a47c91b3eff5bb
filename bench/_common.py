"""Shared by the benchmark scripts: the environment behind the figures, writing them, timing a
closed-form reference, the race of SVI methods to that reference's score, and peak memory."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch

from pyro_attention._io import write_json
from pyro_attention._run_folder import provenance


def environment() -> dict[str, object]:
    """Versions, threads and cores, stored with every set of figures."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after two warm-up calls (CUDA
    synchronised around each call)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_seconds(
    fns: list[Callable[[], object]], repeats: int, device: torch.device
) -> list[float]:
    """Median wall time of each of ``fns`` over ``repeats`` rounds, one call of each per round
    (the order rotating), so that a load that comes and goes hits them alike; two warm-up
    rounds first."""
    for _ in range(2):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fns[i]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def save_figures(figures: dict, path: str | os.PathLike | None) -> dict:
    """Write ``figures`` as JSON to ``path`` (if given), with the provenance of the run (the
    command, commit, versions, threads, load average and time), and return them."""
    if path:
        write_json(path, {**figures, "provenance": provenance()})
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


def time_median(fn: Callable[[], Any], repeats: int) -> tuple[Any, dict]:
    """Call ``fn`` once untimed (first-call costs), then ``repeats`` times; return the last result
    and ``{"seconds", "cpu_seconds"}`` (medians) and ``"seconds_all"``."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    timing = {
        "seconds": statistics.median(walls),
        "cpu_seconds": statistics.median(cpus),
        "seconds_all": walls,
    }
    return result, timing


def svi_to_target(
    build: Callable[[], tuple[Any, Callable[[], dict[str, float]]]],
    data: Any,
    target: float,
    *,
    seed: int,
    **options: Any,
) -> dict:
    """:func:`run_to_target` on a fresh ``build() -> (svi, evaluate)``, its set-up timed.

    Two untimed steps of a throwaway instance first take the one-time costs of the process
    (lazy imports, first calls) out of the timing; then the param store is cleared, the seed set
    and the timed instance built. ``options`` go to :func:`run_to_target`."""
    pyro.clear_param_store()
    svi, _ = build()
    for _ in range(2):
        svi.step(data)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    w0, c0 = time.perf_counter(), time.process_time()
    svi, evaluate = build()
    return run_to_target(
        svi,
        data,
        evaluate,
        target,
        wall=time.perf_counter() - w0,
        cpu=time.process_time() - c0,
        **options,
    )


def race_to_reference(
    reference: str,
    ref: dict,
    ref_score: float,
    names: list[str],
    run: Callable[[str], dict],
    *,
    max_steps: int,
    extra: dict[str, tuple[float, str]] | None = None,
) -> list[dict]:
    """Print the race table and return one row per method.

    :param reference: the closed-form method's name (``em``, ``cavi``); ``ref`` its timing with
        ``iterations``, and ``ref_score`` its score.
    :param run: ``name -> row`` of :func:`run_to_target` (with ``"method"``); the row gets
        ``time_ratio_to_<reference>`` and ``cpu_time_ratio_to_<reference>`` (None if the
        target was not reached).
    :param extra: more columns, ``{header: (reference value, row key)}``.
    """
    extra = extra or {}
    label = f"x {reference.upper()} time"
    width = max(len(label), 9)
    diff = f"final - L_{reference}"
    head = (
        f"{'method':>10} | {'steps to target':>15} {'s to target':>11} {label:>{width}} | "
        f"{'ms/step':>7} {'steps':>6} {'final':>9} {'best':>9} {diff:>{len(diff)}}"
        + "".join(f" {h:>9}" for h in extra)
    )
    print(head)
    print("-" * len(head))
    print(
        f"{reference:>10} | {ref['iterations']:>15} {ref['seconds']:>11.3f} {1.0:>{width}.1f} | "
        f"{1e3 * ref['seconds'] / ref['iterations']:>7.2f} {ref['iterations']:>6} "
        f"{ref_score:>9.4f} {'':>9} {0.0:>{len(diff)}.4f}"
        + "".join(f" {value:>9.4f}" for value, _ in extra.values())
    )
    ratio, cpu_ratio = f"time_ratio_to_{reference}", f"cpu_time_ratio_to_{reference}"
    rows = []
    for name in names:
        row = run(name)
        if row["reached"]:
            row[ratio] = row["seconds_to_target"] / ref["seconds"]
            row[cpu_ratio] = row["cpu_seconds_to_target"] / ref["cpu_seconds"]
            reach = (
                f"{row['steps_to_target']:>15} {row['seconds_to_target']:>11.2f} "
                f"{row[ratio]:>{width}.0f}"
            )
        else:
            row[ratio] = row[cpu_ratio] = None
            reach = f"{f'not reached in {max_steps} steps':>{28 + width}}"
        rows.append(row)
        note = "" if row["status"] == "ok" else f"  ({row['status']})"
        print(
            f"{name:>10} | {reach} | {row['ms_per_step']:>7.2f} {row['steps']:>6} "
            f"{row['final_score']:>9.4f} {row['best_score']:>9.4f} "
            f"{row['final_score'] - ref_score:>{len(diff)}.4f}"
            + "".join(f" {row[key]:>9.4f}" for _, key in extra.values())
            + note,
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------- memory
def _proc_status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in kB, None without it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> bool:
    """Hand the memory glibc's malloc keeps after ``free`` back to the system (so the RSS a
    measurement starts from holds live memory only); False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where that fails."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class MemoryProbe:
    """Peak memory growth over a span of steps: RSS on CPU, allocated tensors on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.reset_ok = True
        self.trimmed = False

    def start(self) -> float:
        """Reset the peak; return the current level in bytes."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return float(torch.cuda.memory_allocated())
        gc.collect()
        self.trimmed = _malloc_trim()
        self.reset_ok = _reset_peak_rss() and self.reset_ok
        rss = _proc_status_kb("VmRSS")
        return float("nan") if rss is None else 1024.0 * rss

    def peak(self) -> float:
        """The peak since :meth:`start`, in bytes."""
        if self.cuda:
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated())
        hwm = _proc_status_kb("VmHWM")
        if hwm is None:  # Linux reports ru_maxrss in kB
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return 1024.0 * hwm
