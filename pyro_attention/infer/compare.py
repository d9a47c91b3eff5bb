"""Run several inference methods on one model and score them with the same yardsticks.

Each method is fitted from the same seed, in its own param store; its posterior draws of the
globals are scored by the exact held-out log predictive density
(:mod:`pyro_attention.infer.evaluate`), PSIS k-hat of its approximate posterior over the globals,
the gradient variance of its estimator, and time. Each row says what the method's training
objective is (``objective``: ELBO, Jensen bound, relaxed-model ELBO, log-likelihood, ...) next to
its value per point (``train_objective``), so numbers of different kinds are not read as one.
A method that fails gets a row with status ``error: <type>: <message>`` and the others go on.
With ``out`` set, :func:`compare` owns the folder for the run (:class:`~pyro_attention._run_folder.
RunFolder`: a lock, the previous run's files replaced), writes ``summary.json`` after every method,
one ArviZ netCDF file per method as it finishes, and PNG plots at the end. An interrupt keeps the
finished rows (``state: interrupted``); ``resume=True`` skips the methods that finished and
continues the interrupted one from its checkpoint, to the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from arviz_stats.utils import ELPDData
from tqdm import tqdm

from pyro_attention._run_folder import RunFolder, check_output_folder
from pyro_attention._validation import check_count, check_seed
from pyro_attention.diagnostics import load_datatree, psis_khat, save_datatree, to_datatree
from pyro_attention.diagnostics.aggregate import aggregate_rows, mean_error_text
from pyro_attention.diagnostics.arviz import add_heldout_log_likelihood
from pyro_attention.diagnostics.elpd import (
    HELDOUT_GROUP,
    heldout_elpd,
    plot_elpd_compare,
    ranking_section,
)
from pyro_attention.diagnostics.plots import plot_comparison, plot_seed_spread, save_figure
from pyro_attention.infer.evaluate import (
    check_model,
    gradient_variance,
    log_predictive_density,
    model_log_likelihood,
)
from pyro_attention.infer.fit import check_svi_options, fit, runner_options
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.infer.registry import applicable_methods, get_method
from pyro_attention.infer.results import (
    FitResult,
    NonFiniteLossError,
    PosteriorDraws,
    clone_state,
)
from pyro_attention.models.base import AlignmentModel, as_model
from pyro_attention.models.structure import trace_model
from pyro_attention.traces import observed_sites, site_value

COLUMNS = (
    "method",
    "heldout_log_lik",
    "objective",
    "train_objective",
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
    #: the options every method ran with (a resumed run must match them)
    settings: dict[str, Any] = field(default_factory=dict)
    #: dtype and shape of every sample site of the model on the training data, e.g.
    #: ``{"weights": "float32 (4,)"}``: the model's size and precision (a resumed run must match)
    sites: dict[str, str] = field(default_factory=dict)
    #: training objective (loss) per step, per method
    traces: dict[str, list[float]] = field(default_factory=dict)
    #: methods whose rows came from an earlier, interrupted run (``resume=True``)
    resumed: list[str] = field(default_factory=list)
    #: the output folder's bookkeeping, while :func:`compare` writes into it
    folder: RunFolder | None = None
    #: with several seeds: each seed's own comparison (``rows`` holds all of their rows)
    runs: dict[int, Comparison] = field(default_factory=dict)
    #: with several seeds: one row per method, every number's mean and ``<name>_se2``
    aggregate: list[dict[str, Any]] = field(default_factory=list)
    #: each scored method's held-out ELPD (:func:`~pyro_attention.diagnostics.elpd.heldout_elpd`)
    elpds: dict[str, ELPDData] = field(default_factory=dict)
    #: :func:`arviz_stats.compare` of :attr:`elpds` (a ``pandas.DataFrame``), after :meth:`rank`
    ranking: Any = None

    def rank(self, variable: str) -> Path | None:
        """Rank the methods by held-out ELPD (:func:`arviz_stats.compare`: ``elpd``, ``se``,
        ``elpd_diff`` and the SE ``dse`` of each paired difference) into :attr:`ranking` and
        ``summary.json``'s ``elpd_compare``; with a folder, draw ``elpd_compare.png``.

        :param variable: what one held-out point is, for the summary (e.g. ``"obs: log p(x_n)
            per test point"``).
        :returns: the figure's path, or None (no folder, or no scored method).
        """
        if not self.elpds:
            return None
        self.ranking, self.sections["elpd_compare"] = ranking_section(self.elpds, variable)
        if self.folder is None:
            return None
        path = self.folder.path / "elpd_compare.png"
        title = f"{self.model} on {self.dataset}"
        return self.folder.record(plot_elpd_compare(self.ranking, path, title))

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` content."""
        summary = {
            "model": self.model,
            "dataset": self.dataset,
            "device": self.device,
            "seed": self.seed,
            "settings": self.settings,
            "sites": self.sites,
            "results": self.rows,
            **self.sections,
        }
        if self.runs:
            summary |= {"seeds": list(self.runs), "aggregate": self.aggregate}
        if self.resumed:
            summary["resumed"] = self.resumed
        return summary

    def write_summary(self, state: str = "finished") -> Path:
        """(Re)write ``summary.json`` in the output folder; ``state`` is ``running``,
        ``interrupted`` or ``finished``."""
        if self.folder is None:
            raise ValueError("this comparison was run without out=; there is no folder to write")
        return self.folder.write_summary(self.summary(), state)

    def to_dataframe(self) -> Any:
        """The rows as a ``pandas.DataFrame`` indexed by method."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("method")

    @property
    def failed(self) -> list[str]:
        """The methods whose row has an ``error`` status."""
        return [row["method"] for row in self.rows if str(row["status"]).startswith("error")]

    def __str__(self) -> str:
        if not self.runs:
            return format_table(self.rows) + ranking_text(self.sections.get("elpd_compare"))
        columns = ("heldout_log_lik", "train_objective", "seconds", "psis_khat")
        rows = [
            {
                "method": row["method"],
                "seeds": f"{row['num_seeds']}/{len(row['seeds'])}",
                **{name: mean_error_text(row, name) for name in columns},
            }
            for row in self.aggregate
        ]
        return format_table(rows, ("method", "seeds", *columns))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def ranking_text(section: Mapping[str, Any] | None, heading: str = "held-out ELPD ranking") -> str:
    """A ``summary.json`` ranking section (:func:`~pyro_attention.diagnostics.elpd.
    ranking_section`) as text to print under a comparison's table; ``""`` without one."""
    if not section:
        return ""
    if "error" in section:
        return f"\n\n{heading}: {section['error']}"
    columns = ("method", "rank", "elpd", "se", "elpd_diff", "dse", "weight")
    return (
        f"\n\n{heading} (arviz_stats.compare; {section['variable']}, {section['num_points']} "
        f"points; dse: SE of the paired difference to the best):\n"
        + format_table(section["ranking"], columns)
    )


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A plain-text table of ``rows``."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def evaluate_fit(
    model_obj: AlignmentModel | Callable[..., Any],
    result: FitResult,
    train: Any,
    test: Any,
    *,
    num_samples: int = 200,
    grad_draws: int = 20,
    local_draws: int = 64,
) -> tuple[dict[str, Any], PosteriorDraws, torch.Tensor]:
    """Score one fit; returns its row, its draws and the training pointwise log-likelihood."""
    with result.scope():  # the fit's parameters, and none of the user's store
        row, draws, train_ll, _ = _evaluate_fit(
            as_model(model_obj),
            result,
            train,
            test,
            num_samples=num_samples,
            grad_draws=grad_draws,
            local_draws=local_draws,
        )
    return row, draws, train_ll


def _evaluate_fit(
    model_obj: AlignmentModel,
    result: FitResult,
    train: Any,
    test: Any,
    *,
    num_samples: int,
    grad_draws: int,
    local_draws: int,
) -> tuple[dict[str, Any], PosteriorDraws, torch.Tensor, torch.Tensor]:
    """The row, the draws and the pointwise log-likelihood of the training and test data."""
    train, test = model_obj.check_data(train), model_obj.check_data(test)
    method = result.method
    # the scoring below consumes random numbers in proportion to the data (prior draws of the
    # model check, local draws): the gradient variance starts from this state instead, so that
    # it does not depend on the size of the test set
    rng = pyro.util.get_rng_state()
    draws = result.draws(num_samples)
    model_fn = method.predictive(model_obj.model)
    with torch.no_grad():
        test_ll = model_log_likelihood(
            model_obj, model_fn, draws.samples, test, local_draws=local_draws
        )
        train_ll, log_prior = model_log_likelihood(
            model_obj,
            model_fn,
            draws.samples,
            train,
            return_log_prior=True,
            local_draws=local_draws,
        )
    khat = None
    if draws.log_density is not None and draws.log_density.numel() >= 25:
        weights = train_ll.reshape(train_ll.shape[0], -1).sum(-1) + log_prior - draws.log_density
        khat = psis_khat(weights)
    grad_var = None
    if method.stochastic_gradient and result.guide is not None:
        extra = result.extra
        pyro.util.set_rng_state(rng)
        grad_var = gradient_variance(
            extra["model_fn"],
            result.guide,
            extra["loss_fn"],
            train,
            num_draws=grad_draws,
            **extra["kwargs"],
        )
    num_train = model_obj.num_points(train)
    train_objective = None
    if result.losses and method.objective != "none":
        tail = result.losses[-max(1, len(result.losses) // 20) :]
        train_objective = -sum(tail) / len(tail) / num_train
    row = {
        "method": method.name,
        "heldout_log_lik": log_predictive_density(test_ll, model_obj.num_points(test)),
        "train_log_lik": log_predictive_density(train_ll, num_train),
        "objective": method.objective,
        "train_objective": train_objective,
        "seconds": result.seconds,
        "steps": result.steps,
        "samples_per_second": result.samples_per_second,
        "grad_variance": grad_var,
        "psis_khat": khat,
        "num_posterior_samples": int(train_ll.shape[0]),
        "point_estimate": draws.point_estimate,
        "status": result.status,
        "settings": repr(method),
    }
    for key in ("max_rhat", "min_ess", "divergences"):
        if key in result.extra:
            row[key] = result.extra[key]
    return row, draws, train_ll, test_ll


def error_row(method: InferenceMethod, err: BaseException, seconds: float) -> dict[str, Any]:
    """The row of a method that failed: its status names the error (its first line, at most
    300 characters), its scores are empty."""
    lines = str(err).strip().splitlines() or [""]
    message = " ".join(lines[0].split())
    if len(message) > 300:
        message = message[:297] + "..."
    return {
        "method": method.name,
        "heldout_log_lik": None,
        "objective": method.objective,
        "train_objective": None,
        "seconds": seconds,
        "status": f"error: {type(err).__name__}: {message}",
        "settings": repr(method),
    }


def compare(
    model_obj: AlignmentModel | Callable[..., Any],
    train: Any,
    test: Any,
    methods: Sequence[str | InferenceMethod] | None = None,
    *,
    num_steps: int = 1000,
    lr: float = 0.05,
    subsample_size: int | None = None,
    num_samples: int = 200,
    grad_draws: int = 20,
    local_draws: int = 64,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    dataset: str = "custom",
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Comparison:
    """Fit ``model_obj`` to ``train`` with each method and score all of them on ``test``.

    :param model_obj: a model of :mod:`pyro_attention.models`, a subclass of
        :class:`~pyro_attention.models.AlignmentModel`, or a Pyro model function ``fn(data)``.
    :param train: training data as the model takes it; :param test: held-out data.
    :param methods: names or method objects; default every registered method whose
        requirements the model meets.
    :param num_steps: optimisation steps of the gradient methods; :param lr: their Adam rate.
    :param subsample_size: mini-batch size of the gradient methods that support it.
    :param num_samples: posterior draws for the held-out metric and PSIS.
    :param grad_draws: repeated gradient draws for the gradient variance.
    :param local_draws: prior draws per continuous local latent in the held-out metric.
    :param out: a folder for ``summary.json``, ``<method>.nc`` and PNG plots, owned by this run
        while it lasts; the files a previous run listed in its ``summary.json`` are replaced.
    :param resume: continue the interrupted run in ``out`` (same data and options): finished
        methods are taken from its files, the interrupted one goes on from its checkpoint.
    :param seeds: several seeds (instead of ``seed``): one comparison per seed (in
        ``out/seed-S``), each from the model's weights as passed in — the seed draws what the
        methods draw (initialisation, guide noise, mini-batches, posterior draws); the rows
        of every seed (with ``seed``) and :attr:`Comparison.aggregate`, the mean and two
        standard errors per method (printed), also in ``out/summary.json``. The command line
        (``--seeds``, ``pyro-attention sweep``) runs seeds in parallel.
    :returns: a :class:`Comparison` (``print`` it for the table and the held-out ELPD
        ranking, :attr:`Comparison.ranking`; ``elpd_compare.png`` with ``out``); a method that
        failed has a row with an ``error`` status (see :attr:`Comparison.failed`).
    """
    settings = {
        "num_steps": num_steps,
        "lr": lr,
        "subsample_size": subsample_size,
        "num_samples": num_samples,
        "grad_draws": grad_draws,
        "local_draws": local_draws,
    }
    if seeds is not None:
        return _compare_seeds(
            model_obj,
            train,
            test,
            methods,
            seeds,
            out=out,
            resume=resume,
            options={**settings, "dataset": dataset, "progress": progress},
        )
    if out is not None:  # checked first: a folder that cannot be written loses every result
        check_output_folder(out)
    elif resume:
        raise ValueError("resume=True needs out=, the folder of the run to resume")
    model_obj = as_model(model_obj)
    train = model_obj.check_data(train)
    test = model_obj.check_data(test)
    if isinstance(train, torch.Tensor) and isinstance(test, torch.Tensor):
        if test.device != train.device or test.dtype != train.dtype:
            raise ValueError(
                f"test is {test.dtype} on {test.device} but train is {train.dtype} on "
                f"{train.device}; use test.to(train) so both match"
            )
    for name, value, low in (
        ("num_samples", num_samples, 1),
        ("grad_draws", grad_draws, 2),
        ("local_draws", local_draws, 1),
    ):
        check_count(value, name, low)
    check_seed(seed)
    if isinstance(methods, str | InferenceMethod):
        raise ValueError(
            f"methods must be a list of names or method objects, got {methods!r}; "
            f"e.g. methods=[{methods!r}]"
        )
    structure = check_model(model_obj, train)
    heldout = trace_model(model_obj, test, log_prob=True)  # the test data must fit it too
    ll_name = _log_likelihood_name({str(site["name"]): site for site in observed_sites(heldout)})
    if methods is None:  # every applicable method, those that can use the options given
        names: list[str | InferenceMethod] = list(applicable_methods(structure, subsample_size))
    else:
        names = list(methods)
    if not names:
        raise ValueError("methods is empty; name at least one method")
    objects = [get_method(m) for m in names]
    seen = [m.name for m in objects]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise ValueError(f"method(s) {', '.join(duplicates)} named twice; name each once")
    for method in objects:  # refuse bad pairs and options before any work starts
        method.check(structure, subsample_size=subsample_size)
        if method.runner == "svi":
            check_svi_options(
                num_steps=num_steps,
                lr=lr,
                subsample_size=subsample_size,
                num_points=model_obj.num_points(train),
            )
            for phase, _ in method.phases(num_steps):
                phase.check(structure, subsample_size=subsample_size)
    device = str(train.device) if isinstance(train, torch.Tensor) else "cpu"
    comparison = Comparison(
        model_obj.name, dataset, device, seed, rows=[], sites=dict(structure.site_shapes)
    )
    comparison.settings = settings
    options: dict[str, Any] = {
        "num_steps": num_steps,
        "lr": lr,
        "subsample_size": subsample_size,
        "seed": seed,
        "progress": progress,
    }
    if subsample_size is None:
        options.pop("subsample_size")
    initial = clone_state(model_obj)  # every method starts from the same network weights
    folder = None
    finished: dict[str, dict[str, Any]] = {}
    if out is not None:
        folder = RunFolder(
            out, resume=resume, seed=seed, kind=f"compare {model_obj.name}"
        ).__enter__()
        comparison.folder = folder
        try:
            finished = _finished_rows(comparison, folder, objects)
        except BaseException:  # a refused resume leaves the folder's summary as it was
            folder.__exit__()
            raise
    state = "interrupted"
    try:
        for method in tqdm(objects, desc="methods", disable=not progress):
            if method.name in finished:
                _reuse_row(comparison, folder, finished[method.name], train)
                continue
            model_obj.load_state_dict(initial)
            pyro.set_rng_seed(seed)
            t0 = time.perf_counter()
            accepted = {k: v for k, v in options.items() if k in runner_options(method)}
            if folder is not None and method.runner == "svi":
                accepted["checkpoint"] = _checkpoint_path(folder, method.name)
                accepted["checkpoint_every"] = CHECKPOINT_EVERY
                accepted["resume"] = resume
            try:
                try:
                    fitted = fit(model_obj, train, method, **accepted)
                except NonFiniteLossError as err:
                    if not err.result.steps:  # nothing was learned: no score to report
                        raise
                    fitted = err.result  # scored at the last good step; its status warns
                pyro.set_rng_seed(seed)
                draws_wanted = num_samples  # every MCMC draw is scored, so the tree reuses train_ll
                if fitted.chains is not None:
                    draws_wanted = max(num_samples, math.prod(fitted.chains_shape()))
                with fitted.scope():  # the fit's parameters, and none of the user's store
                    row, draws, train_ll, test_ll = _evaluate_fit(
                        model_obj,
                        fitted,
                        train,
                        test,
                        num_samples=draws_wanted,
                        grad_draws=grad_draws,
                        local_draws=local_draws,
                    )
            except Exception as err:  # one failing method must not lose the others' rows
                comparison.rows.append(error_row(method, err, time.perf_counter() - t0))
                if folder is not None:
                    folder.forget(f"{method.name}.nc")  # no stale tree
                    _checkpoint_path(folder, method.name).unlink(missing_ok=True)
                    comparison.write_summary("running")
                continue
            row["total_seconds"] = time.perf_counter() - t0
            if structure.local_sites:  # the importance-sampling estimator's draws per point
                row["local_draws"] = local_draws
            comparison.rows.append(row)
            comparison.fits[method.name] = fitted
            comparison.draws[method.name] = draws
            comparison.traces[method.name] = list(fitted.losses)
            # a point's parts (a sequence's tokens) sum into it, as heldout_elpd(tree) sums them
            per_point = test_ll.double().reshape(*test_ll.shape[:2], -1).sum(-1)
            comparison.elpds[method.name] = heldout_elpd(per_point.cpu().numpy())
            if folder is not None:
                try:
                    tree = _write_tree(
                        model_obj, fitted, draws, (train, test), (train_ll, test_ll), folder, row
                    )
                    comparison.files.append(folder.record(tree))
                except Exception as err:  # the row stays; the tree's failure is said in it
                    row["tree"] = f"not written: {type(err).__name__}: {err}"
                    folder.forget(f"{method.name}.nc")
                _checkpoint_path(folder, method.name).unlink(missing_ok=True)
                comparison.write_summary("running")
        ranked = comparison.rank(f"{ll_name}: log p per test point")
        if ranked is not None:
            comparison.files.append(ranked)
        if folder is not None:
            for path in plot_comparison(model_obj, comparison, train, folder.path):
                comparison.files.append(folder.record(path))
        state = "finished"
    finally:  # each fit keeps its own weights: comparison.fits[name].scope()
        model_obj.load_state_dict(initial)
        if folder is not None:
            comparison.files.append(comparison.write_summary(state))
            folder.__exit__()
    return comparison


def _as_int(value: Any) -> Any:
    """A numpy or torch integer (or a 0-d integer tensor) as ``int``; anything else as is."""
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _compare_seeds(
    model_obj: AlignmentModel | Callable[..., Any],
    train: Any,
    test: Any,
    methods: Sequence[str | InferenceMethod] | None,
    seeds: Sequence[int],
    *,
    out: str | Path | None,
    resume: bool,
    options: dict[str, Any],
) -> Comparison:
    """:func:`compare` once per seed, their rows together and aggregated over the seeds."""
    if isinstance(seeds, str | int) or not list(seeds):
        raise ValueError(f"seeds must be a non-empty list of seeds, got {seeds!r}; e.g. [0, 1, 2]")
    seeds = [check_seed(_as_int(s), "seeds") for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds names a seed twice: {seeds}")
    runs: dict[int, Comparison] = {}
    with contextlib.ExitStack() as stack:
        folder = None
        if out is not None:  # taken first: a folder of another kind of run is refused now
            kind = f"compare {as_model(model_obj).name} --seeds"
            folder = stack.enter_context(RunFolder(out, resume=True, kind=kind))
            folder.adopt_previous_files()
        for seed in seeds:
            seed_out = None if out is None else Path(out) / f"seed-{seed}"
            runs[seed] = compare(
                model_obj, train, test, methods, seed=seed, out=seed_out, resume=resume, **options
            )
        first = runs[seeds[0]]
        combined = Comparison(
            first.model,
            first.dataset,
            first.device,
            seeds[0],
            rows=[{**row, "seed": seed} for seed, run in runs.items() for row in run.rows],
            settings=first.settings,
            sites=first.sites,
            runs=runs,
        )
        combined.aggregate = aggregate_rows(combined.rows)
        if folder is not None:
            figure = plot_seed_spread(combined.rows, combined.aggregate, "heldout_log_lik")
            combined.files = [folder.record(save_figure(figure, folder.path / "seeds.png"))]
            summary = {"command": "compare()", **combined.summary()}
            combined.files.append(folder.write_summary(summary, "finished"))
    return combined


#: steps between checkpoints of an SVI method while :func:`compare` writes to a folder
CHECKPOINT_EVERY = 100


def _checkpoint_path(folder: RunFolder, method: str) -> Path:
    return folder.path / f".checkpoint-{method}.pt"


def _finished_rows(
    comparison: Comparison, folder: RunFolder, methods: Sequence[InferenceMethod]
) -> dict[str, dict[str, Any]]:
    """The rows of an interrupted run that a resumed one keeps: same data, model and options,
    the method's settings unchanged, finished without error and with its tree in the folder.
    Without ``resume`` (or with nothing to resume) none; the checkpoints of methods that did
    not finish are removed then."""
    previous = folder.previous
    if not folder.resume or previous is None:
        for stale in folder.path.glob(".checkpoint-*.pt"):
            stale.unlink()
        return {}
    mine = {
        "model": comparison.model,
        "dataset": comparison.dataset,
        "seed": comparison.seed,
        "settings": comparison.settings,
    }
    differ = [key for key, value in mine.items() if previous.get(key) != value]
    details = [f"{k}: {previous.get(k)!r} then, {mine[k]!r} now" for k in differ]
    before = previous.get("sites", {})
    for name in sorted(set(before) | set(comparison.sites)):
        if before.get(name) != comparison.sites.get(name):
            then, now = before.get(name, "absent"), comparison.sites.get(name, "absent")
            details.append(f"site {name!r}: {then} then, {now} now")
    if details:
        raise ValueError(
            f"cannot resume the run in {str(folder.path)!r}: it was made with other options "
            f"({'; '.join(details)}); run without resume to start again, or choose another "
            "folder"
        )
    settings = {m.name: repr(m) for m in methods}
    finished = {}
    for row in previous.get("results", []):
        name = row.get("method")
        if (
            name in settings
            and row.get("settings") == settings[name]
            and not str(row.get("status", "error")).startswith("error")
            and (folder.path / f"{name}.nc").is_file()
        ):
            finished[name] = row
    return finished


def _reuse_row(
    comparison: Comparison, folder: RunFolder | None, row: dict[str, Any], train: Any
) -> None:
    """Take a finished method's row and its draws (from its tree) from the interrupted run."""
    assert folder is not None
    name = row["method"]
    tree = load_datatree(folder.path / f"{name}.nc")
    posterior = tree["posterior"].to_dataset()
    like = train if isinstance(train, torch.Tensor) else torch.empty(0)
    samples = {
        str(var): torch.as_tensor(posterior[var].values, device=like.device).flatten(0, 1)
        for var in posterior.data_vars
    }
    samples = {k: v.to(like.dtype) if v.is_floating_point() else v for k, v in samples.items()}
    log_q = None
    if "sample_stats" in tree.children and "log_q" in tree["sample_stats"].to_dataset():
        log_q = torch.as_tensor(tree["sample_stats"].to_dataset()["log_q"].values).flatten(0, 1)
    comparison.rows.append(row)
    comparison.draws[name] = PosteriorDraws(
        samples, log_q, point_estimate=bool(tree.attrs.get("point_estimate", False))
    )
    comparison.traces[name] = [float(v) for v in tree.attrs.get("objective_trace", [])]
    if HELDOUT_GROUP in tree.children:
        comparison.elpds[name] = heldout_elpd(tree)
    comparison.files.append(folder.record(folder.path / f"{name}.nc"))
    comparison.resumed.append(name)


def _log_likelihood_name(observed: Mapping[str, Any]) -> str:
    """The pointwise log-likelihood's name: the observed site's (``"joint"`` when several
    sum into it)."""
    return next(iter(observed)) if len(observed) == 1 else "joint"


#: the most draws of the test data's alignments a tree keeps
MAX_ALIGNMENT_DRAWS = 100


def heldout_alignment_draws(
    model_obj: AlignmentModel, data: Any, num_draws: int
) -> dict[str, torch.Tensor]:
    """``num_draws`` draws of every alignment site of ``data`` from its exact posterior under
    the current (point-estimated) parameters of a model without global latents
    (``infer_discrete`` at temperature 1 on the enumerated model): ``{site: (D, *site
    shape)}``; empty when the model has no alignment site that Pyro's enumeration can
    sample."""
    from pyro import poutine
    from pyro.infer import infer_discrete

    from pyro_attention.alignment import is_alignment_site
    from pyro_attention.handlers import enumerate_alignments

    sampler = infer_discrete(
        enumerate_alignments(model_obj.model),
        first_available_dim=-(model_obj.max_plate_nesting + 1),
        temperature=1,
    )
    draws: dict[str, list[torch.Tensor]] = {}
    for _ in range(num_draws):
        with torch.no_grad():
            trace = poutine.trace(sampler).get_trace(data)
        for name, site in trace.iter_stochastic_nodes():
            if is_alignment_site(site):
                draws.setdefault(name, []).append(site["value"])
    return {name: torch.stack(values) for name, values in draws.items()}


def _write_tree(
    model_obj: AlignmentModel,
    fitted: FitResult,
    draws: PosteriorDraws,
    data: tuple[Any, Any],
    pointwise: tuple[torch.Tensor, torch.Tensor],
    folder: RunFolder,
    row: dict,
) -> Path:
    """Save the method's posterior as an ArviZ DataTree in ``out/<method>.nc``.

    Groups: ``posterior`` (the draws of the globals; for a model without any, point-estimated
    networks, ``heldout_<site>``: draws of the test data's alignments from their exact
    posterior, :func:`heldout_alignment_draws`),
    ``log_likelihood`` (the training data's, per draw: what ``arviz_stats.loo`` reads),
    ``heldout_log_likelihood`` (the test data's, per draw: what
    :func:`~pyro_attention.diagnostics.elpd.heldout_elpd` reads), ``observed_data`` (the
    training data) and ``sample_stats``. A point estimate (EM, ``AutoDelta``, networks only) is
    one draw with ``attrs["point_estimate"] = True`` and no ``log_likelihood`` group, so
    ArviZ's ``loo`` says that none is there instead of failing on a single draw.
    """
    train, test = data
    train_ll, test_ll = pointwise
    dims = model_obj.arviz_dims()
    # the observed sites as the model sees them; the pointwise log-likelihood is named after
    # the observed site (or "joint" when several sum into it)
    observed = {
        str(site["name"]): site_value(site)
        for site in observed_sites(trace_model(model_obj, train))
    }
    ll_name = _log_likelihood_name(observed)
    # the held-out data have their own dims (other sizes): "heldout_<dim>"
    heldout_dims = {
        name: [f"heldout_{d}" for d in names] for name, names in dims.items() if name == ll_name
    }
    sample_stats = None
    log_likelihood: dict[str, torch.Tensor] | None = {ll_name: train_ll}
    sample_dims: tuple[str, ...]
    if fitted.chains is not None:
        posterior, sample_dims = fitted.chains, ("chain", "draw")
        shape = fitted.chains_shape()
        train_ll = train_ll.reshape(*shape, *train_ll.shape[1:])
        test_ll = test_ll.reshape(*shape, *test_ll.shape[1:])
        log_likelihood = {ll_name: train_ll}
        sample_stats = {"diverging": fitted.extra["diverging"]}
    else:
        posterior, sample_dims = draws.samples, ("sample",)
        if draws.log_density is not None:
            sample_stats = {"log_q": draws.log_density}
    if draws.point_estimate or train_ll.shape[0] == 1:  # LOO cannot weigh a single draw
        log_likelihood = None
    heldout_sample_dims = sample_dims
    if not posterior:  # point-estimated networks: the posterior of the test data's alignments
        with fitted.scope():
            local = heldout_alignment_draws(model_obj, test, MAX_ALIGNMENT_DRAWS)
        if not local:
            raise ValueError(
                f"{model_obj.name} has neither global latent sites nor alignment sites that "
                "Pyro's enumeration can sample: there is no posterior to write"
            )
        posterior = {f"heldout_{name}": value for name, value in local.items()}
        sample_dims, log_likelihood, sample_stats = ("sample",), None, None
    tree = to_datatree(
        posterior,
        sample_dims=sample_dims,
        log_likelihood=log_likelihood,
        observed_data=observed,
        sample_stats=sample_stats,
        dims=dims,
        attrs={
            "model": model_obj.name,
            "method": fitted.method.name,
            "objective": fitted.method.objective,
            "heldout_log_lik": row["heldout_log_lik"],
            "point_estimate": draws.point_estimate,
            "objective_trace": [float(v) for v in fitted.losses],
            "heldout": "heldout_log_likelihood holds the test data's pointwise log-likelihood "
            "per draw (held out, not LOO); heldout_<site> variables are draws of the test "
            "data's alignments from their exact posterior",
        },
    )
    add_heldout_log_likelihood(
        tree, {ll_name: test_ll}, sample_dims=heldout_sample_dims, dims=heldout_dims
    )
    return save_datatree(tree, folder.path / f"{fitted.method.name}.nc")
