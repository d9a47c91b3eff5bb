r"""Depth study: plain stacked attention versus stacked latent attention on pointer chasing.

Fan & Zhou (*Stacked Latent Attention for Multimodal Reasoning*, CVPR 2018) argue that plain
stacked attention (Yang et al., CVPR 2016) stops improving after about two layers, because the
gradient reaching the first layers must pass through the chain of softmaxes, and that carrying
each layer's latent map forward (:class:`~pyro_attention.nn.StackedLatentAttention`) gives the
first layers a direct path and lets deeper stacks keep improving. This study puts both claims
to a test on a task where depth is needed: :math:`k`-hop pointer chasing
(:func:`~pyro_attention.data.make_pointer_chasing`), which one round of attention can advance
by one hop only.

For each variant (``"plain"``: :class:`~pyro_attention.nn.StackedAttention`, ``"latent"``:
:class:`~pyro_attention.nn.StackedLatentAttention`, and its ablations ``"latent-carry"`` and
``"latent-pool"``), each depth :math:`L` and each seed, a classifier is trained from scratch:

.. math::

    u = \mathrm{Stack}_L(v_{1:N}, q), \qquad
    \mathrm{logit}_i = (W_o u)^\top v_i^{\mathrm{key}}, \qquad
    \mathcal{L} = -\log \mathrm{softmax}_i(\mathrm{logit})_{\mathrm{target}},

where :math:`v_i^{\mathrm{key}}` is the first half of the item's features (its own key) and
:math:`W_o` a bias-free linear map. Training uses Adam on fresh batches (the same batches for
both variants and every depth of a seed); held-out accuracy and NLL (nats per example) are
measured on one fixed test set. The gradient norm
:math:`\lVert\partial\mathcal{L}/\partial\theta^1\rVert` of the first layer's attention
parameters :math:`\theta^1 = (W_v^1, W_u^1, b^1, w^1)` (those that make its latent map and
weights, :meth:`~pyro_attention.nn.StackedAttention.attention_parameters`) is averaged over a
few fixed batches at initialisation and after training, and divided by that of the last layer.

Every cell is reported as mean and standard deviation over the seeds; the raw per-seed values
are in :attr:`SLADepthStudy.runs`.

>>> study = sla_depth_study(depths=(1, 2), hops=1, seeds=(0,), num_steps=5, progress=False)
>>> [row["depth"] for row in study.rows]
[1, 2, 1, 2]
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from pyro_attention._run_folder import RunFolder, check_output_folder
from pyro_attention._validation import check_positive_int
from pyro_attention.data.pointer_chasing import PointerChasing, make_pointer_chasing
from pyro_attention.diagnostics.plots import save_figure
from pyro_attention.infer.compare import format_table
from pyro_attention.nn.stacked_latent_attention import (
    StackedAttention,
    StackedLatentAttention,
    _StackedAttentionBase,
)

__all__ = ["COLUMNS", "VARIANTS", "SLADepthStudy", "sla_depth_study"]

#: the stacks compared: plain, latent (Fan & Zhou), and latent with one of its two paths only
VARIANTS: dict[str, Callable[[int, int, int, int], _StackedAttentionBase]] = {
    "plain": StackedAttention,
    "latent": StackedLatentAttention,
    "latent-carry": functools.partial(StackedLatentAttention, pool=False),
    "latent-pool": functools.partial(StackedLatentAttention, carry=False),
}
COLUMNS = (
    "variant",
    "depth",
    "accuracy",
    "accuracy_sd",
    "nll",
    "nll_sd",
    "grad_norm_first_init",
    "grad_norm_first_trained",
    "grad_ratio_first_last",
    "grad_ratio_first_last_trained",
    "seconds",
)
_TEST_SEED = 2**31 - 1  # the test set; training batches use seeds below 2**31 - 2**24
_GRAD_SEED = 2**31 - 2


@dataclass
class SLADepthStudy:
    """Result of :func:`sla_depth_study`.

    :ivar rows: one dict per (variant, depth), means over seeds (``*_sd``: standard deviation
        over seeds, 0 with one seed): ``variant``, ``depth``, ``accuracy``, ``nll`` (held-out,
        nats per example), ``grad_norm_first_init`` / ``grad_norm_first_trained`` (norm of the
        loss gradient on the first layer's attention parameters), ``grad_ratio_first_last``
        (first / last layer at initialisation; ``_trained``: after training), ``final_loss``
        (mean training loss over the last 10% of steps), ``seconds`` (training time per seed).
    :ivar runs: the per-seed values behind ``rows``.
    :ivar settings: the arguments of the study.
    :ivar environment: versions, device and threads.
    :ivar files: paths written (with ``out``).
    """

    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    settings: dict[str, Any]
    environment: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` content."""
        return {
            "study": "sla_depth",
            "settings": self.settings,
            "rows": self.rows,
            "runs": self.runs,
            "environment": self.environment,
        }

    def __str__(self) -> str:
        s = self.settings
        head = (
            f"{s['hops']}-hop pointer chasing, {s['num_items']} items (chance "
            f"{1 / s['num_items']:.3f}), {s['num_steps']} steps, seeds {s['seeds']}"
        )
        return head + "\n" + format_table(self.rows, COLUMNS)


class _PointerClassifier(nn.Module):
    """Stacked attention followed by scoring the refined query against every item's key."""

    def __init__(self, stack: _StackedAttentionBase, key_dim: int) -> None:
        super().__init__()
        self.stack = stack
        self.key_dim = key_dim
        self.readout = nn.Linear(stack.query_dim, key_dim, bias=False)

    def forward(self, data: PointerChasing) -> torch.Tensor:
        u = self.stack(data.items, data.query)
        keys = data.items[..., : self.key_dim]
        return (keys @ self.readout(u).unsqueeze(-1)).squeeze(-1)  # (B, N)


@contextlib.contextmanager
def _num_threads(num: int | None) -> Iterator[None]:
    if num is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _grad_norms(model: _PointerClassifier, batches: list[PointerChasing]) -> tuple[float, float]:
    """Mean over ``batches`` of the first and last layers' attention-parameter gradient norms."""
    first = model.stack.attention_parameters(0)
    last = model.stack.attention_parameters(-1)
    norms = []
    for batch in batches:
        loss = F.cross_entropy(model(batch), batch.target)
        grads = torch.autograd.grad(loss, first + last)
        g_first, g_last = grads[: len(first)], grads[len(first) :]
        norms.append([_norm(gs) for gs in (g_first, g_last)])
    return statistics.fmean(n[0] for n in norms), statistics.fmean(n[1] for n in norms)


def _norm(grads: Sequence[torch.Tensor]) -> float:
    """The Euclidean norm of ``grads`` taken together."""
    # a tensor, not the start value 0: every layer has attention parameters
    total = cast(torch.Tensor, sum(g.square().sum() for g in grads))
    return torch.sqrt(total).item()


def _split(data: PointerChasing, size: int) -> list[PointerChasing]:
    parts = [x.split(size) for x in data]
    return [PointerChasing(*xs) for xs in zip(*parts, strict=True)]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _check_ints(values: object, name: str, minimum: int) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of integers, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"every entry of {name} must be an integer >= {minimum}, got {v!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has repeated entries: {values!r}; list each once")
    return tuple(values)


def sla_depth_study(
    depths: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
    *,
    hops: int = 3,
    seeds: Sequence[int] = (0, 1),
    variants: Sequence[str] = ("plain", "latent"),
    num_steps: int = 1500,
    batch_size: int = 128,
    num_items: int = 6,
    key_dim: int = 8,
    hidden_dim: int = 32,
    keys: str = "sign",
    pointers: str = "cycle",
    noise: float = 0.0,
    lr: float = 1e-2,
    num_test: int = 2000,
    grad_batches: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    num_threads: int | None = 1,
    out: str | Path | None = None,
    progress: bool = True,
) -> SLADepthStudy:
    """Train plain and latent stacked attention of each depth on ``hops``-hop pointer chasing.

    :param depths: numbers of attention layers to try.
    :param hops: hops of the task (:func:`~pyro_attention.data.make_pointer_chasing`).
    :param seeds: one training run per seed, cell, and variant (model initialisation and
        training batches; the test set is the same for all).
    :param variants: any of :data:`VARIANTS`: ``"plain"``, ``"latent"``, and the ablations
        ``"latent-carry"`` (the carried map only, no pooled map in the query) and
        ``"latent-pool"`` (the pooled map in the query only, nothing carried).
    :param num_steps: Adam steps per run, each on a fresh batch.
    :param batch_size: examples per step (also per gradient-norm batch).
    :param num_items: items per example ``N`` (chance accuracy ``1/N``).
    :param key_dim: key size ``d`` (item features ``2d``, query ``d``).
    :param hidden_dim: latent-map size ``H``.
    :param keys: ``"sign"`` or ``"gaussian"`` keys.
    :param pointers: ``"cycle"``, ``"permutation"`` or ``"function"``.
    :param noise: feature noise of the task.
    :param lr: Adam learning rate.
    :param num_test: held-out examples.
    :param grad_batches: batches the gradient norms are averaged over.
    :param device: where to train (default cpu).
    :param dtype: floating dtype of data and parameters.
    :param num_threads: torch intra-op threads during the study (restored after); the tensors
        are tiny, so one thread is fastest on CPU. ``None`` leaves the setting alone.
    :param out: folder for ``summary.json``, ``sla_accuracy.png`` and ``sla_gradients.png``,
        written atomically; None writes nothing.
    :param progress: show a tqdm bar.
    :returns: a :class:`SLADepthStudy`.
    """
    if out is not None:  # checked first: a folder that cannot be written loses every result
        check_output_folder(out)
    depths = _check_ints(depths, "depths", 1)
    seeds = _check_ints(seeds, "seeds", 0)
    hops = check_positive_int(hops, "hops")
    if isinstance(variants, str) or not isinstance(variants, Sequence) or not variants:
        raise ValueError(f"variants must be a non-empty sequence of names, got {variants!r}")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {tuple(VARIANTS)}")
    twice = sorted({v for v in variants if list(variants).count(v) > 1})
    if twice:
        raise ValueError(f"variant(s) {', '.join(twice)} named twice in variants; name each once")
    for name, value in (
        ("num_steps", num_steps),
        ("batch_size", batch_size),
        ("key_dim", key_dim),
        ("hidden_dim", hidden_dim),
        ("num_test", num_test),
        ("grad_batches", grad_batches),
    ):
        check_positive_int(value, name)
    if not (isinstance(lr, int | float) and 0 < lr < math.inf) or isinstance(lr, bool):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if num_threads is not None:
        check_positive_int(num_threads, "num_threads")
    if max(seeds) * num_steps >= 2**31 - 2**24:
        raise ValueError("seeds * num_steps is too large for the seeding scheme; use smaller seeds")
    device = torch.device("cpu") if device is None else torch.device(device)
    task: dict[str, Any] = {
        "num_items": num_items,
        "key_dim": key_dim,
        "hops": hops,
        "keys": keys,
        "pointers": pointers,
        "noise": noise,
        "device": device,
        "dtype": dtype,
    }
    # validates the task arguments before any training
    test = make_pointer_chasing(num_test, seed=_TEST_SEED, **task)
    grad_data = _split(
        make_pointer_chasing(grad_batches * batch_size, seed=_GRAD_SEED, **task), batch_size
    )
    settings = {
        "depths": list(depths),
        "hops": hops,
        "seeds": list(seeds),
        "variants": list(variants),
        "num_steps": num_steps,
        "batch_size": batch_size,
        "num_items": num_items,
        "key_dim": key_dim,
        "hidden_dim": hidden_dim,
        "keys": keys,
        "pointers": pointers,
        "noise": noise,
        "lr": lr,
        "num_test": num_test,
        "grad_batches": grad_batches,
        "dtype": str(dtype),
        "num_threads": num_threads,
        "chance_accuracy": 1 / num_items,
    }

    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "num_threads": torch.get_num_threads() if num_threads is None else num_threads,
    }
    study = SLADepthStudy(rows=[], runs=[], settings=settings, environment=environment)
    cells = [(s, v, L) for s in seeds for v in variants for L in depths]
    folder = None if out is None else RunFolder(out, seed=seeds[0], kind="sla").__enter__()
    state = "interrupted"
    try:
        with (
            _num_threads(num_threads),
            tqdm(total=len(cells), desc="SLA depth study", unit="run", disable=not progress) as bar,
        ):
            for seed, variant, depth in cells:
                bar.set_postfix(variant=variant, depth=depth, seed=seed)
                study.runs.append(
                    _train_one(variant, depth, seed, settings, task, test, grad_data, device, dtype)
                )
                study.rows = _aggregate(study.runs, variants, depths)
                if folder is not None:  # an interrupt keeps every finished run
                    folder.write_summary(study.to_dict(), "running")
                bar.update()
        if folder is not None:
            for path in (
                save_figure(_plot_accuracy(study), folder.path / "sla_accuracy.png"),
                save_figure(_plot_gradients(study), folder.path / "sla_gradients.png"),
            ):
                study.files.append(folder.record(path))
        state = "finished"
    finally:
        if folder is not None:
            study.files.insert(0, folder.write_summary(study.to_dict(), state))
            folder.__exit__()
    return study


def _aggregate(
    runs: list[dict[str, Any]], variants: Sequence[str], depths: Sequence[int]
) -> list[dict[str, Any]]:
    """One row per (variant, depth) with finished ``runs``: means (and SDs) over seeds."""
    rows = []
    for variant, depth in itertools.product(variants, depths):
        cell = [r for r in runs if r["variant"] == variant and r["depth"] == depth]
        if not cell:
            continue
        row: dict[str, Any] = {"variant": variant, "depth": depth}
        for key in (
            "accuracy",
            "nll",
            "grad_norm_first_init",
            "grad_norm_first_trained",
            "grad_ratio_first_last",
            "grad_ratio_first_last_trained",
            "final_loss",
            "seconds",
        ):
            row[key], sd = _mean_sd([r[key] for r in cell])
            if key in ("accuracy", "nll"):
                row[f"{key}_sd"] = sd
        row["num_seeds"] = len(cell)
        rows.append(row)
    return rows


def _train_one(
    variant: str,
    depth: int,
    seed: int,
    settings: dict[str, Any],
    task: dict[str, Any],
    test: PointerChasing,
    grad_data: list[PointerChasing],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Train one classifier; its per-seed metrics."""
    key_dim, steps = settings["key_dim"], settings["num_steps"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stack = VARIANTS[variant](2 * key_dim, key_dim, settings["hidden_dim"], depth)
        model = _PointerClassifier(stack, key_dim)
    model = model.to(device=device, dtype=dtype)
    first_init, last_init = _grad_norms(model, grad_data)

    optim = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        batch = make_pointer_chasing(settings["batch_size"], seed=seed * steps + step, **task)
        loss = F.cross_entropy(model(batch), batch.target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.detach())
    seconds = time.perf_counter() - start
    tail = torch.stack(losses[-max(1, steps // 10) :]).mean().item()

    first_trained, last_trained = _grad_norms(model, grad_data)
    with torch.no_grad():
        logits = model(test)
        accuracy = (logits.argmax(-1) == test.target).to(torch.float64).mean().item()
        nll = F.cross_entropy(logits.to(torch.float64), test.target).item()
    return {
        "variant": variant,
        "depth": depth,
        "seed": seed,
        "accuracy": accuracy,
        "nll": nll,
        "grad_norm_first_init": first_init,
        "grad_norm_first_trained": first_trained,
        "grad_ratio_first_last": first_init / last_init,
        "grad_ratio_first_last_trained": first_trained / last_trained,
        "final_loss": tail,
        "seconds": seconds,
    }


def _by_variant(study: SLADepthStudy) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in study.rows:
        groups.setdefault(row["variant"], []).append(row)
    return groups


def _plot_accuracy(study: SLADepthStudy) -> Figure:
    s = study.settings
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for variant, rows in _by_variant(study).items():
        ax.errorbar(
            [r["depth"] for r in rows],
            [r["accuracy"] for r in rows],
            yerr=[r["accuracy_sd"] for r in rows],
            marker="o",
            capsize=3,
            label=variant,
        )
    ax.axhline(s["chance_accuracy"], color="grey", ls=":", label="chance")
    ax.axvline(s["hops"], color="grey", ls="--", lw=0.8, label=f"depth = hops ({s['hops']})")
    ax.set_xlabel("number of attention layers")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"{s['hops']}-hop pointer chasing, {s['num_items']} items "
        f"(mean ± sd over {len(s['seeds'])} seeds)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return fig


def _plot_gradients(study: SLADepthStudy) -> Figure:
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    curves = (  # (panel, column, line style, label)
        (left, "grad_norm_first_init", "o-", "init"),
        (left, "grad_norm_first_trained", "s--", "trained"),
        (right, "grad_ratio_first_last", "o-", "init"),
        (right, "grad_ratio_first_last_trained", "s--", "trained"),
    )
    for i, (variant, rows) in enumerate(_by_variant(study).items()):
        depths = [r["depth"] for r in rows]
        for ax, column, style, when in curves:
            ax.plot(depths, [r[column] for r in rows], style, c=f"C{i}", label=f"{variant}, {when}")
    left.set_ylabel("‖∂loss/∂θ¹‖, first layer's attention parameters")
    right.set_ylabel("first-layer / last-layer gradient norm")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("number of attention layers")
        ax.legend(fontsize=8)
    fig.suptitle("Gradient reaching the first layer (mean over seeds)")
    return fig
