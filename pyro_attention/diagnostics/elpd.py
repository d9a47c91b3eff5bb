"""Held-out ELPD as ArviZ's ELPD objects, and the ranking of methods by it.

For held-out points :math:`y_i` (not used in training) and ``S`` draws :math:`\\theta_s` of a
method's posterior (one draw for a point estimate), the expected log pointwise predictive
density is estimated without any leave-one-out correction, since the points are truly left out:

.. math::

    \\widehat{\\mathrm{elpd}}_i = \\log \\frac1S \\sum_{s=1}^S p(y_i \\mid \\theta_s), \\qquad
    \\widehat{\\mathrm{elpd}} = \\sum_i \\widehat{\\mathrm{elpd}}_i, \\qquad
    \\mathrm{se} = \\sqrt{n \\operatorname{Var}_i \\widehat{\\mathrm{elpd}}_i}.

:func:`heldout_elpd` returns it as :class:`arviz_stats.utils.ELPDData` with ``kind="heldout"``
(so it is never mistaken for PSIS-LOO), which :func:`arviz_stats.compare` ranks with the
standard error of each paired difference ``dse`` :math:`= \\sqrt{n \\operatorname{Var}_i
(\\widehat{\\mathrm{elpd}}_{a,i} - \\widehat{\\mathrm{elpd}}_{b,i})}` (Vehtari, Gelman & Gabry 2017)
and :func:`arviz_plots.plot_compare` draws::

    elpds = {name: heldout_elpd(load_datatree(f"runs/dates/{name}.nc")) for name in names}
    table = rank_methods(elpds)          # arviz_stats.compare
    plot_elpd_compare(table, "elpd_compare.png")

Where a tree carries posterior draws of global latents and the training data's pointwise
log-likelihood, ``arviz_stats.loo(tree)`` gives PSIS-LOO on the training data as usual.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from arviz_stats.utils import ELPDData

from pyro_attention._io import atomic_path

__all__ = [
    "HELDOUT_GROUP",
    "HELDOUT_KIND",
    "heldout_elpd",
    "plot_elpd_compare",
    "rank_methods",
    "ranking_rows",
    "ranking_section",
]

#: the tree group holding the held-out pointwise log-likelihood per draw
HELDOUT_GROUP = "heldout_log_likelihood"
#: the ``kind`` of the ELPD objects made here
HELDOUT_KIND = "heldout"


def _pointwise(source: Any, var_name: str | None) -> xr.DataArray:
    """The held-out log-likelihood as a DataArray with the draws on ``(chain, draw)``."""
    if isinstance(source, xr.DataTree):
        if HELDOUT_GROUP not in source.children:
            raise ValueError(
                f"the tree has no {HELDOUT_GROUP!r} group (groups: "
                f"{', '.join(source.children) or 'none'}); write it with "
                "to_datatree(..., heldout_log_likelihood=...)"
            )
        group = source[HELDOUT_GROUP].to_dataset()
        names = [str(v) for v in group.data_vars]
        if var_name is None:
            if len(names) != 1:
                raise ValueError(
                    f"the {HELDOUT_GROUP!r} group holds {names}; pass var_name= to pick one"
                )
            var_name = names[0]
        if var_name not in names:
            raise ValueError(f"no variable {var_name!r} in {HELDOUT_GROUP!r}; it holds {names}")
        array = group[var_name]
        if "chain" not in array.dims or "draw" not in array.dims:
            raise ValueError(f"{HELDOUT_GROUP}[{var_name!r}] lacks the (chain, draw) dims")
        return array
    values = np.asarray(source, dtype=float)
    if values.ndim == 1:  # a point estimate: one draw
        values = values[None]
    if values.ndim != 2:
        raise ValueError(
            f"the pointwise log-likelihood must be (draws, points) or (points,), got shape "
            f"{values.shape}"
        )
    return xr.DataArray(values[None], dims=("chain", "draw", "point"))


def heldout_elpd(source: Any, var_name: str | None = None) -> ELPDData:
    """The held-out ELPD of one method as :class:`~arviz_stats.utils.ELPDData`.

    :param source: a tree with a ``heldout_log_likelihood`` group (its pointwise values per
        draw, ``(chain, draw, point, ...)``), or an array ``(draws, points)`` or ``(points,)``.
        The points are the first dim after the draws; further dims (the tokens of a sequence)
        are summed into their point, so that a point is what the data are independent over.
    :param var_name: the group's variable, when it holds several (e.g. ``"y"`` per example
        and ``"y_token"`` per token).
    :returns: ``kind="heldout"``, ``elpd`` and ``se`` as in the module's formula, ``p`` NaN
        (no effective number of parameters is estimated), ``elpd_i`` with the points' dims.
    :raises ValueError: no such group or variable, no draws or points, NaN or +inf values,
        a point of probability zero under every draw.
    """
    array = _pointwise(source, var_name).astype(np.float64)
    values = array.values
    if values.size == 0:
        raise ValueError(
            f"the held-out log-likelihood is empty (shape {dict(array.sizes)}); it needs at "
            "least one draw and one point"
        )
    if np.isnan(values).any() or np.isposinf(values).any():
        raise ValueError("the held-out log-likelihood contains NaN or +inf")
    point_dims = [d for d in array.dims if d not in ("chain", "draw")]
    if len(point_dims) > 1:  # the parts of a point (a sequence's tokens) sum into it
        array = array.sum(point_dims[1:])
        point_dims = point_dims[:1]
    stacked = array.stack(__draws__=("chain", "draw"))
    num_draws = stacked.sizes["__draws__"]
    with np.errstate(divide="ignore"):
        log_mean = np.logaddexp.reduce(stacked.values, axis=-1) - math.log(num_draws)
    elpd_i = xr.DataArray(
        log_mean, dims=point_dims, coords={d: array.coords[d] for d in point_dims if d in array}
    )
    flat = log_mean.reshape(-1)
    if np.isneginf(flat).any():
        raise ValueError(
            f"{int(np.isneginf(flat).sum())} held-out point(s) have zero probability under "
            "every draw (log-likelihood -inf): the ELPD is -inf and no ranking can be made"
        )
    n = flat.size
    return ELPDData(
        kind=HELDOUT_KIND,
        elpd=float(flat.sum()),
        se=float(math.sqrt(n * flat.var())),
        p=math.nan,
        n_samples=num_draws,
        n_data_points=n,
        scale="log",
        warning=False,
        good_k=0.7,
        elpd_i=elpd_i,
    )


def rank_methods(elpds: Mapping[str, ELPDData]) -> Any:
    """:func:`arviz_stats.compare` of the methods' held-out ELPDs: a ``pandas.DataFrame``
    ordered best first with ``rank, elpd, p, elpd_diff, weight, se, dse, warning``; the
    warnings arviz-stats gave (e.g. that with many methods the best may be best by chance) are
    in ``table.attrs["warnings"]`` instead of being raised.

    :raises ValueError: no methods, or methods scored on different numbers of points.
    """
    import arviz_stats

    if not elpds:
        raise ValueError("rank_methods needs at least one method's ELPD")
    counts = {name: e.n_data_points for name, e in elpds.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"the methods were scored on different numbers of points: {counts}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = arviz_stats.compare(dict(elpds))
    # arviz-stats' own notes (e.g. its selection-bias check with more than 11 methods) are
    # kept with the table; pandas' deprecation of the in-place sort it uses is not
    table.attrs["warnings"] = list(
        dict.fromkeys(str(w.message) for w in caught if "inplace keyword" not in str(w.message))
    )
    return table


def ranking_rows(table: Any) -> list[dict[str, Any]]:
    """The ranking as JSON-ready rows (best first): method, rank, elpd, se, elpd_diff, dse,
    weight."""
    rows = []
    for name, row in table.iterrows():
        rows.append(
            {
                "method": str(name),
                "rank": int(row["rank"]),
                **{key: float(row[key]) for key in ("elpd", "se", "elpd_diff", "dse", "weight")},
            }
        )
    return rows


def ranking_section(elpds: Mapping[str, ELPDData], variable: str) -> tuple[Any, dict[str, Any]]:
    """:func:`rank_methods` of ``elpds`` and its ``summary.json`` section: ``kind``,
    ``variable`` (what one held-out point is), ``num_points``, ``ranking``
    (:func:`ranking_rows`) and ``notes`` (arviz-stats' warnings)."""
    table = rank_methods(elpds)
    section = {
        "kind": HELDOUT_KIND,
        "variable": variable,
        "num_points": next(iter(elpds.values())).n_data_points,
        "ranking": ranking_rows(table),
        "notes": table.attrs["warnings"],
    }
    return table, section


def plot_elpd_compare(table: Any, path: str | Path, title: str | None = None) -> Path:
    """:func:`arviz_plots.plot_compare` of ``table`` (from :func:`rank_methods`), saved as PNG
    atomically."""
    import arviz_plots

    collection = arviz_plots.plot_compare(table, backend="matplotlib")
    figure = collection.viz["figure"].item()
    if title:
        collection.viz["plot"].item().set_title(f"{title}\nheld-out ELPD, higher is better")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
