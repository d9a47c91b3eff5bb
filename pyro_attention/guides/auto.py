"""An autoguide that gives any model with ``alignment`` sites the guide each method needs.

:class:`AutoAlignmentGuide` traces the model once, splits its latent sites into
*alignment sites* (made by :func:`~pyro_attention.alignment.alignment`) and the other
(continuous, global) latents, and builds

* for the other latents: an :class:`~pyro.infer.autoguide.AutoNormal` (or a factory the user
  passes, e.g. ``AutoDelta`` or ``AutoMultivariateNormal``) over the model with the alignment
  sites hidden;
* for each alignment site, by the kind of the :class:`GuideSpec` (each method has one):

  ==============  ============================================================================
  ``marginalized``  nothing: the model enumerates the site (``enum``, ``nuts``)
  ``deterministic`` nothing: the method makes the site deterministic (``soft``)
  ``prior``         :math:`q(z) = p(z \\mid \\theta)`, the model's own prior (``hard``,
                    ``hard-sample``; summed in the guide for ``hard-enum``)
  ``categorical``   mean-field :math:`q(z_n) = \\mathrm{Cat}(\\phi_n)`, sampled (``reinforce``,
                    ``rws``)
  ``enumerated``    the same, summed in the guide (``vi-enum``)
  ``relaxed``       :math:`\\mathrm{RelaxedOneHotCategorical[StraightThrough]}(\\tau, \\phi_n)`
                    (``gumbel``)
  ``dirichlet``     :math:`\\mathrm{Dir}(\\alpha_n)` (``dirichlet``)
  ==============  ============================================================================

GP noise sites (:func:`~pyro_attention.gp.gp_noise`) are drawn from their own prior
:math:`\\mathcal N(0, I)`, so they cancel from every ELBO; their event shape is the model's
``noise_event_shape(site_name, *args, **kwargs)`` where the model has one (it changes with the
data), else the prototype's. With ``GuideSpec(point_estimate=True)`` the globals are an
``AutoDelta`` and the noise sites are left to the model (a MAP fit).

Local parameters have the full size of each plate and are indexed by the plate's subsample,
so the guide works with mini-batches. With an ``encoder`` the local parameters are amortized:
``encoder(site_name, plates, *args, **kwargs)`` returns the logits for the current subsample
(``plates[name].indices`` gives it). All parts share one set of plates.

Example::

    guide = AutoAlignmentGuide(model, "categorical")
    svi = SVI(model, guide, Adam({"lr": 0.05}), TraceGraph_ELBO())
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoNormal
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible, init_to_sample
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.runtime import InferDict, Message

from pyro_attention.alignment import is_alignment_site
from pyro_attention.distributions import ClampedDirichlet, StraightThroughCategorical
from pyro_attention.gp import GP_NOISE, is_gp_noise_site
from pyro_attention.handlers import (
    MIN_CONCENTRATION,
    enumerate_alignments,
    has_chained_alignment_sites,
)
from pyro_attention.traces import local_log_joint, site_dist, site_infer, site_value

ALIGNMENT_GUIDE_KINDS = (
    "marginalized",
    "deterministic",
    "prior",
    "categorical",
    "enumerated",
    "relaxed",
    "dirichlet",
)
#: guide kinds with a q(z) per alignment: a parameter per data point, unless amortized
LOCAL_KINDS = ("categorical", "enumerated", "relaxed", "dirichlet")

#: ``(site_name, batch_shape, features, plates, args, kwargs) -> infer dict`` (baselines)
SiteInfer = Callable[..., dict]


@dataclass(frozen=True)
class GuideSpec:
    """What an inference method asks of the guide.

    :param kind: what is built for the alignment sites (one of :data:`ALIGNMENT_GUIDE_KINDS`,
        table above).
    :param enumerate: sum the guide's alignment sites exactly (``TraceEnum_ELBO`` with
        guide-side enumeration); always on for ``"enumerated"``.
    :param temperature: τ of the ``"relaxed"`` kind.
    :param straight_through: the ``"relaxed"`` kind draws hard one-hot samples with relaxed
        gradients (:class:`~pyro_attention.distributions.StraightThroughCategorical`), else
        the Concrete distribution.
    :param site_infer: extra ``infer`` entries for each guide alignment site (e.g. a
        baseline of :mod:`pyro_attention.infer.baselines`).
    :param point_estimate: the global latents are points (``AutoDelta``: MAP) and GP noise sites
        are not sampled (the method fixes them at their mean, :class:`~pyro_attention.handlers.
        gp_mean`).
    """

    kind: str = "marginalized"
    enumerate: bool = False
    temperature: float = 0.5
    straight_through: bool = True
    site_infer: SiteInfer | None = None
    point_estimate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ALIGNMENT_GUIDE_KINDS:
            raise ValueError(
                f"guide kind {self.kind!r} is unknown; expected one of {ALIGNMENT_GUIDE_KINDS}"
            )


def as_guide_spec(spec: Any) -> GuideSpec:
    """A :class:`GuideSpec` from a spec, a kind name, or an object with ``guide_spec()`` (an
    inference method)."""
    if isinstance(spec, GuideSpec):
        return spec
    if isinstance(spec, str):
        return GuideSpec(kind=spec, enumerate=spec == "enumerated")
    if callable(getattr(spec, "guide_spec", None)):
        return as_guide_spec(spec.guide_spec())
    raise ValueError(
        f"expected a GuideSpec, a guide kind {ALIGNMENT_GUIDE_KINDS} or an inference method, "
        f"got {spec!r}"
    )


class AutoAlignmentGuide(AutoGuide):
    """Guide for a model with alignment sites, shaped for one inference method.

    :param model: a Pyro model whose discrete choices are ``alignment`` sites.
    :param spec: a :class:`GuideSpec`, a guide kind (``"marginalized"``, ``"categorical"``, ...,
        table above) or an inference method (whose ``guide_spec()`` is used).
    :param global_guide: the guide family of the other latent sites: an autoguide class
        (``AutoNormal``, ``AutoDelta``, ``AutoMultivariateNormal``,
        ``AutoLowRankMultivariateNormal``, built with ``init_loc_fn``) or a factory
        ``model -> guide`` (default ``AutoNormal(model, init_loc_fn=init_loc_fn,
        init_scale=init_scale)``).
    :param encoder: optional amortization ``encoder(site_name, plates, *args, **kwargs) ->
        logits``; a ``torch.nn.Module`` becomes a submodule of the guide, so its parameters
        are in the param store once, as ``"AutoAlignmentGuide.encoder$$$<name>"``.
    :param local_features: optional ``local_features(plates, *args, **kwargs) -> Tensor``,
        per-site inputs for neural baselines (for a mixture: the subsampled data points).
    :param local_mask: optional ``local_mask(site_name, *args, **kwargs) -> bool Tensor``, the
        mask the model applies to an alignment site (e.g. target padding); the guide masks its
        site the same way, so padded positions add no ``log q`` to the ELBO.
    :param init_loc_fn: initialisation of the global guide (Pyro's ``init_to_*`` functions).
    :param init_scale: initial scale of the default ``AutoNormal``.
    :param init_local: ``"posterior"`` (default) starts each local categorical at the
        posterior of its alignment given the initial globals (an E-step, by enumeration);
        ``"uniform"`` at uniform logits.
    :param create_plates: as for every Pyro autoguide, to control subsampling.
    :param noise_event_shape: optional ``noise_event_shape(site_name, *args, **kwargs) ->
        shape``, the event shape of a GP noise site for this call's data.
    """

    def __init__(
        self,
        model: Callable,
        spec: Any = "marginalized",
        *,
        global_guide: Callable[[Callable], Callable] | None = None,
        encoder: Callable | None = None,
        local_features: Callable | None = None,
        local_mask: Callable | None = None,
        init_loc_fn: Callable = init_to_feasible,
        init_scale: float = 0.1,
        init_local: str = "posterior",
        create_plates: Callable | None = None,
        noise_event_shape: Callable | None = None,
    ) -> None:
        super().__init__(model, create_plates=create_plates)
        self.spec = as_guide_spec(spec)
        self.noise_event_shape = noise_event_shape
        self.noise_sites: dict[str, dict] = {}
        self.kind = self.spec.kind
        self.local_features = local_features
        self.local_mask = local_mask
        self._global_guide_factory = global_guide
        self._init_loc_fn = init_loc_fn
        self._init_scale = init_scale
        if init_local not in ("posterior", "uniform"):
            raise ValueError(f"init_local must be 'posterior' or 'uniform', got {init_local!r}")
        self._init_local = init_local
        self.encoder = encoder
        self.global_guide: AutoGuide | None = None
        self.alignment_sites: dict[str, dict] = {}
        self.local = PyroModule()

    # ------------------------------------------------------------------ set-up
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        # as AutoGuide's, but with the globals at their initial values (no prior draws)
        def init(site: dict) -> torch.Tensor:
            if site["fn"].support.is_discrete:
                return init_to_sample(site)
            return self._init_loc_fn(site)

        model = poutine.block(InitMessenger(init)(self.model), self._prototype_hide_fn)
        self.prototype_trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        self._prototype_frames = {
            frame.name: frame
            for _, site in self.prototype_trace.iter_stochastic_nodes()
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        }
        self.alignment_sites = {
            name: site
            for name, site in self.prototype_trace.iter_stochastic_nodes()
            if is_alignment_site(site)
        }
        self.noise_sites = {
            name: site
            for name, site in self.prototype_trace.iter_stochastic_nodes()
            if is_gp_noise_site(site)
        }
        if self.kind == "prior" and len(self.alignment_sites) > 1:
            self._refuse_a_chain(args, kwargs)
        others = [
            name
            for name, site in self.prototype_trace.iter_stochastic_nodes()
            if name not in self.alignment_sites and name not in self.noise_sites
        ]
        if others:
            hidden = poutine.block(
                self.model, hide=list(self.alignment_sites) + list(self.noise_sites)
            )
            factory: Any = self._global_guide_factory
            guide: Any
            if self.spec.point_estimate:
                guide = AutoDelta(hidden, init_loc_fn=self._init_loc_fn)
            elif factory is None:
                guide = AutoNormal(
                    hidden, init_loc_fn=self._init_loc_fn, init_scale=self._init_scale
                )
            elif isinstance(factory, type) and issubclass(factory, AutoGuide):
                guide = factory(hidden, init_loc_fn=self._init_loc_fn)  # type: ignore[call-arg]
            else:
                guide = factory(hidden)
            guide.master = weakref.ref(self)
            self.global_guide = guide
        if self.kind in LOCAL_KINDS and self.encoder is None:
            for name, logits in self._initial_local_logits(args, kwargs).items():
                if self.kind == "dirichlet":
                    probs = torch.softmax(logits, -1)
                    alpha = (probs.shape[-1] * probs).clamp(min=MIN_CONCENTRATION)
                    param = PyroParam(alpha, constraint=constraints.positive, event_dim=1)
                else:
                    param = PyroParam(logits, event_dim=1)
                deep_setattr(self.local, name, param)

    def _refuse_a_chain(self, args: tuple, kwargs: dict) -> None:
        """The ``prior`` kind draws each alignment from its prior given the *model's* draws
        of the others, which is the prior only when the alignments are independent: refuse a
        chain (:func:`~pyro_attention.handlers.has_chained_alignment_sites`)."""
        nesting = max((-f.dim for f in self._prototype_frames.values()), default=0)
        dim = -(nesting + 1)
        if has_chained_alignment_sites(self.model, *args, first_available_dim=dim, **kwargs):
            raise ValueError(
                "the prior guide of AutoAlignmentGuide samples each alignment given the model's "
                "own draws of the others, which is not the prior of a chain of alignments: give "
                "the model a guide(spec) that samples the chain position by position "
                "(pyro_attention.guides.chain.AlignmentChainGuide), or use enum, reinforce or rws"
            )

    def _initial_local_logits(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """Logits of :math:`p(z \\mid x, \\theta_0)`, the posterior of each alignment given the
        initial globals (one E-step), computed by enumeration; uniform if a plate of the site is
        subsampled at set-up or ``init_local="uniform"``."""
        sites = self.alignment_sites
        logits = {n: s["fn"].logits.new_zeros(self._full_shape(s)) for n, s in sites.items()}
        subsampled = any(
            (frame.full_size or frame.size) != frame.size
            for site in sites.values()
            for frame in site["cond_indep_stack"]
        )
        if self._init_local != "posterior" or subsampled or not sites:
            return logits
        fixed = {
            name: site["value"]
            for name, site in self.prototype_trace.iter_stochastic_nodes()
            if name not in sites
        }
        nesting = max((-f.dim for f in self._prototype_frames.values()), default=0)
        model = poutine.enum(
            enumerate_alignments(poutine.condition(self.model, fixed)),
            first_available_dim=-(nesting + 1),
        )
        with torch.no_grad():
            trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
            trace.compute_log_prob()
        # log p(z, x | theta_0) for every enumerated value; alignments are independent given
        # the globals, so each marginal sums the other enumeration dims out
        joint, _ = local_log_joint(trace, exclude=set(fixed))
        enum_dims = {n: site_infer(trace.nodes[n])["_enumerate_dim"] for n in sites}
        for name, dim in enum_dims.items():
            marginal = joint
            for other in enum_dims.values():
                if other != dim and marginal.dim() >= -other:
                    marginal = marginal.logsumexp(other, keepdim=True)
            marginal = marginal.movedim(dim, -1)
            marginal = marginal.reshape(marginal.shape[-(nesting + 1) :])
            logits[name] = marginal.expand_as(logits[name]).clone()
        return logits

    def _check_prototype(self, part_trace: poutine.Trace) -> None:
        for name, part_site in part_trace.iter_stochastic_nodes():
            own = self.prototype_trace.nodes[name]
            have, want = site_value(part_site).shape, site_value(own).shape
            if have != want:
                raise ValueError(
                    f"global guide site {name!r} has shape {tuple(have)} but the model's is "
                    f"{tuple(want)}"
                )

    @staticmethod
    def _full_shape(site: dict) -> tuple[int, ...]:
        """Batch shape of a site with every subsampled plate at full size, plus ``(K,)``."""
        shape = list(site["fn"].batch_shape)
        for frame in site["cond_indep_stack"]:
            if not frame.vectorized:
                continue
            while len(shape) < -frame.dim:
                shape.insert(0, 1)
            shape[frame.dim] = frame.full_size or frame.size
        return (*shape, site["fn"].logits.shape[-1])

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, observations: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Sample every latent site; ``observations`` (passed by RWS) is accepted and unused."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result: dict[str, Any] = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        if not self.spec.point_estimate:
            for name, site in self.noise_sites.items():
                result[name] = self._sample_noise(name, site, plates, args, kwargs)
        if self.kind == "prior":
            result.update(self._sample_from_prior(result, plates, args, kwargs))
        elif self.kind in LOCAL_KINDS:
            for name, site in self.alignment_sites.items():
                with self._site_context(name, site, plates, args, kwargs):
                    params = self._local_params(name, site, plates, args, kwargs)
                    fn = self._local_dist(params)
                    infer = self._infer(name, fn.batch_shape, plates, args, kwargs)
                    result[name] = pyro.sample(name, fn, infer=cast(InferDict, infer))
        return result

    def _sample_noise(
        self, name: str, site: dict, plates: dict, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """A GP noise site from its prior, :math:`\\mathcal N(0, I)`, inside its plates (which
        broadcast it to this call's subsample)."""
        value = site_value(cast(Message, site))
        fn = site_dist(cast(Message, site))
        event = (
            tuple(self.noise_event_shape(name, *args, **kwargs))
            if self.noise_event_shape is not None
            else tuple(fn.event_shape)
        )
        normal = dist.Normal(value.new_zeros(()), value.new_ones(()))
        with ExitStack() as stack:
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    stack.enter_context(plates[frame.name])
            return pyro.sample(
                name,
                normal.expand(torch.Size(event)).to_event(len(event)),
                infer=cast(InferDict, {GP_NOISE: True}),
            )

    @contextlib.contextmanager
    def _site_context(
        self, name: str, site: dict, plates: dict, args: tuple, kwargs: dict
    ) -> Iterator[None]:
        """The plates of an alignment site, and the model's mask of it."""
        with ExitStack() as stack:
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    stack.enter_context(plates[frame.name])
            if self.local_mask is not None:
                mask = self.local_mask(name, *args, **kwargs)
                if mask is not None:
                    stack.enter_context(poutine.mask(mask=mask))
            yield

    def _local_params(
        self, name: str, site: dict, plates: dict, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        if self.encoder is not None:
            out = self.encoder(name, plates, *args, **kwargs)
            if self.kind == "dirichlet":
                out = torch.nn.functional.softplus(out) + MIN_CONCENTRATION
            return out
        # a PyroParam with event_dim, read inside its plates, comes subsampled by Pyro
        return cast(torch.Tensor, functools.reduce(getattr, name.split("."), self.local))

    def _local_dist(self, params: torch.Tensor) -> Any:
        if self.kind == "dirichlet":
            return ClampedDirichlet(params, validate_args=False)
        if self.kind == "relaxed":
            temperature = params.new_tensor(self.spec.temperature)
            relaxed = (
                StraightThroughCategorical
                if self.spec.straight_through
                else dist.RelaxedOneHotCategorical
            )
            return relaxed(temperature, logits=params, validate_args=False)
        return dist.Categorical(logits=params)

    def _infer(
        self, name: str, batch_shape: torch.Size, plates: dict, args: tuple, kwargs: dict
    ) -> dict:
        """Site ``infer``: guide-side enumeration, and the method's baseline entries."""
        enumerated = self.kind == "enumerated" or self.spec.enumerate
        infer: dict = {"enumerate": "parallel"} if enumerated else {}

        def features() -> torch.Tensor:
            if self.local_features is None:
                raise ValueError(
                    f"a neural baseline for site {name!r} needs per-site features: pass "
                    "local_features=... to AutoAlignmentGuide (models provide local_features)"
                )
            return self.local_features(plates, *args, **kwargs)

        if self.spec.site_infer is not None:
            infer.update(self.spec.site_infer(name, batch_shape, features, plates, args, kwargs))
        return infer

    def _sample_from_prior(
        self, global_values: dict, plates: dict, args: tuple, kwargs: dict
    ) -> dict[str, torch.Tensor]:
        """Sample each alignment from the model's own prior given the sampled globals.

        The model is run (hidden from outer handlers) with the globals and the plates'
        subsamples fixed; alignment sites must be conditionally independent given them.
        """
        fixed = dict(global_values)
        fixed.update({name: plate.indices for name, plate in plates.items()})
        model_trace = poutine.block(poutine.trace(poutine.condition(self.model, fixed)).get_trace)(
            *args, **kwargs
        )
        result = {}
        for name, site in self.alignment_sites.items():
            with self._site_context(name, site, plates, args, kwargs):
                fn = site_dist(model_trace.nodes[name])
                infer = self._infer(name, fn.batch_shape, plates, args, kwargs)
                result[name] = pyro.sample(name, fn, infer=cast(InferDict, infer))
        return result

    # ------------------------------------------------------------------ helpers
    def global_site_names(self) -> list[str]:
        """Names of the latent sites that are neither alignments nor GP noise (after the first
        call)."""
        if self.prototype_trace is None:
            raise RuntimeError("call the guide once (or run a step) before asking for its sites")
        return [
            name
            for name, _ in self.prototype_trace.iter_stochastic_nodes()
            if name not in self.alignment_sites and name not in self.noise_sites
        ]
