"""Training-step time and peak memory of the latent-alignment seq2seq model, per method.

What is measured: one SVI step -- forward, backward and a ``ClippedAdam`` update -- of
:class:`~pyro_attention.models.LatentAlignmentSeq2Seq` on one fixed mini-batch, for each of the
nine objectives of Deng et al. (2018) (``PAPER_METHODS``: soft, exact, hard-enum, hard-sample,
vi-enum, vi-sample, rws, gumbel, dirichlet), reported as ratios to soft attention on the same
batch. Each method is built only with the public API::

    method = get_method(name, **options)          # rws: num_particles=5 (--rws-particles)
    svi = SVI(method.prepare(model.model), method.guide(model), ClippedAdam({"lr": 3e-3}),
              method.loss(model.max_plate_nesting))
    svi.step(batch)

The batch is ``next(dataset.batches("train", batch_size))`` of
``make_alignment_dataset(task, num_train=..., seed=0)``; every method starts from the same
initial weights (``pyro.set_rng_seed(--seed)`` before the model is built).

Each method runs in a fresh Python process (this script with a hidden ``--child`` flag), so that
one method's allocations, caches and lazily loaded kernels do not leak into the next one's
figures. In that process: ``--warmup`` untimed steps, then ``--steps`` timed steps.

- **Time**: the median over the timed steps of the ``time.perf_counter()`` wall time of
  ``svi.step`` (with ``torch.cuda.synchronize()`` before and after each step on CUDA); the
  median process CPU time is stored in the JSON too. tokens/s = target tokens of the batch
  (non-padding) / median step time.
- **Peak memory, CPU**: torch's allocations are invisible to ``tracemalloc``, so the figure is
  the growth of the process's resident set: ``peak MB`` = peak RSS over the warm-up and timed
  steps (``VmHWM`` of ``/proc/self/status``, the same as ``getrusage().ru_maxrss``) minus the
  RSS just before the first step (``VmRSS``), after the model, data, guide object and optimiser
  wrapper exist. Just before the first step, glibc's ``malloc_trim(0)`` returns freed heap
  memory to the system (so the starting RSS is live memory) and the high-water mark is reset
  (``5`` written to ``/proc/self/clear_refs``) so that import-time peaks do not hide the steps'
  peak; the JSON says whether both worked. It includes everything the steps make resident:
  activations kept for the backward pass, the guide's and Adam's state, lazily loaded kernels
  and code, and what the allocator keeps after freeing. ``step peak MB`` (JSON:
  ``step_peak_mb``) is the same measured over the timed steps only, from the RSS after warm-up
  (trimmed again): the per-step transient memory without the one-time costs.
- **Peak memory, CUDA**: ``torch.cuda.max_memory_allocated()`` after the steps minus
  ``torch.cuda.memory_allocated()`` before the first step (peak stats reset there); the step
  peak likewise, reset after warm-up. Tensors only, not the caching allocator's reserve.

``--emission-chunk-size N`` is passed to the model's constructor as ``emission_chunk_size=N``
only if the constructor accepts it (checked with ``inspect.signature``): the enumerated
emission is then computed ``N`` source positions at a time (exact enumeration's memory
``O(N B T V)`` instead of ``O(S B T V)``). When the constructor accepts it and ``exact`` is
among the methods, ``exact`` is also run with the other setting -- without chunking if ``N``
was given (then every other method uses ``N``), with ``N = --compare-chunk-size`` (default 1)
if not -- so the table shows exact's peak memory with and without chunking.

Larger vocabularies and sequences: ``--task reverse --task-option alphabet_size=500
--task-option max_length=40`` (options of ``get_task``). Figures are from one run on one
machine; each method runs at a different time, so note the load (printed) with them.

Run from the repository root::

    python bench/bench_seq2seq_step.py                                # CPU, all nine
    python bench/bench_seq2seq_step.py --methods soft exact --emission-chunk-size 2
    python bench/bench_seq2seq_step.py --device cpu cuda --threads 0 --out seq2seq_step.json
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch
from _common import MemoryProbe, environment, save_figures
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.experiments.compare_alignment import PAPER_METHODS
from pyro_attention.infer import get_method
from pyro_attention.models import LatentAlignmentSeq2Seq
from pyro_attention.models.structure import inspect_model

LR = 3e-3
REFERENCE = "soft"
MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------- child
def parse_task_options(items: list[str]) -> dict[str, object]:
    """``["max_length=40", "alphabet_size=500"]`` -> options of ``get_task`` (Python literals,
    else strings)."""
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--task-option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def chunking_supported() -> bool:
    """Whether the model's constructor takes ``emission_chunk_size``."""
    return "emission_chunk_size" in inspect.signature(LatentAlignmentSeq2Seq).parameters


def measure(args: argparse.Namespace, name: str, chunk: int | None) -> dict:
    """Build one method's SVI on the fixed batch, time its steps and measure its memory."""
    device = torch.device(args.child_device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    options = parse_task_options(args.task_option)
    task = get_task(args.task, **options) if options else args.task
    dataset = make_alignment_dataset(
        task, num_train=args.num_train, num_valid=1, num_test=1, seed=0
    )
    batch = next(dataset.batches("train", args.batch_size, device=device))

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    kwargs = {} if chunk is None else {"emission_chunk_size": chunk}
    model = LatentAlignmentSeq2Seq(
        len(dataset.source_vocab), len(dataset.target_vocab), args.embed, args.hidden, **kwargs
    ).to(device)
    method = get_method(name, **({"num_particles": args.rws_particles} if name == "rws" else {}))
    batch = model.check_data(batch)
    method.check(inspect_model(model, batch))
    model.initialize(batch)
    svi = SVI(
        method.prepare(model.model),
        method.guide(model),
        ClippedAdam({"lr": LR}),
        method.loss(model.max_plate_nesting),
    )
    tokens = model.num_points(batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> list[float]:
        value = svi.step(batch)
        return [float(v) for v in (value if isinstance(value, tuple) else (value,))]

    probe = MemoryProbe(device)
    before_first = probe.start()
    losses: list[float] = []
    for _ in range(args.warmup):
        losses.append(step()[0])
    after_warmup = probe.peak()
    before_timed = probe.start()
    wall, cpu = [], []
    nonfinite = None
    for i in range(args.steps):
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        values = step()
        sync()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        losses.append(values[0])
        if nonfinite is None and not all(math.isfinite(v) for v in values):
            nonfinite = i
    step_peak = probe.peak()
    peak = max(after_warmup, step_peak)
    median = statistics.median(wall)
    return {
        "method": name,
        "settings": repr(method),
        "emission_chunk_size": chunk,
        "device": str(device),
        "status": "ok" if nonfinite is None else f"non-finite loss at timed step {nonfinite}",
        "ms_per_step": 1e3 * median,
        "cpu_ms_per_step": 1e3 * statistics.median(cpu),
        "ms_per_step_min": 1e3 * min(wall),
        "tokens_per_second": tokens / median,
        "peak_mb": (peak - before_first) / MB,
        "step_peak_mb": (step_peak - before_timed) / MB,
        "memory_before_first_step_mb": before_first / MB,
        "peak_reset_ok": probe.reset_ok,
        "malloc_trim": probe.trimmed,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "steps_timed": len(wall),
        "batch": {
            "batch_size": int(batch.target.shape[0]),
            "source_length": int(batch.source.shape[1]),
            "target_length": int(batch.target.shape[1]),
            "target_tokens": tokens,
            "source_vocab": len(dataset.source_vocab),
            "target_vocab": len(dataset.target_vocab),
        },
        "threads": torch.get_num_threads(),
    }


def run_child(args: argparse.Namespace) -> None:
    chunk = args.child_chunk if args.child_chunk > 0 else None
    result = measure(args, args.child, chunk)
    Path(args.child_out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------- parent
def child_command(args: argparse.Namespace, name: str, device: str, chunk: int | None) -> list:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        "--child-device",
        device,
        "--child-chunk",
        str(chunk or 0),
        "--task",
        args.task,
        "--num-train",
        str(args.num_train),
        "--batch-size",
        str(args.batch_size),
        "--hidden",
        str(args.hidden),
        "--embed",
        str(args.embed),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--rws-particles",
        str(args.rws_particles),
    ]
    for item in args.task_option:
        command += ["--task-option", item]
    return command


def run_method(args: argparse.Namespace, name: str, device: str, chunk: int | None) -> dict:
    """One method in a fresh process; a crash becomes a row with the error."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [*child_command(args, name, device, chunk), "--child-out", out]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=args.child_timeout
            )
        except subprocess.TimeoutExpired:
            return _failed(name, device, chunk, f"timed out after {args.child_timeout} s")
        if proc.returncode != 0 or not os.path.exists(out):
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            print(f"--- {name} ({device}) failed, exit code {proc.returncode}; stderr tail:")
            print("\n".join(lines[-15:]))
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            return _failed(name, device, chunk, f"crashed: {last}")
        result = json.loads(Path(out).read_text())
    result["process_seconds"] = time.perf_counter() - t0
    result["load_average_after"] = os.getloadavg()
    return result


def _failed(name: str, device: str, chunk: int | None, status: str) -> dict:
    return {"method": name, "device": device, "emission_chunk_size": chunk, "status": status}


def label(row: dict, chunk_in_effect: int | None) -> str:
    """The row's name: the method, with its chunking where it differs from the other rows."""
    chunk = row.get("emission_chunk_size")
    if chunk == chunk_in_effect:
        return row["method"]
    return f"{row['method']} [chunk={chunk}]" if chunk else f"{row['method']} [no chunking]"


def add_ratios(rows: list[dict]) -> None:
    reference = next((r for r in rows if r["method"] == REFERENCE and "ms_per_step" in r), None)
    for row in rows:
        if reference is None or "ms_per_step" not in row:
            row["time_ratio_to_soft"] = row["peak_ratio_to_soft"] = None
            continue
        row["time_ratio_to_soft"] = row["ms_per_step"] / reference["ms_per_step"]
        ref_peak = reference["peak_mb"]
        row["peak_ratio_to_soft"] = row["peak_mb"] / ref_peak if ref_peak > 0 else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], chunk_in_effect: int | None) -> None:
    head = (
        f"{'method':<24} {'ms/step':>9} {'x soft':>7} {'peak MB':>9} {'x soft':>7} "
        f"{'step peak MB':>12} {'tokens/s':>10}  status"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        ok = "ms_per_step" in row
        print(
            f"{label(row, chunk_in_effect):<24} "
            f"{_fmt(row.get('ms_per_step'), '9.1f'):>9} "
            f"{_fmt(row.get('time_ratio_to_soft'), '7.2f'):>7} "
            f"{_fmt(row.get('peak_mb'), '9.1f'):>9} "
            f"{_fmt(row.get('peak_ratio_to_soft'), '7.2f'):>7} "
            f"{_fmt(row.get('step_peak_mb'), '12.1f'):>12} "
            f"{_fmt(row.get('tokens_per_second'), '10.0f') if ok else '-':>10}  {row['status']}",
            flush=True,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(PAPER_METHODS),
        help="method names (default: the paper's nine); soft is always run as the reference",
    )
    parser.add_argument("--task", default="dates", help="alignment task (default dates)")
    parser.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of get_task(task, ...), repeatable, e.g. max_length=40",
    )
    parser.add_argument(
        "--num-train", type=int, default=2000, help="training examples (sets the vocabularies)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, help="LSTM/MLP width")
    parser.add_argument("--embed", type=int, default=32, help="embedding size")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument(
        "--device",
        nargs="+",
        default=["cpu"],
        choices=["cpu", "cuda"],
        help="devices to run on; cuda is skipped with a note where unavailable",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads; 0 keeps torch's default"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    parser.add_argument("--rws-particles", type=int, default=5, help="rws num_particles")
    parser.add_argument(
        "--emission-chunk-size",
        type=int,
        default=None,
        help="passed to the model as emission_chunk_size=N if its constructor accepts it",
    )
    parser.add_argument(
        "--compare-chunk-size",
        type=int,
        default=1,
        help="chunk size of the extra exact row when --emission-chunk-size is not given",
    )
    parser.add_argument(
        "--child-timeout", type=float, default=1800.0, help="seconds allowed per method"
    )
    parser.add_argument("--out", "--json", dest="out", default=None, help="write JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--child-chunk", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("num_train", "batch_size", "hidden", "embed", "steps", "rws_particles"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    for name in ("emission_chunk_size", "compare_chunk_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child is not None:
        run_child(args)
        return None
    if args.threads > 0:  # the children set it themselves; this is for environment()
        torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys([REFERENCE, *args.methods]))
    for name in methods:
        get_method(name)  # unknown names and task options fail here, before any child starts
    options = parse_task_options(args.task_option)
    if options:
        get_task(args.task, **options)
    supported = chunking_supported()
    chunk = args.emission_chunk_size if supported else None
    if args.emission_chunk_size is not None and not supported:
        print(
            "note: LatentAlignmentSeq2Seq does not accept emission_chunk_size; "
            "--emission-chunk-size is ignored"
        )
    extra_chunk: int | None = None
    run_extra = supported and "exact" in methods
    if run_extra:
        extra_chunk = None if chunk is not None else args.compare_chunk_size

    load_before = os.getloadavg()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}"
        f", threads={args.threads or 'torch default'}, cpus={os.cpu_count()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    print(
        f"task {args.task}{' ' + str(options) if options else ''}, batch {args.batch_size},"
        f" hidden {args.hidden}, embed {args.embed}; median of {args.steps} steps after "
        f"{args.warmup} warm-up, each method in a fresh process; emission_chunk_size "
        f"{'accepted' if supported else 'not accepted'} by the model (in effect: {chunk})"
    )
    figures: dict = {
        "benchmark": "seq2seq_step",
        "args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        **environment(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "emission_chunk_size_supported": supported,
        "emission_chunk_size": chunk,
        "load_average_before": load_before,
        "devices": {},
    }
    t_start = time.perf_counter()
    for device in args.device:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available here; skipped")
            figures["devices"]["cuda"] = {"skipped": "torch.cuda.is_available() is False"}
            continue
        info: dict = {"device": device}
        if device == "cuda":
            info["cuda_device"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
        if device == "cpu":
            print("\ncpu; peak = growth of the resident set (RSS)")
        else:
            print(f"\ncuda ({info['cuda_device']}); peak = growth of max_memory_allocated")
        rows = []
        for name in methods:
            rows.append(run_method(args, name, device, chunk))
        if run_extra:
            rows.append(run_method(args, "exact", device, extra_chunk))
        add_ratios(rows)
        print_table(rows, chunk)
        batch = next((r["batch"] for r in rows if "batch" in r), None)
        if batch:
            print(
                "batch: {batch_size} examples, source length {source_length}, target length "
                "{target_length}, {target_tokens} target tokens, vocabularies "
                "{source_vocab}/{target_vocab}".format(**batch)
            )
        if any(r.get("peak_reset_ok") is False for r in rows):
            print("note: the RSS high-water mark could not be reset; peaks may be too low")
        info["batch"] = batch
        info["results"] = rows
        figures["devices"][device] = info
    load_after = os.getloadavg()
    figures["load_average_after"] = load_after
    figures["seconds"] = time.perf_counter() - t_start
    print(
        f"took {figures['seconds']:.0f} s; load average after {load_after[0]:.2f} "
        f"{load_after[1]:.2f} {load_after[2]:.2f}. 'x soft': ratio to soft attention on the "
        "same batch; 'step peak': over the timed steps only, from the level after warm-up"
    )
    return save_figures(figures, args.out)


if __name__ == "__main__":
    main()
