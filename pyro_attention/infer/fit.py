"""Runners: one SVI loop for every gradient method, plus closed-form and MCMC runs.

:func:`fit` checks the data, the model and the options, then runs the method's runner
(:data:`RUNNERS`, named by :attr:`InferenceMethod.runner`) in the fit's own Pyro param store,
so two fits in one process never share parameters. The SVI runner builds
``SVI(method.prepare(model), method.guide(model_obj), optim, method.loss())`` and steps it with a
progress bar, optional atomic checkpoints that a later call resumes from, and a guard
(:class:`GuardedStep`) that stops at the first non-finite loss or gradient, keeping the last
parameters whose loss was finite (:class:`NonFiniteLossError`).
"""

from __future__ import annotations

import importlib
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import arviz_stats
import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, SVI
from pyro.infer import NUTS as _PyroNUTS
from pyro.ops.stats import split_gelman_rubin
from pyro.optim import ClippedAdam, PyroOptim
from pyro.poutine.util import is_validation_enabled
from tqdm import tqdm

from pyro_attention._io import atomic_path
from pyro_attention._validation import check_seed
from pyro_attention.guides import LOCAL_KINDS
from pyro_attention.infer.evaluate import sample_guide_globals
from pyro_attention.infer.methods import InferenceMethod
from pyro_attention.infer.registry import get_method
from pyro_attention.infer.results import (
    FitResult,
    NonFiniteLossError,
    ParamState,
    PosteriorDraws,
    own_param_store,
)
from pyro_attention.models.base import AlignmentModel, as_model
from pyro_attention.models.structure import ModelStructure, check_nesting, inspect_model

Runner = Callable[..., FitResult]


def fit(
    model_obj: AlignmentModel | Callable[..., Any],
    data: Any,
    method: str | InferenceMethod = "enum",
    **options: Any,
) -> FitResult:
    """Fit ``model_obj`` (a model, or a Pyro model function) to ``data`` with ``method`` (a
    name or a method object), in a param store of its own.

    Options of the ``svi`` runner: ``num_steps``, ``lr`` or ``optim``, ``subsample_size``,
    ``batches`` (mini-batches to step on, see :func:`svi_fit`), ``seed``, ``progress``,
    ``checkpoint`` (a file path), ``checkpoint_every``, ``resume``, ``guide``.
    The ``closed-form`` and ``mcmc`` runners take ``seed`` and ``progress``; their settings
    are the method's (``CAVI(max_iter=...)``, ``NUTS(num_samples=...)``). Any other option is
    refused (:func:`runner_options` lists a method's).
    The trained parameters stay with the result: ``with result.scope(): ...`` brings them
    back into Pyro's param store. Network weights (``torch.nn`` submodules of the model) are
    trained in place, as in torch; the result keeps a copy, which ``scope()`` loads back.
    """
    model_obj = as_model(model_obj)
    method = get_method(method)
    runner = RUNNERS.get(method.runner)
    if runner is None:
        raise ValueError(
            f"method {method.name!r} declares runner={method.runner!r}; expected one of "
            f"{sorted(RUNNERS)}"
        )
    accepted = RUNNER_OPTIONS[method.runner]
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(
            f"method {method.name!r} (runner {method.runner!r}) takes no option "
            f"{', '.join(sorted(unknown))}; it takes {', '.join(sorted(accepted))}, and its "
            f"own settings go to its constructor ({type(method).__name__}(...)); "
            "runner_options(method) lists them"
        )
    if options.get("seed") is not None:
        check_seed(options["seed"])
    if options.get("batches") is not None and options.get("subsample_size") is not None:
        raise ValueError("pass either batches or subsample_size, not both")
    data = model_obj.check_data(data)
    structure = inspect_model(model_obj, data)
    check_nesting(model_obj, structure)
    method.check(structure, subsample_size=options.get("subsample_size"))
    with own_param_store() as params:
        try:
            result = runner(method, model_obj, data, structure=structure, **options)
        except NonFiniteLossError as err:
            err.result.params = params
            err.result.keep_module_state(model_obj)
            raise
    result.params = params
    result.keep_module_state(model_obj)
    return result


def runner_options(method: InferenceMethod) -> frozenset[str]:
    """The options :func:`fit` accepts for ``method``."""
    return RUNNER_OPTIONS[method.runner]


def _check_checkpoint_path(path: Path) -> None:
    """Refuse, before any step, a checkpoint path that cannot be written."""
    if path.is_dir():
        raise ValueError(f"checkpoint={str(path)!r} is a folder; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"checkpoint={str(path)!r} cannot be written ({err})") from None


def check_svi_options(*, num_steps: Any, lr: Any, subsample_size: Any, num_points: int) -> None:
    """Refuse bad options of the SVI runner before any work (``lr=None``: an optimiser was
    given instead)."""
    _check_int(num_steps, "num_steps", 1)
    if lr is not None and not (
        isinstance(lr, int | float) and not isinstance(lr, bool) and 0 < lr < math.inf
    ):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if subsample_size is not None:
        _check_int(subsample_size, "subsample_size", 1)
        if subsample_size > num_points:
            raise ValueError(
                f"subsample_size={subsample_size} is larger than the {num_points} data points; "
                "use a smaller subsample_size or none"
            )


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class GuardedStep:
    """``fit()``'s SVI step: :meth:`pyro.infer.SVI.step` that applies an update only when the
    loss and every gradient are finite, and otherwise keeps the last parameters whose loss was
    finite.

    The check is fused into one device synchronisation. Before each update every parameter of
    the store is copied, by name and one fused ``torch._foreach_copy_`` into buffers allocated
    once (no synchronisation, no allocation), so that when a loss turns non-finite or raises a
    linear-algebra error -- an update from finite gradients can move a parameter where the
    model is undefined, e.g. a scale below zero -- the parameters it was computed at (and
    state such as a decaying-average baseline) are put back to those before that update. When
    only a gradient is non-finite, the current parameters (whose loss was finite) stay.

    :param svi: the :class:`~pyro.infer.SVI` object (its model, guide, loss and optimiser).
    """

    def __init__(self, svi: SVI) -> None:
        self.svi = svi
        self._names: tuple[str, ...] = ()
        self._saved: list[torch.Tensor] = []
        #: why the last step failed when it raised instead of giving a non-finite loss
        self.error: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[float, bool]:
        """One step on ``args``: ``(loss, applied)``; not applied when the loss or a gradient
        is not finite, or the loss raised a linear-algebra error (a Cholesky factor of a
        matrix an update left indefinite): then the parameters are as described above."""
        svi = self.svi
        try:
            with poutine.trace(param_only=True) as capture, warnings.catch_warnings():
                # Pyro's "Encountered NaN" warning: the status and NonFiniteLossError say it
                warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                loss = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
        except torch.linalg.LinAlgError as err:
            self.error = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            self._restore()
            pyro.infer.util.zero_grads({p for _, p in pyro.get_param_store().named_parameters()})
            return math.nan, False
        stepped = {  # what SVI.step hands the optimiser: the parameters of the sites
            value.unconstrained()
            for site in capture.trace.nodes.values()
            if (value := site["value"]) is not None
        }
        value = float(loss[0] if isinstance(loss, tuple) else loss)  # e.g. RWS's pair
        checks = [torch.isfinite(p.grad).all() for p in stepped if p.grad is not None]
        applied = math.isfinite(value) and (not checks or bool(torch.stack(checks).all()))
        if applied:
            self._save()
            svi.optim(stepped)
        elif not math.isfinite(value):
            self._restore()  # back to the parameters of the last finite loss
        pyro.infer.util.zero_grads(stepped)
        return value, applied

    def _save(self) -> None:
        """Copy every parameter of the store, by name: the sites' and any other (e.g. the
        decaying-average baselines an ELBO replaces with a new tensor every step)."""
        named = list(pyro.get_param_store().named_parameters())
        names, params = tuple(name for name, _ in named), [p for _, p in named]
        same = names == self._names and all(
            p.shape == s.shape for p, s in zip(params, self._saved, strict=True)
        )
        if not same:
            self._names = names
            self._saved = [torch.empty_like(p, requires_grad=False) for p in params]
        if params:  # a guide without parameters has nothing to keep
            with torch.no_grad():
                torch._foreach_copy_(self._saved, [p.detach() for p in params])

    def _params(self) -> list[torch.Tensor]:
        """The store's current tensors of the saved names (replaced ones included)."""
        current = dict(pyro.get_param_store().named_parameters())
        return [current[name].detach() for name in self._names]

    def _restore(self) -> None:
        if self._saved:
            with torch.no_grad():
                torch._foreach_copy_(self._params(), self._saved)

    def finish(self) -> bool:
        """After the last step: False, with the parameters put back to those before the last
        update, when that update left one non-finite (no later loss would have shown it)."""
        if not self._saved:
            return True
        checks = [torch.isfinite(p).all() for p in self._params()]
        if bool(torch.stack(checks).all()):
            return True
        self._restore()
        return False


def _load_params(saved: ParamState) -> None:
    """Restore a saved param store *in place*: parameters already in the store (e.g. those of
    a ``torch.nn`` module registered with ``pyro.module``, which keeps its own tensors) get
    the saved values copied into them; the others are added. A parameter of another shape (a
    checkpoint of another model) is refused."""
    store = pyro.get_param_store()
    existing = dict(store.named_parameters())
    rest = ParamState(params={}, constraints={})
    with torch.no_grad():
        for name, value in saved["params"].items():
            if name in existing:
                if existing[name].shape != value.shape:
                    raise ValueError(
                        f"parameter {name!r} has shape {tuple(value.shape)} there but "
                        f"{tuple(existing[name].shape)} here"
                    )
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
    num_points: int | None = None,
) -> None:
    state = {
        "num_points": num_points,
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


def _guide_sampler(
    guide: Callable, model_obj: AlignmentModel, data: Any
) -> Callable[[int], PosteriorDraws]:
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
    model_obj: AlignmentModel,
    data: Any,
    *,
    structure: ModelStructure | None = None,
    num_steps: int = 1000,
    lr: float | None = None,
    optim: PyroOptim | None = None,
    subsample_size: int | None = None,
    batches: Batches | None = None,
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
    A method of several phases (:meth:`InferenceMethod.phases`, e.g. Dirichlet after Jensen
    pre-training) runs them one after another, each going on with the next batches.
    """
    structure = inspect_model(model_obj, data) if structure is None else structure
    if lr is not None and optim is not None:
        raise ValueError("pass lr or optim, not both (optim carries its own learning rate)")
    lr = 0.05 if lr is None and optim is None else lr
    check_svi_options(
        num_steps=num_steps,
        lr=lr,
        subsample_size=subsample_size,
        num_points=model_obj.num_points(data),
    )
    _check_int(checkpoint_every, "checkpoint_every", 1)
    if batches is not None and subsample_size is not None:
        raise ValueError("pass either batches or subsample_size, not both")
    if batches is not None and getattr(model_obj, "create_plates", None) is None:
        raise ValueError(
            f"batches= needs a model whose guide can follow batches of another size: define "
            f"create_plates(data) on {structure.model} returning its data plate(s) for this "
            "data (see PointMixtureModel), or step on subsamples with subsample_size="
        )
    phases = method.phases(num_steps)
    for phase, _ in phases:
        phase.check(structure, subsample_size=subsample_size)
        if (
            batches is not None
            and guide is None
            and phase.guide_spec().kind in LOCAL_KINDS
            and not structure.has_encoder
        ):
            raise ValueError(
                f"{phase.name} on {structure.model} keeps one q(z) per point of data, which "
                "mini-batches from batches= cannot be matched to; give the model an amortized "
                "encoder (encoder=...), or step on subsamples with subsample_size="
            )
    if checkpoint is not None:
        _check_checkpoint_path(Path(checkpoint))
    if seed is not None:
        pyro.set_rng_seed(seed)
    result: FitResult | None = None
    offset = 0
    for index, (phase, steps) in enumerate(phases):
        last = index == len(phases) - 1
        try:
            part = _svi_phase(
                phase,
                model_obj,
                data,
                num_steps=steps,
                lr=lr,
                optim=optim if last else None,
                subsample_size=subsample_size,
                batches=batches,
                batch_offset=offset,
                progress=progress,
                checkpoint=checkpoint if last else None,
                checkpoint_every=checkpoint_every,
                resume=resume,
                guide=guide if last else None,
                seed=seed,
            )
        except NonFiniteLossError as err:
            if result is not None:
                err.result = _prepend(result, err.result)
            err.result.method = method
            raise
        offset += part.steps
        result = part if result is None else _prepend(result, part)
    assert result is not None
    result.method = method
    return result


def _prepend(first: FitResult, result: FitResult) -> FitResult:
    """``result`` with the earlier phase ``first`` counted in."""
    result.losses = first.losses + result.losses
    result.steps += first.steps
    result.seconds += first.seconds
    result.points_seen += first.points_seen
    result.extra["step_points"] = first.extra["step_points"] + result.extra["step_points"]
    result.extra["pretrain_steps"] = first.steps
    return result


def _initialize(model_obj: AlignmentModel, data: Any, seed: int | None) -> None:
    """``model_obj.initialize(data)``, with the run's ``seed`` where the model takes one (the
    k-means++ starts of the mixtures), so that each seed of a comparison starts elsewhere."""
    if "seed" in inspect.signature(model_obj.initialize).parameters:
        model_obj.initialize(data, seed=0 if seed is None else seed)  # type: ignore[call-arg]
    else:
        model_obj.initialize(data)


def _svi_phase(
    method: InferenceMethod,
    model_obj: AlignmentModel,
    data: Any,
    *,
    num_steps: int,
    lr: float | None,
    optim: PyroOptim | None,
    subsample_size: int | None,
    batches: Batches | None,
    batch_offset: int,
    progress: bool,
    checkpoint: str | Path | None,
    checkpoint_every: int,
    resume: bool,
    guide: Callable | None,
    seed: int | None,
) -> FitResult:
    """One SVI run of ``num_steps`` steps (see :func:`svi_fit`)."""
    _initialize(model_obj, data, seed)
    guide = method.guide(model_obj) if guide is None else guide
    model_fn = method.prepare(model_obj.model)
    optim = ClippedAdam({"lr": 0.05 if lr is None else lr}) if optim is None else optim
    loss = method.loss(model_obj.max_plate_nesting)
    kwargs = {} if subsample_size is None else {"subsample_size": subsample_size}
    svi = SVI(model_fn, guide, optim, loss)
    poutine.block(guide)(data, **kwargs)  # create the guide's parameters before any resume

    losses: list[float] = []
    start, seconds_before, points_before = 0, 0.0, 0
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None and resume and checkpoint.exists():
        try:
            state = torch.load(checkpoint, weights_only=False)
        except Exception as err:
            raise ValueError(
                f"checkpoint {checkpoint} is not a checkpoint of fit() ({type(err).__name__}); "
                "pass another path, or resume=False to overwrite it"
            ) from None
        if not isinstance(state, dict) or "method" not in state:
            raise ValueError(f"checkpoint {checkpoint} is not a checkpoint of fit()")
        points = state.get("num_points")
        if points is not None and points != model_obj.num_points(data):
            raise ValueError(
                f"checkpoint {checkpoint} was written for {points} data points, not "
                f"{model_obj.num_points(data)}; pass another checkpoint path or resume=False"
            )
        if state["method"] != method.name:
            raise ValueError(
                f"checkpoint {checkpoint} was written by method {state['method']!r}, not "
                f"{method.name!r}; pass another checkpoint path or resume=False"
            )
        try:
            _load_params(state["params"])
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"checkpoint {checkpoint} does not fit this model ({str(err).splitlines()[0]}); "
                "pass another checkpoint path or resume=False"
            ) from None
        if state["optim"] is not None:
            optim.set_state(state["optim"])
        pyro.util.set_rng_state(state["rng"])
        start, losses, seconds_before = state["step"], list(state["losses"]), state["seconds"]
        points_before = state.get("points_seen", 0)

    points_per_step = model_obj.num_points(data) if subsample_size is None else subsample_size
    stream = None if batches is None else batch_stream(batches, batch_offset + start)
    points_seen = points_before
    step_points: list[int] = []
    status = "ok"
    guarded_step = GuardedStep(svi)
    # torch imports torch._dynamo when the first optimiser of a process is built (~1 s on a
    # laptop CPU): a one-time cost, not the first method's training time
    importlib.import_module("torch._dynamo")
    t0 = time.perf_counter()
    bar = tqdm(range(start, num_steps), desc=method.name, disable=not progress, leave=False)
    for step in bar:
        if stream is None:
            step_data = data
        else:
            step_data = model_obj.check_data(next(stream))
            points_per_step = model_obj.num_points(step_data)
        # Pyro's argument and support checks on the first step of a run only: later steps
        # trace the same model and guide on data check_data has already checked
        with pyro.validation_enabled(is_validation_enabled() and step == start):
            value, applied = guarded_step(step_data, **kwargs)
        if not applied:
            what = "loss" if not math.isfinite(value) else "gradient"
            cause = f" ({guarded_step.error})" if guarded_step.error else ""
            status = (
                f"warn: non-finite {what} at step {step}{cause}; the parameters of the last "
                "finite loss are kept"
            )
            break
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
                model_obj.num_points(data),
            )
    if status == "ok" and not guarded_step.finish():
        status = (
            "warn: the last update left a parameter non-finite; the parameters before it are kept"
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
            model_obj.num_points(data),
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
            f"{method.name} on {model_obj.name}: {status[len('warn: ') :]}. Lower the learning "
            f"rate (lr={lr}), use float64 data, or (gumbel) raise the temperature",
            result,
        )
    return result


def closed_form_fit(
    method: Any,
    model_obj: AlignmentModel,
    data: Any,
    *,
    structure: ModelStructure | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> FitResult:
    """Run the model's closed-form update named by ``method.update`` (see
    :meth:`~pyro_attention.models.AlignmentModel.closed_form_updates`)."""
    update = model_obj.closed_form_updates()[method.update]
    t0 = time.perf_counter()
    state = update(
        data,
        max_iter=method.max_iter,
        tol=method.tol,
        seed=0 if seed is None else seed,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    n = model_obj.num_points(data)

    def sampler(num_samples: int) -> PosteriorDraws:
        samples, log_density = state.sample_globals(num_samples)
        return PosteriorDraws(samples, log_density, point_estimate=method.point_estimate)

    return FitResult(
        method=method,
        losses=[-float(value) for value in state.objective_per_iteration()],
        steps=state.n_iter,
        seconds=seconds,
        points_seen=state.n_iter * n,
        sampler=sampler,
        state=state,
        status="ok" if state.converged else f"warn: not converged after {state.n_iter} iterations",
    )


def nuts_fit(
    method: Any,
    model_obj: AlignmentModel,
    data: Any,
    *,
    structure: ModelStructure | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> FitResult:
    """NUTS over the globals with the alignments enumerated; chains run one after another.

    The status is ``warn`` when a site's split R-hat exceeds ``method.max_rhat``, its bulk
    effective sample size falls below ``method.min_ess``, or a transition diverged; the row
    keeps ``max_rhat``, ``min_ess`` and ``divergences`` in ``extra``.
    """
    run_data = data.double() if method.float64 and data.is_floating_point() else data
    _initialize(model_obj, run_data, seed)
    model_fn = method.prepare(model_obj.model)
    chains: list[dict[str, torch.Tensor]] = []
    diverging = []
    t0 = time.perf_counter()
    for chain in range(method.num_chains):
        pyro.set_rng_seed((0 if seed is None else seed) + chain)
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
    diagnostics = mcmc_diagnostics(grouped, torch.stack(diverging))
    problems = []
    if diagnostics["max_rhat"] > method.max_rhat:
        problems.append(f"R-hat {diagnostics['max_rhat']:.3g} > {method.max_rhat}")
    if diagnostics["min_ess"] < method.min_ess:
        problems.append(f"ESS {diagnostics['min_ess']:.3g} < {method.min_ess:g}")
    if diagnostics["divergences"]:
        problems.append(f"{diagnostics['divergences']} divergent transitions")

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
        status="warn: " + ", ".join(problems) if problems else "ok",
        chains=grouped,
        extra={"diverging": torch.stack(diverging), **diagnostics},
    )


def mcmc_diagnostics(chains: dict[str, torch.Tensor], diverging: torch.Tensor) -> dict[str, Any]:
    """Worst split R-hat (Pyro's) and bulk ESS (ArviZ's, rank-normalised) over every element
    of every site, and the divergences.

    :param chains: ``{site: (chains, draws, ...)}``; :param diverging: ``(chains, draws)``.
    R-hat needs two chains or more (NaN with one); an ESS too few draws leave undefined is 0.
    """
    rhats, esses = [], []
    for value in chains.values():
        flat = value.double().reshape(*value.shape[:2], -1)
        if flat.shape[-1] == 0:
            continue
        if flat.shape[0] > 1 and flat.shape[1] > 3:
            rhats.append(split_gelman_rubin(flat, chain_dim=0, sample_dim=1).nan_to_num(1.0).max())
        # ArviZ's rank-normalised bulk ESS (Vehtari et al. 2021); undefined (too few draws) is 0
        ess = arviz_stats.ess(flat.cpu().numpy(), method="bulk")
        esses.append(float(np.nan_to_num(ess, nan=0.0).min()))
    return {
        "max_rhat": float(torch.stack(rhats).max()) if rhats else math.nan,
        "min_ess": min(esses) if esses else math.nan,
        "divergences": int(diverging.sum()),
    }


#: the loops that execute methods, by :attr:`InferenceMethod.runner`
RUNNERS: dict[str, Runner] = {"svi": svi_fit, "closed-form": closed_form_fit, "mcmc": nuts_fit}
#: the options :func:`fit` accepts per runner
RUNNER_OPTIONS: dict[str, frozenset[str]] = {
    "svi": frozenset(
        {
            "num_steps",
            "lr",
            "optim",
            "subsample_size",
            "batches",
            "seed",
            "progress",
            "checkpoint",
            "checkpoint_every",
            "resume",
            "guide",
        }
    ),
    "closed-form": frozenset({"seed", "progress"}),
    "mcmc": frozenset({"seed", "progress"}),
}
