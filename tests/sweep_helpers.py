"""Task functions for the executor tests, in a module that imports nothing heavy (a spawned
worker imports it to unpickle them)."""

from __future__ import annotations

import os
from pathlib import Path


def die_once(job: dict) -> dict:
    """Kill the worker the first time a job is seen (its marker file tells), then work;
    with ``always``, kill it every time."""
    marker = Path(job["marker"])
    if job.get("always") or not marker.exists():
        marker.write_text("died")
        os._exit(3)
    return {"value": job["value"] * 2, "pid": os.getpid()}
