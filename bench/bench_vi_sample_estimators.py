"""The paper's ``vi-sample`` estimator against Pyro's ``TraceGraph_ELBO`` on the seq2seq model.

Deng et al. (2018) train variational attention with REINFORCE whose reward is the likelihood
alone, a baseline equal to soft attention's log-likelihood under the prior (detached), and the
exact KL. Pyro's ``TraceGraph_ELBO`` scores ``log p(y, z) - log q(z)`` with a learned neural
baseline (trained along with the model). On the dates task each estimator trains the model
from the same initialisation for ``--steps`` steps; then the test perplexity, alignment
accuracy and throughput are reported, and at the trained point, on one batch:

* the relative error ``|mean - exact| / |exact|`` of the mean of ``--draws`` gradient draws
  against the exact gradient of the same ELBO (``q`` enumerated, as ``vi-enum`` does), and
  the same for a single draw (median over the draws);
* the gradient's total variance (trace of the covariance over the draws).

At a trained point ``q`` is peaked, so rare alignments carry much of the score-function
gradient and a few hundred draws rarely see them: the mean's error is then dominated by what
was not sampled, not by bias. Unbiasedness is tested on a small model in
``tests/infer/test_score_function_kl.py``.

    python bench/bench_vi_sample_estimators.py --threads 1 --out runs/bench/vi_sample.json
"""

from __future__ import annotations

import argparse

import pyro
import torch
from _common import environment, save_figures
from pyro import poutine
from pyro.optim import ClippedAdam

from pyro_attention.data import make_alignment_dataset
from pyro_attention.experiments.alignment_metrics import score_alignments
from pyro_attention.infer import VISample, fit, get_method
from pyro_attention.models import LatentAlignmentSeq2Seq

ESTIMATORS = {
    "paper (soft-prior baseline, analytic KL)": {"estimator": "analytic-kl"},
    "analytic KL, no baseline": {"estimator": "analytic-kl", "baseline": "none"},
    "TraceGraph_ELBO + neural baseline": {"estimator": "tracegraph"},
}


def gradients(loss, model_fn, guide, batch, names, draws):
    """``(draws, P)`` gradient draws of ``loss`` (``loss_and_grads``) for the parameters
    ``names``."""
    store = pyro.get_param_store()
    params = [store.get_param(name).unconstrained() for name in names]
    rows = []
    for _ in range(draws):
        for p in params:
            p.grad = None
        loss.loss_and_grads(model_fn, guide, batch)
        rows.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in params
                ]
            )
        )
    for p in params:
        p.grad = None
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="dates")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--draws", type=int, default=200, help="gradient draws per estimator")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per estimator")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = make_alignment_dataset(args.task, num_train=args.num_train, num_valid=50, num_test=300)
    train = data.tensors("train")

    def make_model() -> LatentAlignmentSeq2Seq:
        return LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab))

    def batches(epoch: int):
        return data.batches("train", args.batch_size, shuffle=True, seed=args.seed + epoch)

    figures = {"environment": environment(), "settings": vars(args), "results": {}}
    print(f"{args.steps} training steps each from the same initialisation; then the gradient")
    print(f"at the trained point: {args.draws} draws on one batch of {args.batch_size}")
    print(
        f"{'estimator':42s} {'test ppl':>9s} {'align acc':>9s} {'tokens/s':>9s} {'mean err':>9s} "
        f"{'draw err':>9s} "
        f"{'variance':>10s}"
    )
    for label, options in ESTIMATORS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        model = make_model()
        method = VISample(**options)
        result = fit(
            model,
            train,
            method,
            num_steps=args.steps,
            optim=ClippedAdam({"lr": 3e-3}),
            batches=batches,
            progress=False,
        )
        scores = score_alignments(model, method, data.batches("test", 64), guide=result.guide)
        # the exact gradient of the same ELBO: the same q enumerated in the guide (vi-enum)
        batch = next(iter(batches(10_000)))
        exact = get_method("vi-enum")
        exact_guide = exact.guide(model)
        poutine.block(exact_guide)(batch)
        names = sorted(
            n
            for n in pyro.get_param_store().keys()
            if n.startswith(("seq2seq", "AutoAlignmentGuide.encoder"))
        )
        exact_grad = gradients(exact.loss(2), model.model, exact_guide, batch, names, 1)[0]
        draws = gradients(
            result.extra["loss_fn"], model.model, result.guide, batch, names, args.draws
        )
        norm = float(exact_grad.norm())
        mean_error = float((draws.mean(0) - exact_grad).norm()) / norm
        draw_error = float((draws - exact_grad).norm(dim=-1).median()) / norm
        variance = float(draws.var(0).sum())
        figures["results"][label] = {
            "ppl": scores.ppl,
            "alignment_accuracy": scores.alignment_accuracy,
            "tokens_per_second": result.samples_per_second,
            "mean_gradient_relative_error": mean_error,
            "single_draw_relative_error": draw_error,
            "gradient_total_variance": variance,
        }
        print(
            f"{label:42s} {scores.ppl:9.4f} {scores.alignment_accuracy:9.3f} "
            f"{result.samples_per_second:9.0f} {mean_error:9.3f} {draw_error:9.3f} {variance:10.4g}"
        )
    save_figures(figures, args.out)


if __name__ == "__main__":
    main()
