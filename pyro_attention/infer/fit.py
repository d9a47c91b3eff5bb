"""Fitting: one SVI loop for every gradient method, plus closed-form and NUTS runs.

:func:`fit` is a convenience: it builds ``SVI(method.prepare(model), method.guide(model_obj),
optim, method.loss())`` and steps it with a progress bar, optional atomic checkpoints that a
later call resumes from, and a guard that stops at the first non-finite loss or parameter with
the last good parameters restored (:class:`NonFiniteLossError`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, SVI
from pyro.infer import NUTS as _PyroNUTS
from pyro.optim import ClippedAdam, PyroOptim
from tqdm import tqdm

from pyro_attention._io import atomic_path
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.infer.registry import get_method


@dataclass
class PosteriorDraws:
    """Draws of the global latent sites.

    :ivar samples: ``{site: (S, *site_shape)}`` in the model's constrained space.
    :ivar log_density: ``(S,)`` log density of the approximate posterior at the draws, or
        ``None`` (point estimates, MCMC).
    """

    samples: dict[str, torch.Tensor]
    log_density: torch.Tensor | None = None


@dataclass
class FitResult:
    """What a method learned, and how long it took.

    :ivar method: the method object.
    :ivar losses: the training objective per step (negative ELBO, negative bound, ...).
    :ivar steps: optimisation steps / iterations / MCMC draws made.
    :ivar seconds: wall time of the fit.
    :ivar points_seen: data points processed (for samples per second).
    :ivar guide: the trained guide (gradient methods).
    :ivar state: method-specific result (CAVI/EM result, ``MCMC`` object).
    :ivar status: ``"ok"`` or why the run stopped early.
    :ivar sample_dims: ``("sample",)`` or ``("chain", "draw")`` of :attr:`chains`.
    :ivar chains: MCMC draws grouped ``(chain, draw, ...)``.
    """

    method: InferenceMethod
    losses: list[float]
    steps: int
    seconds: float
    points_seen: int
    sampler: Callable[[int], PosteriorDraws]
    guide: Callable | None = None
    state: Any = None
    status: str = "ok"
    sample_dims: tuple[str, ...] = ("sample",)
    chains: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def draws(self, num_samples: int) -> PosteriorDraws:
        """``num_samples`` draws of the global latents (fewer for point estimates)."""
        return self.sampler(num_samples)

    def chains_shape(self) -> tuple[int, int]:
        """``(num_chains, num_draws)`` of :attr:`chains`."""
        if self.chains is None:
            raise ValueError(f"{self.method.name} has no MCMC chains")
        return tuple(next(iter(self.chains.values())).shape[:2])

    @property
    def samples_per_second(self) -> float:
        return self.points_seen / self.seconds if self.seconds > 0 else float("nan")


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or a parameter becomes NaN/inf; the last good state is kept.

    :ivar result: the :class:`FitResult` up to the last good step.
    """

    def __init__(self, message: str, result: FitResult) -> None:
        super().__init__(message)
        self.result = result


def fit(
    model_obj: Any,
    data: Any,
    method: str | InferenceMethod = "enum",
    **options: Any,
) -> FitResult:
    """Fit ``model_obj`` to ``data`` with ``method`` (a name or a method object).

    Options of the gradient methods: ``num_steps``, ``lr`` or ``optim``, ``subsample_size``,
    ``batches`` (mini-batches to step on, see :func:`svi_fit`), ``seed``, ``progress``,
    ``checkpoint`` (a file path), ``checkpoint_every``, ``resume``.
    Closed-form methods and NUTS take ``seed`` and ``progress``.
    """
    return get_method(method).fit(model_obj, data, **options)


def _param_snapshot() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def _restore(snapshot: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in pyro.get_param_store().named_parameters():
            if name in snapshot:
                value.copy_(snapshot[name])


def _load_params(saved: dict) -> None:
    """Restore a saved param store *in place*: parameters already in the store (e.g. those of
    a ``torch.nn`` module registered with ``pyro.module``, which keeps its own tensors) get
    the saved values copied into them; the others are added."""
    store = pyro.get_param_store()
    existing = dict(store.named_parameters())
    rest = {"params": {}, "constraints": {}}
    with torch.no_grad():
        for name, value in saved["params"].items():
            if name in existing and existing[name].shape == value.shape:
                existing[name].copy_(value)
            else:
                rest["params"][name] = value
                rest["constraints"][name] = saved["constraints"][name]
    if rest["params"]:
        store.set_state(rest)


def _save_checkpoint(
    path: Path,
    method: InferenceMethod,
    optim: PyroOptim | None,
    step: int,
    losses: list[float],
    seconds: float,
    points_seen: int = 0,
) -> None:
    state = {
        "points_seen": points_seen,
        "method": method.name,
        "step": step,
        "losses": list(losses),
        "seconds": seconds,
        "params": pyro.get_param_store().get_state(),
        "optim": None if optim is None else optim.get_state(),
        "rng": pyro.util.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _guide_sampler(guide: Callable, model_obj: Any, data: Any) -> Callable[[int], PosteriorDraws]:
    from pyro_attention.infer.evaluate import sample_guide_globals

    def sampler(num_samples: int) -> PosteriorDraws:
        return sample_guide_globals(guide, model_obj, data, num_samples)

    return sampler


Batches = Callable[[int], Iterable[Any]] | Iterable[Any]


def batch_stream(batches: Batches, start: int = 0) -> Iterator[Any]:
    """Endless mini-batches: epoch after epoch of ``batches(epoch)`` (or of the re-iterable
    ``batches``), the first ``start`` skipped (to resume a run where it stopped)."""
    step, epoch = 0, 0
    while True:
        empty = True
        for batch in batches(epoch) if callable(batches) else batches:
            empty = False
            if step >= start:
                yield batch
            step += 1
        if empty:
            raise ValueError(f"batches gave no data in epoch {epoch}; pass at least one batch")
        epoch += 1


def svi_fit(
    method: InferenceMethod,
    model_obj: Any,
    data: Any,
    *,
    num_steps: int = 1000,
    lr: float = 0.05,
    optim: PyroOptim | None = None,
    subsample_size: int | None = None,
    batches: Batches | None = None,
    batch_offset: int = 0,
    seed: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 200,
    resume: bool = True,
    guide: Callable | None = None,
) -> FitResult:
    """Stochastic variational inference with ``method``'s model, guide and loss.

    Each step uses ``data``, or with ``batches`` the next mini-batch: ``batches`` is a
    function ``epoch -> iterable of batches`` (e.g. ``lambda epoch: dataset.batches("train",
    32, shuffle=True, seed=epoch)``) or a re-iterable such as a list; ``data`` is then the
    whole training set (checked, used to initialise the model and for posterior draws).
    ``batch_offset`` batches are skipped first (those an earlier phase of the same run used).
    """
    method.check(model_obj, subsample_size=subsample_size)
    data = model_obj.check_data(data)
    if batches is not None and subsample_size is not None:
        raise ValueError("pass either batches or subsample_size, not both")
    from pyro_attention.guides.auto import LOCAL_KINDS  # guides import the infer package

    if (
        batches is not None
        and guide is None
        and method.alignment_guide in LOCAL_KINDS
        and getattr(model_obj, "encoder", None) is None
    ):
        raise ValueError(
            f"{method.name} on {type(model_obj).__name__} keeps one q(z) per point of data, "
            "which mini-batches from batches= cannot be matched to; give the model an "
            "amortized encoder (encoder=...), or step on subsamples with subsample_size="
        )
    if seed is not None:
        pyro.set_rng_seed(seed)
    model_obj.initialize(data)
    guide = method.guide(model_obj) if guide is None else guide
    model_fn = method.prepare(model_obj.model)
    optim = ClippedAdam({"lr": lr}) if optim is None else optim
    loss = method.loss(model_obj.max_plate_nesting)
    kwargs = {} if subsample_size is None else {"subsample_size": subsample_size}
    svi = SVI(model_fn, guide, optim, loss)
    poutine.block(guide)(data, **kwargs)  # create the guide's parameters before any resume

    losses: list[float] = []
    start, seconds_before, points_before = 0, 0.0, 0
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None and resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["method"] != method.name:
            raise ValueError(
                f"checkpoint {checkpoint} was written by method {state['method']!r}, not "
                f"{method.name!r}; pass another checkpoint path or resume=False"
            )
        _load_params(state["params"])
        if state["optim"] is not None:
            optim.set_state(state["optim"])
        pyro.util.set_rng_state(state["rng"])
        start, losses, seconds_before = state["step"], list(state["losses"]), state["seconds"]
        points_before = state.get("points_seen", 0)

    points_per_step = subsample_size or model_obj.num_points(data)
    stream = None if batches is None else batch_stream(batches, batch_offset + start)
    points_seen = points_before
    step_points: list[int] = []
    snapshot = _param_snapshot()
    status = "ok"
    t0 = time.perf_counter()
    bar = tqdm(range(start, num_steps), desc=method.name, disable=not progress, leave=False)
    for step in bar:
        if stream is None:
            step_data = data
        else:
            step_data = model_obj.check_data(next(stream))
            points_per_step = model_obj.num_points(step_data)
        value = svi.step(step_data, **kwargs)
        value = float(value[0] if isinstance(value, tuple) else value)
        params_ok = all(
            torch.isfinite(p).all() for _, p in pyro.get_param_store().named_parameters()
        )
        if not (torch.isfinite(torch.tensor(value)) and params_ok):
            _restore(snapshot)
            status = f"non-finite loss at step {step}; the parameters before it are kept"
            break
        snapshot = _param_snapshot()
        losses.append(value)
        points_seen += points_per_step
        step_points.append(points_per_step)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{value:.4g}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            _save_checkpoint(
                checkpoint,
                method,
                optim,
                step + 1,
                losses,
                seconds_before + time.perf_counter() - t0,
                points_seen,
            )
    seconds = seconds_before + time.perf_counter() - t0
    steps_done = len(losses)
    if checkpoint is not None:  # after a non-finite step the optimiser's moments may be NaN
        _save_checkpoint(
            checkpoint,
            method,
            optim if status == "ok" else None,
            steps_done,
            losses,
            seconds,
            points_seen,
        )
    result = FitResult(
        method=method,
        losses=losses,
        steps=steps_done,
        seconds=seconds,
        points_seen=points_seen,
        sampler=_guide_sampler(guide, model_obj, data),
        guide=guide,
        state=svi,
        status=status,
        extra={
            "loss_fn": loss,
            "model_fn": model_fn,
            "kwargs": kwargs,
            "step_points": step_points,  # data points of each step of this call
        },
    )
    if status != "ok":
        raise NonFiniteLossError(
            f"{method.name} on {type(model_obj).__name__}: {status}. Lower the learning rate "
            f"(lr={lr}), use float64 data, or (gumbel) raise the temperature",
            result,
        )
    return result


def closed_form_fit(
    method: InferenceMethod,
    model_obj: Any,
    data: Any,
    *,
    seed: int | None = 0,
    progress: bool = True,
    **ignored: Any,
) -> FitResult:
    """Run the model's closed-form ``cavi`` or ``em`` updates."""
    method.check(model_obj)
    data = model_obj.check_data(data)
    run = getattr(model_obj, method.name)
    t0 = time.perf_counter()
    state = run(data, max_iter=method.max_iter, tol=method.tol, seed=seed or 0, progress=progress)
    seconds = time.perf_counter() - t0
    n = model_obj.num_points(data)
    if method.name == "cavi":
        losses = [-float(e) for e in state.elbo_trace]

        def sampler(num_samples: int) -> PosteriorDraws:
            samples = state.posterior.sample(num_samples)
            return PosteriorDraws(samples, state.posterior.log_prob(samples))
    else:
        losses = [-float(ll) * n for ll in state.log_likelihood_trace]

        def sampler(num_samples: int) -> PosteriorDraws:
            return PosteriorDraws(state.as_samples())

    return FitResult(
        method=method,
        losses=losses,
        steps=state.n_iter,
        seconds=seconds,
        points_seen=state.n_iter * n,
        sampler=sampler,
        state=state,
        status="ok" if state.converged else f"not converged after {state.n_iter} iterations",
    )


def nuts_fit(
    method: InferenceMethod,
    model_obj: Any,
    data: Any,
    *,
    seed: int | None = 0,
    progress: bool = True,
    **ignored: Any,
) -> FitResult:
    """NUTS over the globals with the alignments enumerated; chains run one after another."""
    method.check(model_obj)
    data = model_obj.check_data(data)
    run_data = data.double() if method.float64 and data.is_floating_point() else data
    model_obj.initialize(run_data)
    model_fn = method.prepare(model_obj.model)
    chains: list[dict[str, torch.Tensor]] = []
    diverging = []
    t0 = time.perf_counter()
    for chain in range(method.num_chains):
        pyro.set_rng_seed((seed or 0) + chain)
        kernel = _PyroNUTS(
            model_fn,
            max_plate_nesting=model_obj.max_plate_nesting,
            target_accept_prob=method.target_accept_prob,
            init_strategy=model_obj.init_loc_fn(),
            jit_compile=method.jit_compile,
            ignore_jit_warnings=True,
        )
        mcmc = MCMC(
            kernel,
            num_samples=method.num_samples,
            warmup_steps=method.warmup_steps,
            num_chains=1,
            disable_progbar=not progress,
        )
        with warnings.catch_warnings():
            # Pyro's jit_compile uses torch.jit.trace, which torch deprecates
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.trace.*is deprecated", category=DeprecationWarning
            )
            mcmc.run(run_data)
        chains.append({k: v.to(data.dtype) for k, v in mcmc.get_samples().items()})
        div = torch.zeros(method.num_samples, dtype=torch.bool)
        div[mcmc.diagnostics()["divergences"]["chain 0"]] = True
        diverging.append(div)
    seconds = time.perf_counter() - t0
    grouped = {k: torch.stack([c[k] for c in chains]) for k in chains[0]}

    def sampler(num_samples: int) -> PosteriorDraws:
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in grouped.items()}
        total = next(iter(flat.values())).shape[0]
        idx = torch.linspace(0, total - 1, min(num_samples, total)).round().long()
        return PosteriorDraws({k: v[idx.to(v.device)] for k, v in flat.items()})

    steps = method.num_chains * (method.num_samples + method.warmup_steps)
    return FitResult(
        method=method,
        losses=[],
        steps=steps,
        seconds=seconds,
        points_seen=steps * model_obj.num_points(data),
        sampler=sampler,
        sample_dims=("chain", "draw"),
        chains=grouped,
        extra={"diverging": torch.stack(diverging)},
    )
