"""What a model has, read from one trace of it: the half of the model/method contract that
models state.

:func:`inspect_model` runs the model once on its data (globals drawn from their priors) and
sorts its latent sites; a method's requirements (:mod:`pyro_attention.infer.methods`) are
checked against the :class:`ModelStructure` it returns, so which methods apply to a model is
derived, never listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_attention.alignment import is_alignment_site
from pyro_attention.handlers import has_chained_alignment_sites
from pyro_attention.traces import own_param_store, site_dist, site_infer

if TYPE_CHECKING:
    from pyro_attention.models.base import AlignmentModel


@dataclass(frozen=True)
class ModelStructure:
    """The sites and capabilities of one model, as a method sees them.

    :ivar model: the model's name.
    :ivar alignment_sites: discrete choices written with
        :func:`~pyro_attention.alignment.alignment` (summed, sampled or relaxed by the methods).
    :ivar discrete_sites: other discrete latent sites (enumerated by the evaluator only).
    :ivar global_sites: continuous latent sites outside every vectorized plate.
    :ivar local_sites: continuous latent sites inside a plate (one per data point or sequence).
    :ivar network_parameters: ``pyro.param`` / ``pyro.module`` parameters of the model itself
        (point-estimated by the gradient methods).
    :ivar closed_form_updates: names of the model's closed-form updates (``"cavi"``, ``"em"``).
    :ivar has_encoder: the model amortizes its local guides (mini-batches from ``batches=``).
    :ivar accepts_subsample_size: ``model(data, subsample_size=...)`` works (mini-batches).
    :ivar max_plate_nesting: plates nested in the deepest site.
    :ivar site_shapes: ``{site: "dtype shape"}`` of every sample site, observed ones included,
        e.g. ``{"weights": "float32 (4,)"}``: the model's size and precision on this data.
    :ivar chained_alignments: the prior of an alignment site depends on another alignment
        site's value (a chain written in ``pyro.markov``): found by enumerating the model once,
        where such a site's distribution carries the other site's enumeration dim.
    """

    model: str
    alignment_sites: tuple[str, ...]
    discrete_sites: tuple[str, ...]
    global_sites: tuple[str, ...]
    local_sites: tuple[str, ...]
    network_parameters: tuple[str, ...]
    closed_form_updates: frozenset[str]
    has_encoder: bool
    accepts_subsample_size: bool
    max_plate_nesting: int
    site_shapes: tuple[tuple[str, str], ...] = ()
    chained_alignments: bool = False


def trace_model(model_obj: AlignmentModel, data: Any, *, log_prob: bool = False) -> poutine.Trace:
    """One run of ``model_obj.model(data)`` (globals from their priors), hidden from outer
    handlers, with its log-probabilities if ``log_prob`` (which checks the data against each
    likelihood's support); a model that fails on ``data`` is refused with a ``ValueError``."""
    try:
        with torch.no_grad(), own_param_store():  # network parameters stay out of the store
            trace = poutine.block(poutine.trace(model_obj.model).get_trace)(data)
            if log_prob:
                trace.compute_log_prob()
            return trace
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
        first = lines[0]
        if first.endswith(":") and len(lines) > 1:  # Pyro's "Error ... at site 'obs':" + why
            first = f"{first} {lines[1]}"[:300]
        half = isinstance(data, torch.Tensor) and data.dtype in (torch.float16, torch.bfloat16)
        raise ValueError(
            f"{model_obj.name}: the model fails on this data ({type(err).__name__}: {first}); "
            "check the data (NaN, values outside the likelihood's support, the shape and type "
            "the model expects) and the model's own arguments to its distributions"
            + (f"; the data are {data.dtype}: use data.float()" if half else "")
        ) from err


def chained_alignments(model_obj: AlignmentModel, data: Any, nesting: int) -> bool:
    """Whether some alignment site's prior depends on another alignment site
    (:func:`~pyro_attention.handlers.has_chained_alignment_sites`; the enumeration dims start
    left of ``nesting`` plates), network parameters kept out of the param store."""
    with own_param_store():
        return has_chained_alignment_sites(
            model_obj.model, data, first_available_dim=-(nesting + 1)
        )


def plate_nesting(trace: poutine.Trace) -> int:
    """The number of vectorized plates around the deepest site of ``trace``."""
    return max(
        (
            -frame.dim
            for site in trace.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.vectorized and frame.dim is not None
        ),
        default=0,
    )


def inspect_model(model_obj: AlignmentModel | Callable[..., Any], data: Any) -> ModelStructure:
    """Trace ``model_obj`` (a model or a Pyro model function) once on ``data`` and sort its
    sites (see :class:`ModelStructure`)."""
    from pyro_attention.models.base import as_model

    model_obj = as_model(model_obj)
    trace = trace_model(model_obj, data)
    alignments, discrete, globals_, locals_, params = [], [], [], [], []
    shapes = []
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and isinstance(site["value"], torch.Tensor):
            dtype = str(site["value"].dtype).removeprefix("torch.")
            shapes.append((name, f"{dtype} {tuple(site['value'].shape)}"))
        if site["type"] == "param":
            params.append(name)
            continue
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site_infer(site).get("_deterministic"):
            continue
        if is_alignment_site(site):
            alignments.append(name)
        elif site_dist(site).support.is_discrete:
            discrete.append(name)
        elif any(frame.vectorized for frame in site["cond_indep_stack"]):
            locals_.append(name)
        else:
            globals_.append(name)
    nesting = plate_nesting(trace)
    return ModelStructure(
        model=model_obj.name,
        alignment_sites=tuple(alignments),
        discrete_sites=tuple(discrete),
        global_sites=tuple(globals_),
        local_sites=tuple(locals_),
        network_parameters=tuple(params),
        closed_form_updates=frozenset(model_obj.closed_form_updates()),
        has_encoder=model_obj.encoder is not None,
        accepts_subsample_size=model_obj.accepts_subsample_size(),
        max_plate_nesting=nesting,
        site_shapes=tuple(shapes),
        chained_alignments=len(alignments) > 1 and chained_alignments(model_obj, data, nesting),
    )


def check_nesting(model_obj: AlignmentModel, structure: ModelStructure) -> None:
    """Refuse a model whose plates nest deeper than its ``max_plate_nesting`` says."""
    if structure.max_plate_nesting > model_obj.max_plate_nesting:
        raise ValueError(
            f"{structure.model} nests {structure.max_plate_nesting} plates but declares "
            f"max_plate_nesting={model_obj.max_plate_nesting}; set the class attribute "
            f"max_plate_nesting = {structure.max_plate_nesting}"
        )
