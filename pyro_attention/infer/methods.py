"""Inference methods as small objects with declared capabilities.

A method turns one model into one Pyro inference problem:

* :meth:`InferenceMethod.prepare` applies the handler the method needs to the model function
  (enumeration, relaxation, soft attention);
* :meth:`InferenceMethod.guide` asks the model for its matching guide;
* :meth:`InferenceMethod.loss` returns the Pyro ELBO.

So a user can always assemble the SVI by hand::

    method = Reinforce(baseline=DecayingAverageBaseline(0.95))
    svi = SVI(method.prepare(gmm.model), method.guide(gmm), Adam({"lr": 0.05}), method.loss())

Closed-form methods (``cavi``, ``em``) call the model's own updates and ``nuts`` runs Pyro's
MCMC; all of them return a :class:`~pyro_attention.infer.fit.FitResult` from :meth:`fit`.

=============  ======================================  ==========================================
name           what happens to the alignment ``z``     objective / Pyro loss
=============  ======================================  ==========================================
``soft``       replaced by its mean                    ``Trace_ELBO`` of the soft model
``enum``       summed out exactly                      ``TraceEnum_ELBO``
``exact``      the same, under the paper's name        ``TraceEnum_ELBO``
``hard``       sampled from the prior                  Jensen bound, ``TraceGraph_ELBO``
``hard-enum``  prior summed in the guide               Jensen bound, ``TraceEnum_ELBO``
``hard-sample`` sampled from the prior                 Jensen bound, soft-prior baseline
``reinforce``  sampled from ``q(z)``                   ELBO, score function + baseline
``vi-enum``    ``q(z)`` summed in the guide            ``TraceEnum_ELBO``
``vi-sample``  sampled from ``q(z)``                   ELBO, soft-prior baseline, analytic KL
``rws``        sampled from ``q``, importance-weighted ``ReweightedWakeSleep``
``gumbel``     relaxed (Gumbel-softmax)                ``TraceMeanField_ELBO``: exact KL, pathwise
``dirichlet``  relaxed to a Dirichlet                  ``Trace_ELBO``, pathwise (implicit)
``cavi``       closed-form coordinate ascent           free-form VI bound
``em``         expectation-maximisation                maximum likelihood
``nuts``       enumerated; globals by NUTS             MCMC
=============  ======================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pyro import poutine
from pyro.infer import (
    ELBO,
    ReweightedWakeSleep,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from pyro_attention import handlers
from pyro_attention.alignment import is_alignment_site
from pyro_attention.infer.baselines import Baseline, DecayingAverageBaseline, NeuralBaseline

if TYPE_CHECKING:
    from pyro_attention.infer.fit import FitResult


def enumerate_alignments(model: Callable) -> Callable:
    """``model`` with every alignment site marked for parallel enumeration."""

    def config(site: dict) -> dict:
        return {"enumerate": "parallel"} if is_alignment_site(site) else {}

    return poutine.infer_config(model, config)


class InferenceMethod:
    """Base class of the inference methods; subclasses set the class attributes below."""

    name: ClassVar[str] = "base"
    #: what the guide does with alignment sites (see :mod:`pyro_attention.guides.auto`)
    alignment_guide: ClassVar[str] = "marginalized"
    #: the alignments are summed out exactly
    can_enumerate: ClassVar[bool] = False
    #: the method optimises or samples with a guide
    needs_guide: ClassVar[bool] = True
    #: the method works with mini-batches (``subsample_size``)
    supports_subsampling: ClassVar[bool] = True
    #: Pyro passes ``observations=`` to the guide (reweighted wake-sleep)
    requires_observations_kwarg: ClassVar[bool] = False
    #: the gradient is a stochastic estimate whose variance is worth measuring
    stochastic_gradient: ClassVar[bool] = True
    #: closed-form updates provided by the model (no Pyro loss)
    closed_form: ClassVar[bool] = False
    #: the guide's alignment sites are enumerated (their expectation is exact)
    enumerate_guide: ClassVar[bool] = False

    def prepare(self, model: Callable) -> Callable:
        """The model function as this method needs it (a handler applied)."""
        return model

    def guide(self, model_obj: Any) -> Callable:
        """The model's guide matching this method."""
        return model_obj.guide(self)

    def predictive(self, model: Callable) -> Callable:
        """The model function whose likelihood scores this method's fit on held-out data.

        The model itself (alignments summed out by the evaluator) except for methods that
        change the model, such as soft attention.
        """
        return model

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        """The Pyro loss of this method."""
        raise NotImplementedError(f"{self.name} has no Pyro loss; call fit() instead")

    def guide_site_infer(self, name: str, batch_shape, features, plates, args, kwargs) -> dict:
        """Extra ``infer`` entries for the guide's alignment site ``name`` (baselines)."""
        return {}

    def check(self, model_obj: Any, *, subsample_size: int | None = None) -> None:
        """Refuse an invalid model/method pair or option with a message naming the fix."""
        supported = tuple(model_obj.supported_methods)
        model_name = type(model_obj).__name__
        if self.name not in supported:
            raise ValueError(
                f"method {self.name!r} does not apply to {model_name}: "
                f"{model_obj.unsupported_reason(self.name)}; use one of {', '.join(supported)}"
            )
        if subsample_size is not None and not self.supports_subsampling:
            raise ValueError(
                f"method {self.name!r} cannot use mini-batches (subsample_size="
                f"{subsample_size}) with {model_name}: it needs every data point at once; drop "
                "subsample_size or use 'enum', 'reinforce' or 'gumbel'"
            )

    def fit(self, model_obj: Any, data: Any, **options: Any) -> FitResult:
        """Fit ``model_obj`` to ``data``; see :func:`pyro_attention.infer.fit.fit`."""
        from pyro_attention.infer.fit import svi_fit

        return svi_fit(self, model_obj, data, **options)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Enum(InferenceMethod):
    """Exact marginalisation of the alignments by parallel enumeration (``TraceEnum_ELBO``)."""

    name = "enum"
    alignment_guide = "marginalized"
    can_enumerate = True

    def prepare(self, model: Callable) -> Callable:
        return enumerate_alignments(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceEnum_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class Exact(Enum):
    """:class:`Enum` under the name of Deng et al. (2018): the exact marginal likelihood."""

    name = "exact"


class VIEnum(InferenceMethod):
    """Categorical guide :math:`q(z)` whose expectation is enumerated exactly in the guide."""

    name = "vi-enum"
    alignment_guide = "enumerated"
    can_enumerate = True
    enumerate_guide = True

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceEnum_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class _ScoreFunction(InferenceMethod):
    """Shared by the methods whose alignment gradient is a score-function estimate."""

    def __init__(self, baseline: Baseline | None = None, num_particles: int = 1) -> None:
        self.baseline = DecayingAverageBaseline() if baseline is None else baseline
        self.num_particles = num_particles

    def guide_site_infer(self, name, batch_shape, features, plates, args, kwargs) -> dict:
        return self.baseline.site_infer(name, batch_shape, features, plates, args, kwargs)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceGraph_ELBO(
            num_particles=self.num_particles, max_plate_nesting=_nesting(max_plate_nesting)
        )


class Reinforce(_ScoreFunction):
    """Amortized or mean-field :math:`q(z)`, sampled; REINFORCE with a baseline.

    :param baseline: a :class:`~pyro_attention.infer.baselines.Baseline` (default decaying
        average, β = 0.9); ``Baseline()`` for none.
    :param num_particles: samples per step.
    """

    name = "reinforce"
    alignment_guide = "categorical"


class Hard(_ScoreFunction):
    """Hard attention: ``z`` sampled from the prior, Jensen bound
    :math:`E_{p(z)}[\\log p(x \\mid z)] \\le \\log p(x)`, score-function gradient."""

    name = "hard"
    alignment_guide = "prior"


class HardEnum(InferenceMethod):
    """Hard attention trained on the Jensen bound :math:`E_{p(z)}[\\log p(y \\mid z)]`, the
    expectation summed exactly (the prior enumerated in the guide; Deng et al. 2018)."""

    name = "hard-enum"
    alignment_guide = "prior"
    can_enumerate = True
    enumerate_guide = True
    stochastic_gradient = False

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceEnum_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class _PaperScoreFunction(InferenceMethod):
    """The estimator of Deng et al. (2018): likelihood reward, soft-prior baseline, exact KL."""

    def __init__(self, baseline: str = "soft-prior", num_particles: int = 1) -> None:
        self.baseline = baseline
        self.num_particles = num_particles

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        from pyro_attention.infer.score_function_kl import ScoreFunctionKL_ELBO

        return ScoreFunctionKL_ELBO(
            baseline=self.baseline,
            num_particles=self.num_particles,
            max_plate_nesting=_nesting(max_plate_nesting),
        )


class HardSample(_PaperScoreFunction):
    """Hard attention, Jensen bound, ``z`` sampled from the prior; REINFORCE with the
    soft-attention log-likelihood under the prior as baseline (Deng et al. 2018).

    :param baseline: ``"soft-prior"`` or ``"none"``; :param num_particles: samples per step.
    """

    name = "hard-sample"
    alignment_guide = "prior"


class VISample(_PaperScoreFunction):
    """Variational attention with a sampled categorical :math:`q(z \\mid x, y)`.

    ``estimator="analytic-kl"`` (default) is the paper's: reward :math:`\\log p(y \\mid z)`
    minus the soft-attention log-likelihood under the prior (detached), plus the exact KL
    (:class:`~pyro_attention.infer.score_function_kl.ScoreFunctionKL_ELBO`).
    ``estimator="tracegraph"`` is Pyro's ``TraceGraph_ELBO``, whose reward holds
    :math:`\\log p(y, z) - \\log q(z)`, with a learned :class:`NeuralBaseline` of the model's
    local features.

    :param baseline: for ``analytic-kl``, ``"soft-prior"`` or ``"none"``.
    """

    name = "vi-sample"
    alignment_guide = "categorical"
    ESTIMATORS: ClassVar[tuple[str, ...]] = ("analytic-kl", "tracegraph")

    def __init__(
        self, estimator: str = "analytic-kl", baseline: str = "soft-prior", num_particles: int = 1
    ) -> None:
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"estimator must be one of {self.ESTIMATORS}, got {estimator!r}")
        super().__init__(baseline, num_particles)
        self.estimator = estimator
        self._neural = NeuralBaseline() if estimator == "tracegraph" else None

    def guide_site_infer(self, name, batch_shape, features, plates, args, kwargs) -> dict:
        if self._neural is None:
            return {}
        return self._neural.site_infer(name, batch_shape, features, plates, args, kwargs)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        if self.estimator == "tracegraph":
            return TraceGraph_ELBO(
                num_particles=self.num_particles, max_plate_nesting=_nesting(max_plate_nesting)
            )
        return super().loss(max_plate_nesting)


class RWS(InferenceMethod):
    """Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019).

    :param num_particles: importance samples per step.
    :param insomnia: fraction of the wake-φ objective (1 = wake only).
    :param local: one importance weight per alignment
        (:class:`~pyro_attention.infer.local_rws.LocalReweightedWakeSleep`) instead of one per
        trace; for models whose only latents are independent alignments (seq2seq).
    """

    name = "rws"
    alignment_guide = "categorical"
    supports_subsampling = False
    requires_observations_kwarg = True

    def __init__(self, num_particles: int = 10, insomnia: float = 1.0, local: bool = False) -> None:
        if local and insomnia != 1.0:
            raise ValueError(
                f"insomnia={insomnia} needs a sleep phase, which local=True does not have; "
                "use insomnia=1.0 with local=True, or local=False"
            )
        self.num_particles = num_particles
        self.insomnia = insomnia
        self.local = local

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        if self.local:
            from pyro_attention.infer.local_rws import LocalReweightedWakeSleep

            return LocalReweightedWakeSleep(self.num_particles, _nesting(max_plate_nesting))
        return ReweightedWakeSleep(
            num_particles=self.num_particles,
            insomnia=self.insomnia,
            vectorize_particles=True,
            max_plate_nesting=_nesting(max_plate_nesting),
        )


class Gumbel(InferenceMethod):
    """Gumbel-softmax relaxation (Jang et al. 2017; Maddison et al. 2017).

    :param temperature: τ; in float32 keep τ ≳ 0.3.
    :param straight_through: discrete one-hot samples with relaxed gradients and the exact KL
        of the choices (``TraceMeanField_ELBO``; default), or the Concrete relaxation in model
        and guide (``Trace_ELBO``).
    """

    name = "gumbel"
    alignment_guide = "relaxed"

    def __init__(self, temperature: float = 0.5, straight_through: bool = True) -> None:
        self.temperature = temperature
        self.straight_through = straight_through

    def prepare(self, model: Callable) -> Callable:
        return handlers.relax(self.temperature, self.straight_through)(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        if self.straight_through:
            # the KL of the discrete choices is exact; only the likelihood term is pathwise.
            # With Trace_ELBO the straight-through gradient of log p(z) - log q(z) pushed q
            # towards uniform and the seq2seq guide never sharpened (prior entropy 1.6 nats)
            return TraceMeanField_ELBO(max_plate_nesting=_nesting(max_plate_nesting))
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class Dirichlet(InferenceMethod):
    """Alignments relaxed to Dirichlet variables, pathwise gradients (implicit reparam).

    :param concentration: ``c`` of :class:`pyro_attention.handlers.dirichlet`.
    :param pretrain_steps: spend this many of the ``num_steps`` training the model on the
        Jensen bound (:class:`HardEnum`), as Deng et al. (2018) do, then the rest on the
        Dirichlet ELBO.
    """

    name = "dirichlet"
    alignment_guide = "dirichlet"

    def __init__(self, concentration: float = 1.0, pretrain_steps: int = 0) -> None:
        if pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {pretrain_steps}")
        self.concentration = concentration
        self.pretrain_steps = pretrain_steps

    def fit(self, model_obj: Any, data: Any, **options: Any) -> FitResult:
        from pyro_attention.infer.fit import NonFiniteLossError, svi_fit

        if not self.pretrain_steps:
            return svi_fit(self, model_obj, data, **options)
        first = {**options, "num_steps": self.pretrain_steps, "checkpoint": None}
        pretrained = svi_fit(HardEnum(), model_obj, data, **first)
        total = options.get("num_steps", 1000)
        rest = {**options, "num_steps": max(total - pretrained.steps, 1), "seed": None}
        # the Dirichlet phase goes on with the batches after those of the pre-training
        rest["batch_offset"] = options.get("batch_offset", 0) + pretrained.steps
        try:
            result = svi_fit(self, model_obj, data, **rest)
        except NonFiniteLossError as err:
            _prepend(pretrained, err.result)
            raise
        return _prepend(pretrained, result)

    def prepare(self, model: Callable) -> Callable:
        return handlers.dirichlet(self.concentration)(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class Soft(InferenceMethod):
    """Soft attention: each alignment replaced by its prior mean (deterministic)."""

    name = "soft"
    alignment_guide = "deterministic"
    stochastic_gradient = False

    def prepare(self, model: Callable) -> Callable:
        return handlers.soft()(model)

    def predictive(self, model: Callable) -> Callable:
        return handlers.soft()(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class _ClosedForm(InferenceMethod):
    needs_guide = False
    supports_subsampling = False
    stochastic_gradient = False
    closed_form = True

    def guide(self, model_obj: Any) -> Callable:
        raise ValueError(f"{self.name!r} is closed-form and has no guide; call fit() instead")

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        raise ValueError(f"{self.name!r} is closed-form and has no Pyro loss; call fit() instead")

    def fit(self, model_obj: Any, data: Any, **options: Any) -> FitResult:
        from pyro_attention.infer.fit import closed_form_fit

        return closed_form_fit(self, model_obj, data, **options)


class CAVI(_ClosedForm):
    """Coordinate-ascent (free-form) variational inference with the model's conjugate updates.

    :param max_iter: iteration cap; :param tol: stop when the bound gains less than ``tol``.
    """

    name = "cavi"

    def __init__(self, max_iter: int = 1000, tol: float = 1e-4) -> None:
        self.max_iter = max_iter
        self.tol = tol


class EM(_ClosedForm):
    """Expectation-maximisation for the maximum-likelihood globals (a point estimate)."""

    name = "em"

    def __init__(self, max_iter: int = 500, tol: float = 1e-6) -> None:
        self.max_iter = max_iter
        self.tol = tol


class NUTS(InferenceMethod):
    """NUTS (Hoffman & Gelman 2014) over the continuous globals, alignments enumerated.

    :param num_samples: draws kept per chain; :param warmup_steps: adaptation draws;
    :param num_chains: chains (run one after another on CPU).
    :param jit_compile: trace the potential energy with ``torch.jit`` (about 3.5x faster on
        the GMM).
    :param float64: run the chains in float64 (draws are returned in the data's dtype); in
        float32 the step-size adaptation fights round-off and NUTS was 5x slower on the GMM.
    """

    name = "nuts"
    alignment_guide = "marginalized"
    can_enumerate = True
    needs_guide = False
    supports_subsampling = False
    stochastic_gradient = False

    def __init__(
        self,
        num_samples: int = 200,
        warmup_steps: int = 200,
        num_chains: int = 2,
        target_accept_prob: float = 0.8,
        jit_compile: bool = True,
        float64: bool = True,
    ) -> None:
        self.num_samples = num_samples
        self.warmup_steps = warmup_steps
        self.num_chains = num_chains
        self.target_accept_prob = target_accept_prob
        self.jit_compile = jit_compile
        self.float64 = float64

    def prepare(self, model: Callable) -> Callable:
        return enumerate_alignments(model)

    def guide(self, model_obj: Any) -> Callable:
        raise ValueError("'nuts' samples the posterior directly and has no guide; call fit()")

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        raise ValueError("'nuts' samples the posterior directly and has no loss; call fit()")

    def fit(self, model_obj: Any, data: Any, **options: Any) -> FitResult:
        from pyro_attention.infer.fit import nuts_fit

        return nuts_fit(self, model_obj, data, **options)


def _prepend(first: FitResult, result: FitResult) -> FitResult:
    """``result`` with the run ``first`` (pre-training) counted in."""
    result.losses = first.losses + result.losses
    result.steps += first.steps
    result.seconds += first.seconds
    result.points_seen += first.points_seen
    result.extra["step_points"] = first.extra["step_points"] + result.extra["step_points"]
    result.extra["pretrain_steps"] = first.steps
    return result


def _nesting(max_plate_nesting: int | None) -> int | float:
    return float("inf") if max_plate_nesting is None else max_plate_nesting
