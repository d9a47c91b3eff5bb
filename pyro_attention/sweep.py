"""Sweeps: a grid of runs — command × methods × settings × seeds — one folder per cell.

A *cell* is one run of a ``pyro-attention`` command (``compare gmm``, ``compare alignment``,
``compare digits``, ``compare sgpa`` or ``sla``) with one seed, one setting of the grid and one
entry of ``methods``. Its results are the files that command writes, in the cell's own folder
under the sweep's ``out``; the sweep's ``summary.json`` gathers every cell's rows (each with its
``seed``, ``setting`` and ``cell``) and their aggregate over seeds (mean and two standard errors,
:func:`~pyro_attention.diagnostics.aggregate.aggregate_rows`), and is rewritten after every cell.

A spec is a TOML file::

    seeds = 5                          # or a list: [0, 1, 2]
    [[run]]
    command = "compare gmm"
    methods = ["enum", "cavi", "em,nuts"]   # one cell per entry ("em,nuts": both in one cell)
    options = { steps = 300 }              # every cell of this run: the command's options
    grid = { lr = [0.01, 0.05] }           # one cell per combination

Options are the command's own (``--num-samples`` as ``num_samples`` or ``num-samples``; ``true``
for a flag; a list for a comma-separated option). The executor (:mod:`pyro_attention.executors`)
decides where cells run; a cell runs in a temporary folder where it runs and comes back as
bytes, so a Ray cluster without a shared disk fills the same folders. A cell whose folder holds a
finished ``summary.json`` of the same command is skipped on a re-run; a cell that crashed is
recorded with its error and run again next time; the others go on.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pyro_attention._run_folder import SUMMARY, RunFolder
from pyro_attention.diagnostics.aggregate import IDENTITY_FIELDS, aggregate_rows, mean_error_text
from pyro_attention.diagnostics.plots import plot_seed_spread, save_figure
from pyro_attention.executors import Executor
from pyro_attention.infer.compare import format_table

#: the commands a sweep can run, and the option that gives a cell its seed
SEED_FLAGS = {
    "compare gmm": "--seed",
    "compare alignment": "--seed",
    "compare digits": "--seed",
    "compare sgpa": "--seed",
    "sla": "--seeds",
}
#: options a spec may not set: the sweep sets them per cell
RESERVED_OPTIONS = frozenset(
    {"out", "seed", "seeds", "methods", "resume", "threads", "no_progress"}
    | {"workers", "executor", "address"}
)
#: the metric of the spread plot, the first a command's rows have
PLOT_METRICS = ("heldout_log_lik", "accuracy")
#: columns of the printed aggregate table
TABLE_METRICS = (
    *("heldout_log_lik", "train_objective", "ppl", "alignment_accuracy", "accuracy", "nll"),
    *("psis_khat", "seconds"),
)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: ``pyro-attention <argv> --out <out>/<name>``."""

    name: str
    command: str
    argv: tuple[str, ...]
    seed: int
    method: str | None = None
    setting: str = ""

    def arguments(self, out: Path) -> list[str]:
        return [*self.argv, "--out", str(out / self.name)]

    def command_line(self, out: Path) -> str:
        return "pyro-attention " + shlex.join(self.arguments(out))


# ----------------------------------------------------------------------------- the spec
def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The spec in the TOML file ``path``; a clear error when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep spec {str(path)!r} is not a file; name a TOML file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"sweep spec {str(path)!r} is not valid TOML: {err}") from None


#: the most seeds one run or sweep takes (each is a whole run of its command)
MAX_SEEDS = 10_000


def parse_seeds(value: Any, where: str = "seeds", first: int = 0) -> list[int]:
    """``seeds``: a count ``N`` (seeds ``first .. first + N - 1``, at most :data:`MAX_SEEDS`)
    or a list of distinct seeds in ``[0, 2**32)``."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        given = f"{where} {value}" if where.startswith("--") else f"{where} = {value}"
        if not 1 <= value <= MAX_SEEDS:
            raise ValueError(f"{given}: give a count from 1 to {MAX_SEEDS:,}")
        if first + value > 2**32:
            raise ValueError(f"{given} from seed {first} passes the last seed, 2**32 - 1")
        return list(range(first, first + value))
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a count (e.g. 5) or a list like [0, 1, 2]")
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32 for v in value):
        raise ValueError(f"{where} must list integers in [0, 2**32 - 1], got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} lists a seed twice: {value!r}")
    if len(value) > MAX_SEEDS:
        raise ValueError(f"{where} lists {len(value):,} seeds; at most {MAX_SEEDS:,}")
    return list(value)


def parse_seed_text(text: str, where: str = "--seeds", first: int = 0) -> list[int]:
    """A command line's seeds: ``"5"`` (a count from ``first``) or ``"0,3,7"`` (a list)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"{where} {text!r} is neither a count (5) nor a list of seeds (0,3,7)"
        ) from None
    if len(numbers) == 1 and "," not in text:
        return parse_seeds(numbers[0], where, first)
    return parse_seeds(numbers, where)


def _option_arguments(options: Mapping[str, Any], where: str) -> list[str]:
    """``{"num_samples": 50, "no_lookup": true}`` as ``--num-samples 50 --no-lookup``."""
    argv: list[str] = []
    for key, value in options.items():
        dest = key.replace("-", "_")
        if dest in RESERVED_OPTIONS:
            raise ValueError(
                f"{where}: option {key!r} is set by the sweep itself (seeds, methods, out, "
                "threads come from the spec's own keys and the sweep command); drop it"
            )
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, int | float | str):
            argv += [flag, str(value)]
        else:
            raise ValueError(f"{where}: option {key!r} has a value TOML cannot pass: {value!r}")
    return argv


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text) or "_"


def expand_spec(spec: Mapping[str, Any], *, threads: int = 1) -> list[Cell]:
    """Every cell of ``spec`` (see the module's docstring), in the spec's order."""
    unknown = set(spec) - {"seeds", "run"}
    if unknown:
        raise ValueError(f"sweep spec: unknown key(s) {sorted(unknown)}; use seeds and [[run]]")
    seeds = parse_seeds(spec.get("seeds", 1))
    runs = spec.get("run")
    if not isinstance(runs, list) or not runs:
        raise ValueError('sweep spec names no run; add [[run]] with command = "compare gmm"')
    cells: list[Cell] = []
    for number, run in enumerate(runs, 1):
        where = f"[[run]] {number}"
        unknown = set(run) - {"command", "methods", "options", "grid", "seeds"}
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {sorted(unknown)}; use command, methods, options, "
                "grid, seeds"
            )
        command = run.get("command")
        if command not in SEED_FLAGS:
            raise ValueError(
                f"{where}: command {command!r} is not one a sweep runs; use one of "
                f"{', '.join(SEED_FLAGS)}"
            )
        run_seeds = parse_seeds(run["seeds"], f"{where} seeds") if "seeds" in run else seeds
        methods = run.get("methods", [None])
        if command == "sla" and "methods" in run:
            raise ValueError(f"{where}: sla has no methods; put its variants in grid or options")
        if not isinstance(methods, list) or not methods:
            raise ValueError(f"{where}: methods must be a non-empty list like ['enum', 'cavi']")
        options = run.get("options", {})
        grid = run.get("grid", {})
        if not isinstance(options, dict) or not isinstance(grid, dict):
            raise ValueError(f"{where}: options and grid must be tables")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: grid.{key} must be a non-empty list of values")
            if key in options:
                raise ValueError(f"{where}: {key!r} is in both options and grid; keep one")
        fixed = _option_arguments(options, where)
        model = command.split()[-1]
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values, strict=True))
            setting_text = ",".join(f"{k}={v}" for k, v in setting.items())
            varied = _option_arguments(setting, where)
            for method in methods:
                if method is not None and (not isinstance(method, str) or not method.strip()):
                    raise ValueError(f"{where}: methods lists {method!r}; name methods")
                method_argv = [] if method is None else ["--methods", method]
                for seed in run_seeds:
                    parts = [model, _slug(setting_text or "default"), _slug(method or "default")]
                    cells.append(
                        Cell(
                            name="/".join([*parts, f"seed-{seed}"]),
                            command=command,
                            argv=(
                                *command.split(),
                                *method_argv,
                                *fixed,
                                *varied,
                                SEED_FLAGS[command],
                                str(seed),
                                "--threads",
                                str(threads),
                                "--no-progress",
                            ),
                            seed=seed,
                            method=method,
                            setting=setting_text,
                        )
                    )
    names = [cell.name for cell in cells]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"sweep spec: two cells would write {twice[0]}; make the runs differ")
    return cells


# ----------------------------------------------------------------------------- running
@dataclass
class Sweep:
    """What a sweep ran: a record per cell, every cell's rows and their aggregate over seeds."""

    cells: list[Cell]
    out: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: each finished cell's rows, read once from its summary.json
    cell_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    aggregate: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """The cells that crashed or were interrupted, and the methods whose row is an error."""
        crashed = [n for n, r in self.records.items() if r["status"] not in ("finished",)]
        errors = [
            f"{row['cell']}: {row.get('method', '?')}"
            for row in self.rows
            if str(row.get("status", "ok")).startswith("error")
        ]
        return crashed + errors

    def to_dataframe(self) -> Any:
        """Every cell's rows as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __str__(self) -> str:
        metrics = [m for m in TABLE_METRICS if any(m in row for row in self.aggregate)]
        labels = [
            *(["command"] if len({row.get("command") for row in self.aggregate}) > 1 else []),
            *(["setting"] if any(row.get("setting") for row in self.aggregate) else []),
        ]
        rows = [
            {
                **{label: row.get(label) or "-" for label in labels},
                "method": " ".join(str(row[k]) for k in IDENTITY_FIELDS if k in row),
                "seeds": f"{row['num_seeds']}/{len(row['seeds'])}",
                **{metric: mean_error_text(row, metric) for metric in metrics},
            }
            for row in self.aggregate
        ]
        crashed = [
            f"{name}: {record['status']} {record.get('error', '')}".rstrip()
            for name, record in self.records.items()
            if record["status"] != "finished"
        ]
        table = format_table(rows, [*labels, "method", "seeds", *metrics])
        return "\n".join([table, *([""] + crashed if crashed else [])])

    def add(self, cell: Cell, record: dict[str, Any]) -> None:
        """Note how ``cell`` ended; a finished cell's rows are read (once) from its folder."""
        self.records[cell.name] = record
        if record["status"] == "finished":
            self.cell_rows[cell.name] = _cell_rows(self.out, cell)

    def gather(self) -> None:
        """``rows`` in the cells' order, and their aggregate over seeds."""
        self.rows = [row for cell in self.cells for row in self.cell_rows.get(cell.name, [])]
        self.aggregate = aggregate_rows(self.rows, by=("command", "setting", *IDENTITY_FIELDS))


def finished_cell(out: Path, cell: Cell) -> bool:
    """Whether ``cell``'s folder holds the finished results of the same command."""
    try:
        summary = json.loads((out / cell.name / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or summary.get("state") != "finished":
        return False
    command = str((summary.get("provenance") or {}).get("command") or "")
    words = shlex.split(command)[1:]
    if "--out" in words:  # the same command, wherever the folder was named from
        at = words.index("--out")
        del words[at : at + 2]
    return words == list(cell.argv)


def _store_files(final: Path, files: Mapping[str, bytes]) -> None:
    """Put a cell's files in ``final`` as one rename (a crash leaves the old folder or none)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    for name, data in files.items():
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"a cell returned a file named {name!r}; expected a plain name")
        (staging / name).write_bytes(data)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.{uuid.uuid4().hex}.old"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(out: Path) -> None:
    """Folders of cells that a killed sweep was writing or replacing."""
    for pattern in ("**/.*.partial", "**/.*.old"):
        for path in out.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _cell_rows(out: Path, cell: Cell) -> list[dict[str, Any]]:
    """The rows of a finished cell, labelled with the cell, its command, setting and seed."""
    summary = json.loads((out / cell.name / SUMMARY).read_text())
    return [
        {
            "command": cell.command,
            "setting": cell.setting,
            **row,
            "seed": row.get("seed", cell.seed),
            "cell": cell.name,
        }
        for row in summary.get("results") or summary.get("runs") or []
    ]


def _record(cell: Cell, out: Path) -> dict[str, Any]:
    return {"cell": cell.name, "seed": cell.seed, "command": cell.command_line(out)}


def _outcome_record(cell: Cell, outcome: Any, out: Path) -> dict[str, Any]:
    """Store a cell's outcome (its files, its log) and say how it ended."""
    record = _record(cell, out)
    if isinstance(outcome, BaseException):
        return record | {"status": "failed", "error": f"{type(outcome).__name__}: {outcome}"}
    code = outcome["exit_code"]
    log = out / "logs" / (cell.name.replace("/", "__") + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(outcome["log"])
    record |= {"exit_code": code, "seconds": outcome["seconds"], "log": str(log.relative_to(out))}
    if code == 130:
        return record | {"status": "interrupted"}
    if code not in (0, 1) or SUMMARY not in outcome["files"]:
        last = (outcome["log"].strip().splitlines() or ["no output"])[-1]
        return record | {"status": "failed", "error": f"exit status {code}: {last}"}
    _store_files(out / cell.name, outcome["files"])
    return record | {"status": "finished"}


def run_cells(
    cells: Sequence[Cell],
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    executor: Executor,
    out: str | os.PathLike,
    *,
    kind: str = "sweep",
    description: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Sweep:
    """Run ``cells`` (those not finished in ``out`` already) with ``executor``.

    :param fn: the cell runner: ``fn({"argv": [...], "command": str})`` runs the command in a
        folder of its own and returns ``{"exit_code", "files": {name: bytes}, "log",
        "seconds"}`` (:func:`pyro_attention.cli.run_cell`).
    :param out: the sweep's folder; cell ``c`` writes ``out/c.name``.
    :param kind: what the folder holds (``sweep``, ``compare gmm --seeds``): a folder of another
        kind of run is refused, so that neither overwrites the other's summary.
    :param description: more to record in ``summary.json`` (the spec, the command).
    :returns: a :class:`Sweep`; an interrupt writes ``state: interrupted`` and re-raises.
    """
    out = Path(out)
    sweep = Sweep(list(cells), out)
    header = {**(description or {}), "executor": executor.describe()}
    with RunFolder(out, resume=True, option="--out", kind=kind) as folder:
        folder.adopt_previous_files()
        _remove_leftovers(out)
        todo = []
        for cell in cells:
            if finished_cell(out, cell):
                sweep.add(cell, _record(cell, out) | {"status": "finished", "reused": True})
            else:
                todo.append(cell)
        by_name = {cell.name: cell for cell in cells}
        stale = sorted(  # results of cells that are not in this run (another spec, seeds)
            str(path.parent.relative_to(out))
            for path in out.glob(f"**/{SUMMARY}")
            if path.parent != out and str(path.parent.relative_to(out)) not in by_name
        )

        def write(state: str) -> Path:
            sweep.gather()
            content = {
                **header,
                "cells": [
                    sweep.records.get(c.name, {"cell": c.name, "status": "pending"}) for c in cells
                ],
                "stale_cells": stale,
                "results": sweep.rows,
                "aggregate": sweep.aggregate,
            }
            return folder.write_summary(content, state)

        write("running")
        state = "interrupted"
        bar = tqdm(
            total=len(cells), initial=len(cells) - len(todo), desc="cells", disable=not progress
        )
        try:
            jobs = [
                (c.name, {"argv": c.arguments(out), "command": c.command_line(out)}) for c in todo
            ]
            for name, outcome in executor.run(fn, jobs):
                record = _outcome_record(by_name[name], outcome, out)
                sweep.add(by_name[name], record)
                if record["status"] == "interrupted":
                    raise KeyboardInterrupt
                write("running")
                bar.update()
            state = "finished"
            sweep.gather()
            metric = next((m for m in PLOT_METRICS if any(m in r for r in sweep.rows)), None)
            if metric is not None and sweep.aggregate:
                fig = plot_seed_spread(sweep.rows, sweep.aggregate, metric, label=_group_label)
                sweep.files.append(folder.record(save_figure(fig, out / "seeds.png")))
        finally:
            bar.close()
            sweep.files.append(write(state))
    return sweep


def _group_label(row: Mapping[str, Any]) -> str:
    identity = " ".join(str(row[k]) for k in IDENTITY_FIELDS if k in row)
    parts = [row.get("command", "").removeprefix("compare "), row.get("setting") or "", identity]
    return " ".join(p for p in parts if p)


def iter_cells_text(cells: Sequence[Cell], out: Path) -> Iterator[str]:
    """The command line of every cell (``--dry-run``)."""
    for cell in cells:
        done = " (finished)" if finished_cell(out, cell) else ""
        yield cell.command_line(out) + done
