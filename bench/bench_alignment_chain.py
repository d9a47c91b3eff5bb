"""What a chain of alignments costs: the exact objective of the seq2seq model under the
independent prior against the Markov prior, and three ways of summing the chain, as S grows.

What is measured, for each source length ``S`` (the reverse task with every source exactly
``S`` letters, so ``T = S``; ``--batch`` sequences), one forward and backward pass of the
exact negative log-likelihood of :class:`~pyro_attention.models.LatentAlignmentSeq2Seq`
(the network, the emission table and the sum over alignments):

- ``independent``: the independent prior, ``TraceEnum_ELBO`` on the model (``O(T S)`` sum);
- ``markov-pyro``: the Markov prior, ``TraceEnum_ELBO`` on the same model, Pyro eliminating
  the ``T`` alignment sites written in ``pyro.markov`` (what ``exact`` and ``enum`` run);
- ``markov-forward``: the same objective by the forward algorithm of
  :class:`~pyro_attention.alignment_chain.AlignmentChain` on the model's tables;
- ``markov-funsor``: the same by ``funsor.sum_product.sequential_sum_product`` (a parallel
  scan over time) on the same tables, batched over sequences.

All four give one value (checked to 1e-4 relative before timing). Time is the median wall time
over ``--repeats`` rounds in which the variants take turns (``interleaved_median_seconds``), as
a ratio to ``independent`` in the same round set; peak memory is the growth of the process's
resident set over each variant's own calls (``MemoryProbe``: RSS high-water mark reset and
``malloc_trim`` before each variant; on CUDA, allocated tensors), in MB.

Run from the repository root::

    python bench/bench_alignment_chain.py --json results/bench/alignment_chain.json
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import funsor
import pyro
import torch
from funsor.domains import Bint
from funsor.sum_product import sequential_sum_product
from pyro.infer import TraceEnum_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MemoryProbe,
    environment,
    interleaved_median_seconds,
    print_machine,
    save_figures,
)

from pyro_attention.data import get_task, make_alignment_dataset
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.models import LatentAlignmentSeq2Seq


def funsor_log_marginal(model: LatentAlignmentSeq2Seq, batch) -> torch.Tensor:
    """``log p(y | x)`` per sequence by funsor's sequential sum-product over the chain's tables
    (padded positions hold their alignment and emit nothing, so the full length is exact)."""
    chain = model.alignment_chain(batch)
    emission = chain.emission * chain.mask[..., None]
    num_batch, steps, sources = emission.shape
    start = funsor.Tensor(
        chain.log_init + emission[:, 0], OrderedDict(b=Bint[num_batch], prev=Bint[sources])
    )
    if steps == 1:
        return start.reduce(funsor.ops.logaddexp, "prev").data
    factors = funsor.Tensor(
        chain.log_trans + emission[:, 1:, None, :],
        OrderedDict(
            b=Bint[num_batch], time=Bint[steps - 1], prev=Bint[sources], curr=Bint[sources]
        ),
    )
    scanned = sequential_sum_product(
        funsor.ops.logaddexp,
        funsor.ops.add,
        factors,
        funsor.Variable("time", Bint[steps - 1]),
        {"prev": "curr"},
    )
    total = (start + scanned).reduce(funsor.ops.logaddexp, frozenset({"prev", "curr"}))
    return total.data


def objectives(
    models: dict[str, LatentAlignmentSeq2Seq], batch
) -> dict[str, Callable[[], torch.Tensor]]:
    """Each variant's negative log-likelihood of ``batch`` (a differentiable scalar)."""
    elbo = TraceEnum_ELBO(max_plate_nesting=2)

    def pyro_enum(model: LatentAlignmentSeq2Seq) -> Callable[[], torch.Tensor]:
        return lambda: elbo.differentiable_loss(
            enumerate_alignments(model.model), lambda batch: None, batch
        )

    markov = models["markov"]
    return {
        "independent": pyro_enum(models["independent"]),
        "markov-pyro": pyro_enum(markov),
        "markov-forward": lambda: -markov.alignment_chain(batch).log_marginal().sum(),
        "markov-funsor": lambda: -funsor_log_marginal(markov, batch).sum(),
    }


def measure(length: int, args: argparse.Namespace, device: torch.device) -> dict:
    task = get_task("reverse", min_length=length, max_length=length, alphabet_size=args.alphabet)
    data = make_alignment_dataset(task, num_train=args.batch, num_valid=1, num_test=1)
    batch = data.tensors("train", device=device)
    models = {}
    for prior in ("independent", "markov"):
        pyro.set_rng_seed(0)
        models[prior] = LatentAlignmentSeq2Seq(
            len(data.source_vocab), len(data.target_vocab), alignment_prior=prior
        ).to(device)
    losses = objectives(models, batch)
    values = {name: float(fn().detach()) for name, fn in losses.items()}
    reference = values["markov-forward"]
    for name in ("markov-pyro", "markov-funsor"):
        if abs(values[name] - reference) > 1e-4 * abs(reference):
            raise AssertionError(f"{name} gives {values[name]}, the forward algorithm {reference}")

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for model in models.values():
                model.zero_grad(set_to_none=True)
            pyro.clear_param_store()
            fn().backward()

        return run

    steps = [step(fn) for fn in losses.values()]
    seconds = interleaved_median_seconds(steps, args.repeats, device)
    memory = {}
    probe = MemoryProbe(device)
    for name, run in zip(losses, steps, strict=True):
        base = probe.start()
        for _ in range(2):
            run()
        memory[name] = (probe.peak() - base) / 2**20
    row = {"S": length, "T": length, "B": args.batch, "objective": values}
    for name, sec in zip(losses, seconds, strict=True):
        row[name] = {
            "seconds": sec,
            "ratio": sec / seconds[0],
            "peak_mb": memory[name],
        }
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 48])
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch")
    parser.add_argument("--alphabet", type=int, default=10, help="letters of the reverse task")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    funsor.set_backend("torch")
    device = torch.device(args.device)
    load = print_machine()
    rows = []
    print(
        f"{'S=T':>4} "
        + " ".join(f"{n:>22}" for n in ("markov-pyro", "markov-forward", "markov-funsor"))
    )
    for length in args.lengths:
        row = measure(length, args, device)
        rows.append(row)
        cells = [
            f"{row[n]['ratio']:6.2f}x {row[n]['peak_mb']:7.1f} MB"
            for n in ("markov-pyro", "markov-forward", "markov-funsor")
        ]
        print(
            f"{length:>4} "
            + " ".join(f"{c:>22}" for c in cells)
            + f"   (independent {1e3 * row['independent']['seconds']:.1f} ms, "
            f"{row['independent']['peak_mb']:.1f} MB)",
            flush=True,
        )
    figures = {"rows": rows, "environment": environment(), "load_average": list(load)}
    return save_figures(figures, args.json)


if __name__ == "__main__":
    main()
