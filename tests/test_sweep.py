"""Seeds and sweeps: the aggregate over seeds against numbers computed here, the spec's cells,
bad specs refused before any cell runs, the same numbers on every executor, finished cells kept
and crashed ones re-run, a dead worker retried, an interrupt that keeps what finished."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require
from sweep_helpers import die_once

from pyro_attention import cli
from pyro_attention._run_folder import provenance, recorded_command
from pyro_attention.diagnostics.aggregate import aggregate_rows
from pyro_attention.executors import (
    ProcessExecutor,
    RayExecutor,
    SerialExecutor,
    WorkerLostError,
    make_executor,
)
from pyro_attention.sweep import Cell, expand_spec, finished_cell, run_cells

#: a small, fast cell: two closed-form methods and a few enum steps
FAST = ["--methods", "cavi,em,enum", "--steps", "20", "--num-samples", "20"]


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- aggregation
def test_aggregate_is_the_mean_and_two_standard_errors_of_the_seeds_that_did_not_fail():
    rows = [
        {"method": "a", "seed": 0, "x": 1.0, "y": None, "status": "ok"},
        {"method": "b", "seed": 0, "x": 10.0, "status": "ok"},
        {"method": "a", "seed": 1, "x": 2.5, "y": 4.0, "status": "warn: slow"},
        {"method": "a", "seed": 2, "x": 7.0, "y": 6.0, "status": "ok"},
        {"method": "a", "seed": 3, "x": 100.0, "status": "error: RuntimeError: boom"},
    ]
    a, b = aggregate_rows(rows)
    xs = [1.0, 2.5, 7.0]
    assert a["method"] == "a" and a["seeds"] == [0, 1, 2, 3] and a["failed_seeds"] == [3]
    assert a["num_seeds"] == 3
    assert a["x"] == pytest.approx(sum(xs) / 3)
    assert a["x_se2"] == pytest.approx(2 * statistics.stdev(xs) / math.sqrt(3))
    assert a["y"] == pytest.approx(5.0)  # the seeds where it is defined
    assert a["y_se2"] == pytest.approx(2 * statistics.stdev([4.0, 6.0]) / math.sqrt(2))
    assert b["x"] == 10.0 and b["x_se2"] is None  # one seed: no error bar
    assert "seed" not in a or a["seed"] is None


# ----------------------------------------------------------------------------- the spec
def test_a_spec_expands_to_one_cell_per_method_setting_and_seed():
    spec = {
        "seeds": 2,
        "run": [
            {
                "command": "compare gmm",
                "methods": ["enum", "cavi,em"],
                "options": {"steps": 30, "covariance": "diag"},
                "grid": {"lr": [0.01, 0.1], "num-samples": [5, 7]},
            },
            {"command": "sla", "seeds": [4], "options": {"depths": [1, 2]}},
            {"command": "compare digits", "options": {"no_lookup": True, "resume-x": False}},
        ],
    }
    cells = expand_spec(spec, threads=1)
    assert len(cells) == 2 * 2 * 2 * 2 + 1 + 2
    first = cells[0]
    assert first.name == "gmm/lr=0.01,num-samples=5/enum/seed-0"
    assert first.argv == (
        *("compare", "gmm", "--methods", "enum", "--steps", "30", "--covariance", "diag"),
        *("--lr", "0.01", "--num-samples", "5", "--seed", "0", "--threads", "1"),
        "--no-progress",
    )
    assert first.setting == "lr=0.01,num-samples=5" and first.seed == 0
    assert {c.seed for c in cells[:16]} == {0, 1}
    digits = cells[-1]
    assert digits.argv[:3] == ("compare", "digits", "--no-lookup") and digits.method is None
    assert digits.name == "digits/default/default/seed-1" and "--resume-x" not in digits.argv
    sla = cells[-3]
    assert sla.argv[:3] == ("sla", "--depths", "1,2") and ("--seeds", "4") == sla.argv[3:5]
    assert len({c.name for c in cells}) == len(cells)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds = 2\n", "names no run"),
        ('colour = 1\n[[run]]\ncommand = "compare gmm"\n', "unknown key(s) ['colour']"),
        ('[[run]]\ncommand = "compare nope"\n', "command 'compare nope' is not one a sweep runs"),
        (
            'seeds = 0\n[[run]]\ncommand = "compare gmm"\n',
            "seeds = 0: give a count from 1 to 10,000",
        ),
        ('seeds = [1, 1]\n[[run]]\ncommand = "compare gmm"\n', "lists a seed twice"),
        ('seeds = [-1]\n[[run]]\ncommand = "compare gmm"\n', "integers in [0, 2**32 - 1]"),
        ('[[run]]\ncommand = "compare gmm"\ngrid = { lr = [] }\n', "grid.lr must be a non-empty"),
        (
            '[[run]]\ncommand = "compare gmm"\noptions = { seed = 3 }\n',
            "'seed' is set by the sweep",
        ),
        (
            '[[run]]\ncommand = "compare gmm"\noptions = { out = "x" }\n',
            "'out' is set by the sweep",
        ),
        (
            '[[run]]\ncommand = "compare gmm"\noptions = { lr = 1 }\ngrid = { lr = [2] }\n',
            "'lr' is in both options and grid",
        ),
        (
            '[[run]]\ncommand = "compare gmm"\nmethods = "enum"\n',
            "methods must be a non-empty list",
        ),
        ('[[run]]\ncommand = "sla"\nmethods = ["enum"]\n', "sla has no methods"),
        ('[[run]]\ncommand = "compare gmm"\n[[run]]\ncommand = "compare gmm"\n', "two cells"),
        ("[[run]\n", "is not valid TOML"),
        # the cells' own options go through the command's checks before any cell runs
        ('[[run]]\ncommand = "compare gmm"\noptions = { steps = 0 }\n', "--steps must be"),
        ('[[run]]\ncommand = "compare gmm"\noptions = { task = "dates" }\n', "--task does not"),
        (
            '[[run]]\ncommand = "compare gmm"\nmethods = ["nope"]\n',
            "unknown inference method 'nope'",
        ),
        ('[[run]]\ncommand = "compare gmm"\noptions = { colour = 2 }\n', "unrecognized argument"),
        ('[[run]]\ncommand = "compare alignment"\noptions = { task = "x" }\n', "unknown task"),
        ('[[run]]\ncommand = "compare sgpa"\nmethods = ["enum"]\n', "unknown sgpa row"),
    ],
)
def test_bad_specs_are_refused_before_any_cell_runs(text, message, tmp_path, capsys):
    out = tmp_path / "out"
    spec = _spec(tmp_path, text)
    assert cli.main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "gmm", "--workers", "2"], "--workers spreads the runs of --seeds"),
        (["compare", "gmm", "--seeds", "0"], "--seeds 0: give a count from 1 to 10,000"),
        (["compare", "gmm", "--seeds", str(2**32)], "--seeds 4294967296: give a count from 1"),
        (["compare", "gmm", "--seeds", "1,1"], "--seeds lists a seed twice: [1, 1]"),
        (["compare", "gmm", "--seeds", "1,-1"], "--seeds must list integers in [0, 2**32 - 1]"),
        (["compare", "gmm", "--seeds", "1,,2"], "--seeds '1,,2' is neither a count"),
        (["compare", "gmm", "--seeds", "2", "--seed", str(2**32 - 1)], "passes the last seed"),
        (["compare", "gmm", "--seeds", "2", "--device", "tpu"], "--device 'tpu'"),
        (["compare", "gmm", "--seeds", "2", "--workers", "0"], "--workers must be an integer"),
        (["compare", "gmm", "--seeds", "2", "--resume"], "--resume: a --seeds run always"),
        (["compare", "gmm", "--seeds", "2", "--address", "auto"], "--address names a Ray"),
        (["compare", "sgpa", "--seeds", "2", "--workers", "2"], "spread them with"),
        (
            ["compare", "gmm", "--seeds", "2", "--executor", "ray", "--address", "127.0.0.1:1"],
            "--address 127.0.0.1:1: cannot start or reach Ray (nothing answers at 127.0.0.1:1",
        ),
        (
            ["compare", "gmm", "--seeds", "2", "--executor", "ray", "--address", "x"],
            "'x' is not host:port, ray://host:port or auto",
        ),
    ],
)
def test_bad_seed_and_executor_options_are_refused(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--methods", "em", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gpus-per-cell", "0.5"], "--gpus-per-cell sets a Ray task's GPUs"),
        (["--executor", "serial", "--retries", "2"], "the serial executor has none"),
        (["--gpus-per-cell", "nan", "--executor", "ray"], "--gpus-per-cell must be a finite"),
    ],
)
def test_executor_options_that_do_not_apply_are_refused(options, message, tmp_path, capsys):
    spec = _spec(tmp_path, '[[run]]\ncommand = "compare gmm"\nmethods = ["em"]\n')
    assert cli.main(["sweep", str(spec), *options, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_holds_one_kind_of_run(tmp_path, capsys):
    """A --seeds run, a sweep and a single comparison never write over each other's summary;
    cells of an earlier run that this one does not have are listed as stale."""
    out = tmp_path / "seeds"
    small = ["compare", "gmm", "--methods", "em", "--no-progress"]
    assert cli.main([*small, "--seeds", "3", "--out", str(out)]) == 0
    assert cli.main([*small, "--seeds", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "compare gmm --seeds" and summary["stale_cells"] == ["seed-2"]
    assert [c.get("reused") for c in summary["cells"]] == [True, True]
    assert "2 cells: 0 run now, 2 kept from an earlier run" in capsys.readouterr().out
    spec = _spec(tmp_path, '[[run]]\ncommand = "compare gmm"\nmethods = ["em"]\n')
    assert cli.main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    assert cli.main([*small, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds the results of 'compare gmm --seeds', not of 'sweep'" in err
    assert "holds the results of 'compare gmm --seeds', not of 'compare gmm'" in err
    assert json.loads((out / "summary.json").read_text()) == summary


# ----------------------------------------------------------------------------- compare --seeds
def test_compare_seeds_writes_per_seed_rows_and_their_mean_and_error(tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["compare", "gmm", *FAST, "--seeds", "3,5", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "±" in printed and "enum" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["seeds"] == [3, 5]
    rows = summary["results"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        (m, s) for s in (3, 5) for m in ("cavi", "em", "enum")
    ]
    enum = next(r for r in summary["aggregate"] if r["method"] == "enum")
    values = [r["heldout_log_lik"] for r in rows if r["method"] == "enum"]
    assert enum["heldout_log_lik"] == pytest.approx(statistics.mean(values))
    assert enum["heldout_log_lik_se2"] == pytest.approx(2 * statistics.stdev(values) / 2**0.5)
    assert values[0] != values[1]  # the seeds differ
    assert (out / "seeds.png").is_file() and (out / "seed-5" / "enum.nc").is_file()
    # each seed's folder is what that seed's own command writes, and says so
    seed_summary = json.loads((out / "seed-5" / "summary.json").read_text())
    command = seed_summary["provenance"]["command"]
    assert command.startswith("pyro-attention compare gmm --methods cavi,em,enum")
    assert command.endswith(f"--seed 5 --threads 1 --no-progress --out {out / 'seed-5'}")
    single = tmp_path / "single"
    capsys.readouterr()
    assert cli.main(["compare", "gmm", *FAST, "--seed", "5", "--threads", "1",
                     "--out", str(single), "--no-progress"]) == 0  # fmt: skip
    alone = json.loads((single / "summary.json").read_text())["results"]
    assert [r["heldout_log_lik"] for r in alone] == [r["heldout_log_lik"] for r in rows[3:]]


def test_compare_function_takes_seeds(tmp_path):
    from pyro_attention.data import load_gmm2d
    from pyro_attention.infer import compare
    from pyro_attention.models import BayesianGMM

    data = load_gmm2d()
    gmm = BayesianGMM(4, 2)
    result = compare(
        gmm, data.train, data.test, ["cavi"], seeds=[0, 1], out=tmp_path, progress=False
    )
    assert [r["seed"] for r in result.rows] == [0, 1] and set(result.runs) == {0, 1}
    values = [r["heldout_log_lik"] for r in result.rows]
    assert result.aggregate[0]["heldout_log_lik"] == pytest.approx(statistics.mean(values))
    assert "±" in str(result)
    one = compare(gmm, data.train, data.test, ["cavi"], seed=1, progress=False)
    assert one.rows[0]["heldout_log_lik"] == values[1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["aggregate"]) == 1
    single = tmp_path / "single"
    compare(gmm, data.train, data.test, ["em"], out=single, progress=False)
    with pytest.raises(ValueError, match="holds the results of 'compare gmm', not of 'compare"):
        compare(gmm, data.train, data.test, ["em"], seeds=[0, 1], out=single, progress=False)
    assert not (single / "seed-0").exists()  # refused before any seed ran
    with pytest.raises(ValueError, match="names a seed twice"):
        compare(gmm, data.train, data.test, ["cavi"], seeds=[2, 2])
    with pytest.raises(ValueError, match="non-empty list of seeds"):
        compare(gmm, data.train, data.test, ["cavi"], seeds=[])


# ----------------------------------------------------------------------------- executors
def _spec_cells(tmp_path: Path) -> tuple[Path, list[Cell]]:
    text = (
        'seeds = [0, 1]\n[[run]]\ncommand = "compare gmm"\n'
        'methods = ["cavi,em", "enum"]\noptions = { steps = 20, num_samples = 20 }\n'
    )
    run = {"command": "compare gmm", "methods": ["cavi,em", "enum"]}
    run["options"] = {"steps": 20, "num_samples": 20}
    return _spec(tmp_path, text), expand_spec({"seeds": [0, 1], "run": [run]})


def _numbers(out: Path) -> list[tuple[str, str, int, float]]:
    rows = json.loads((out / "summary.json").read_text())["results"]
    return [(r["cell"], r["method"], r["seed"], r["heldout_log_lik"]) for r in rows]


def test_every_executor_gives_the_same_numbers(tmp_path):
    require("ray")
    _, cells = _spec_cells(tmp_path)
    executors = {
        "serial": SerialExecutor(),
        "local": ProcessExecutor(2, threads=1),
        "ray": RayExecutor(workers=2, num_cpus=1),
    }
    numbers = {}
    for name, executor in executors.items():
        sweep = run_cells(cells, cli.run_cell, executor, tmp_path / name, progress=False)
        assert not sweep.failed, sweep
        numbers[name] = _numbers(tmp_path / name)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["executor"]["executor"] == name
    assert len(numbers["serial"]) == 2 * 3
    assert numbers["serial"] == numbers["local"] == numbers["ray"]


def test_a_rerun_keeps_finished_cells_and_runs_the_others_again(tmp_path):
    _, cells = _spec_cells(tmp_path)
    out = tmp_path / "out"
    first = run_cells(cells, cli.run_cell, SerialExecutor(), out, progress=False)
    before = _numbers(out)
    # one cell crashed mid-way (no finished summary), another's folder was lost
    crashed, lost = cells[1], cells[2]
    summary = json.loads((out / crashed.name / "summary.json").read_text())
    (out / crashed.name / "summary.json").write_text(json.dumps(summary | {"state": "running"}))
    for path in (out / lost.name).iterdir():
        path.unlink()
    (out / lost.name).rmdir()
    ran = []

    def counting(job):
        ran.append(job["argv"][job["argv"].index("--out") + 1])
        return cli.run_cell(job)

    second = run_cells(cells, counting, SerialExecutor(), out, progress=False)
    assert sorted(ran) == sorted(str(out / c.name) for c in (crashed, lost))
    assert _numbers(out) == before
    assert [second.records[c.name].get("reused", False) for c in cells] == [
        c not in (crashed, lost) for c in cells
    ]
    assert all(finished_cell(out, c) for c in cells) and not first.failed
    # a cell of another command in that folder is not taken for this one
    other = Cell(cells[0].name, "compare gmm", (*cells[0].argv[:-1], "--dtype", "float64"), 0)
    assert not finished_cell(out, other)


def test_a_dead_worker_is_retried_alone_and_then_reported(tmp_path):
    """Both workers die on their first task; each task then runs alone and succeeds. A task
    that kills every worker is reported lost after its retries, and the other still runs."""
    tasks = [(f"t{i}", {"marker": str(tmp_path / f"m{i}"), "value": i}) for i in range(2)]
    outcomes = dict(ProcessExecutor(2, retries=1).run(die_once, tasks))
    assert {k: v["value"] for k, v in outcomes.items()} == {"t0": 0, "t1": 2}
    tasks = [("bad", {"marker": str(tmp_path / "x"), "value": 1, "always": True})]
    tasks.append(("good", {"marker": str(tmp_path / "m0"), "value": 5}))
    outcomes = dict(ProcessExecutor(1, retries=0).run(die_once, tasks))
    assert isinstance(outcomes["bad"], WorkerLostError)
    assert "died 1 time(s) running it alone" in str(outcomes["bad"])
    assert outcomes["good"]["value"] == 10


def test_a_failing_cell_is_recorded_and_the_others_go_on(tmp_path):
    _, cells = _spec_cells(tmp_path)

    def flaky(job):
        if "enum" in job["argv"]:
            raise RuntimeError("no luck")
        return cli.run_cell(job)

    sweep = run_cells(cells, flaky, SerialExecutor(), tmp_path / "out", progress=False)
    failed = [name for name, r in sweep.records.items() if r["status"] == "failed"]
    assert failed == [c.name for c in cells if c.method == "enum"]
    assert sweep.records[failed[0]]["error"] == "RuntimeError: no luck"
    assert {r["method"] for r in sweep.rows} == {"cavi", "em"}
    assert "no luck" in str(sweep)


def test_an_interrupted_cell_stops_the_sweep_and_keeps_what_finished(tmp_path):
    _, cells = _spec_cells(tmp_path)
    calls = []

    def interrupted_second(job):
        calls.append(job)
        if len(calls) == 2:
            return {"exit_code": 130, "files": {}, "log": "interrupted", "seconds": 0.0}
        return cli.run_cell(job)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, interrupted_second, SerialExecutor(), out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "interrupted"
    assert [c["status"] for c in summary["cells"]] == [
        "finished",
        "interrupted",
        "pending",
        "pending",
    ]
    assert len(calls) == 2 and not (out / ".lock").exists()


def test_a_killed_sweep_finishes_only_the_missing_cells_when_run_again(tmp_path):
    spec, cells = _spec_cells(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pyro_attention.cli", "sweep", str(spec), "--out", str(out)]
    log = tmp_path / "log.txt"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [*command, "--no-progress"],
            stdout=handle,
            stderr=handle,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while not finished_cell(out, cells[0]):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = [c for c in cells if finished_cell(out, c)]
    assert 1 <= len(done) < len(cells)
    again = subprocess.run(
        [*command, "--no-progress"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    reused = [c["cell"] for c in summary["cells"] if c.get("reused")]
    assert reused == [c.name for c in done] and summary["state"] == "finished"
    assert not list(out.glob("**/.*.partial")) and not list(out.glob("**/.*.old"))
    assert len(summary["results"]) == 2 * 3


def test_a_cell_records_its_own_command_and_returns_its_files(tmp_path):
    cell = _spec_cells(tmp_path)[1][0]
    job = {"argv": cell.arguments(tmp_path / "o"), "command": cell.command_line(tmp_path / "o")}
    outcome = cli.run_cell(job)
    assert outcome["exit_code"] == 0
    assert {"summary.json", "cavi.nc", "em.nc"} <= set(outcome["files"])
    summary = json.loads(outcome["files"]["summary.json"])
    assert summary["provenance"]["command"] == job["command"]
    assert f"to {tmp_path / 'o' / cell.name}" in outcome["log"]  # where its files will be
    assert not (tmp_path / "o").exists()  # the cell ran elsewhere; the driver stores it
    with recorded_command("pyro-attention x"):
        assert provenance()["command"] == "pyro-attention x"
    assert provenance()["command"] != "pyro-attention x"


def test_make_executor_names():
    assert isinstance(make_executor("local", workers=1), SerialExecutor)
    assert isinstance(make_executor("local", workers=2), ProcessExecutor)
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        ProcessExecutor(0)
    with pytest.raises(ValueError, match="num_gpus must be a finite number >= 0"):
        RayExecutor(num_gpus=-1)
