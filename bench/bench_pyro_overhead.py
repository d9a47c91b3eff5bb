"""Pyro's per-step overhead for ``TraceEnum_ELBO`` on the Bayesian Gaussian mixture.

What is measured: the wall time of one optimisation step (forward, backward and an Adam step)
on :class:`~pyro_attention.models.BayesianGMM` (``D = 2`` by default; ``N``, ``K``, covariance
type and guide on a grid) in three implementations of the *same* objective, measured in the
same run:

1. **svi** -- ``SVI(method.prepare(gmm.model), guide, pyro.optim.Adam, TraceEnum_ELBO)`` with
   the ``enum`` method (assignments summed out exactly by parallel enumeration) and the guide
   over the globals that ``method.guide(gmm)`` builds: an ``AutoNormal`` (``--guides normal``)
   or the same :class:`~pyro_attention.guides.AutoAlignmentGuide` with an ``AutoDelta``
   (``--guides delta``, a MAP point estimate);
2. **torch** -- a hand-written step in plain torch: unconstrained parameters with the transforms
   Pyro uses (stick-breaking or softmax to the simplex, the library's Cholesky map with a
   log-diagonal to positive-definite matrices, ``exp`` to positive numbers), the collapsed
   log-likelihood ``sum_n logsumexp_k [log pi_k + log N(x_n | mu_k, Lambda_k^-1)]``, the
   log-prior written out (Dirichlet, Wishart or gamma, normal), and for ``AutoNormal`` one
   reparameterised draw of the globals with ``-log q`` at that draw (log-normal density minus
   the log-Jacobian, the single-sample estimate of the entropy that Pyro computes), then
   ``torch.optim.Adam`` over all parameters;
3. **jit** -- (1) with ``JitTraceEnum_ELBO`` in place of ``TraceEnum_ELBO``; its compile time
   (the first step) is reported apart. Pyro's jit calls ``torch.jit.trace``, which torch
   deprecates; that warning is silenced here, in the benchmark only;
4. **fit** -- (1) stepped as :func:`~pyro_attention.infer.fit` steps it after its first step:
   a :class:`~pyro_attention.infer.fit.GuardedStep` (the loss and gradients checked for
   finiteness before the update) with Pyro's argument checks off.

Before timing, each configuration checks that (1) and (2) compute the same number: the Pyro
parameters are copied into the torch step, the same draw of the globals is used (read from a
trace of the guide), and the difference of the two losses and the largest difference of their
gradients are printed, in the benchmark dtype and again in float64 (where they agree to round-off).

Timing: after ``--warmup`` steps of each, ``--rounds`` rounds run ``--steps`` steps of each
implementation in turn (the order rotates between rounds), so a load that comes and goes hits
all three alike. Reported: the median milliseconds per step, the ratios svi/torch and jit/torch
(wall time, and process CPU time, which is less sensitive to other processes), and the fraction
of the svi-torch gap that jit closes. Runs single-threaded by default (``--threads``): at these
sizes the step is dominated by per-operation cost, and one thread keeps the figures steadier
on a shared machine. Ratios are from one run on one machine; nothing here is a test.

Run from the repository root::

    python bench/bench_pyro_overhead.py                               # the full grid
    python bench/bench_pyro_overhead.py --n 1000 --k 3 --covariance diag --json overhead.json
    python bench/bench_pyro_overhead.py --threads 0                   # torch's default threads
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from _common import environment, save_figures
from pyro import poutine
from pyro.infer import SVI, JitTraceEnum_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.optim import Adam
from torch.distributions.transforms import StickBreakingTransform

from pyro_attention.guides import AutoAlignmentGuide
from pyro_attention.infer import get_method
from pyro_attention.infer.fit import GuardedStep
from pyro_attention.models import BayesianGMM

SITES = ("weights", "precisions", "locs")
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------- data
def make_mixture(n: int, dim: int, k: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``n`` points from a random ``k``-component full-covariance mixture, standardised."""
    gen = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, dim, generator=gen, dtype=torch.float64)
    factors = torch.randn(k, dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    factors = factors + 0.5 * torch.eye(dim, dtype=torch.float64)
    labels = torch.randint(k, (n,), generator=gen)
    noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    x = means[labels] + torch.einsum("nij,nj->ni", factors[labels], noise)
    return ((x - x.mean(0)) / x.std(0)).to(dtype)


# ---------------------------------------------------------------------------------------- pyro
def pyro_guide(gmm: BayesianGMM, guide_kind: str) -> AutoAlignmentGuide:
    """The ``enum`` guide: ``method.guide(gmm)`` (AutoNormal), or the same with an AutoDelta."""
    method = get_method("enum")
    if guide_kind == "normal":
        return method.guide(gmm)
    return AutoAlignmentGuide(
        gmm.model,
        method,
        global_guide=AutoDelta,
        init_loc_fn=gmm.init_loc_fn(),
    )


def pyro_params(guide_kind: str) -> dict[str, torch.Tensor]:
    """The guide's unconstrained parameters by short name (``loc.weights``, ``scale.locs``...)."""
    out = {}
    for name, value in pyro.get_param_store().named_parameters():
        parts = name.split(".")
        if guide_kind == "normal":
            out[f"{parts[-2][:-1]}.{parts[-1]}"] = value  # locs.weights -> loc.weights
        else:
            out[f"value.{parts[-1]}"] = value
    return out


# ---------------------------------------------------------------------------------------- torch
def _tril(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tril_indices(size, size, device=device))


def pd_factor(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Lower-triangular ``L`` (positive diagonal ``exp(u_ii)``) from ``(..., D(D+1)/2)``;
    the precision is ``L L^T`` (the same map as the library's ``PositiveDefiniteTransform``)."""
    rows, cols = _tril(dim, u.device)
    u = torch.where(rows == cols, u.exp(), u)
    factor = u.new_zeros((*u.shape[:-1], dim, dim))
    factor[..., rows, cols] = u
    return factor


def pd_log_jacobian(u: torch.Tensor, dim: int) -> torch.Tensor:
    """``log |d(L L^T) / du|`` summed over the leading dims: ``D log 2 + sum_i (D-i+1) u_ii``
    (0-based ``i``): the Cholesky product gives ``2^D prod L_ii^(D-i)``, the ``exp`` ``L_ii``."""
    rows, cols = _tril(dim, u.device)
    diag_u = u[..., rows == cols]
    powers = torch.arange(dim + 1, 1, -1, dtype=u.dtype, device=u.device)
    return (diag_u * powers).sum() + u.shape[:-1].numel() * dim * math.log(2.0)


def pd_unconstrain(precision: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pd_factor` composed with ``L L^T``."""
    dim = precision.shape[-1]
    lower = torch.linalg.cholesky(precision)
    rows, cols = _tril(dim, precision.device)
    u = lower[..., rows, cols]
    return torch.where(rows == cols, u.log(), u)


@dataclass
class TorchGMM:
    """The same objective as ``TraceEnum_ELBO`` on ``enum``'s model and guide, in plain torch.

    Parameters are leaves in :attr:`params`: ``value.<site>`` (AutoDelta, in the unconstrained
    space of ``transform_to(support)``) or ``loc.<site>`` / ``scale.<site>`` (AutoNormal, in
    the space of ``biject_to(support)``; ``scale = softplus(raw)``, Pyro's ``softplus_positive``).
    """

    data: torch.Tensor
    gmm: BayesianGMM
    guide_kind: str
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prior = self.gmm.prior
        self.full = self.gmm.covariance_type == "full"
        self.K, self.D = self.gmm.num_components, self.gmm.dim
        m0, psi0 = prior.tensors_like(self.data)
        self.m0, self.psi0 = m0, psi0
        self.alpha0 = prior.weight_concentration
        self.beta0 = prior.mean_precision
        self.nu0 = prior.degrees_of_freedom
        self.stick = StickBreakingTransform()
        # the constant of the log-prior (weights, precisions, locs), computed once
        K, D, nu0 = self.K, self.D, self.nu0
        const = math.lgamma(K * self.alpha0) - K * math.lgamma(self.alpha0)
        if self.full:
            logdet_psi0 = float(torch.linalg.slogdet(psi0.double()).logabsdet)
            const += K * (
                -nu0 * D / 2 * math.log(2.0)
                + nu0 / 2 * logdet_psi0
                - float(torch.mvlgamma(torch.tensor(nu0 / 2, dtype=torch.float64), D))
            )
            self.psi0_full = psi0
        else:
            rate = psi0.double() / 2
            const += K * float((nu0 / 2 * rate.log()).sum() - D * math.lgamma(nu0 / 2))
        const += K * D / 2 * (math.log(self.beta0) - LOG_2PI)
        self.prior_const = const

    # ---------------------------------------------------------------- parameters
    def set_from_pyro(self, pyro_values: dict[str, torch.Tensor]) -> None:
        """Copy Pyro's unconstrained guide parameters (``pyro_params``) as new leaves (for
        ``scale.*`` that is the raw value Pyro passes through ``softplus``)."""
        self.params = {}
        for name, value in pyro_values.items():
            value = value.detach().clone()
            self.params[name] = value.requires_grad_(True)

    # ---------------------------------------------------------------- objective
    def log_joint(
        self, weights: torch.Tensor, locs: torch.Tensor, prec: torch.Tensor
    ) -> torch.Tensor:
        """``log p(x | globals) + log p(globals)``, the alignments summed out.

        ``prec`` is the lower Cholesky factor ``L`` of each precision ``(K, D, D)`` for full
        covariances, the precisions ``(K, D)`` for diagonal ones.
        """
        x = self.data
        log_w = weights.clamp(min=torch.finfo(weights.dtype).tiny).log()
        diff_prior = locs - self.m0  # (K, D)
        diff = x[:, None, :] - locs  # (N, K, D)
        if self.full:
            half_logdet = prec.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,) = log|L|
            white = torch.einsum("kde,nkd->nke", prec, diff)  # L^T (x - mu)
            log_lik = half_logdet - 0.5 * white.pow(2).sum(-1) - self.D / 2 * LOG_2PI
            precision = prec @ prec.mT
            white_prior = torch.einsum("kde,kd->ke", prec, diff_prior)
            log_prior = (
                (self.nu0 - self.D - 1) * half_logdet.sum()
                - 0.5 * (self.psi0_full * precision).sum()
                + half_logdet.sum()
                - 0.5 * self.beta0 * white_prior.pow(2).sum()
            )
        else:
            log_prec = prec.log()
            log_lik = 0.5 * (log_prec - prec * diff.pow(2)).sum(-1) - self.D / 2 * LOG_2PI
            a, b = self.nu0 / 2, self.psi0 / 2
            log_prior = (
                ((a - 1) * log_prec - b * prec).sum()
                + 0.5 * log_prec.sum()
                - 0.5 * self.beta0 * (prec * diff_prior.pow(2)).sum()
            )
        log_prior = log_prior + (self.alpha0 - 1) * log_w.sum() + self.prior_const
        return torch.logsumexp(log_w + log_lik, dim=-1).sum() + log_prior

    def loss(self, eps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Negative ELBO (AutoNormal, one draw; ``eps`` fixes it) or negative log joint."""
        p = self.params
        if self.guide_kind == "delta":
            weights = torch.softmax(p["value.weights"], -1)
            locs = p["value.locs"]
            if self.full:
                prec = pd_factor(p["value.precisions"], self.D)
            else:
                prec = p["value.precisions"].exp()
            return -self.log_joint(weights, locs, prec)
        log_q = 0.0
        u = {}
        for site in SITES:
            loc = p[f"loc.{site}"]
            scale = torch.nn.functional.softplus(p[f"scale.{site}"])
            noise = torch.randn_like(loc) if eps is None else eps[site]
            u[site] = loc + scale * noise
            z = (u[site] - loc) / scale
            log_q = log_q - (0.5 * z.pow(2) + scale.log()).sum() - 0.5 * LOG_2PI * z.numel()
        weights = self.stick(u["weights"])
        log_q = log_q - self.stick.log_abs_det_jacobian(u["weights"], weights).sum()
        if self.full:
            prec = pd_factor(u["precisions"], self.D)
            log_q = log_q - pd_log_jacobian(u["precisions"], self.D)
        else:
            prec = u["precisions"].exp()
            log_q = log_q - u["precisions"].sum()
        return log_q - self.log_joint(weights, u["locs"], prec)


# ---------------------------------------------------------------------------------------- check
def check_agreement(
    gmm: BayesianGMM, data: torch.Tensor, guide_kind: str, seed: int
) -> dict[str, float]:
    """Loss and gradient differences of (1) and (2) at the guide's initial parameters."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    gmm.initialize(data, seed=seed)
    guide = pyro_guide(gmm, guide_kind)
    model = get_method("enum").prepare(gmm.model)
    guide(data)  # create the parameters
    with torch.no_grad():  # move off the initial values so every term matters
        for value in pyro.get_param_store().values():
            value.add_(0.05 * torch.randn_like(value))
    trace = poutine.trace(guide).get_trace(data)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro_loss = elbo.loss_and_grads(model, poutine.replay(guide, trace=trace), data)
    params = pyro_params(guide_kind)
    pyro_grads = {k: v.grad.detach().clone() for k, v in params.items()}
    ours = TorchGMM(data, gmm, guide_kind)
    ours.set_from_pyro(params)
    eps = None
    if guide_kind == "normal":
        eps = {}
        for site in SITES:
            u = trace.nodes[f"{site}_unconstrained"]["value"].detach()
            loc = params[f"loc.{site}"].detach()
            scale = torch.nn.functional.softplus(ours.params[f"scale.{site}"]).detach()
            eps[site] = (u - loc) / scale
    torch_loss = ours.loss(eps)
    torch_loss.backward()
    grad_diff = max(float((ours.params[k].grad - pyro_grads[k]).abs().max()) for k in pyro_grads)
    grad_scale = max(float(g.abs().max()) for g in pyro_grads.values())
    for value in params.values():
        value.grad = None
    pyro.clear_param_store()
    return {
        "pyro_loss": float(pyro_loss),
        "torch_loss": float(torch_loss.detach()),
        "loss_diff": float(torch_loss.detach()) - float(pyro_loss),
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_scale,
    }


# ---------------------------------------------------------------------------------------- time
@dataclass
class Variant:
    name: str
    step: Callable[[], float]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self, steps: int, record: bool = True) -> None:
        for _ in range(steps):
            w0, c0 = time.perf_counter(), time.process_time()
            value = self.step()
            w1, c1 = time.perf_counter(), time.process_time()
            if not math.isfinite(value):
                raise FloatingPointError(f"{self.name}: non-finite loss {value}")
            if record:
                self.wall.append(w1 - w0)
                self.cpu.append(c1 - c0)


def time_config(n: int, k: int, covariance: str, guide_kind: str, args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    data = make_mixture(n, args.dim, k, args.seed, dtype)
    gmm = BayesianGMM(k, args.dim, covariance)
    check = check_agreement(gmm, data, guide_kind, args.seed)
    check64 = check_agreement(gmm, data.double(), guide_kind, args.seed)

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    gmm.initialize(data, seed=args.seed)
    guide = pyro_guide(gmm, guide_kind)
    model = get_method("enum").prepare(gmm.model)
    guide(data)
    params = pyro_params(guide_kind)
    ours = TorchGMM(data, gmm, guide_kind)
    ours.set_from_pyro(params)
    optimizer = torch.optim.Adam(list(ours.params.values()), lr=args.lr)

    def torch_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = ours.loss()
        loss.backward()
        optimizer.step()
        return loss.item()

    # (1) and (3) share the guide, its parameters and one optimiser: one optimisation, two
    # implementations of the loss
    optim = Adam({"lr": args.lr})
    svi = SVI(model, guide, optim, TraceEnum_ELBO(max_plate_nesting=1))
    svi_jit = SVI(
        model, guide, optim, JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    )

    def jit_step() -> float:
        with warnings.catch_warnings():
            # Pyro's jit ELBOs call torch.jit.trace, which torch deprecates
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.trace.*deprecated", category=DeprecationWarning
            )
            return svi_jit.step(data)

    guarded_step = GuardedStep(svi)

    def fit_step() -> float:  # the step fit() takes: guarded, Pyro's checks on step 1 only
        with pyro.validation_enabled(False):
            value, applied = guarded_step(data)
        return value if applied else math.nan

    variants = [
        Variant("torch", torch_step),
        Variant("svi", lambda: svi.step(data)),
        Variant("jit", jit_step),
        Variant("fit", fit_step),
    ]
    t0 = time.perf_counter()
    variants[2].run(1, record=False)
    jit_compile = time.perf_counter() - t0
    for variant in variants:
        variant.run(args.warmup, record=False)
    for r in range(args.rounds):
        for j in range(len(variants)):
            variants[(r + j) % len(variants)].run(args.steps)
    med = {v.name: statistics.median(v.wall) for v in variants}
    med_cpu = {v.name: statistics.median(v.cpu) for v in variants}
    gap = med["svi"] - med["torch"]
    return {
        "n": n,
        "k": k,
        "covariance": covariance,
        "guide": guide_kind,
        "ms_per_step": {name: 1e3 * value for name, value in med.items()},
        "cpu_ms_per_step": {name: 1e3 * value for name, value in med_cpu.items()},
        "ratio_svi_torch": med["svi"] / med["torch"],
        "ratio_jit_torch": med["jit"] / med["torch"],
        "ratio_fit_torch": med["fit"] / med["torch"],
        "cpu_ratio_svi_torch": med_cpu["svi"] / med_cpu["torch"],
        "cpu_ratio_jit_torch": med_cpu["jit"] / med_cpu["torch"],
        "jit_closes_gap_fraction": (med["svi"] - med["jit"]) / gap if gap > 0 else float("nan"),
        "jit_compile_seconds": jit_compile,
        "steps_timed": len(variants[0].wall),
        "check": check,
        "check_float64": check64,
    }


# ---------------------------------------------------------------------------------------- main
def validation_enabled() -> bool:
    """Whether Pyro checks distribution arguments and supports (its default: on)."""
    return bool(torch.distributions.Distribution._validate_args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="data points")
    parser.add_argument("--k", type=int, nargs="+", default=[3, 10], help="components")
    parser.add_argument("--dim", type=int, default=2, help="features per point")
    parser.add_argument(
        "--covariance", nargs="+", default=["diag", "full"], choices=["diag", "full"]
    )
    parser.add_argument(
        "--guides",
        nargs="+",
        default=["delta", "normal"],
        choices=["delta", "normal"],
        help="global guide: AutoDelta (MAP) or AutoNormal (as method.guide(gmm) builds)",
    )
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (all three)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and variant")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's default"
    )
    parser.add_argument(
        "--no-validation",
        action="store_true",
        help="pyro.enable_validation(False) for all three (Pyro's default is on)",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.no_validation:
        pyro.enable_validation(False)
    load_before = os.getloadavg()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}"
        f", threads={torch.get_num_threads()}, cpus={os.cpu_count()}, pyro validation="
        f"{validation_enabled()}"
        f", load average (1, 5, 15 min) {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f}"
    )
    print(
        f"per-step median over {args.rounds} x {args.steps} steps after {args.warmup} warm-up;"
        f" D={args.dim}, {args.dtype}, lr={args.lr}"
    )
    head = (
        f"{'N':>6} {'K':>3} {'cov':>4} {'guide':>6} | {'torch ms':>8} {'svi ms':>7} "
        f"{'jit ms':>7} {'fit ms':>7} | {'svi/torch':>9} {'jit/torch':>9} {'fit/torch':>9} "
        f"{'(cpu)':>11} | {'jit gap':>7} "
        f"{'compile s':>9} | {'loss diff f32':>13} {'f64':>9} {'grad diff f64':>13}"
    )
    print(head)
    print("-" * len(head))
    rows = []
    t_start = time.perf_counter()
    for n in args.n:
        for k in args.k:
            for covariance in args.covariance:
                for guide_kind in args.guides:
                    row = time_config(n, k, covariance, guide_kind, args)
                    rows.append(row)
                    ms = row["ms_per_step"]
                    print(
                        f"{n:>6} {k:>3} {covariance:>4} {guide_kind:>6} | {ms['torch']:>8.2f} "
                        f"{ms['svi']:>7.2f} {ms['jit']:>7.2f} {ms['fit']:>7.2f} | "
                        f"{row['ratio_svi_torch']:>9.1f} {row['ratio_jit_torch']:>9.1f} "
                        f"{row['ratio_fit_torch']:>9.1f} "
                        f"{row['cpu_ratio_svi_torch']:>5.1f}/{row['cpu_ratio_jit_torch']:<5.1f} | "
                        f"{100 * row['jit_closes_gap_fraction']:>6.0f}% "
                        f"{row['jit_compile_seconds']:>9.2f} | "
                        f"{row['check']['loss_diff']:>13.2e} "
                        f"{row['check_float64']['loss_diff']:>9.1e} "
                        f"{row['check_float64']['grad_max_abs_diff']:>13.1e}",
                        flush=True,
                    )
    load_after = os.getloadavg()
    svi_ratios = [r["ratio_svi_torch"] for r in rows]
    closed = statistics.median(r["jit_closes_gap_fraction"] for r in rows)
    jit_ratios = [r["ratio_jit_torch"] for r in rows]
    fit_ratios = [r["ratio_fit_torch"] for r in rows]
    print(
        f"svi/torch: median {statistics.median(svi_ratios):.1f} "
        f"(range {min(svi_ratios):.1f}-{max(svi_ratios):.1f}); jit/torch: median "
        f"{statistics.median(jit_ratios):.1f} (range {min(jit_ratios):.1f}-{max(jit_ratios):.1f});"
        f" jit closes a median {100 * closed:.0f}% of the gap; fit()'s step/torch: median "
        f"{statistics.median(fit_ratios):.1f} (range {min(fit_ratios):.1f}-{max(fit_ratios):.1f})"
    )
    cpu_svi = statistics.median(r["cpu_ratio_svi_torch"] for r in rows)
    cpu_jit = statistics.median(r["cpu_ratio_jit_torch"] for r in rows)
    print(f"CPU-time ratios: svi/torch median {cpu_svi:.1f}, jit/torch median {cpu_jit:.1f}")
    print(
        f"'jit gap': share of the svi-torch time difference that jit removes; 'loss diff': "
        f"torch - pyro loss at the same parameters and draw. Took "
        f"{time.perf_counter() - t_start:.0f} s; load average after "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    figures = {
        "benchmark": "pyro_overhead",
        "args": vars(args),
        **environment(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": rows,
    }
    return save_figures(figures, args.json)


if __name__ == "__main__":
    main()
