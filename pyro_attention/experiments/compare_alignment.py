"""Compare training objectives of a latent-alignment sequence model (Deng et al. 2018, Table 1).

Each method trains a fresh model from the same seed on the same mini-batches for the same number
of steps; every fit is then scored the same way on the test split by
:func:`~pyro_attention.experiments.alignment_metrics.score_alignments` (exact perplexity under the
prior, top-K perplexity, ELBO under q, prior entropy, alignment accuracy) and by its training
throughput (target tokens per second). Every fit becomes an ArviZ tree
(:func:`~pyro_attention.experiments.alignment_trees.alignment_tree`: draws of the test alignments,
the held-out log-likelihood per sequence and per token, per-token diagnostics), and the methods are
ranked by their held-out ELPD with :func:`arviz_stats.compare` (the standard error of each paired
difference included). With ``out`` set, :func:`compare_alignment` owns the folder while it runs
(:class:`~pyro_attention._run_folder.RunFolder`), writes ``summary.json`` after every method (an
interrupt keeps the finished rows), ``<method>.nc`` and ``alignments_<method>.png`` (prior and
posterior heat-maps, drawn from the tree) per method, and ``objective_traces.png``,
``elpd_compare.png`` and the ranking (``summary.json``'s ``elpd_compare``) at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from tqdm import tqdm

from pyro_attention._run_folder import RunFolder, check_output_folder
from pyro_attention._validation import check_positive_int
from pyro_attention.diagnostics.arviz import save_datatree
from pyro_attention.diagnostics.elpd import heldout_elpd
from pyro_attention.experiments.alignment_metrics import score_alignments
from pyro_attention.experiments.alignment_trees import alignment_tree, heatmap_examples
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer.compare import Comparison, error_row, format_table, ranking_text
from pyro_attention.infer.fit import fit
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.infer.registry import get_method
from pyro_attention.infer.results import NonFiniteLossError, own_param_store
from pyro_attention.models.structure import inspect_model

#: the nine objectives of Deng et al. (2018), in the order of their Table 1
PAPER_METHODS = (
    "soft",
    "exact",
    "hard-enum",
    "hard-sample",
    "vi-enum",
    "vi-sample",
    "rws",
    "gumbel",
    "dirichlet",
)

#: the objectives that apply to a chain of alignments (a Markov or monotonic prior): the
#: paper's nine less those that enumerate or relax each position on its own (``hard-enum``,
#: ``vi-enum``, ``dirichlet``); ``vi-sample`` with Pyro's whole-chain score-function
#: estimator and ``rws`` with one weight per sequence
CHAIN_METHODS = ("soft", "exact", "hard-sample", "vi-sample", "rws", "gumbel")


def chain_options(chained: bool) -> dict[str, dict[str, Any]]:
    """The method settings that depend on whether the alignments form a chain: ``rws`` with one
    importance weight per alignment only when they are independent, ``vi-sample`` with the
    ``tracegraph`` estimator (unbiased) on a chain."""
    return {
        "rws": {"local": not chained},
        "vi-sample": {"estimator": "tracegraph"} if chained else {},
    }


def paper_method(
    method: str | InferenceMethod, num_steps: int, *, chained: bool = False
) -> InferenceMethod:
    """The method object for a name, with the settings of Deng et al. (2018) where the default
    differs: ``rws`` with 5 samples and one weight per alignment (one per sequence when the
    alignments are ``chained``), ``dirichlet`` with 30% of ``num_steps`` pre-training on the
    Jensen bound; on a chain ``vi-sample`` with the ``tracegraph`` estimator (unbiased there).
    Method objects pass through."""
    if isinstance(method, InferenceMethod):
        return method
    options: dict[str, dict[str, Any]] = {
        "rws": {"num_particles": 5},
        "dirichlet": {"pretrain_steps": int(0.3 * num_steps)},
    }
    for name, more in chain_options(chained).items():
        options[name] = options.get(name, {}) | more
    return get_method(method, **options.get(method, {}))


COLUMNS = (
    "method",
    "ppl",
    "kmax_ppl",
    "elbo_q",
    "prior_entropy",
    "alignment_accuracy",
    "tokens_per_second",
    "seconds",
    "steps",
    "status",
)


@dataclass
class AlignmentComparison(Comparison):
    """A :class:`~pyro_attention.infer.compare.Comparison` with per-token columns and each
    method's ArviZ tree (:attr:`trees`), ranked by held-out ELPD per test sequence."""

    trees: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_table(self.rows, COLUMNS) + ranking_text(self.sections.get("elpd_compare"))


def compare_alignment(
    make_model: Callable[[], Any],
    dataset: Any,
    methods: Sequence[str | InferenceMethod] | None = None,
    *,
    num_steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    k: int = 5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    num_heatmaps: int = 3,
    num_draws: int = 100,
    progress: bool = True,
) -> AlignmentComparison:
    """Train ``make_model()`` with each method and score every fit on the test split.

    :param make_model: builds a fresh model (called after seeding, once per method), e.g.
        ``lambda: LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab))``.
    :param dataset: an :class:`~pyro_attention.data.AlignmentDataset`.
    :param methods: names (with the paper's settings, :func:`paper_method`) or method objects
        (default: the paper's nine, or :data:`CHAIN_METHODS` for a model whose alignments form
        a chain).
    :param num_steps: training steps (mini-batches) per method.
    :param batch_size: examples per mini-batch (training and evaluation).
    :param lr: Adam learning rate.
    :param k: K of the top-K perplexity.
    :param out: folder for ``summary.json`` and the PNGs.
    :param num_heatmaps: test examples drawn in each method's heat-map figure.
    :param num_draws: draws of every test alignment in each method's tree.
    """
    if out is not None:  # checked first: a folder that cannot be written loses every result
        check_output_folder(out)
    check_positive_int(num_steps, "num_steps")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(k, "k")
    check_positive_int(num_draws, "num_draws")
    if isinstance(num_heatmaps, bool) or not isinstance(num_heatmaps, int) or num_heatmaps < 0:
        raise ValueError(f"num_heatmaps must be an integer >= 0, got {num_heatmaps!r}")
    pyro.set_rng_seed(seed)
    probe = make_model()
    chained = bool(getattr(probe, "chained", False))
    if methods is None:
        methods = CHAIN_METHODS if chained else PAPER_METHODS
    objects = [paper_method(m, num_steps, chained=chained) for m in methods]
    if not objects:
        raise ValueError("methods is empty; pass at least one method name")
    names = [m.name for m in objects]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"method(s) {', '.join(repeated)} named twice; name each once")
    device = torch.device(device)
    train = dataset.tensors("train", device=device)
    structure = inspect_model(probe.to(device), probe.check_data(train))
    for method in objects:  # refuse bad pairs before any work starts
        method.check(structure)
    comparison = AlignmentComparison(probe.name, dataset.task, str(device), seed, rows=[])
    comparison.settings = {
        "num_steps": num_steps,
        "batch_size": batch_size,
        "lr": lr,
        "k": k,
        "alignment_prior": getattr(probe, "alignment_prior", None),
        "max_jump": getattr(probe, "max_jump", None) if chained else None,
        "num_train": len(dataset.train),
        "num_test": len(dataset.test),
    }

    def batches(epoch: int):
        return dataset.batches("train", batch_size, shuffle=True, seed=seed + epoch, device=device)

    _warm_up(probe.to(device), next(iter(batches(0))))
    folder = (
        None if out is None else RunFolder(out, seed=seed, kind="compare alignment").__enter__()
    )
    comparison.folder = folder
    state = "interrupted"
    try:
        for method in tqdm(objects, desc="methods", disable=not progress):
            _run_method(
                comparison,
                method,
                make_model,
                dataset,
                batches,
                device,
                train,
                folder,
                num_steps=num_steps,
                batch_size=batch_size,
                lr=lr,
                k=k,
                seed=seed,
                num_heatmaps=num_heatmaps,
                num_draws=num_draws,
                progress=progress,
            )
            if folder is not None:
                comparison.write_summary("running")
        _rank(comparison, folder)
        if folder is not None:
            from pyro_attention.diagnostics.plots import plot_token_objectives, save_figure

            figure = plot_token_objectives(comparison)
            comparison.files.append(
                folder.record(save_figure(figure, folder.path / "objective_traces.png"))
            )
        state = "finished"
    finally:
        if folder is not None:
            comparison.files.append(comparison.write_summary(state))
            folder.__exit__()
    return comparison


def _run_method(
    comparison: AlignmentComparison,
    method: InferenceMethod,
    make_model: Callable[[], Any],
    dataset: Any,
    batches: Callable[[int], Any],
    device: torch.device,
    train: Any,
    folder: RunFolder | None,
    *,
    num_steps: int,
    batch_size: int,
    lr: float,
    k: int,
    seed: int,
    num_heatmaps: int,
    num_draws: int,
    progress: bool,
) -> None:
    """Train a fresh model with ``method`` and add its row (an error row if it fails)."""
    pyro.set_rng_seed(seed)
    model = make_model().to(device)
    t0 = time.perf_counter()
    try:
        try:
            fitted = fit(
                model,
                train,
                method,
                num_steps=num_steps,
                lr=lr,
                batches=batches,
                seed=seed,
                progress=progress,
            )
        except NonFiniteLossError as err:
            if not err.result.steps:  # nothing was learned: no score to report
                raise
            fitted = err.result
        model.eval()
        pyro.set_rng_seed(seed)
        with fitted.scope():
            scores = score_alignments(
                model,
                method,
                dataset.batches("test", batch_size, device=device),
                guide=fitted.guide,
                k=k,
                num_draws=num_draws,
            )
        row = {
            "method": method.name,
            **scores.as_row(),
            "objective": method.objective,
            "tokens_per_second": fitted.samples_per_second,
            "seconds": fitted.seconds,
            "steps": fitted.steps,
            "train_tokens": fitted.points_seen,
            "total_seconds": time.perf_counter() - t0,
            "status": fitted.status,
            "settings": repr(method),
        }
        assert scores.pointwise is not None  # num_draws >= 1
        tree = alignment_tree(
            scores.pointwise,
            source_vocab=dataset.source_vocab,
            target_vocab=dataset.target_vocab,
            attrs={
                "model": comparison.model,
                "task": comparison.dataset,
                "method": method.name,
                "objective": method.objective,
                "heldout_log_lik": row["heldout_log_lik"],
                "ppl": row["ppl"],
                "objective_trace": [float(v) for v in fitted.losses],
            },
        )
    except Exception as err:  # one failing method must not lose the others' rows
        comparison.rows.append(error_row(method, err, time.perf_counter() - t0))
        if folder is not None:
            folder.forget(f"alignments_{method.name}.png")
            folder.forget(f"{method.name}.nc")
        return
    comparison.rows.append(row)
    comparison.fits[method.name] = fitted
    comparison.trees[method.name] = tree
    if folder is not None:
        comparison.files.append(
            folder.record(save_datatree(tree, folder.path / f"{method.name}.nc"))
        )
        if num_heatmaps:
            heatmaps = _write_heatmaps(tree, method.name, num_heatmaps, folder.path)
            comparison.files.append(folder.record(heatmaps))


def _rank(comparison: AlignmentComparison, folder: RunFolder | None) -> None:
    """Rank the scored methods by held-out ELPD per test sequence (:func:`arviz_stats.compare`);
    with a folder, ``elpd_compare.png`` and the ranking in ``summary.json``."""
    comparison.elpds = {name: heldout_elpd(tree, "y") for name, tree in comparison.trees.items()}
    path = comparison.rank("y: log p(y | x) per test sequence (nats)")
    if path is not None:
        comparison.files.append(path)


def _warm_up(model: Any, batch: Any) -> None:
    """One untimed forward and backward pass, so that one-time start-up costs (kernels,
    allocator) are not charged to the first method's throughput."""
    with own_param_store():
        loss = TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting).differentiable_loss(
            enumerate_alignments(model.model), lambda *args, **kwargs: None, batch
        )
        loss.backward()


def _write_heatmaps(tree: Any, name: str, count: int, out: Path) -> Path:
    """The heat-maps of the first ``count`` test examples, read from the method's tree."""
    from pyro_attention.diagnostics.plots import plot_alignment_heatmaps, save_figure

    examples, sources, targets = heatmap_examples(tree, count)
    fig = plot_alignment_heatmaps(examples, sources, targets, f"{name}: test alignments")
    return save_figure(fig, out / f"alignments_{name}.png")
