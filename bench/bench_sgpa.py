"""Sparse-GP attention's cost: step time and peak memory against softmax attention as the
sequence grows, and the Pyro overhead of a decoupled-SGPA training step.

Part 1 (layers): one forward + backward of a single attention layer — decoupled SGPA (``M``
global inducing points, :math:`O(T^2 M + M^3)`), standard SGPA (:math:`O(T^3)`) and softmax
attention (the reference, same width and heads) — at ``T = 16 … 512``. Each configuration runs
in a fresh process, so its peak resident memory over the step (``ru_maxrss`` after the step
minus the resident size before it; on CUDA ``max_memory_allocated``) belongs to that step alone.

Part 2 (training step, ``T = 64`` by default): one SVI step of
:class:`~pyro_attention.models.GPAttentionClassifier` with decoupled SGPA under ``svi-kl``,
against (a) the same classifier with softmax attention under ``map`` (maximum likelihood) and
(b) a hand-written torch step of the same decoupled objective (reparameterised inducing outputs,
the same noise, the closed-form KL, Adam) — the reference for what Pyro adds. Before timing, (b)'s
loss is checked against ``TraceMeanField_ELBO``'s at the same parameters and draws.

    python bench/bench_sgpa.py --json runs/bench/sgpa.json            # ~2 min on 2 cores
    python bench/bench_sgpa.py --lengths 16 64 --repeats 5 --skip-layers
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
from typing import Any

import pyro
import torch
from _common import environment, median_seconds, print_machine, save_figures
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_attention.data import ClassificationData
from pyro_attention.infer import get_method
from pyro_attention.models import GPAttentionClassifier
from pyro_attention.models.gp_attention import SoftmaxSelfAttention
from pyro_attention.nn.sgpa import SGPAttention, whitened_kl

LAYERS = ("softmax", "sgpa-decoupled", "sgpa-standard")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _layer_step(kind: str, length: int, args: dict) -> dict:
    """In a fresh process: time and peak memory of one layer's forward + backward."""
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    torch.manual_seed(0)
    batch, width, heads = args["batch"], args["width"], args["heads"]
    if kind == "softmax":
        layer: Any = SoftmaxSelfAttention(width, heads)
    else:
        variant = kind.removeprefix("sgpa-")
        layer = SGPAttention(width, heads, variant=variant, num_inducing=args["inducing"])
    layer = layer.to(device)
    tokens = torch.randn(batch, length, width, device=device, requires_grad=True)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)

    def step() -> None:
        if kind == "softmax":
            loss = layer(tokens, mask).square().mean()
        else:
            u = torch.randn(layer.global_shape, device=device) if layer.num_inducing else None
            eps = torch.randn(layer.noise_shape(batch, length), device=device)
            out, kl = layer(tokens, mask, u, eps)
            loss = out.square().mean() + 1e-3 * kl.mean()
        loss.backward()

    step()  # warm-up, allocator settled
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb()
    seconds = median_seconds(step, args["repeats"], device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"layer": kind, "length": length, "ms": 1000 * seconds, "peak_mb": peak}


def _in_fresh_process(kind: str, length: int, args: dict) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_layer_step, (kind, length, args))


# ---------------------------------------------------------------------- training step
def _data(length: int, batch: int, device: torch.device) -> ClassificationData:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (batch, length), generator=gen)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    return ClassificationData(tokens, mask, labels, 2, vocab_size=50).to(device)


def _model(attention: str, length: int, args: dict, device: torch.device):
    torch.manual_seed(0)
    return GPAttentionClassifier(
        num_classes=2,
        vocab_size=50,
        max_len=length,
        d_model=args["width"],
        num_heads=args["heads"],
        num_inducing=args["inducing"],
        attention=attention,
    ).to(device)


def _torch_objective(model, params, data):
    """The decoupled objective written in torch alone: −(Σ log p(y) − Σ amortised KL) + KL(u)."""
    net = model.net
    h = net.embed(data.inputs) + net.position[: data.seq_len]
    kl_total = h.new_zeros(())
    for index, block in enumerate(net.blocks):
        layer = block.attention
        loc, tril = params[f"loc{index}"], params[f"tril{index}"]
        u = loc + (tril @ torch.randn_like(loc).unsqueeze(-1)).squeeze(-1)
        eps = torch.randn(layer.noise_shape(len(data), data.seq_len), device=h.device)
        out, kl = layer(block.norm1(h), data.mask, u, eps)
        h = h + out
        h = h + block.mlp(block.norm2(h))
        kl_total = kl_total + kl.sum() + whitened_kl(loc, tril)
    keep = data.mask.unsqueeze(-1).float()
    logits = net.head((net.norm(h) * keep).sum(-2) / keep.sum(-2))
    nll = torch.nn.functional.cross_entropy(logits, data.labels, reduction="sum")
    return nll + kl_total


def training_step(args: dict) -> dict:
    """ms per step: SGPA under Pyro, softmax under Pyro, SGPA hand-written in torch."""
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    length, batch = args["train_length"], args["train_batch"]
    data = _data(length, batch, device)
    timings: dict[str, float] = {}
    steps: dict[str, Any] = {}
    for name, attention, method in (("sgpa", "sgpa", "svi-kl"), ("softmax", "softmax", "map")):
        pyro.clear_param_store()
        model = _model(attention, length, args, device)
        m = get_method(method)
        svi = SVI(m.prepare(model.model), m.guide(model), Adam({"lr": 1e-3}), m.loss(1))
        steps[name] = (svi, model)
    # the torch reference, from the Pyro guide's parameters at their initial values
    pyro.clear_param_store()
    model = _model("sgpa", length, args, device)
    guide = model.guide(get_method("svi-kl").guide_spec())
    guide(data)
    layers = model.sgpa_layers()
    params = {}
    for i in range(len(layers)):
        params[f"loc{i}"] = getattr(guide.global_guide.locs, f"layer{i}").u.detach().clone()
        params[f"tril{i}"] = getattr(guide.global_guide.scale_trils, f"layer{i}").u.detach().clone()
    # same parameters and draws: the torch objective equals TraceMeanField_ELBO's loss
    pyro.set_rng_seed(1)
    pyro_loss = TraceMeanField_ELBO().loss(model.model, guide, data)
    pyro.set_rng_seed(1)
    with torch.no_grad(), poutine.block():
        torch_loss = float(_torch_objective(model, params, data))
    leaves = [p.requires_grad_() for p in params.values()]
    optim = torch.optim.Adam(list(model.net.parameters()) + leaves, lr=1e-3)

    def torch_step() -> None:
        optim.zero_grad()
        _torch_objective(model, params, data).backward()
        optim.step()

    runs = {
        "sgpa": lambda: steps["sgpa"][0].step(data),
        "softmax": lambda: steps["softmax"][0].step(data),
        "torch": torch_step,
    }
    for _ in range(args["rounds"]):  # interleaved, so load changes hit every variant
        for name, run in runs.items():
            seconds = median_seconds(run, args["repeats"], device)
            timings[name] = min(timings.get(name, float("inf")), seconds)
    return {
        "length": length,
        "batch": batch,
        "ms": {k: 1000 * v for k, v in timings.items()},
        "sgpa_over_softmax": timings["sgpa"] / timings["softmax"],
        "sgpa_over_torch": timings["sgpa"] / timings["torch"],
        "loss_check": {"pyro": pyro_loss, "torch": torch_loss},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--inducing", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-length", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = vars(parser.parse_args())
    torch.set_num_threads(args["threads"])
    load = print_machine()
    figures: dict[str, Any] = {"environment": environment(), "load": load, "settings": args}
    if not args["skip_layers"]:
        rows = []
        print(f"{'T':>5} " + " ".join(f"{k:>26}" for k in LAYERS))
        for length in args["lengths"]:
            cells = {kind: _in_fresh_process(kind, length, args) for kind in LAYERS}
            rows.extend(cells.values())
            ref = cells["softmax"]["ms"]
            text = " ".join(
                f"{c['ms']:8.2f} ms ({c['ms'] / ref:5.2f}×) {c['peak_mb']:6.1f} MB"
                for c in cells.values()
            )
            print(f"{length:>5} {text}")
        figures["layers"] = rows
    step = training_step(args)
    figures["training_step"] = step
    print(
        f"training step at T={step['length']}, batch {step['batch']}: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in step["ms"].items())
        + f"; sgpa/softmax {step['sgpa_over_softmax']:.2f}×, "
        f"sgpa/torch {step['sgpa_over_torch']:.2f}× (losses pyro {step['loss_check']['pyro']:.4f},"
        f" torch {step['loss_check']['torch']:.4f})"
    )
    save_figures(figures, args["json"])


if __name__ == "__main__":
    main()
