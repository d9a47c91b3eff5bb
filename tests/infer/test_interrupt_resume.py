"""An output folder is owned by one run; an interrupt keeps what finished; ``resume`` completes
an interrupted comparison to the same result as an uninterrupted one."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pyro_attention._run_folder import RunFolder
from pyro_attention.data import load_gmm2d
from pyro_attention.infer import compare
from pyro_attention.models import BayesianGMM

fit_module = importlib.import_module("pyro_attention.infer.fit")  # the package exports fit()

METHODS = ["cavi", "enum", "em"]
OPTIONS = {"num_steps": 150, "num_samples": 10, "grad_draws": 2, "progress": False}
#: what changes between two runs of the same comparison: the clocks
TIMES = {"seconds", "total_seconds", "samples_per_second"}


def _compare(out, **extra):
    data = load_gmm2d()
    return compare(BayesianGMM(2, 2), data.train, data.test, METHODS, out=out, **OPTIONS, **extra)


def _rows(folder):
    rows = json.loads((folder / "summary.json").read_text())["results"]
    return [{k: v for k, v in row.items() if k not in TIMES} for row in rows]


def test_resume_after_an_interrupt_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    _compare(tmp_path / "whole")

    step = fit_module.GuardedStep.__call__
    calls = {"n": 0}

    def interrupting_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 120:  # past the checkpoint at step 100 of enum
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(fit_module.GuardedStep, "__call__", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        _compare(tmp_path / "cut")
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["state"] == "interrupted"
    assert [row["method"] for row in summary["results"]] == ["cavi"]
    assert summary["files"] == ["cavi.nc"]
    assert (tmp_path / "cut" / ".checkpoint-enum.pt").exists()
    assert not (tmp_path / "cut" / ".lock").exists()

    def counting_step(self, *args, **kwargs):
        calls["n"] += 1
        return step(self, *args, **kwargs)

    monkeypatch.setattr(fit_module.GuardedStep, "__call__", counting_step)
    calls["n"] = 0
    resumed = _compare(tmp_path / "cut", resume=True)
    assert resumed.resumed == ["cavi"]
    assert calls["n"] == 50  # enum went on from its checkpoint at step 100 of 150
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert resumed.fits["enum"].steps == 150
    final = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert final["state"] == "finished" and final["resumed"] == ["cavi"]
    assert sorted(final["files"]) == sorted(
        ["cavi.nc", "enum.nc", "em.nc", "objective_traces.png", "posterior_fits.png"]
        + ["elpd_compare.png"]
    )
    # the resumed method's held-out ELPD comes back from its tree: the same ranking
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert final["elpd_compare"] == whole["elpd_compare"]
    assert [r["method"] for r in final["elpd_compare"]["ranking"]] != []
    assert not list((tmp_path / "cut").glob(".checkpoint-*"))


def test_resume_refuses_a_run_made_with_other_options(tmp_path):
    _compare(tmp_path, seed=0)
    summary = (tmp_path / "summary.json").read_text()
    data = load_gmm2d()
    with pytest.raises(ValueError, match=r"cannot resume .*seed: 0 then, 1 now"):
        compare(
            BayesianGMM(2, 2),
            data.train,
            data.test,
            METHODS,
            out=tmp_path,
            seed=1,
            resume=True,
            **OPTIONS,
        )
    # another model size, covariance or precision is another run too
    for model, train, test, site in (
        (
            BayesianGMM(3, 2),
            data.train,
            data.test,
            r"site 'weights': float32 \(2,\) then, float32 \(3,\)",
        ),
        (BayesianGMM(2, 2, "diag"), data.train, data.test, "site 'precisions'"),
        (BayesianGMM(2, 2), data.train.double(), data.test.double(), "float32 .* then, float64"),
    ):
        with pytest.raises(ValueError, match=f"cannot resume .*{site}"):
            compare(model, train, test, METHODS, out=tmp_path, resume=True, **OPTIONS)
    with pytest.raises(ValueError, match="resume=True needs out="):
        compare(BayesianGMM(2, 2), data.train, data.test, METHODS, resume=True, **OPTIONS)
    # a refused resume leaves the run as it was, and the right one still resumes it
    assert (tmp_path / "summary.json").read_text() == summary
    again = compare(
        BayesianGMM(2, 2), data.train, data.test, METHODS, out=tmp_path, resume=True, **OPTIONS
    )
    assert sorted(again.resumed) == sorted(METHODS)


def test_a_fresh_run_replaces_the_previous_runs_files_and_lists_foreign_ones(tmp_path):
    data = load_gmm2d()
    compare(BayesianGMM(2, 2), data.train, data.test, ["em", "cavi"], out=tmp_path, **OPTIONS)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".summary.json.0123abcd.tmp").write_text("a killed writer's")
    compare(BayesianGMM(2, 2), data.train, data.test, ["em"], out=tmp_path, **OPTIONS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not (tmp_path / "cavi.nc").exists()  # the previous run's, not part of this one
    assert (tmp_path / "notes.txt").read_text() == "mine"  # never the user's files
    assert summary["stale_files"] == ["notes.txt"]
    assert not list(tmp_path.glob(".*.tmp"))
    provenance = summary["provenance"]
    assert provenance["seed"] == 0 and provenance["threads"] >= 1
    assert {"command", "commit", "torch", "load_average", "time"} <= set(provenance)


def test_a_folder_is_owned_by_one_run_at_a_time(tmp_path):
    with RunFolder(tmp_path):
        with pytest.raises(ValueError, match=r"in use by another run \(pid"):
            _compare(tmp_path)
    # a lock left by a process that is gone is taken over
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with RunFolder(tmp_path):
        pass
    (tmp_path / ".lock").write_text(
        json.dumps({"host": os.uname().nodename, "pid": int(gone.stdout), "started": 0})
    )
    _compare(tmp_path)
    assert not (tmp_path / ".lock").exists()


def test_the_cli_stops_cleanly_on_sigint(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "pyro_attention.cli",
        "compare",
        "gmm",
        "--methods",
        "em,enum",
        "--steps",
        "100000",
        "--num-samples",
        "5",
        "--no-progress",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not (out / "em.nc").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(1.0)  # into enum's steps
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or death by SIGINT itself, which a shell also reports as 130: CPython re-raises SIGINT
    # at exit when the interrupt landed inside code that an extension ran with PyRun_String, even
    # though the CLI handled it
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"interrupted: the finished results are kept in {out}/summary.json; the same command "
        "with --resume finishes it"
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "interrupted"
    assert [row["method"] for row in summary["results"]] == ["em"]
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()


def test_a_folder_of_another_kind_of_run_is_refused_and_kept(tmp_path):
    """A comparison never removes another program's results, nor writes into the root."""
    data = load_gmm2d()
    with RunFolder(tmp_path / "sla", kind="sla") as folder:
        (tmp_path / "sla" / "sla_accuracy.png").write_bytes(b"png")
        folder.record(tmp_path / "sla" / "sla_accuracy.png")
        folder.write_summary({"study": "sla_depth"}, "finished")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "summary.json").write_text('{"made": "elsewhere"}')
    for out, holds in (
        (tmp_path / "sla", "the results of 'sla'"),
        (foreign, "a summary.json of another program"),
    ):
        with pytest.raises(ValueError, match=f"holds {holds}, not of 'compare gmm'"):
            compare(BayesianGMM(2, 2), data.train, data.test, ["em"], out=out, **OPTIONS)
    assert (tmp_path / "sla" / "sla_accuracy.png").exists()
    assert (foreign / "summary.json").read_text() == '{"made": "elsewhere"}'
    with pytest.raises(ValueError, match="is the file-system root"):
        compare(BayesianGMM(2, 2), data.train, data.test, ["em"], out="/", **OPTIONS)
