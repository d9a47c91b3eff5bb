"""An output folder owned by one run at a time, whose summary says how it was made.

:class:`RunFolder` is what every command that writes results goes through:

- the folder is checked writable before any work (:func:`check_output_folder`);
- a lock file (``.lock``, the owner's host, pid and start time) refuses a second run into the
  same folder while the first is alive; a lock left by a killed run is taken over;
- temporary files of killed writers (``.<name>.<hex>.tmp``) are removed;
- a fresh run removes the files the previous run's ``summary.json`` lists (and no others); files
  found in the folder that this run did not write are listed in the summary as ``stale_files``;
- :meth:`RunFolder.write_summary` writes ``summary.json`` atomically with the run's
  ``provenance`` (command, commit, versions, threads, machine load, start time), its ``state``
  (``running``, ``interrupted``, ``finished``) and the ``files`` it wrote, so that a resumed
  run knows what is there and a table made from the file knows where it came from.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pyro_attention._io import write_json

SUMMARY = "summary.json"
LOCK = ".lock"
#: files whose names say they belong to the run folder's machinery, never reported as stale
_INTERNAL = (LOCK, SUMMARY)


def check_output_folder(out: str | os.PathLike, option: str = "out") -> Path:
    """Refuse, before any work starts, an ``out`` that cannot be a folder of results: a file,
    the file-system root, or a place that cannot be written (tested by writing there). Leaves
    no trace: folders this check had to create are removed again. The :class:`ValueError`
    names ``option``."""
    path = Path(out)
    if str(out).strip() == "":
        raise ValueError(f"{option} is empty; name a folder for the results")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(out)!r} is a file; name a folder for the results")
    if path.resolve() == Path(path.resolve().anchor):
        raise ValueError(f"{option} {str(out)!r} is the file-system root; name a folder in it")
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"{option} {str(out)!r} cannot be written ({reason}); choose another folder"
        ) from None
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
    return path


def provenance(seed: int | None = None) -> dict[str, Any]:
    """How a result was made: the command line, the package's git commit (``None`` outside a
    checkout), torch and Python versions, torch threads, the 1/5/15-minute load averages of
    the machine, its CPU count, the seed and the time (UTC, ISO 8601)."""
    return {
        "command": _command(),
        "commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "seed": seed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


#: the command a run in this context records instead of ``sys.argv`` (see :func:`recorded_command`)
_RECORDED_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "recorded_command", default=None
)


@contextlib.contextmanager
def recorded_command(command: str) -> Iterator[None]:
    """Record ``command`` as the provenance of the runs started inside: a sweep's worker runs
    one cell's command in a process whose ``sys.argv`` says something else."""
    token = _RECORDED_COMMAND.set(command)
    try:
        yield
    finally:
        _RECORDED_COMMAND.reset(token)


def _command() -> str | None:
    """The command line as typed: ``pyro-attention ...`` also for ``python -m
    pyro_attention.cli``, ``script.py ...`` for a script; inside :func:`recorded_command`, the
    command it names."""
    recorded = _RECORDED_COMMAND.get()
    if recorded is not None:
        return recorded
    if not sys.argv:
        return None
    program = Path(sys.argv[0])
    if (
        program.name == "pyro-attention"
        or program.resolve() == Path(__file__).resolve().parent / "cli.py"
    ):
        name = "pyro-attention"
    elif program.suffix == ".py":
        name = str(program)  # a script, as it was named
    else:
        name = program.name
    return " ".join([name, *sys.argv[1:]])


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunFolder:
    """``out`` owned by this run; use as a context manager (the lock is released on exit).

    :param out: the folder (created if needed).
    :param resume: keep the previous run's files (a resumed run reads :attr:`previous`);
        otherwise the files the previous ``summary.json`` lists are removed first.
    :param option: the option's name in error messages (``--out`` for the CLI).
    :param seed: recorded in the provenance.
    :param kind: what writes here (``"compare gmm"``, ``"sla"``), recorded in the summary; a
        folder whose ``summary.json`` another kind of run wrote is refused, so one program's
        re-run never removes another's results.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        resume: bool = False,
        option: str = "out",
        seed: int | None = None,
        kind: str = "run",
    ) -> None:
        self.path = check_output_folder(out, option)
        self.path.mkdir(parents=True, exist_ok=True)
        self.option = option
        self.resume = resume
        self.kind = kind
        self.provenance = provenance(seed)
        self.previous: dict[str, Any] | None = None
        self.files: list[str] = []
        self._locked = False

    # -- ownership -------------------------------------------------------------------------

    def __enter__(self) -> RunFolder:
        self._lock()
        try:
            self._remove_temporary_files()
            self.previous = self._read_previous()
            self._check_kind()
            if not self.resume:
                self._remove_previous_files()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._unlock()

    def _lock(self) -> None:
        lock = self.path / LOCK
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_holder(lock)
                if holder is not None:
                    since = time.strftime("%H:%M:%S", time.localtime(holder.get("started", 0)))
                    raise ValueError(
                        f"{self.option} {str(self.path)!r} is in use by another run (pid "
                        f"{holder.get('pid')} on {holder.get('host')}, since {since}); wait for "
                        f"it to finish or choose another folder"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a run that was killed
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(owner, handle)
            self._locked = True
            return
        raise ValueError(f"{self.option} {str(self.path)!r}: could not take its lock file {lock}")

    @staticmethod
    def _lock_holder(lock: Path) -> dict[str, Any] | None:
        """The live owner of ``lock``, or ``None`` when its run is gone."""
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            # being written this instant, or garbage: a lock younger than a minute is respected
            try:
                young = time.time() - lock.stat().st_mtime < 60
            except OSError:
                return None
            return {"pid": "?", "host": "?", "started": time.time()} if young else None
        if not isinstance(holder, dict):
            return None
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return holder if _pid_alive(holder["pid"]) else None
        return holder  # another machine's run (a shared folder): cannot tell, so respect it

    def _unlock(self) -> None:
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    # -- files -----------------------------------------------------------------------------

    def _remove_temporary_files(self) -> None:
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for probe in self.path.glob(".write-test-*"):
            pid = probe.name.removeprefix(".write-test-")
            if not (pid.isdigit() and _pid_alive(int(pid))):
                probe.unlink(missing_ok=True)

    def _read_previous(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY
        if not path.exists():
            return None
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return previous if isinstance(previous, dict) else None

    def _check_kind(self) -> None:
        """Refuse a folder holding another kind of run's results (or a summary.json that no
        run of this package wrote)."""
        path = self.path / SUMMARY
        if not path.exists():
            return
        previous = self.previous or {}
        kind = previous.get("kind")
        if kind is None and "provenance" in previous:
            return  # written by this package before runs recorded their kind
        if kind != self.kind:
            holds = f"the results of {kind!r}" if kind else "a summary.json of another program"
            raise ValueError(
                f"{self.option} {str(self.path)!r} holds {holds}, not of {self.kind!r}; choose "
                "another folder (or delete that one)"
            )

    def _remove_previous_files(self) -> None:
        """Remove what the previous run wrote (its summary lists it), and only that."""
        if self.previous is None:
            return
        for name in self.previous.get("files", []):
            target = (self.path / str(name)).resolve()
            if target.parent == self.path.resolve() and target.is_file():
                target.unlink()
        (self.path / SUMMARY).unlink(missing_ok=True)

    def record(self, path: str | os.PathLike) -> Path:
        """Note that this run wrote ``path`` (a file in the folder); returns it."""
        path = Path(path)
        name = path.name
        if name not in self.files and name != SUMMARY:
            self.files.append(name)
        return path

    def adopt_previous_files(self) -> None:
        """Count the files the previous run listed (and that are still here) as this run's:
        for a run that continues the previous one's work (``resume=True``)."""
        for name in (self.previous or {}).get("files", []):
            if (self.path / str(name)).is_file():
                self.record(self.path / str(name))

    def forget(self, name: str) -> None:
        """``name`` is no longer part of this run (e.g. a method that failed on a re-run)."""
        (self.path / name).unlink(missing_ok=True)
        if name in self.files:
            self.files.remove(name)

    def stale_files(self) -> list[str]:
        """Files in the folder that this run did not write (hidden files aside)."""
        return sorted(
            p.name
            for p in self.path.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and p.name not in self.files
            and p.name not in _INTERNAL
        )

    def write_summary(self, summary: dict[str, Any], state: str = "running") -> Path:
        """Write ``summary.json`` atomically, with ``state``, ``provenance``, ``files`` and
        ``stale_files`` added."""
        if state not in ("running", "interrupted", "finished"):
            raise ValueError(f"state must be running, interrupted or finished, got {state!r}")
        content = {
            **summary,
            "kind": self.kind,
            "state": state,
            "provenance": self.provenance,
            "files": list(self.files),
            "stale_files": self.stale_files(),
        }
        return write_json(self.path / SUMMARY, content)
