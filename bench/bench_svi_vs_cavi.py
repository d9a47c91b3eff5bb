"""Gradient-based VI against coordinate ascent (CAVI) on the Bayesian Gaussian mixture.

The claim under test (Hennig, *Probabilistic ML*, lecture 24): for a conjugate model,
fixed-form VI by gradient descent reaches a good posterior much more slowly than CAVI's
closed-form coordinate updates.

What is measured, all in one run:

* **CAVI** (:meth:`~pyro_attention.models.BayesianGMM.cavi`) run to convergence (``--cavi-tol``
  total nats): wall time, median of ``--cavi-repeats`` runs after one untimed warm-up, its
  seeded k-means++ start included; and its held-out log predictive density per test point
  ``L_cavi`` (:func:`~pyro_attention.infer.evaluate.log_predictive_density` of ``--draws``
  posterior draws; the assignments are summed out exactly).
* each **SVI method** (``--methods``; ``enum``, ``vi-enum``, ``reinforce``, ``rws``, ``gumbel``,
  ``dirichlet``) assembled by hand from its method object::

      gmm.initialize(train)                   # k-means++ centres as the initial locs
      svi = SVI(method.prepare(gmm.model), method.guide(gmm),
                ClippedAdam({"lr": lr}), method.loss(1))

  stepped up to ``--max-steps`` times (after two untimed steps of a throwaway instance, the
  counterpart of CAVI's warm-up run); every ``--eval-every`` steps the held-out log predictive
  density of ``--draws`` draws of the globals from the guide is computed in the same way. The
  training clock runs only while stepping (plus ``initialize`` and building the guide, the
  counterpart of CAVI's k-means start); evaluation is not timed, and the random state is put
  back after each evaluation so the training path does not depend on ``--eval-every``.

The **target** is 99 % of CAVI's held-out figure: ``lpd >= L_cavi - 0.01 * |L_cavi|`` (nats
per test point). Per method the table gives the steps and training seconds until the held-out
lpd first reaches the target (resolved to ``--eval-every`` steps), or "not reached within
--max-steps"; the ratio of that time to CAVI's time; milliseconds per step; and the final lpd.
Runs single-threaded by default (``--threads``), which keeps the figures steadier on a shared
machine; the load average is printed with them. Ratios are from one run on one machine;
nothing here is a test.

Run from the repository root::

    python bench/bench_svi_vs_cavi.py                                   # embedded 2-D data
    python bench/bench_svi_vs_cavi.py --methods enum gumbel --max-steps 500 --json svi.json
    python bench/bench_svi_vs_cavi.py --data synthetic --n-train 5000 --n-test 2000 --dim 5
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

from pyro_attention.data import load_gmm2d
from pyro_attention.infer import get_method
from pyro_attention.infer.evaluate import (
    log_predictive_density,
    pointwise_log_likelihood,
    sample_guide_globals,
)
from pyro_attention.models import BayesianGMM

METHODS = ("enum", "vi-enum", "reinforce", "rws", "gumbel", "dirichlet")


def synthetic_data(
    n_train: int, n_test: int, dim: int, k: int, seed: int, separation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test points from one random ``k``-component full-covariance mixture, both
    standardised with the training mean and standard deviation (float32)."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    weights = 1.0 + torch.rand(k, generator=gen, dtype=f64)  # no component below 1/(2k)
    means = separation * torch.randn(k, dim, generator=gen, dtype=f64)
    factors = torch.randn(k, dim, dim, generator=gen, dtype=f64) / math.sqrt(dim)
    factors = factors + 0.5 * torch.eye(dim, dtype=f64)
    n = n_train + n_test
    labels = torch.multinomial(weights, n, replacement=True, generator=gen)
    noise = torch.randn(n, dim, generator=gen, dtype=f64)
    x = means[labels] + torch.einsum("nij,nj->ni", factors[labels], noise)
    train, test = x[:n_train], x[n_train:]
    mean, std = train.mean(0), train.std(0)
    return ((train - mean) / std).float(), ((test - mean) / std).float()


def heldout_lpd(gmm: BayesianGMM, samples: dict[str, torch.Tensor], test: torch.Tensor) -> float:
    """Held-out log predictive density per test point, assignments summed out."""
    ll = pointwise_log_likelihood(gmm.model, samples, test, max_plate_nesting=1)
    return log_predictive_density(ll)


def run_cavi(gmm: BayesianGMM, train: torch.Tensor, test: torch.Tensor, args) -> dict:
    options = {"max_iter": args.cavi_max_iter, "tol": args.cavi_tol, "seed": args.seed}
    result, timing = time_median(lambda: gmm.cavi(train, **options), args.cavi_repeats)
    torch.manual_seed(args.seed)
    samples = result.posterior.sample(args.draws)
    return {
        **timing,
        "iterations": result.n_iter,
        "converged": result.converged,
        "elbo_per_point": result.elbo_trace[-1] / train.shape[0],
        "heldout_lpd": heldout_lpd(gmm, samples, test),
    }


def run_svi(name: str, train: torch.Tensor, test: torch.Tensor, target: float, args) -> dict:
    method = get_method(name)

    def build():
        gmm = BayesianGMM(args.k, train.shape[1], args.covariance)
        gmm.initialize(train, seed=args.seed)
        guide = method.guide(gmm)
        svi = SVI(method.prepare(gmm.model), guide, ClippedAdam({"lr": args.lr}), method.loss(1))

        def evaluate() -> dict[str, float]:
            draws = sample_guide_globals(guide, gmm, train, args.draws)
            return {"heldout_lpd": heldout_lpd(gmm, draws.samples, test)}

        return svi, evaluate

    row = svi_to_target(
        build,
        train,
        target,
        seed=args.seed,
        score="heldout_lpd",
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        stop_at_target=args.stop_at_target,
    )
    return {"method": name, **row}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        choices=["gmm2d", "synthetic"],
        default="gmm2d",
        help="embedded 800/400-point 2-D set, or a synthetic mixture",
    )
    parser.add_argument("--n-train", type=int, default=5000, help="synthetic: training points")
    parser.add_argument("--n-test", type=int, default=2000, help="synthetic: test points")
    parser.add_argument("--dim", type=int, default=2, help="synthetic: features per point")
    parser.add_argument("--true-k", type=int, default=4, help="synthetic: true components")
    parser.add_argument(
        "--separation",
        type=float,
        default=2.0,
        help="synthetic: scale of the true means (1 = within-cluster sd)",
    )
    parser.add_argument("--k", type=int, default=4, help="components of the fitted model")
    parser.add_argument("--covariance", choices=["full", "diag"], default="full")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-steps", type=int, default=3000, help="SVI step cap per method")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    parser.add_argument("--draws", type=int, default=200, help="posterior draws per evaluation")
    parser.add_argument("--lr", type=float, default=0.05, help="ClippedAdam learning rate")
    parser.add_argument(
        "--stop-at-target",
        action="store_true",
        help="stop a method once it reaches the target (final lpd is then the lpd at the target)",
    )
    parser.add_argument("--cavi-tol", type=float, default=1e-6, help="CAVI tolerance, nats")
    parser.add_argument("--cavi-max-iter", type=int, default=1000)
    parser.add_argument("--cavi-repeats", type=int, default=5, help="timed CAVI runs (median)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's default"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.eval_every < 1 or args.max_steps < 1 or args.cavi_repeats < 1:
        parser.error("--eval-every, --max-steps and --cavi-repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.data == "gmm2d":
        data = load_gmm2d()
        train, test = data.train, data.test
    else:
        train, test = synthetic_data(
            args.n_train, args.n_test, args.dim, args.true_k, args.seed, args.separation
        )
    load_before = print_machine()
    print(
        f"data {args.data}: train {tuple(train.shape)}, test {tuple(test.shape)}; model K="
        f"{args.k}, {args.covariance} covariance; lr={args.lr}, eval every {args.eval_every} "
        f"steps with {args.draws} draws"
    )
    t_start = time.perf_counter()
    cavi = run_cavi(BayesianGMM(args.k, train.shape[1], args.covariance), train, test, args)
    l_cavi = cavi["heldout_lpd"]
    target = l_cavi - 0.01 * abs(l_cavi)
    converged = "converged" if cavi["converged"] else "NOT converged"
    print(
        f"CAVI: {cavi['iterations']} iterations ({converged}, tol {args.cavi_tol:g} nats), "
        f"{1e3 * cavi['seconds']:.1f} ms (median of {args.cavi_repeats}), held-out lpd L_cavi = "
        f"{l_cavi:.4f} nats/point; target (99% of CAVI) lpd >= {target:.4f}"
    )
    rows = race_to_reference(
        "cavi",
        cavi,
        l_cavi,
        args.methods,
        lambda name: run_svi(name, train, test, target, args),
        max_steps=args.max_steps,
    )
    load_after = os.getloadavg()
    print(
        f"'steps to target' is resolved to --eval-every={args.eval_every} steps; 'x CAVI time' is "
        f"training seconds to the target over CAVI's seconds. Took "
        f"{time.perf_counter() - t_start:.0f} s; load average after {load_after[0]:.2f} "
        f"{load_after[1]:.2f} {load_after[2]:.2f}"
    )
    figures = {
        "benchmark": "svi_vs_cavi",
        "args": vars(args),
        **environment(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "n_train": train.shape[0],
        "n_test": test.shape[0],
        "cavi": cavi,
        "target": target,
        "target_definition": "heldout_lpd >= L_cavi - 0.01 * |L_cavi|",
        "results": rows,
    }
    return save_figures(figures, args.json)


if __name__ == "__main__":
    main()
