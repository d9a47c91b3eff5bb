"""Trace helpers shared by the custom ELBOs and the evaluation."""

from __future__ import annotations

from collections.abc import Callable

from pyro import poutine


def guide_and_model_traces(
    model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[poutine.Trace, poutine.Trace]:
    """``(model_trace, guide_trace)``: the guide run, the model replayed against it, both with
    log-probabilities computed (the guide's score parts too)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    return model_trace, guide_trace


def observed_sites(trace: poutine.Trace) -> list[dict]:
    """The observed sample sites of ``trace`` (not those made deterministic by a handler)."""
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("_deterministic")
    ]
