"""Effect handlers that rewrite :func:`~pyro_attention.alignment.alignment` sites.

Each handler turns the ``Categorical(logits)`` of every alignment site into another
distribution over the same choice, so one model serves every inference method:

* :class:`soft` — ``z`` becomes its mean :math:`E_p[z] = \\mathrm{softmax}(\\ell)`, a
  deterministic site (classic soft attention; Bahdanau et al. 2015).
* :class:`relax` — ``z`` becomes one-hot (``OneHotCategorical``) when ``straight_through``
  (the guide then uses a straight-through Gumbel-softmax, Jang et al. 2017), or a
  ``RelaxedOneHotCategorical(τ)`` (the Concrete distribution, Maddison et al. 2017).
* :class:`dirichlet` — ``z`` becomes a point on the simplex,
  :math:`z \\sim \\mathrm{Dir}(c K \\,\\mathrm{softmax}(\\ell))` (Deng et al. 2018, §3).
* :func:`enumerate_alignments` — every alignment site marked for Pyro's parallel enumeration.
* :class:`gp_mean` — every GP noise site (:func:`~pyro_attention.gp.gp_noise`) set to 0, so a
  sparse-GP layer outputs its posterior mean: the point-estimate kernel attention.

Example::

    soft_model = soft()(model)            # or: with relax(0.5): model(data)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import InferDict, Message

from pyro_attention.alignment import has_chained_alignments, is_alignment_site
from pyro_attention.distributions import ClampedDirichlet
from pyro_attention.gp import is_gp_noise_site, is_variational_term


def enumerate_alignments(model: Callable) -> Callable:
    """``model`` with every alignment site marked for parallel enumeration
    (``infer={"enumerate": "parallel"}``), as ``TraceEnum_ELBO`` and the evaluator need."""

    def config(site: Message) -> InferDict:
        return {"enumerate": "parallel"} if is_alignment_site(site) else {}

    return poutine.infer_config(model, config)


def has_chained_alignment_sites(
    model: Callable, *args: Any, first_available_dim: int, **kwargs: Any
) -> bool:
    """Whether some alignment site of ``model`` depends on another: one run with every
    alignment enumerated (dims from ``first_available_dim`` leftwards), hidden from outer
    handlers, read by :func:`~pyro_attention.alignment.has_chained_alignments`."""
    enumerated = poutine.enum(enumerate_alignments(model), first_available_dim=first_available_dim)
    with torch.no_grad():
        trace = poutine.block(poutine.trace(enumerated).get_trace)(*args, **kwargs)
    return has_chained_alignments(trace)


class _AlignmentRewriter(Messenger):
    """Base class: apply :meth:`_rewrite` to every alignment sample site."""

    def _pyro_sample(self, msg: Message) -> None:
        if not is_alignment_site(msg) or msg.get("_alignment_rewritten"):
            return
        if msg["is_observed"]:
            raise ValueError(
                f"alignment site {msg['name']!r} is observed; {type(self).__name__}() rewrites "
                "latent alignments only: remove obs= or do not apply the handler"
            )
        # the site's function is the Categorical that alignment() made
        self._rewrite(msg, cast(dist.Categorical, msg["fn"]))
        # a private flag of this module, unknown to pyro's Message type
        cast(dict, msg)["_alignment_rewritten"] = True

    def _rewrite(self, msg: Message, fn: dist.Categorical) -> None:
        """Replace ``msg["fn"]`` (and possibly its value); each handler defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define _rewrite")


def _probs(fn: dist.Categorical) -> torch.Tensor:
    return torch.softmax(fn.logits.float() if fn.logits.dtype != torch.float64 else fn.logits, -1)


class soft(_AlignmentRewriter):
    """Replace each alignment by its prior mean, a deterministic point on the simplex."""

    def _rewrite(self, msg: Message, fn: dist.Categorical) -> None:
        probs = _probs(fn)
        msg["fn"] = dist.Delta(probs, event_dim=1)
        msg["value"] = probs
        msg["is_observed"] = True
        infer = msg["infer"]
        if infer is None:  # pyro.sample always makes a dict
            raise ValueError(f"alignment site {msg['name']!r} has infer=None; pass a dict")
        msg["infer"] = {**infer, "_deterministic": True}


class relax(_AlignmentRewriter):
    """Relax each alignment for pathwise gradients (Gumbel-softmax).

    :param temperature: τ of the relaxed guide (and of the Concrete prior when
        ``straight_through=False``); τ → 0 approaches the discrete choice. In float32 keep
        τ ≳ 0.3: smaller values overflow.
    :param straight_through: if True (default) the model keeps a discrete one-hot site
        (``OneHotCategorical``) and the guide samples exactly one-hot vectors whose gradient is
        that of the relaxed sample; the objective is then the true ELBO. If False both model and
        guide use the Concrete density on the simplex: a relaxed model whose bias vanishes as
        τ → 0.
    """

    def __init__(self, temperature: float = 0.5, straight_through: bool = True) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__()
        self.temperature = float(temperature)
        self.straight_through = straight_through

    def _rewrite(self, msg: Message, fn: dist.Categorical) -> None:
        if self.straight_through:
            msg["fn"] = dist.OneHotCategorical(logits=fn.logits, validate_args=False)
        else:
            msg["fn"] = dist.RelaxedOneHotCategorical(
                fn.logits.new_tensor(self.temperature), logits=fn.logits, validate_args=False
            )


#: floor of Dirichlet concentrations (model and guide): below it, float32 Gamma draws underflow
#: and a peaked prior (after pre-training) gave non-finite ELBOs within 30 steps
MIN_CONCENTRATION = 0.05


class dirichlet(_AlignmentRewriter):
    """Relax each alignment to a Dirichlet on the simplex centred on the prior.

    .. math:: z \\sim \\mathrm{Dir}(\\alpha),\\quad \\alpha = c\\,K\\,\\mathrm{softmax}(\\ell)

    floored at :data:`MIN_CONCENTRATION`, so that ``c = 1`` with uniform logits is the flat
    Dirichlet and small ``c`` pushes samples to the corners (nearly one-hot).

    :param concentration: ``c > 0``.
    """

    def __init__(self, concentration: float = 1.0) -> None:
        if not concentration > 0:
            raise ValueError(f"concentration must be positive, got {concentration}")
        super().__init__()
        self.concentration = float(concentration)

    def _rewrite(self, msg: Message, fn: dist.Categorical) -> None:
        probs = _probs(fn)
        alpha = (self.concentration * probs.shape[-1] * probs).clamp(min=MIN_CONCENTRATION)
        msg["fn"] = ClampedDirichlet(alpha, validate_args=False)


class gp_mean(Messenger):
    """Set every GP noise site to 0: a Gaussian-process layer then outputs its posterior mean
    :math:`m(u)`, a deterministic (point-estimate) kernel attention.

    The site becomes an observed ``Delta`` at 0 (log-density 0, marked ``_deterministic``), so it
    adds nothing to any objective and the guide need not sample it. Variational terms
    (:func:`~pyro_attention.gp.variational_term`, the KL of posteriors a point estimate does not
    have) are set to 0 too.
    """

    def _pyro_sample(self, msg: Message) -> None:
        if is_variational_term(msg):
            log_factor = cast(dist.Unit, msg["fn"]).log_factor
            msg["fn"] = dist.Unit(torch.zeros_like(log_factor))
            return
        if not is_gp_noise_site(msg):
            return
        fn = msg["fn"]
        zero = getattr(fn, "mean", None)
        if not isinstance(zero, torch.Tensor):
            raise ValueError(f"GP noise site {msg['name']!r} has no mean to fix it at")
        event_dim = len(getattr(fn, "event_shape", ()))
        msg["fn"] = dist.Delta(torch.zeros_like(zero), event_dim=event_dim)
        msg["value"] = torch.zeros_like(zero)
        msg["is_observed"] = True
        msg["infer"] = {**(msg["infer"] or {}), "_deterministic": True}
