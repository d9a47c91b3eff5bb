"""Run several inference methods on one model and score them with the same yardsticks.

Each method is fitted from the same seed; its posterior draws of the globals are scored by the
exact held-out log predictive density (:mod:`pyro_attention.infer.evaluate`), PSIS k-hat of its
approximate posterior over the globals, the gradient variance of its estimator, and time.
With ``out`` set, :func:`compare` writes ``summary.json``, one ArviZ netCDF file per method and
PNG plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm import tqdm

from pyro_attention._io import write_json
from pyro_attention.infer.evaluate import (
    gradient_variance,
    log_predictive_density,
    pointwise_log_likelihood,
)
from pyro_attention.infer.fit import FitResult, NonFiniteLossError, PosteriorDraws
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.infer.registry import get_method

COLUMNS = (
    "method",
    "heldout_log_lik",
    "elbo",
    "seconds",
    "steps",
    "samples_per_second",
    "grad_variance",
    "psis_khat",
    "status",
)


@dataclass
class Comparison:
    """Rows of a comparison (one per method) and the fits behind them."""

    model: str
    dataset: str
    device: str
    seed: int
    rows: list[dict[str, Any]]
    fits: dict[str, FitResult] = field(default_factory=dict)
    draws: dict[str, PosteriorDraws] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    #: further results that belong in ``summary.json`` (e.g. ``{"lookup": {...}}``)
    sections: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` content."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "device": self.device,
            "seed": self.seed,
            "results": self.rows,
            **self.sections,
        }

    def to_dataframe(self) -> Any:
        """The rows as a ``pandas.DataFrame`` indexed by method."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("method")

    def __str__(self) -> str:
        return format_table(self.rows)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A plain-text table of ``rows``."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _fit_options(method: InferenceMethod, options: dict[str, Any]) -> dict[str, Any]:
    if method.closed_form or method.name == "nuts":
        return {k: options[k] for k in ("seed", "progress") if k in options}
    return options


def evaluate_fit(
    model_obj: Any,
    result: FitResult,
    train: Any,
    test: Any,
    *,
    num_samples: int = 200,
    grad_draws: int = 20,
) -> tuple[dict[str, Any], PosteriorDraws, torch.Tensor]:
    """Score one fit; returns its row, its draws and the training pointwise log-likelihood."""
    method = result.method
    nesting = model_obj.max_plate_nesting
    draws = result.draws(num_samples)
    test_ll = pointwise_log_likelihood(
        model_obj.model, draws.samples, test, max_plate_nesting=nesting
    )
    train_ll, log_prior = pointwise_log_likelihood(
        model_obj.model, draws.samples, train, max_plate_nesting=nesting, return_log_prior=True
    )
    khat = None
    if draws.log_density is not None and draws.log_density.numel() >= 25:
        from pyro_attention.diagnostics import psis_khat

        weights = train_ll.reshape(train_ll.shape[0], -1).sum(-1) + log_prior - draws.log_density
        khat = psis_khat(weights)
    grad_var = None
    if method.stochastic_gradient and result.guide is not None:
        extra = result.extra
        grad_var = gradient_variance(
            extra["model_fn"],
            result.guide,
            extra["loss_fn"],
            train,
            num_draws=grad_draws,
            **extra["kwargs"],
        )
    num_train = model_obj.num_points(train)
    elbo = None
    if result.losses and method.name not in ("em", "nuts"):
        tail = result.losses[-max(1, len(result.losses) // 20) :]
        elbo = -sum(tail) / len(tail) / num_train
    row = {
        "method": method.name,
        "heldout_log_lik": log_predictive_density(test_ll, model_obj.num_points(test)),
        "train_log_lik": log_predictive_density(train_ll, num_train),
        "elbo": elbo,
        "seconds": result.seconds,
        "steps": result.steps,
        "samples_per_second": result.samples_per_second,
        "grad_variance": grad_var,
        "psis_khat": khat,
        "num_posterior_samples": int(train_ll.shape[0]),
        "status": result.status,
        "settings": repr(method),
    }
    return row, draws, train_ll


def compare(
    model_obj: Any,
    train: Any,
    test: Any,
    methods: Sequence[str | InferenceMethod] | None = None,
    *,
    num_steps: int = 1000,
    lr: float = 0.05,
    subsample_size: int | None = None,
    num_samples: int = 200,
    grad_draws: int = 20,
    seed: int = 0,
    dataset: str = "custom",
    out: str | Path | None = None,
    progress: bool = True,
) -> Comparison:
    """Fit ``model_obj`` to ``train`` with each method and score all of them on ``test``.

    :param model_obj: a model of :mod:`pyro_attention.models`.
    :param train: training data as the model takes it; :param test: held-out data.
    :param methods: names or method objects; default every method the model supports.
    :param num_steps: optimisation steps of the gradient methods; :param lr: their Adam rate.
    :param subsample_size: mini-batch size of the gradient methods that support it.
    :param num_samples: posterior draws for the held-out metric and PSIS.
    :param grad_draws: repeated gradient draws for the gradient variance.
    :param out: a folder for ``summary.json``, ``<method>.nc`` and PNG plots.
    :returns: a :class:`Comparison` (``print`` it for the table).
    """
    train = model_obj.check_data(train)
    test = model_obj.check_data(test)
    if isinstance(train, torch.Tensor) and isinstance(test, torch.Tensor):
        if test.device != train.device or test.dtype != train.dtype:
            raise ValueError(
                f"test is {test.dtype} on {test.device} but train is {train.dtype} on "
                f"{train.device}; use test.to(train) so both match"
            )
    names = list(model_obj.supported_methods) if methods is None else list(methods)
    objects = [get_method(m) for m in names]
    for method in objects:  # refuse bad pairs before any work starts
        method.check(model_obj, subsample_size=subsample_size)
    device = str(train.device) if isinstance(train, torch.Tensor) else "cpu"
    comparison = Comparison(model_obj.name, dataset, device, seed, rows=[])
    options = {
        "num_steps": num_steps,
        "lr": lr,
        "subsample_size": subsample_size,
        "seed": seed,
        "progress": progress,
    }
    if subsample_size is None:
        options.pop("subsample_size")
    for method in tqdm(objects, desc="methods", disable=not progress):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        t0 = time.perf_counter()
        try:
            fitted = method.fit(model_obj, train, **_fit_options(method, options))
        except NonFiniteLossError as err:
            fitted = err.result
        pyro.set_rng_seed(seed)
        draws_wanted = num_samples  # every MCMC draw is scored, so the tree reuses train_ll
        if fitted.chains is not None:
            draws_wanted = max(num_samples, math.prod(fitted.chains_shape()))
        row, draws, train_ll = evaluate_fit(
            model_obj, fitted, train, test, num_samples=draws_wanted, grad_draws=grad_draws
        )
        row["total_seconds"] = time.perf_counter() - t0
        comparison.rows.append(row)
        comparison.fits[method.name] = fitted
        comparison.draws[method.name] = draws
        if out is not None:
            comparison.files.append(
                _write_tree(model_obj, fitted, draws, train, train_ll, Path(out), row)
            )
    if out is not None:
        out = Path(out)
        comparison.files.append(write_json(out / "summary.json", comparison.summary()))
        from pyro_attention.diagnostics.plots import plot_comparison

        comparison.files += plot_comparison(model_obj, comparison, train, out)
    return comparison


def _write_tree(
    model_obj: Any,
    fitted: FitResult,
    draws: PosteriorDraws,
    train: Any,
    train_ll: torch.Tensor,
    out: Path,
    row: dict,
) -> Path:
    """Save the method's posterior as an ArviZ DataTree in ``out/<method>.nc``."""
    from pyro_attention.diagnostics import save_datatree, to_datatree

    dims = model_obj.arviz_dims()
    sample_stats = None
    if fitted.chains is not None:
        posterior, sample_dims = fitted.chains, ("chain", "draw")
        train_ll = train_ll.reshape(*fitted.chains_shape(), *train_ll.shape[1:])
        sample_stats = {"diverging": fitted.extra["diverging"]}
    else:
        posterior, sample_dims = draws.samples, ("sample",)
        if draws.log_density is not None:
            sample_stats = {"log_q": draws.log_density}
    tree = to_datatree(
        posterior,
        sample_dims=sample_dims,
        log_likelihood={"obs": train_ll},
        observed_data={"obs": train},
        sample_stats=sample_stats,
        dims=dims,
        attrs={
            "model": model_obj.name,
            "method": fitted.method.name,
            "heldout_log_lik": row["heldout_log_lik"],
        },
    )
    return save_datatree(tree, out / f"{fitted.method.name}.nc")
