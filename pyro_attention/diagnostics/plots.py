"""Plots of a comparison: objective traces, and each method's fitted posterior.

Figures are built as :class:`matplotlib.figure.Figure` objects, never through ``pyplot``, so
writing them leaves the user's backend (e.g. inline plots in Jupyter) alone.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from pyro_attention._io import atomic_path


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    return path


def plot_objective_traces(comparison: Any, num_points: int) -> Any:
    """Training objective per data point against step, one line per method."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    traces = {
        name: [-v / num_points for v in losses]
        for name, losses in comparison.traces.items()
        if losses
    }
    for name, trace in traces.items():
        ax.plot(range(1, len(trace) + 1), trace, label=name, lw=1)
    if traces:  # zoom on where the methods end up, not on the first steps of a slow starter
        finals = [statistics.median(t[-max(1, len(t) // 10) :]) for t in traces.values()]
        spread = max(max(finals) - min(finals), 0.5)
        ax.set_ylim(min(finals) - spread, max(max(t) for t in traces.values()) + 0.1 * spread)
    ax.set_xscale("log")
    ax.set_xlabel("step / iteration")
    ax.set_ylabel("objective per point (ELBO, bound or log-lik)")
    ax.set_title(f"{comparison.model}: training objectives")
    if ax.lines:
        ax.legend(fontsize=8)
    return fig


def plot_comparison(model_obj: Any, comparison: Any, train: Any, out: Path) -> list[Path]:
    """Write ``objective_traces.png`` and (if the model can draw it) ``posterior_fits.png``."""
    files = [
        save_figure(
            plot_objective_traces(comparison, model_obj.num_points(train)),
            out / "objective_traces.png",
        )
    ]
    plot = getattr(model_obj, "plot_posterior", None)
    if plot is not None and comparison.draws:
        num = len(comparison.draws)
        cols = min(4, num)
        rows = math.ceil(num / cols)
        fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (name, draws) in zip(axes.flat, comparison.draws.items(), strict=False):
            plot(ax, train, draws.samples)
            row = next(r for r in comparison.rows if r["method"] == name)
            ax.set_title(f"{name}: {row['heldout_log_lik']:.3f} nats", fontsize=9)
        for ax in list(axes.flat)[num:]:
            ax.axis("off")
        fig.suptitle(f"{comparison.model}: fitted components (held-out log-lik per point)")
        files.append(save_figure(fig, out / "posterior_fits.png"))
    return files


def plot_alignment_heatmaps(
    examples: list[dict],
    source_tokens: list[list[str]],
    target_tokens: list[list[str]],
    title: str,
) -> Figure:
    """Prior (left) and posterior (right) alignment matrices of a few examples.

    Rows are target tokens, columns source tokens; gold alignments are marked with white
    circles. ``examples`` come from
    :func:`~pyro_attention.experiments.alignment_metrics.score_alignments` (``keep_examples``).
    """
    rows = len(examples)
    fig = Figure(figsize=(9, 3.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    for r, (example, src, tgt) in enumerate(
        zip(examples, source_tokens, target_tokens, strict=True)
    ):
        S, T = len(src), len(tgt)
        for c, key in enumerate(("prior", "posterior")):
            ax = axes[r, c]
            ax.imshow(example[key][:T, :S].numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
            gold = example.get("gold")
            if gold is not None:
                js = [j for j in range(T) if 0 <= int(gold[j]) < S]
                ax.scatter(
                    [int(gold[j]) for j in js], js, s=40, facecolors="none", edgecolors="white"
                )
            ax.set_xticks(range(S), src, rotation=90, fontsize=7)
            ax.set_yticks(range(T), tgt, fontsize=7)
            if r == 0:
                ax.set_title(f"{key} p(z_j = i | ...)", fontsize=9)
    fig.suptitle(title)
    return fig


def plot_token_objectives(comparison: Any) -> Figure:
    """Training objective per token against step (a moving average), one line per method."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    lows: list[float] = []  # the lowest point of each line drawn
    for name, fitted in comparison.fits.items():
        points = fitted.extra.get("step_points") or []
        losses = fitted.losses[-len(points) :] if points else []
        if not losses:
            continue
        per_token = [-loss / n for loss, n in zip(losses, points, strict=True)]
        window = max(1, len(per_token) // 50)
        smooth = [
            statistics.fmean(per_token[max(0, i - window + 1) : i + 1])
            for i in range(len(per_token))
        ]
        ax.plot(range(1, len(smooth) + 1), smooth, label=name, lw=1)
        lows.append(min(smooth))
    ax.set_xlabel("step")
    ax.set_ylabel("objective per target token (moving average)")
    ax.set_title(f"{comparison.model} on {comparison.dataset}: training objectives")
    if ax.lines:
        ax.set_ylim(bottom=max(min(lows), -10.0))
        ax.legend(fontsize=8)
    return fig


def plot_reliability(
    curves: dict[str, dict[str, torch.Tensor]], path: Path | None = None
) -> Figure:
    """Reliability diagrams of the top-1 predictions, one panel per method.

    Bars show the accuracy of each confidence bin over the bin's width, dots the bin's mean
    confidence against its accuracy, the dashed diagonal perfect calibration; the title gives
    the ECE, ``sum(count * |accuracy - confidence|) / N``. The extra bin of confidences exactly
    1.0 (torchmetrics' binning) is the narrow orange bar right of 1.

    :param curves: ``{method: reliability_bins(probs, labels)}`` (see
        :func:`~pyro_attention.diagnostics.calibration.reliability_bins`).
    :param path: if given, the figure is also written there as PNG.
    :raises ValueError: ``curves`` is empty or an entry lacks a key of ``reliability_bins``.
    """
    if not curves:
        raise ValueError("curves is empty; pass {method: reliability_bins(probs, labels)}")
    num = len(curves)
    cols = min(4, num)
    rows = math.ceil(num / cols)
    fig = Figure(figsize=(3.2 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, bins) in zip(axes.flat, curves.items(), strict=False):
        missing = {"confidence", "accuracy", "count", "edges"} - set(bins)
        if missing:
            raise ValueError(
                f"curves[{name!r}] lacks {sorted(missing)}; build it with reliability_bins()"
            )
        edges, conf, acc, count = (
            bins[key].detach().to(device="cpu", dtype=torch.float64).tolist()
            for key in ("edges", "confidence", "accuracy", "count")
        )
        n_bins = len(edges) - 1
        ece = sum(c * abs(a - p) for c, a, p in zip(count, acc, conf, strict=True)) / max(
            sum(count), 1.0
        )
        full = [b for b in range(n_bins) if count[b] > 0]
        ax.bar(
            [edges[b] for b in full],
            [acc[b] for b in full],
            width=[edges[b + 1] - edges[b] for b in full],
            align="edge",
            color="tab:blue",
            alpha=0.7,
            edgecolor="black",
            linewidth=0.5,
            label="accuracy",
        )
        if count[n_bins] > 0:
            ax.bar(
                1.0,
                acc[n_bins],
                width=0.3 / n_bins,
                align="edge",
                color="tab:orange",
                edgecolor="black",
                linewidth=0.5,
                label="confidence = 1",
            )
        shown = [*full, *([n_bins] if count[n_bins] > 0 else [])]
        ax.plot(
            [conf[b] for b in shown],
            [acc[b] for b in shown],
            "o",
            ms=3,
            color="tab:red",
            label="mean confidence",
        )
        ax.plot([0.0, 1.0], [0.0, 1.0], "k--", lw=1)
        ax.set_xlim(0.0, 1.0 + 0.35 / n_bins)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {ece:.3f} (N={int(sum(count))})", fontsize=9)
    for ax in list(axes.flat)[num:]:
        ax.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7, loc="upper left")
    if path is not None:
        save_figure(fig, Path(path))
    return fig


def plot_seed_spread(
    rows: list[dict[str, Any]],
    aggregate: list[dict[str, Any]],
    metric: str,
    *,
    label: Any = None,
) -> Figure:
    """``metric`` of every run (one dot per seed) and its mean ± 2 SE, one line per group.

    :param rows: one row per run and method, with ``seed`` and ``metric``.
    :param aggregate: :func:`~pyro_attention.diagnostics.aggregate.aggregate_rows` of ``rows``.
    :param label: ``label(row) -> str`` names a group (default: its ``method``).
    """
    name = label or (lambda row: str(row.get("method", "?")))
    groups = [name(row) for row in aggregate]
    fig = Figure(figsize=(7, 0.9 + 0.35 * max(1, len(groups))))
    ax = fig.subplots()
    for y, summary in enumerate(aggregate):
        key = groups[y]
        values = [
            float(row[metric])
            for row in rows
            if name(row) == key and isinstance(row.get(metric), int | float)
        ]
        ax.plot(values, [y] * len(values), "o", color="tab:blue", alpha=0.5, ms=4)
        if summary.get(metric) is not None:
            error = summary.get(f"{metric}_se2") or 0.0
            ax.errorbar(summary[metric], y, xerr=error, fmt="s", color="black", ms=4, capsize=3)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (dots: seeds; squares: mean ± 2 SE)")
    return fig
