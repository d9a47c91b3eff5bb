"""Closed-form MAP EM against gradient VI (SVI) on the binarized digits.

The claim under test (Hennig, *Probabilistic ML*, lecture 24), as in
``bench_svi_vs_cavi.py`` but on a second conjugate model: for a Bernoulli mixture of binary
images, fixed-form VI by gradient descent reaches a good fit much more slowly than EM's
closed-form updates.

What is measured, all in one run, on the embedded 8x8 digits
(:func:`~pyro_attention.data.load_digits_binary`: 1297 training and 500 test images of 64
pixels) with :class:`~pyro_attention.models.BernoulliMixture` (``--components`` K):

* **EM** (:meth:`~pyro_attention.models.BernoulliMixture.em`) run to convergence (``--em-tol``
  nats per image in the mean log posterior, at most ``--em-max-iter`` iterations): wall time,
  median of ``--em-repeats`` runs after one untimed warm-up, its seeded farthest-point start
  included; and its held-out log-likelihood per test image ``L_em = mean_n log sum_k pi_k
  p(x_n | mu_k)`` at the MAP point (``model.log_joint_terms(test, weights, probs)
  .logsumexp(-1).mean()``).
* each **SVI method** (``--methods``; ``enum``, ``gumbel``, ``reinforce``) assembled by hand
  from its method object, as :func:`~pyro_attention.infer.fit` does::

      model.initialize(train, seed=seed)        # EM's starting point as the initial globals
      svi = SVI(method.prepare(model.model), method.guide(model),
                ClippedAdam({"lr": lr}), method.loss(1))

  stepped up to ``--steps`` times on the full training set (after two untimed steps of a
  throwaway instance, the counterpart of EM's warm-up run). Every ``--eval-every`` steps the
  guide is scored on the test set (untimed; the random state is put back afterwards, so the
  training path does not depend on ``--eval-every``) in two ways:

  - ``plug-in`` (the default ``--score``): the same formula as ``L_em`` at the median of the
    guide's AutoNormal over the globals, a point estimate like EM's;
  - ``lpd``: the held-out log predictive density of ``--draws`` draws of the globals from the
    guide (:func:`~pyro_attention.infer.evaluate.pointwise_log_likelihood` with the
    assignments summed out, then :func:`~pyro_attention.infer.evaluate.log_predictive_density`),
    as ``bench_svi_vs_cavi.py`` scores its methods.

  The training clock runs only while stepping (plus ``initialize`` and building the guide).

The **target** is bench_svi_vs_cavi's "99 %": ``score >= L_em - 0.01 * |L_em|`` (nats per test
image), on the ``--score`` chosen. Per method the table gives the steps and training seconds
until the score first reaches it (resolved to ``--eval-every`` steps), or "not reached in N
steps"; that time over EM's; milliseconds per step; and the final and best scores of both
kinds. Runs single-threaded by default (``--threads``); the load average is printed with the
figures. Ratios are from one run on one machine; nothing here is a test.

Run from the repository root::

    OMP_NUM_THREADS=1 python bench/bench_em_vs_svi_digits.py --out em_vs_svi.json
    python bench/bench_em_vs_svi_digits.py --methods enum --steps 1000 --eval-every 25
    python bench/bench_em_vs_svi_digits.py --components 20 --score lpd
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from _common import (
    environment,
    print_machine,
    race_to_reference,
    save_figures,
    svi_to_target,
    time_median,
)
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from pyro_attention.data import load_digits_binary
from pyro_attention.infer import get_method
from pyro_attention.infer.evaluate import (
    log_predictive_density,
    pointwise_log_likelihood,
    sample_guide_globals,
)
from pyro_attention.models import BernoulliMixture

METHODS = ("enum", "gumbel", "reinforce")


def plugin_loglik(
    model: BernoulliMixture, weights: torch.Tensor, probs: torch.Tensor, test: torch.Tensor
) -> float:
    """Held-out log-likelihood per image at one point ``(weights, probs)``."""
    with torch.no_grad():
        return float(model.log_joint_terms(test, weights, probs).logsumexp(-1).mean())


def heldout_lpd(
    model: BernoulliMixture, samples: dict[str, torch.Tensor], test: torch.Tensor
) -> float:
    """Held-out log predictive density per image of draws of the globals, assignments summed
    out."""
    ll = pointwise_log_likelihood(model.model, samples, test, max_plate_nesting=1)
    return log_predictive_density(ll)


def run_em(model: BernoulliMixture, train: torch.Tensor, test: torch.Tensor, args) -> dict:
    options = {"max_iter": args.em_max_iter, "tol": args.em_tol, "seed": args.seed}
    result, timing = time_median(lambda: model.em(train, **options), args.em_repeats)
    score = plugin_loglik(model, result.weights, result.probs, test)
    # the same point through the evaluator SVI's draws go through: the two must agree
    lpd = heldout_lpd(model, result.as_samples(), test)
    return {
        **timing,
        "iterations": result.n_iter,
        "converged": result.converged,
        "objective_per_point": result.objective_trace[-1],
        "train_loglik_per_point": result.log_likelihood_trace[-1],
        "heldout_loglik": score,
        "heldout_loglik_via_evaluator": lpd,
    }


def _score(model, guide, train, test, args) -> dict:
    with torch.no_grad():
        median = guide.global_guide.median(train)
    draws = sample_guide_globals(guide, model, train, args.draws)
    return {
        "plug-in": plugin_loglik(model, median["weights"], median["probs"], test),
        "lpd": heldout_lpd(model, draws.samples, test),
    }


def run_svi(name: str, train: torch.Tensor, test: torch.Tensor, target: float, args) -> dict:
    method = get_method(name)

    def build():
        model = BernoulliMixture(args.components, train.shape[1])
        model.initialize(train, seed=args.seed)
        guide = method.guide(model)
        optim = ClippedAdam({"lr": args.lr})
        svi = SVI(method.prepare(model.model), guide, optim, method.loss(1))
        return svi, lambda: _score(model, guide, train, test, args)

    row = svi_to_target(
        build,
        train,
        target,
        seed=args.seed,
        score=args.score,
        max_steps=args.steps,
        eval_every=args.eval_every,
        stop_at_target=args.stop_at_target,
    )
    final = row["trace"][-1] if row["trace"] else {"plug-in": math.nan, "lpd": math.nan}
    return {
        "method": name,
        **row,
        "final_heldout_loglik": final["plug-in"],
        "final_heldout_lpd": final["lpd"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--components", type=int, default=10, help="K of the mixture")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=3000, help="SVI step cap per method")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    parser.add_argument(
        "--score",
        choices=["plug-in", "lpd"],
        default="plug-in",
        help="what the target applies to: log-likelihood at the guide's median (as EM's), or "
        "the log predictive density of --draws guide draws",
    )
    parser.add_argument("--draws", type=int, default=100, help="guide draws for the lpd")
    parser.add_argument("--lr", type=float, default=0.05, help="ClippedAdam learning rate")
    parser.add_argument(
        "--stop-at-target",
        action="store_true",
        help="stop a method once it reaches the target (final score is then the one at it)",
    )
    parser.add_argument("--em-tol", type=float, default=1e-6, help="EM tolerance, nats/image")
    parser.add_argument("--em-max-iter", type=int, default=500)
    parser.add_argument("--em-repeats", type=int, default=5, help="timed EM runs (median)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's default"
    )
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.eval_every, args.steps, args.em_repeats, args.draws, args.components) < 1:
        parser.error("--eval-every, --steps, --em-repeats, --draws, --components must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = load_digits_binary()
    train, test = data.train, data.test
    load_before = print_machine()
    print(
        f"digits: train {tuple(train.shape)}, test {tuple(test.shape)}; BernoulliMixture K="
        f"{args.components}; lr={args.lr}, eval every {args.eval_every} steps; target on "
        f"{args.score} (lpd from {args.draws} draws)"
    )
    t_start = time.perf_counter()
    em = run_em(BernoulliMixture(args.components, train.shape[1]), train, test, args)
    l_em = em["heldout_loglik"]
    target = l_em - 0.01 * abs(l_em)
    converged = "converged" if em["converged"] else "NOT converged"
    print(
        f"EM: {em['iterations']} iterations ({converged}, tol {args.em_tol:g} nats), "
        f"{1e3 * em['seconds']:.1f} ms (median of {args.em_repeats}), held-out log-likelihood "
        f"L_em = {l_em:.4f} nats/image (evaluator: {em['heldout_loglik_via_evaluator']:.4f}); "
        f"target (99% of EM) {args.score} >= {target:.4f}"
    )
    rows = race_to_reference(
        "em",
        em,
        l_em,
        args.methods,
        lambda name: run_svi(name, train, test, target, args),
        max_steps=args.steps,
        extra={"final lpd": (em["heldout_loglik_via_evaluator"], "final_heldout_lpd")},
    )
    load_after = os.getloadavg()
    print(
        f"'final'/'best' are the {args.score} score; 'steps to target' is resolved to "
        f"--eval-every={args.eval_every} steps; 'x EM time' is training seconds to the target "
        f"over EM's seconds. Took {time.perf_counter() - t_start:.0f} s; load average after "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    figures = {
        "benchmark": "em_vs_svi_digits",
        "args": vars(args),
        **environment(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "n_train": train.shape[0],
        "n_test": test.shape[0],
        "em": em,
        "target": target,
        "target_definition": f"{args.score} >= L_em - 0.01 * |L_em|",
        "results": rows,
    }
    return save_figures(figures, args.out)


if __name__ == "__main__":
    main()
