"""Where the cells of a sweep run: one after another, in a local process pool, or on Ray.

An executor takes a picklable function ``fn`` and ``(key, payload)`` tasks and yields
``(key, outcome)`` as tasks finish, in the order they finish; ``outcome`` is ``fn(payload)``, or
the exception it raised (one failing task never stops the others). The function must not depend
on what ran before it in the same process (no global parameter store, no global random state
carried from one task to the next): a sweep then gives the same numbers on every executor.

- :class:`SerialExecutor` runs the tasks in this process, one after another (the reference);
- :class:`ProcessExecutor` runs them in ``workers`` fresh (``spawn``) processes, each pinned to
  ``threads`` torch threads: torch's default of one thread per core in every process made each
  step up to 300× slower on a busy machine. A worker that dies (killed, out of memory) breaks
  the pool and takes the tasks running beside it down: each of those runs again alone, where
  a death is its own; dying alone more than ``retries`` times, it is reported lost;
- :class:`RayExecutor` runs each task as a Ray task with ``num_cpus`` CPUs and ``num_gpus`` GPUs
  on the cluster at ``address`` (``None``: a local Ray instance with ``workers`` CPUs; ``"auto"``:
  the running cluster), retried ``retries`` times when its worker is lost (Ray's
  ``max_retries``). Ray is an optional dependency (``pip install pyro-attention[ray]``).

An interrupt (``KeyboardInterrupt``) cancels the tasks that have not started and stops the
workers; the tasks already yielded are kept by the caller.
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import multiprocessing
import os
import socket
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from pyro_attention._validation import check_count

Task = tuple[str, Any]
Outcome = tuple[str, Any]


class WorkerLostError(RuntimeError):
    """A task's worker process died (more often than the retries allowed)."""


class Executor(Protocol):
    """Runs ``fn`` on each task's payload; yields ``(key, result or exception)``."""

    name: str

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Task]) -> Iterator[Outcome]: ...

    def describe(self) -> dict[str, Any]: ...


def _pin_threads(threads: int) -> None:
    """``threads`` torch threads (and OpenMP's) in this process, before any work."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


#: in a pool's worker: the queue on which it says which task it starts
_STARTED: Any = None


def _initialize_worker(threads: int, started: Any) -> None:
    global _STARTED
    _STARTED = started
    _pin_threads(threads)


def _call_in_worker(fn: Callable[[Any], Any], key: str, payload: Any) -> Any:
    """``fn(payload)``, after telling the driver that ``key`` started (so that when the worker
    dies, the driver charges the retry to this task and not to those still waiting)."""
    _STARTED.put(key)
    return fn(payload)


class SerialExecutor:
    """The tasks in this process, one after another."""

    name = "serial"

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Task]) -> Iterator[Outcome]:
        for key, payload in tasks:
            try:
                result = fn(payload)
            except Exception as err:  # a failing task is an outcome, not the end of the run
                result = err
            yield key, result

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": 1}


class ProcessExecutor:
    """The tasks in a pool of ``workers`` spawned processes with ``threads`` torch threads each.

    :param workers: processes (default: the CPU count divided by ``threads``).
    :param threads: torch threads per process (default 1).
    :param retries: how often a task whose worker died when running it alone is started again.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, threads: int = 1, retries: int = 1) -> None:
        self.threads = check_count(threads, "threads", 1)
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) // self.threads)
        self.workers = check_count(workers, "workers", 1)
        self.retries = check_count(retries, "retries", 0)

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Task]) -> Iterator[Outcome]:
        pending = dict(tasks)
        order = [key for key, _ in tasks]
        deaths = dict.fromkeys(pending, 0)
        while pending:
            keys = [key for key in order if key in pending]
            suspects = yield from self._round(fn, keys, pending, self.workers)
            for key in suspects:  # each alone: if its worker dies now, the task is the cause
                while key in pending:
                    if not (yield from self._round(fn, [key], pending, 1)):
                        continue
                    deaths[key] += 1
                    if deaths[key] > self.retries:
                        del pending[key]
                        yield (
                            key,
                            WorkerLostError(
                                f"its worker process died {deaths[key]} time(s) running it alone "
                                "(killed, out of memory, or a crash in native code?)"
                            ),
                        )

    def _round(
        self, fn: Callable[[Any], Any], keys: list[str], pending: dict[str, Any], workers: int
    ) -> Generator[Outcome, None, list[str]]:
        """Run ``keys`` in one pool, yielding (and dropping from ``pending``) what finishes;
        returns the tasks that had started when a worker died and broke the pool."""
        context = multiprocessing.get_context("spawn")
        started_queue = context.SimpleQueue()
        started: set[str] = set()
        pool = futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_initialize_worker,
            initargs=(self.threads, started_queue),
        )
        try:
            running = {pool.submit(_call_in_worker, fn, key, pending[key]): key for key in keys}
            for future in futures.as_completed(running):
                key = running[future]
                try:
                    result = future.result()
                except BrokenProcessPool:  # a worker died; the pool stopped the others
                    while not started_queue.empty():
                        started.add(started_queue.get())
                    return [k for k in keys if k in pending and k in started]
                except Exception as err:
                    result = err
                while not started_queue.empty():  # keep the pipe from filling up
                    started_queue.get()
                del pending[key]
                yield key, result
            return []
        finally:
            _stop_pool(pool)
            started_queue.close()

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers, "threads": self.threads}


def _stop_pool(pool: futures.ProcessPoolExecutor) -> None:
    """Cancel what has not started and stop the workers now (also those still running a task,
    after an interrupt): ``shutdown`` alone would wait for them."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(timeout=10)


class RayExecutor:
    """Each task a Ray task with its CPU and GPU resources.

    :param address: the cluster (``"auto"``: the running one; ``"ray://host:10001"``); ``None``
        starts a local instance with ``workers`` CPUs, shut down after the run.
    :param workers: CPUs of a local instance (default: the CPU count).
    :param num_cpus: CPUs per task, also its torch threads (default 1).
    :param num_gpus: GPUs per task (a fraction shares one; default 0).
    :param retries: Ray's ``max_retries`` of a task whose worker died.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        num_cpus: int = 1,
        num_gpus: float = 0.0,
        retries: int = 3,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError(
                "the ray executor needs Ray: pip install 'pyro-attention[ray]' (or use the local "
                "executor)"
            ) from None
        self.address = address
        self.workers = None if workers is None else check_count(workers, "workers", 1)
        self.num_cpus = check_count(num_cpus, "num_cpus", 1)
        if isinstance(num_gpus, bool) or not (0 <= float(num_gpus) < math.inf):
            raise ValueError(f"num_gpus must be a finite number >= 0, got {num_gpus!r}")
        self.num_gpus = float(num_gpus)
        self.retries = check_count(retries, "retries", 0)
        self._started = False

    def connect(self) -> None:
        """Connect to the cluster (or start the local instance) now, so that an address that
        cannot be reached fails before any work; :meth:`run` then uses this connection and
        stops an instance it started."""
        import ray

        if ray.is_initialized():
            return
        env = {"env_vars": {"OMP_NUM_THREADS": str(self.num_cpus)}}
        if self.address is None:
            ray.init(
                num_cpus=self.workers or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=env,
            )
        else:
            _check_reachable(self.address)
            ray.init(address=self.address, log_to_driver=False, runtime_env=env)
        self._started = True

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Task]) -> Iterator[Outcome]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        self.connect()
        remote = ray.remote(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.retries
        )(fn)
        refs = {remote.remote(payload): key for key, payload in tasks}
        waiting = list(refs)
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                ref = done[0]
                try:
                    result = ray.get(ref)
                except RayTaskError as err:  # the task raised: its own exception
                    cause = err.as_instanceof_cause()
                    result = cause if isinstance(cause, Exception) else err
                except RayError as err:  # the worker died more often than the retries allow
                    result = WorkerLostError(f"{type(err).__name__}: {err}")
                yield refs[ref], result
        finally:
            for ref in waiting:
                ray.cancel(ref, force=True)
            if self._started:
                ray.shutdown()
                self._started = False

    def describe(self) -> dict[str, Any]:
        return {
            "executor": self.name,
            "address": self.address,
            "workers": self.workers,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
        }


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) where nothing listens: Ray itself keeps
    trying to connect for minutes without a word."""
    if address in ("auto", "local"):
        return  # Ray finds (or fails to find) the running cluster at once
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"{address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} ({err.strerror or err})") from None


EXECUTORS = ("local", "ray", "serial")


def make_executor(
    name: str,
    *,
    workers: int | None = None,
    threads: int = 1,
    address: str | None = None,
    num_gpus: float = 0.0,
    retries: int = 1,
) -> Executor:
    """The executor called ``name`` (``local``, ``ray`` or ``serial``); ``local`` with one
    worker is the serial executor (no process to start)."""
    if name == "serial" or (name == "local" and workers == 1):
        if name == "serial" and workers not in (None, 1):
            raise ValueError(f"the serial executor runs one task at a time, not {workers}")
        return SerialExecutor()
    if name == "local":
        return ProcessExecutor(workers, threads=threads, retries=retries)
    if name == "ray":
        return RayExecutor(
            address, workers=workers, num_cpus=threads, num_gpus=num_gpus, retries=retries
        )
    raise ValueError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
