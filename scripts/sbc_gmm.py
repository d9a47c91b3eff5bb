"""Simulation-based calibration (Talts et al. 2018) of cavi, enum and nuts on a small Bayesian GMM.

Each replication draws the globals of ``BayesianGMM`` (weights, locs, precisions) from its prior
and ``N`` points from the model given them, fits the method to the points and ranks the truth's
permutation-invariant statistics (sorted locations, largest weight, sorted precisions, the
log-likelihood of the data) among ``L`` posterior draws. ``overconfident-cavi`` (cavi's draws
shrunk toward their mean by ``--shrink``) is a negative control that must fail.

    python scripts/sbc_gmm.py --methods cavi,enum,nuts,overconfident-cavi \\
        --replications 200 --draws 99 --out results/sbc-gmm --seed 0

Writes ``<out>/sbc.json`` (rewritten atomically after each method, so an interrupt keeps the
finished ones; ``--resume`` skips methods already there with the same settings) and
``<out>/rank_hist_<method>.png``. A method run at more replications than another also gets its
test on the first ones only (``at_common_replications``: the same simulated data sets, so the
verdicts compare at equal power). NUTS runs one chain; its draws are thinned to ``L`` evenly
spaced ones and the ESS of each statistic is recorded (``low_ess`` counts replications whose ESS
was below ``L``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(REPO))

import pyro  # noqa: E402

from pyro_attention._io import write_json  # noqa: E402
from pyro_attention._run_folder import provenance  # noqa: E402
from pyro_attention.diagnostics.sbc import (  # noqa: E402
    InferFn,
    default_num_bins,
    gaussian_mixture_statistics,
    overconfident,
    plot_rank_histograms,
    prior_simulator,
    sbc_ranks,
    summarize_ranks,
)
from pyro_attention.infer import fit  # noqa: E402
from pyro_attention.infer.methods import CAVI, NUTS, Enum  # noqa: E402
from pyro_attention.models import BayesianGMM  # noqa: E402
from pyro_attention.models.gmm_conjugate import GMMPrior  # noqa: E402

METHODS = ("cavi", "enum", "nuts", "overconfident-cavi")
GLOBALS = ("weights", "locs", "precisions")
STATISTICS = ("loc_min", "loc_max", "weight_max", "precision_min", "precision_max", "log_lik")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    p.add_argument("--replications", type=int, default=100, help="R, simulations per method")
    p.add_argument(
        "--method-replications",
        default="",
        help="per-method R overriding --replications, e.g. 'nuts=60,enum=80'",
    )
    p.add_argument("--draws", type=int, default=39, help="L, posterior draws ranked per sim")
    p.add_argument("--bins", type=int, default=None, help="chi-square bins (default: automatic)")
    p.add_argument("--alpha", type=float, default=0.01, help="family-wise level (Bonferroni)")
    p.add_argument("--points", type=int, default=40, help="N, data points per simulation")
    p.add_argument("--components", type=int, default=2, help="K")
    p.add_argument("--dim", type=int, default=1, help="D")
    p.add_argument("--enum-steps", type=int, default=300, help="SVI steps of enum")
    p.add_argument("--enum-lr", type=float, default=0.05, help="learning rate of enum")
    p.add_argument("--nuts-warmup", type=int, default=150, help="NUTS warmup steps (1 chain)")
    p.add_argument("--nuts-samples", type=int, default=200, help="NUTS draws before thinning")
    p.add_argument("--shrink", type=float, default=0.3, help="factor of overconfident-cavi")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/sbc-gmm"))
    p.add_argument("--resume", action="store_true", help="keep finished methods of sbc.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad options before any work."""
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown or not args.method_list:
        p.error(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
    counts = {
        "--replications": args.replications,
        "--draws": args.draws,
        "--points": args.points,
        "--components": args.components,
        "--dim": args.dim,
        "--enum-steps": args.enum_steps,
        "--nuts-samples": args.nuts_samples,
    }
    for name, value in counts.items():
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if args.nuts_warmup < 0:
        p.error(f"--nuts-warmup must be >= 0, got {args.nuts_warmup}")
    if "nuts" in args.method_list and args.nuts_samples < args.draws:
        p.error(f"--nuts-samples ({args.nuts_samples}) must be >= --draws ({args.draws})")
    if args.points < args.components:
        p.error(f"--points ({args.points}) must be >= --components ({args.components})")
    if args.bins is not None and not 2 <= args.bins <= args.draws + 1:
        p.error(f"--bins must be in 2..{args.draws + 1} (draws + 1), got {args.bins}")
    if not 0 < args.alpha < 1:
        p.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if not 0 < args.shrink < 1:
        p.error(f"--shrink must be in (0, 1), got {args.shrink}")
    if not 0 < args.enum_lr < 10:
        p.error(f"--enum-lr must be in (0, 10), got {args.enum_lr}")
    args.replications_of = {m: args.replications for m in args.method_list}
    for item in filter(None, (s.strip() for s in args.method_replications.split(","))):
        name, _, value = item.partition("=")
        if name not in args.replications_of or not value.isdigit() or int(value) < 1:
            p.error(
                f"--method-replications: {item!r} is not METHOD=COUNT with a method of "
                f"--methods and COUNT >= 1"
            )
        args.replications_of[name] = int(value)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        p.error(f"--out {str(args.out)!r} cannot be written ({err})")


def make_prior(dim: int) -> GMMPrior:
    """A proper, moderately informative diag prior: pi ~ Dir(5, 5), lambda ~ Gamma(5, rate 5)
    (mean 1, cv 0.45), mu | lambda ~ N(0, 10 / lambda) (locations about 3 sd apart)."""
    return GMMPrior(
        weight_concentration=5.0,
        mean_prior=torch.zeros(dim, dtype=torch.float64),
        mean_precision=0.1,
        degrees_of_freedom=10.0,
        covariance_prior=torch.full((dim,), 10.0, dtype=torch.float64),
        covariance_type="diag",
    )


def make_infer(
    name: str, gmm: BayesianGMM, args: argparse.Namespace, notes: dict[str, Any]
) -> tuple[InferFn, str]:
    """``(infer, thin)`` for a method; ``notes`` collects fit statuses and divergences."""
    draws = args.draws

    def record(status: str) -> None:
        if status != "ok":
            key = status.split(":")[0] + ": " + status.split(":")[1].split()[0]
            notes["statuses"][key] = notes["statuses"].get(key, 0) + 1

    def cavi(data: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        result = fit(gmm, data, CAVI(max_iter=1000, tol=1e-8), seed=seed, progress=False)
        record(result.status)
        pyro.set_rng_seed(seed)
        return result.draws(draws).samples

    def enum(data: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        result = fit(
            gmm,
            data,
            Enum(),
            num_steps=args.enum_steps,
            lr=args.enum_lr,
            seed=seed,
            progress=False,
        )
        record(result.status)
        pyro.set_rng_seed(seed)
        return result.draws(draws).samples

    def nuts(data: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        method = NUTS(
            num_samples=args.nuts_samples,
            warmup_steps=args.nuts_warmup,
            num_chains=1,
        )
        result = fit(gmm, data, method, seed=seed, progress=False)
        notes["divergences"] = notes.get("divergences", 0) + int(result.extra["divergences"])
        assert result.chains is not None
        return {k: v[0] for k, v in result.chains.items()}  # one chain, in order

    if name == "cavi":
        return cavi, "none"
    if name == "overconfident-cavi":
        return overconfident(cavi, args.shrink), "none"
    if name == "enum":
        return enum, "none"
    return nuts, "ess"


def settings_of(name: str, args: argparse.Namespace) -> dict[str, Any]:
    s: dict[str, Any] = {
        "replications": args.replications_of[name],
        "draws": args.draws,
        "bins": args.bins,
        "alpha": args.alpha,
        "points": args.points,
        "components": args.components,
        "dim": args.dim,
        "seed": args.seed,
    }
    if name == "enum":
        s.update(steps=args.enum_steps, lr=args.enum_lr, guide="AutoNormal (mean-field)")
    if name == "nuts":
        s.update(warmup=args.nuts_warmup, samples=args.nuts_samples, chains=1, thin="ess")
    if name in ("cavi", "overconfident-cavi"):
        s.update(max_iter=1000, tol=1e-8)
    if name == "overconfident-cavi":
        s.update(shrink=args.shrink)
    return s


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    args = parse_args(argv)
    prior = make_prior(args.dim)
    gmm = BayesianGMM(args.components, args.dim, covariance_type="diag", prior=prior)
    simulate = prior_simulator(
        gmm.model,
        torch.zeros(args.points, args.dim, dtype=torch.float64),
        sites=GLOBALS,
        observed="obs",
    )
    path = args.out / "sbc.json"
    previous: dict[str, Any] = {}
    if args.resume and path.exists():
        previous = json.loads(path.read_text()).get("methods", {})
    summary: dict[str, Any] = {
        "model": {
            "name": "BayesianGMM",
            "components": args.components,
            "dim": args.dim,
            "points": args.points,
            "covariance_type": "diag",
            "prior": {
                "weight_concentration": prior.weight_concentration,
                "mean_prior": prior.mean_prior.tolist(),
                "mean_precision": prior.mean_precision,
                "degrees_of_freedom": prior.degrees_of_freedom,
                "covariance_prior": prior.covariance_prior.tolist(),
            },
        },
        "statistics": list(STATISTICS),
        "reference": "Talts et al. 2018, arXiv:1804.06788",
        "provenance": provenance(args.seed) | {"pyro": pyro.__version__},
        "methods": {},
    }
    common = min(args.replications_of.values())
    common_bins = args.bins or default_num_bins(common, args.draws)
    t_start = time.perf_counter()
    for name in args.method_list:
        settings = settings_of(name, args)
        old = previous.get(name)
        if old is not None and old.get("settings") == settings:
            print(f"{name}: kept from {path}")
            summary["methods"][name] = old
            continue
        notes: dict[str, Any] = {"statuses": {}}
        infer, thin = make_infer(name, gmm, args, notes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pyro/jit chatter, once per fit
            result = sbc_ranks(
                simulate,
                infer,
                gaussian_mixture_statistics,
                num_replications=args.replications_of[name],
                num_draws=args.draws,
                seed=args.seed,
                thin=thin,  # type: ignore[arg-type]
                num_bins=args.bins,
                alpha=args.alpha,
                on_error="skip",
                progress=not args.no_progress,
                desc=name,
            )
        entry: dict[str, Any] = {}
        if result.num_replications > common and not result.skipped:
            # the same first simulations as the methods run at fewer replications (paired)
            head = {k: v[:common] for k, v in result.ranks.items()}
            entry["at_common_replications"] = summarize_ranks(
                head, result.num_draws, common_bins, alpha=args.alpha
            ).to_dict(with_ranks=False)
        figure = plot_rank_histograms(result, args.out / f"rank_hist_{name}.png", title=name)
        summary["methods"][name] = {
            **result.to_dict(),
            "settings": settings,
            "notes": notes,
            "figure": figure.name,
            "loadavg_end": list(os.getloadavg()),
            **entry,
        }
        summary["provenance"]["seconds_total"] = time.perf_counter() - t_start
        write_json(path, summary)  # checkpoint: finished methods survive an interrupt
        ps = ", ".join(f"{k} {v:.3g}" for k, v in result.p_values.items())
        verdict = "pass" if result.passed else "FAIL"
        print(f"{name}: {verdict} in {result.seconds:.0f} s (R={result.num_replications}): {ps}")
    summary["provenance"]["seconds_total"] = time.perf_counter() - t_start
    summary["provenance"]["loadavg_end"] = list(os.getloadavg())
    write_json(path, summary)


if __name__ == "__main__":
    main()
