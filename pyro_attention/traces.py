"""Trace helpers shared by the guides, the custom ELBOs and the evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.params.param_store import StateDict
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample

from pyro_attention.gp import is_variational_term


def site_dist(site: Message) -> Any:
    """The distribution of a sample site (Pyro types it as any callable)."""
    return cast(TorchDistributionMixin, site["fn"])


def site_infer(site: Message) -> dict[str, Any]:
    """The ``infer`` dict of a site (``{}`` where Pyro left ``None``)."""
    return cast(dict, site.get("infer") or {})


def site_value(site: Message) -> torch.Tensor:
    """The value of a sample site (Pyro types it as optional)."""
    value = site["value"]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"site {site['name']!r} has no tensor value")
    return value


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


def observed_sites(trace: poutine.Trace) -> list[Message]:
    """The observed sample sites of ``trace`` (not those made deterministic by a handler, nor
    variational terms)."""
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample"
        and site["is_observed"]
        and not site_infer(site).get("_deterministic")
        and not is_variational_term(site)
    ]


def local_log_joint(
    trace: poutine.Trace, exclude: set[str] | frozenset[str] = frozenset()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum of the log-probabilities of the observed and enumerated sites of a trace.

    Run on a trace made under ``poutine.enum`` (after ``trace.compute_log_prob()``), it is
    :math:`\\log p(x, z \\mid \\theta)` for every enumerated value of every alignment, with the
    enumeration dims on the left of the plate dims. Variational terms
    (:func:`~pyro_attention.gp.variational_term`) belong to an ELBO, not to the likelihood, and
    are left out.

    :param trace: the enumerated trace.
    :param exclude: sites to leave out (e.g. the conditioned globals).
    :returns: the sum, and the union of the observed sites' masks (``None`` if unmasked).
    """
    total: torch.Tensor | float = 0.0
    keep: torch.Tensor | None = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name in exclude or site_is_subsample(site):
            continue
        if is_variational_term(site):
            continue
        if site["is_observed"] or site_infer(site).get("_enumerate_dim") is not None:
            total = total + site["log_prob"]
            if site["is_observed"] and isinstance(site["mask"], torch.Tensor):
                keep = site["mask"] if keep is None else keep | site["mask"]
    return torch.as_tensor(total), keep


@contextlib.contextmanager
def own_param_store() -> Iterator[StateDict]:
    """Run the block in an empty Pyro param store; yields the state it leaves behind.

    Unlike ``ParamStoreDict.scope`` the state is filled in even when the block raises, so a fit
    that stops on a non-finite loss keeps its parameters. The caller's store is restored.
    """
    store = pyro.get_param_store()
    saved = store.get_state()
    state = StateDict(params={}, constraints={})
    store.clear()
    try:
        yield state
    finally:
        state.update(store.get_state())
        store.clear()
        store.set_state(saved)
