"""Results over seeds: the mean and two standard errors of every number, per method.

A comparison run with several seeds (or a sweep) has one row per method and seed; its
aggregate has one row per method (and setting) with, for each numeric field ``x``, the mean
``x`` over the seeds where it is defined and ``x_se2`` = :math:`2 s / \\sqrt n` (``None`` for a
single seed), plus the seeds it came from and those whose row is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pyro_attention.diagnostics.calibration import mean_and_error

#: fields that identify a row within one run (never averaged)
IDENTITY_FIELDS = ("method", "variant", "depth")
#: numeric fields that are labels or settings, not results
NOT_AVERAGED = frozenset({"seed", "kmax", "num_posterior_samples", "local_draws", "num_seeds"})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _failed(row: Mapping[str, Any]) -> bool:
    return str(row.get("status", "ok")).startswith("error")


def aggregate_rows(
    rows: Sequence[Mapping[str, Any]], by: Sequence[str] = IDENTITY_FIELDS
) -> list[dict[str, Any]]:
    """One row per distinct value of the fields ``by`` (those present), in first-seen order.

    :param rows: one row per run, each with a ``seed`` (and usually a ``status``).
    :param by: the fields that identify a group; the others that hold numbers are averaged.
    :returns: rows with the ``by`` fields, ``seeds``, ``failed_seeds``, ``num_seeds`` (the
        runs that did not fail) and ``<field>``/``<field>_se2`` for every numeric field.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = tuple((name, row[name]) for name in by if name in row)
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        good = [r for r in members if not _failed(r)]
        summary: dict[str, Any] = dict(key)
        summary["seeds"] = [r.get("seed") for r in members]
        summary["failed_seeds"] = [r.get("seed") for r in members if _failed(r)]
        summary["num_seeds"] = len(good)
        fields = [
            name
            for name in dict.fromkeys(n for r in members for n in r)
            if name not in summary and name not in NOT_AVERAGED
        ]
        for name in fields:
            values = [v for v in (_number(r.get(name)) for r in good) if v is not None]
            if not values:
                continue
            mean, error = mean_and_error(values)
            summary[name] = mean
            summary[f"{name}_se2"] = None if math.isnan(error) else error
        out.append(summary)
    return out


def mean_error_text(row: Mapping[str, Any], field: str) -> str:
    """``mean ± 2 SE`` of ``field`` in an aggregate row (the mean alone for one seed)."""
    mean = row.get(field)
    if mean is None:
        return "-"
    error = row.get(f"{field}_se2")
    text = f"{mean:.4g}"
    if error is None:
        return text
    if error <= 1e-9 * max(1.0, abs(mean)):  # equal over the seeds up to rounding
        return f"{text} ± 0"
    return f"{text} ± {error:.2g}"
