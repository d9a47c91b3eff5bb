"""Compare training objectives of a latent-alignment sequence model (Deng et al. 2018, Table 1).

Each method trains a fresh model from the same seed on the same mini-batches for the same number
of steps; every fit is then scored the same way on the test split by
:func:`~pyro_attention.experiments.alignment_metrics.score_alignments` (exact perplexity under the
prior, top-K perplexity, ELBO under q, prior entropy, alignment accuracy) and by its training
throughput (target tokens per second). With ``out`` set, :func:`compare_alignment` writes
``summary.json``, ``objective_traces.png`` and one ``alignments_<method>.png`` of prior and
posterior alignment heat-maps per method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from tqdm import tqdm

from pyro_attention._io import write_json
from pyro_attention._validation import check_positive_int
from pyro_attention.experiments.alignment_metrics import score_alignments
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.infer.compare import Comparison, error_row, format_table
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


def paper_method(method: str | InferenceMethod, num_steps: int) -> InferenceMethod:
    """The method object for a name, with the settings of Deng et al. (2018) where the default
    differs: ``rws`` with 5 samples and one weight per alignment, ``dirichlet`` with 30% of
    ``num_steps`` pre-training on the Jensen bound. Method objects pass through."""
    if isinstance(method, InferenceMethod):
        return method
    options = {
        "rws": {"num_particles": 5, "local": True},
        "dirichlet": {"pretrain_steps": int(0.3 * num_steps)},
    }
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


class AlignmentComparison(Comparison):
    """A :class:`~pyro_attention.infer.compare.Comparison` with per-token columns."""

    def __str__(self) -> str:
        return format_table(self.rows, COLUMNS)


def compare_alignment(
    make_model: Callable[[], Any],
    dataset: Any,
    methods: Sequence[str | InferenceMethod] = PAPER_METHODS,
    *,
    num_steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    k: int = 5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    num_heatmaps: int = 3,
    progress: bool = True,
) -> AlignmentComparison:
    """Train ``make_model()`` with each method and score every fit on the test split.

    :param make_model: builds a fresh model (called after seeding, once per method), e.g.
        ``lambda: LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab))``.
    :param dataset: an :class:`~pyro_attention.data.AlignmentDataset`.
    :param methods: names (with the paper's settings, :func:`paper_method`) or method objects
        (default: the paper's nine).
    :param num_steps: training steps (mini-batches) per method.
    :param batch_size: examples per mini-batch (training and evaluation).
    :param lr: Adam learning rate.
    :param k: K of the top-K perplexity.
    :param out: folder for ``summary.json`` and the PNGs.
    :param num_heatmaps: test examples drawn in each method's heat-map figure.
    """
    check_positive_int(num_steps, "num_steps")
    check_positive_int(batch_size, "batch_size")
    objects = [paper_method(m, num_steps) for m in methods]
    if not objects:
        raise ValueError("methods is empty; pass at least one method name")
    device = torch.device(device)
    pyro.set_rng_seed(seed)
    probe = make_model()
    train = dataset.tensors("train", device=device)
    structure = inspect_model(probe.to(device), probe.check_data(train))
    for method in objects:  # refuse bad pairs before any work starts
        method.check(structure)
    comparison = AlignmentComparison(probe.name, dataset.task, str(device), seed, rows=[])

    def batches(epoch: int):
        return dataset.batches("train", batch_size, shuffle=True, seed=seed + epoch, device=device)

    _warm_up(probe.to(device), next(iter(batches(0))))
    out = None if out is None else Path(out)
    for method in tqdm(objects, desc="methods", disable=not progress):
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
                    keep_examples=num_heatmaps,
                )
        except Exception as err:  # one failing method must not lose the others' rows
            comparison.rows.append(error_row(method, err, time.perf_counter() - t0))
            continue
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
        comparison.rows.append(row)
        comparison.fits[method.name] = fitted
        if out is not None and scores.examples:
            comparison.files.append(_write_heatmaps(dataset, method.name, scores.examples, out))
    if out is not None:
        from pyro_attention.diagnostics.plots import plot_token_objectives, save_figure

        summary = comparison.summary()
        summary["settings"] = {
            "num_steps": num_steps,
            "batch_size": batch_size,
            "lr": lr,
            "k": k,
            "num_train": len(dataset.train),
            "num_test": len(dataset.test),
        }
        comparison.files.append(write_json(out / "summary.json", summary))
        comparison.files.append(
            save_figure(plot_token_objectives(comparison), out / "objective_traces.png")
        )
    return comparison


def _warm_up(model: Any, batch: Any) -> None:
    """One untimed forward and backward pass, so that one-time start-up costs (kernels,
    allocator) are not charged to the first method's throughput."""
    with own_param_store():
        loss = TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting).differentiable_loss(
            enumerate_alignments(model.model), lambda *args, **kwargs: None, batch
        )
        loss.backward()


def _write_heatmaps(dataset: Any, name: str, examples: list[dict], out: Path) -> Path:
    from pyro_attention.diagnostics.plots import plot_alignment_heatmaps, save_figure

    sources = [dataset.source_vocab.decode(ex["source"][ex["source_mask"]]) for ex in examples]
    targets = [dataset.target_vocab.decode(ex["target"][ex["target_mask"]]) for ex in examples]
    fig = plot_alignment_heatmaps(examples, sources, targets, f"{name}: test alignments")
    return save_figure(fig, out / f"alignments_{name}.png")
