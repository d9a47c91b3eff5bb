"""Does sparse-GP attention calibrate a transformer? SGPA against the baselines a user would pick
instead, on the same data and budget (Chen & Li, ICLR 2023, claim better NLL/ECE and better
out-of-distribution detection than softmax attention at similar accuracy).

Rows (``methods``):

=====================  ==========================================================================
``softmax``            softmax attention, maximum likelihood (method ``map``, no latents)
``kernel``             the SGPA model under ``map``: kernel attention, noise at zero (ML)
``sgpa``               decoupled SGPA, ``svi-kl`` (closed-form global KL), ``kl_scale = 1``: the
                       ELBO of the data set
``sgpa-official-kl``   the same with ``kl_scale = N``: the KL added to the *mean* cross-entropy,
                       as the authors' code does
``sgpa-standard``      standard SGPA (keys as inducing points, :math:`O(T^3)`), ``svi-kl``
``mc-dropout``         softmax attention with dropout, ML; dropout kept on to predict
``temperature``        softmax attention, ML, then one temperature fitted on the validation split
``ensemble``           ``ensemble_size`` softmax models from different initialisations, averaged
=====================  ==========================================================================

Every row predicts with :math:`\\hat p(y \\mid x) = \\frac1S\\sum_s p(y \\mid x, \\theta_s)` over
``num_samples`` draws (guide draws of the inducing outputs and the GP noise; dropout masks;
ensemble members), and is scored by :mod:`pyro_attention.diagnostics.calibration`: accuracy,
NLL, Brier, top-1 ECE/MCE (15 bins), all-class ECE/MCE (10 bins), OOD AUROC/AUPR by maximum
probability and by entropy for each shifted set, and — on the sequence task, whose Bayes
posterior is known — the KL from the truth. Over several seeds (the data subset and the
initialisation both change) each number gets mean ± 2 standard errors.

Every row of the first seed also becomes an ArviZ tree (:func:`row_tree`, ``<method>.nc``): the
pointwise held-out log-likelihood :math:`\\log p(y_i \\mid x_i, \\theta_s)` per predictive draw
and test sequence in the group ``heldout_log_likelihood``, a posterior-predictive label per draw
and sequence, the test labels, and in ``posterior`` the draws of the global inducing outputs
where the row has them, else the predictive class probabilities per draw. The rows are then
ranked by their held-out ELPD (:func:`~pyro_attention.diagnostics.elpd.heldout_elpd`,
:func:`arviz_stats.compare`; all rows are scored on the same test sequences).

The held-out ELPD per test sequence, :math:`\\widehat{\\mathrm{elpd}} / n = \\frac1n\\sum_i
\\log \\frac1S \\sum_s p(y_i \\mid x_i, \\theta_s)`, is minus the row's ``nll`` column: both are
the mean log predictive density of the test labels under the same average over the same draws
(the ensemble's members each contribute the same number of draws, so the average of the
members' averages is the average over all draws). They differ by float32 rounding only (about
1e-7: ``nll`` logs the averaged float32 probabilities, the ELPD averages the per-draw
log-likelihoods in float64), and where a test label's predictive probability falls below the
smallest normal float32 (1.2e-38): ``nll`` clamps it there (at most 87.3 nats per sequence),
the ELPD keeps the exact log-likelihood.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro import poutine

from pyro_attention._run_folder import RunFolder, check_output_folder
from pyro_attention.data import ClassificationData, digits_patch_task, make_valence_task
from pyro_attention.diagnostics import save_datatree, to_datatree
from pyro_attention.diagnostics.calibration import (
    classification_metrics,
    mean_and_error,
    ood_detection,
    reliability_bins,
    true_posterior_metrics,
)
from pyro_attention.diagnostics.elpd import (
    HELDOUT_KIND,
    heldout_elpd,
    plot_elpd_compare,
    ranking_section,
)
from pyro_attention.diagnostics.plots import plot_reliability
from pyro_attention.infer import fit
from pyro_attention.infer.compare import ranking_text
from pyro_attention.infer.results import FitResult
from pyro_attention.models import GPAttentionClassifier
from pyro_attention.traces import site_dist, site_value

if TYPE_CHECKING:
    import xarray as xr

TASKS = ("digits", "sequence")
SGPA_METHODS = (
    "softmax",
    "kernel",
    "sgpa",
    "sgpa-official-kl",
    "sgpa-standard",
    "mc-dropout",
    "temperature",
    "ensemble",
)
#: the sequence task's lexicon: 48 training words (each seen about 140 times in 1000 sentences;
#: with 160 words a bag-of-words logistic regression reached 0.64 accuracy against Bayes' 0.83)
#: and 12 held-out words
SEQUENCE_VOCAB, SEQUENCE_HELDOUT_WORDS = 60, 12
#: training sequences per task by default
NUM_TRAIN = {"digits": 300, "sequence": 1000}
#: the columns of the printed table
TABLE = ("accuracy", "nll", "brier", "ece", "ece_all")
#: what the ELPD ranking scores (``summary.json``'s ``elpd_compare["variable"]``)
ELPD_VARIABLE = "y: log p(y | x) per test sequence (nats)"
#: per row: what its predictive draws are (the tree's ``attrs["draws"]``)
DRAWS = {
    "softmax": "one draw: the maximum-likelihood network, deterministic",
    "kernel": "one draw: the maximum-likelihood network with the GP noise at zero, deterministic",
    "sgpa": "guide draws of the global inducing outputs and of the GP output noise",
    "sgpa-official-kl": "guide draws of the global inducing outputs and of the GP output noise",
    "sgpa-standard": "draws of the GP output noise (keys as inducing points: no global latents)",
    "mc-dropout": "dropout masks (dropout kept on to predict), one per draw",
    "temperature": "one draw: the maximum-likelihood network, its logits divided by the "
    "temperature fitted on the validation split, deterministic",
    "ensemble": "one draw per ensemble member (members trained from different initialisations)",
}
#: per row: what is a point estimate (the tree's ``attrs["parameters"]``)
PARAMETERS = {
    "softmax": "network weights: point estimates (maximum likelihood)",
    "kernel": "network weights, kernel hyperparameters and inducing outputs: point estimates "
    "(maximum likelihood)",
    "sgpa": "network weights and kernel hyperparameters: point estimates; global inducing "
    "outputs: a Gaussian variational posterior",
    "sgpa-official-kl": "network weights and kernel hyperparameters: point estimates; global "
    "inducing outputs: a Gaussian variational posterior",
    "sgpa-standard": "network weights and kernel hyperparameters: point estimates; the attention "
    "outputs: a Gaussian variational posterior amortised from the values (no global latents)",
    "mc-dropout": "network weights: point estimates (maximum likelihood, trained with dropout)",
    "temperature": "network weights and the temperature: point estimates (maximum likelihood)",
    "ensemble": "each member's network weights: point estimates (maximum likelihood)",
}


@dataclass(frozen=True)
class SGPASettings:
    """Sizes and budget of one comparison (the same for every row).

    :param num_train: training sequences (a low-data regime: softmax over-fits; default
        :data:`NUM_TRAIN` per task);
    :param steps: full-batch Adam steps (epochs; no early stopping); :param lr: its rate.
    :param heldout_classes: digits left out of training, testing and validation; their test
        images form the shifted set ``heldout`` (digits task only).
    """

    num_train: int | None = None
    num_val: int = 200
    steps: int = 600
    lr: float = 3e-3
    d_model: int = 32
    num_heads: int = 2
    num_layers: int = 1
    num_inducing: int = 16
    covariance: str = "diag"
    num_samples: int = 10
    dropout: float = 0.1
    ensemble_size: int = 5
    heldout_classes: tuple[int, ...] = (8, 9)

    def __post_init__(self) -> None:
        if self.num_train is not None and (
            isinstance(self.num_train, bool)
            or not isinstance(self.num_train, int)
            or self.num_train < 1
        ):
            raise ValueError(f"num_train must be a positive integer, got {self.num_train!r}")
        for name in (
            "steps",
            "d_model",
            "num_heads",
            "num_layers",
            "num_inducing",
            "num_samples",
            "ensemble_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_val, bool) or not isinstance(self.num_val, int) or self.num_val < 2:
            raise ValueError(
                f"num_val must be an integer >= 2 (temperature scaling fits on it), got "
                f"{self.num_val!r}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite positive number, got {self.lr!r}")
        if not (0 < self.dropout < 1):
            raise ValueError(f"dropout must lie in (0, 1), got {self.dropout!r}")
        classes = self.heldout_classes
        if not isinstance(classes, tuple) or any(
            isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 9 for c in classes
        ):
            raise ValueError(f"heldout_classes must be a tuple of digits 0..9, got {classes!r}")
        if len(set(classes)) != len(classes) or len(classes) > 8:
            raise ValueError(
                f"heldout_classes={classes} must hold distinct digits and leave at least 2 of 10"
            )
        if self.covariance not in ("diag", "full"):
            raise ValueError(f"covariance must be 'diag' or 'full', got {self.covariance!r}")


@dataclass
class TaskData:
    """One seed's splits: ``train``, ``val``, ``test`` and the shifted sets ``ood``."""

    name: str
    train: ClassificationData
    val: ClassificationData
    test: ClassificationData
    ood: dict[str, ClassificationData]
    model_options: dict[str, Any]


def make_task(
    task: str,
    seed: int,
    settings: SGPASettings,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TaskData:
    """The splits of ``task`` for ``seed`` (the data subset changes with the seed too)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    num_train = NUM_TRAIN[task] if settings.num_train is None else settings.num_train
    if task == "digits":
        digits = digits_patch_task(
            num_train=num_train,
            num_val=settings.num_val,
            patch=2,
            seed=seed,
            heldout_classes=settings.heldout_classes,
            dtype=dtype,
            device=device,
        )
        if digits.val is None:  # num_val >= 2 is checked by the settings
            raise ValueError("the digits task needs a validation split")
        options = {"feature_dim": digits.train.feature_dim, "kernel": "rbf"}
        return TaskData(
            task,
            digits.train,
            digits.val,
            digits.test,
            dict(digits.ood),
            {**options, "max_len": digits.train.seq_len, "num_classes": digits.train.num_classes},
        )
    # the sequence task
    valence = make_valence_task(
        num_train=num_train,
        num_val=settings.num_val,
        vocab=SEQUENCE_VOCAB,
        heldout_words=SEQUENCE_HELDOUT_WORDS,
        seed=seed,
        device=device,
    )
    longest = max(d.seq_len for d in (valence.train, *valence.ood.values()))
    options = {"vocab_size": valence.train.vocab_size, "kernel": "exponential"}
    return TaskData(
        task,
        valence.train,
        valence.val,
        valence.test,
        dict(valence.ood),
        {**options, "max_len": longest, "num_classes": 2},
    )


# ---------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """What one row predicts on one set: averaged probabilities ``(N, C)``, and per draw the
    log-likelihood of the labels ``(S, N)``, the class probabilities ``(S, N, C)`` and the
    global draws ``{site: (S, ...)}``."""

    probs: torch.Tensor
    log_lik: torch.Tensor
    draw_probs: torch.Tensor
    draws: dict[str, torch.Tensor] = field(default_factory=dict)

    def sample_labels(self, seed: int) -> torch.Tensor:
        """One label per draw and sequence from the draw's probabilities, ``(S, N)``."""
        generator = torch.Generator(device=self.draw_probs.device).manual_seed(seed)
        flat = self.draw_probs.reshape(-1, self.draw_probs.shape[-1])
        labels = torch.multinomial(flat, 1, generator=generator)
        return labels.reshape(self.draw_probs.shape[:-1])


def predict(
    model: GPAttentionClassifier,
    result: FitResult,
    data: ClassificationData,
    num_samples: int,
) -> Prediction:
    """:math:`\\frac1S\\sum_s p(y \\mid x, \\theta_s)` with ``θ_s`` from the fit's guide (GP
    noise and inducing outputs) and the model's dropout where it has any; one draw for a
    deterministic fit."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    data = model.check_data(data)
    deterministic = result.method.point_estimate and not _has_dropout(model)
    draws = 1 if deterministic else num_samples
    predictive = result.method.predictive(model.model)
    probs, log_lik, globals_ = [], [], []
    with torch.no_grad(), result.scope(), poutine.block():
        for _ in range(draws):
            run = predictive
            if result.guide is not None:
                guide_trace = poutine.trace(result.guide).get_trace(data)
                run = poutine.replay(predictive, trace=guide_trace)
            trace = poutine.trace(run).get_trace(data)
            fn = site_dist(trace.nodes["y"])
            probs.append(fn.probs)
            log_lik.append(fn.log_prob(data.labels))
            globals_.append(
                {n: site_value(site) for n, site in trace.nodes.items() if n.endswith(".u")}
            )
    stacked = {name: torch.stack([g[name] for g in globals_]) for name in globals_[0]}
    per_draw = torch.stack(probs)
    return Prediction(per_draw.mean(0), torch.stack(log_lik), per_draw, stacked)


def _has_dropout(model: GPAttentionClassifier) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _logits(
    model: GPAttentionClassifier, result: FitResult, data: ClassificationData
) -> torch.Tensor:
    with torch.no_grad(), result.scope(), poutine.block():
        trace = poutine.trace(result.method.predictive(model.model)).get_trace(data)
    return site_dist(trace.nodes["y"]).logits


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature :math:`T` minimising the NLL of ``softmax(logits / T)`` (Guo et al.
    2017), by L-BFGS on :math:`\\log T`."""
    log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    logits, labels = logits.detach().double(), labels.detach()
    optim = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optim.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optim.step(closure)
    return float(log_t.detach().exp())


# ---------------------------------------------------------------------- one row
@dataclass
class RowRecipe:
    """How a row is built: the model options and the method it is fitted with."""

    attention: str = "sgpa"
    variant: str = "decoupled"
    method: str = "svi-kl"
    mc_dropout: bool = False
    official_kl: bool = False


RECIPES: dict[str, RowRecipe] = {
    "softmax": RowRecipe(attention="softmax", method="map"),
    "kernel": RowRecipe(method="map"),
    "sgpa": RowRecipe(),
    "sgpa-official-kl": RowRecipe(official_kl=True),
    "sgpa-standard": RowRecipe(variant="standard"),
    "mc-dropout": RowRecipe(attention="softmax", method="map", mc_dropout=True),
    "temperature": RowRecipe(attention="softmax", method="map"),
    "ensemble": RowRecipe(attention="softmax", method="map"),
}


def _fit_one(
    name: str,
    task: TaskData,
    settings: SGPASettings,
    seed: int,
    dtype: torch.dtype,
    progress: bool,
) -> tuple[GPAttentionClassifier, FitResult]:
    recipe = RECIPES[name]
    torch.manual_seed(seed)
    model = GPAttentionClassifier(
        **task.model_options,
        d_model=settings.d_model,
        num_heads=settings.num_heads,
        num_layers=settings.num_layers,
        attention=recipe.attention,
        variant=recipe.variant,
        num_inducing=settings.num_inducing,
        covariance=settings.covariance,
        dropout=settings.dropout if recipe.mc_dropout else 0.0,
        kl_scale=float(len(task.train)) if recipe.official_kl else 1.0,
    ).to(device=task.train.labels.device, dtype=dtype)
    result = fit(
        model,
        task.train,
        recipe.method,
        num_steps=settings.steps,
        lr=settings.lr,
        seed=seed,
        progress=progress,
    )
    return model, result


def run_row(
    name: str,
    task: TaskData,
    settings: SGPASettings,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Prediction]]:
    """Fit row ``name`` on ``task`` with ``seed`` and score it: ``(row, predictions per set)``."""
    if name not in RECIPES:
        raise ValueError(f"unknown row {name!r}; choose from {', '.join(SGPA_METHODS)}")
    start = time.perf_counter()
    sets = {"test": task.test, **task.ood}
    members = settings.ensemble_size if name == "ensemble" else 1
    predictions: dict[str, list[Prediction]] = {key: [] for key in sets}
    steps, escalations = 0, 0
    for member in range(members):
        model, result = _fit_one(
            name, task, settings, seed * 1000 + member if members > 1 else seed, dtype, progress
        )
        steps += result.steps
        escalations += model.jitter_escalations()
        if name == "temperature":
            temperature = fit_temperature(_logits(model, result, task.val), task.val.labels)
            for key, data in sets.items():
                logits = _logits(model, result, data) / temperature
                log_lik = torch.log_softmax(logits, -1).gather(-1, data.labels[:, None])
                probs = logits.softmax(-1)
                predictions[key].append(Prediction(probs, log_lik.T, probs.unsqueeze(0)))
        else:
            for key, data in sets.items():
                predictions[key].append(predict(model, result, data, settings.num_samples))
    merged = {key: _merge(parts) for key, parts in predictions.items()}
    row: dict[str, Any] = {"method": name, "seed": seed, "status": "ok"}
    row.update(classification_metrics(merged["test"].probs, task.test.labels))
    row["heldout_log_lik"] = -row["nll"]
    if task.test.true_probs is not None:
        row.update(true_posterior_metrics(merged["test"].probs, task.test.true_probs))
    for key, data in task.ood.items():
        detection = ood_detection(merged["test"].probs, merged[key].probs)
        row[f"ood_auroc_{key}"] = detection["auroc_max_prob"]
        row[f"ood_aupr_{key}"] = detection["aupr_max_prob"]
        row[f"ood_auroc_entropy_{key}"] = detection["auroc_entropy"]
        row[f"ood_aupr_entropy_{key}"] = detection["aupr_entropy"]
        if key != "noise" and key != "heldout":  # labels that mean something: a shift
            shifted = classification_metrics(merged[key].probs, data.labels)
            row[f"{key}_accuracy"] = shifted["accuracy"]
            row[f"{key}_nll"] = shifted["nll"]
            if data.true_probs is not None:
                truth = true_posterior_metrics(merged[key].probs, data.true_probs)
                row[f"{key}_true_kl"] = truth["true_kl"]
    row.update(
        seconds=time.perf_counter() - start,
        steps=steps,
        num_samples=int(merged["test"].log_lik.shape[0]),
        jitter_escalations=escalations,
    )
    return row, merged


def _merge(parts: list[Prediction]) -> Prediction:
    """Ensemble members: probabilities averaged, draws concatenated."""
    if len(parts) == 1:
        return parts[0]
    return Prediction(
        torch.stack([p.probs for p in parts]).mean(0),
        torch.cat([p.log_lik for p in parts]),
        torch.cat([p.draw_probs for p in parts]),
    )


# ---------------------------------------------------------------------- the comparison
@dataclass
class SGPAComparison:
    """Rows per seed, their aggregate (mean ± 2 SE), and the files written."""

    task: str
    settings: SGPASettings
    rows: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float32"
    #: the first seed's tree per successful row (:func:`row_tree`)
    trees: dict[str, xr.DataTree] = field(default_factory=dict)
    #: the :func:`arviz_stats.compare` table of those trees' held-out ELPDs (None before)
    ranking: Any = None
    #: ``summary.json``'s ``elpd_compare`` section (None before the first seed's rows are done)
    elpd_compare: dict[str, Any] | None = None

    @property
    def failed(self) -> list[str]:
        return sorted({row["method"] for row in self.rows if row["status"] != "ok"})

    def aggregate(self) -> list[dict[str, Any]]:
        """Per method: every numeric column's mean and 2 standard errors over the seeds."""
        out = []
        for name in dict.fromkeys(row["method"] for row in self.rows):
            rows = [r for r in self.rows if r["method"] == name and r["status"] == "ok"]
            entry: dict[str, Any] = {"method": name, "seeds": len(rows)}
            keys = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], float | int)]
            for key in keys:
                if key in ("seed",):
                    continue
                mean, error = mean_and_error([float(r[key]) for r in rows])
                entry[key], entry[f"{key}_2se"] = mean, error
            out.append(entry)
        return out

    def summary(self) -> dict[str, Any]:
        settings = dict(vars(self.settings))
        if self.task != "digits":  # held-out classes are a digits setting
            settings.pop("heldout_classes")
        return {
            "model": "gp-attention",
            "task": self.task,
            "seeds": self.seeds,
            "device": self.device,
            "dtype": self.dtype,
            "settings": settings,
            "results": self.rows,
            "aggregate": self.aggregate(),
            **({} if self.elpd_compare is None else {"elpd_compare": self.elpd_compare}),
        }

    def ranking_text(self) -> str:
        """The held-out ELPD ranking of the first seed's rows as a table, or ``""``."""
        section = self.elpd_compare
        seed = "" if section is None else f", seed {section['seed']}"
        return ranking_text(section, f"held-out ELPD ranking{seed}")

    def __str__(self) -> str:
        aggregate = self.aggregate()
        ood = sorted(
            {k for row in aggregate for k in row if k.startswith("ood_auroc_")}
            - {k for row in aggregate for k in row if "entropy" in k or k.endswith("_2se")}
        )
        extra = ["true_kl"] if any("true_kl" in row for row in aggregate) else []
        columns = [*TABLE, *ood, *extra, "seconds"]
        header = ["method", *[c.removeprefix("ood_") for c in columns]]
        lines = [" | ".join(header)]
        for row in aggregate:
            cells = [row["method"]]
            for column in columns:
                if column not in row:
                    cells.append("-")
                    continue
                error = row.get(f"{column}_2se", float("nan"))
                digits = 1 if column == "seconds" else 3
                cell = f"{row[column]:.{digits}f}"
                cells.append(cell if math.isnan(error) else f"{cell} ± {error:.{digits}f}")
            lines.append(" | ".join(cells))
        failed = [r for r in self.rows if r["status"] != "ok"]
        lines += [f"{r['method']} (seed {r['seed']}): {r['status']}" for r in failed]
        return "\n".join(lines) + self.ranking_text()


def compare_sgpa(
    task: str = "digits",
    methods: Sequence[str] | None = None,
    *,
    seeds: Sequence[int] = (0,),
    settings: SGPASettings | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    out: str | Path | None = None,
    progress: bool = True,
) -> SGPAComparison:
    """Fit every row for every seed on ``task`` and score it; write ``summary.json`` after each
    (a failing row gets its error and the others go on), ``reliability.png``, and for the first
    seed every row's ``<method>.nc`` (:func:`row_tree`) and the rows' held-out ELPD ranking
    (``elpd_compare.png`` and ``summary.json``'s ``elpd_compare``; a failed row is left out).

    :param task: ``"digits"`` (8×8 grey digits as 16 patch tokens; shifts: rotated, noise) or
        ``"sequence"`` (word valences with negation, known Bayes posterior; shifts: held-out
        words, longer sentences).
    :param methods: rows (default all of :data:`SGPA_METHODS`).
    :param seeds: one run per seed (data subset and initialisation).
    """
    if out is not None:  # checked first: a folder that cannot be written loses every result
        check_output_folder(out)
    settings = settings or SGPASettings()
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    names = list(SGPA_METHODS if methods is None else methods)
    unknown = [n for n in names if n not in RECIPES]
    if not names or unknown:
        raise ValueError(
            f"unknown or no methods {unknown or names}; choose from {', '.join(SGPA_METHODS)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"methods repeat a name: {names}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, at least one; got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat a value: {seeds}")
    comparison = SGPAComparison(
        task, settings, [], seeds=seeds, device=str(device), dtype=str(dtype).removeprefix("torch.")
    )
    folder = (
        None
        if out is None
        else RunFolder(out, seed=seeds[0], kind=f"compare sgpa {task}").__enter__()
    )
    state = "interrupted"
    try:
        _run_rows(comparison, names, folder, device=device, dtype=dtype, progress=progress)
        state = "finished"
    finally:
        if folder is not None:
            comparison.files.append(folder.write_summary(comparison.summary(), state))
            folder.__exit__()
    comparison.files = list(dict.fromkeys(comparison.files))
    return comparison


def _run_rows(
    comparison: SGPAComparison,
    names: Sequence[str],
    folder: RunFolder | None,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    progress: bool,
) -> None:
    """Every row for every seed; ``summary.json`` after each; after the first seed's rows their
    trees' held-out ELPD ranking; ``reliability.png`` at the end."""
    settings, seeds = comparison.settings, comparison.seeds
    curves: dict[str, Any] = {}
    for seed in seeds:
        first = seed == seeds[0]
        data = make_task(comparison.task, seed, settings, device=device, dtype=dtype)
        for name in names:
            pyro.clear_param_store()
            tree = None
            try:
                row, merged = run_row(name, data, settings, seed, dtype=dtype, progress=progress)
                if first:
                    tree = row_tree(name, merged["test"], data, row)
            except Exception as err:  # a failing row is recorded; the others go on
                row = {"method": name, "seed": seed, "status": _error(err)}
                merged = None
            comparison.rows.append(row)
            if merged is not None and tree is not None:
                curves[name] = reliability_bins(merged["test"].probs, data.test.labels)
                comparison.trees[name] = tree
                if folder is not None:
                    path = save_datatree(tree, folder.path / f"{name}.nc")
                    comparison.files.append(folder.record(path))
            if folder is not None:
                comparison.files.append(folder.write_summary(comparison.summary(), "running"))
        if first:
            _rank(comparison, folder, seed)
    if folder is not None and curves:
        path = folder.path / "reliability.png"
        plot_reliability(curves, path)
        comparison.files.append(folder.record(path))


def _rank(comparison: SGPAComparison, folder: RunFolder | None, seed: int) -> None:
    """Rank the first seed's trees by held-out ELPD per test sequence
    (:func:`arviz_stats.compare`) into ``comparison.elpd_compare``; with a folder, also
    ``elpd_compare.png``. A ranking that fails records its error and the seeds go on."""
    if not comparison.trees:
        return
    scope = "the first seed's rows" + (
        f" (of {len(comparison.seeds)} seeds)" if len(comparison.seeds) > 1 else ""
    )
    try:
        elpds = {name: heldout_elpd(tree, "y") for name, tree in comparison.trees.items()}
        comparison.ranking, section = ranking_section(elpds, ELPD_VARIABLE)
    except Exception as err:
        comparison.elpd_compare = {
            "kind": HELDOUT_KIND,
            "variable": ELPD_VARIABLE,
            "seed": seed,
            "rows": scope,
            "error": _error(err),
        }
        return
    comparison.elpd_compare = {**section, "seed": seed, "rows": scope}
    if folder is not None:
        title = f"gp-attention on {comparison.task}, seed {seed}"
        path = plot_elpd_compare(comparison.ranking, folder.path / "elpd_compare.png", title)
        comparison.files.append(folder.record(path))


def _error(err: Exception) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    if "invalid values" in first or "nan" in first.lower():
        first += " (the fit diverged to non-finite values: lower the learning rate)"
    return f"error: {type(err).__name__}: {first}"


def row_tree(name: str, prediction: Prediction, data: TaskData, row: dict[str, Any]) -> xr.DataTree:
    """Row ``name``'s test-set prediction as an ArviZ DataTree, the draws on ``(chain, draw)``.

    - ``heldout_log_likelihood["y"]`` ``(sequence,)``: :math:`\\log p(y_i \\mid x_i,
      \\theta_s)` of each test sequence per predictive draw (one draw for a deterministic row;
      dropout masks for ``mc-dropout``, members for ``ensemble``), for
      :func:`~pyro_attention.diagnostics.elpd.heldout_elpd`;
    - ``posterior``: the draws of the global inducing outputs ``layer<l>.u`` ``(head,
      value_dim, inducing)`` where the row has them (``sgpa``, ``sgpa-official-kl``; ``kernel``
      its single point estimate), else the predictive class probabilities ``p`` ``(sequence,
      class)`` per draw, a function of the point-estimated weights and the draw;
    - ``posterior_predictive["y"]``: one label per draw and test sequence; ``observed_data["y"]``:
      the test labels.

    There is no ``log_likelihood`` group: the training data's pointwise log-likelihood is not
    stored, so ``arviz_stats.loo`` does not apply; the attrs say what the draws are.
    """
    point_estimate = RECIPES[name].method == "map"
    if prediction.draws:
        posterior = dict(prediction.draws)
        holds = "layer<l>.u: the whitened global inducing outputs per draw"
    else:
        posterior = {"p": prediction.draw_probs}
        holds = "p: the predictive class probabilities per draw and test sequence"
    dims = {key: ["head", "value_dim", "inducing"] for key in prediction.draws}
    dims |= {"y": ["sequence"], "p": ["sequence", "class"]}
    return to_datatree(
        posterior,
        heldout_log_likelihood={"y": prediction.log_lik},
        posterior_predictive={"y": prediction.sample_labels(int(row["seed"]))},
        observed_data={"y": data.test.labels},
        dims=dims,
        attrs={
            "method": name,
            "model": "gp-attention",
            "task": data.name,
            "seed": row["seed"],
            "point_estimate": point_estimate,
            "parameters": PARAMETERS[name],
            "draws": DRAWS[name],
            "num_draws": int(prediction.log_lik.shape[0]),
            "posterior_holds": holds,
            "heldout_log_likelihood_of": "y: the test sequences' labels, per predictive draw",
            "loo": "not applicable: no pointwise log-likelihood of the training data is stored",
            "accuracy": row["accuracy"],
            "nll": row["nll"],
        },
    )
