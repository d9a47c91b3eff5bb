"""Inference methods as declarations: what each does to a model, and what it needs of one.

A method turns one model into one Pyro inference problem:

* :meth:`InferenceMethod.prepare` applies the handler the method needs to the model function
  (enumeration, relaxation, soft attention);
* :meth:`InferenceMethod.guide_spec` says what the guide must do with the alignment sites, and
  :meth:`InferenceMethod.guide` asks the model for that guide;
* :meth:`InferenceMethod.loss` returns the Pyro ELBO;
* :attr:`InferenceMethod.requires` lists the :class:`Requirement` s a model must meet, checked
  against the :class:`~pyro_attention.models.structure.ModelStructure` read from one trace of
  the model, so which methods apply to a model is derived, never listed;
* :attr:`InferenceMethod.runner` names the loop that executes it (``"svi"``, ``"closed-form"``,
  ``"mcmc"``; see :mod:`pyro_attention.infer.fit`), and :attr:`InferenceMethod.objective` says
  what its training objective is, so numbers of different kinds are never read as one.

So a user can always assemble the SVI by hand::

    method = Reinforce(baseline=DecayingAverageBaseline(0.95))
    svi = SVI(method.prepare(gmm.model), method.guide(gmm), Adam({"lr": 0.05}), method.loss())

A new method is a subclass registered by name
(:func:`~pyro_attention.infer.registry.register_method`); it then runs in ``fit()``,
``compare()`` and the CLI on every model that meets its requirements.

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
``svi``        no alignments (continuous latents)      ``Trace_ELBO``, pathwise
``svi-kl``     no alignments (continuous latents)      ``TraceMeanField_ELBO``: closed-form KLs
``map``        no alignments; globals as points,       ``Trace_ELBO`` of a point: log joint
               GP noise at its mean
=============  ======================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pyro.infer import (
    ELBO,
    ReweightedWakeSleep,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from pyro_attention import handlers
from pyro_attention.guides import GuideSpec
from pyro_attention.infer.baselines import Baseline, DecayingAverageBaseline, NeuralBaseline
from pyro_attention.infer.local_rws import LocalReweightedWakeSleep
from pyro_attention.infer.score_function_kl import ScoreFunctionKL_ELBO
from pyro_attention.models.base import AlignmentModel
from pyro_attention.models.structure import ModelStructure

#: the loops that execute methods (see :mod:`pyro_attention.infer.fit`)
RUNNERS = ("svi", "closed-form", "mcmc")
#: what a method's training objective is, per kind
OBJECTIVES = (
    "ELBO",
    "Jensen bound",
    "importance-weighted bound",
    "relaxed-model ELBO",
    "soft-model ELBO",
    "log-likelihood",
    "log-joint",
    "none",
)


@dataclass(frozen=True)
class Requirement:
    """One thing a method needs of a model.

    :param needs: what is needed, in words (``"alignment sites"``).
    :param holds: ``ModelStructure -> bool``.
    :param fix: how a user adds it, or which method to use instead.
    """

    needs: str
    holds: Callable[[ModelStructure], bool]
    fix: str

    def __call__(self, structure: ModelStructure) -> bool:
        return self.holds(structure)


HAS_ALIGNMENTS = Requirement(
    "alignment sites",
    lambda s: bool(s.alignment_sites),
    "write each discrete choice with pyro_attention.alignment(name, logits)",
)
HAS_CONTINUOUS_GLOBALS = Requirement(
    "continuous global latent sites",
    lambda s: bool(s.global_sites),
    "give the model priors on its global parameters (pyro.sample sites outside the plates)",
)
NO_NETWORK_PARAMETERS = Requirement(
    "no network parameters (MCMC would sample the globals with the networks frozen untrained)",
    lambda s: not s.network_parameters,
    "fit the networks with a gradient method (enum, vi-enum, ...), or write them as latent sites",
)
NO_LOCAL_CONTINUOUS = Requirement(
    "no continuous local latent sites",
    lambda s: not s.local_sites,
    "use a gradient method (enum, vi-enum, reinforce, ...), whose guide covers them",
)
NO_GLOBAL_LATENTS = Requirement(
    "no global latent sites (one importance weight per alignment)",
    lambda s: not s.global_sites and not s.local_sites,
    "use RWS(local=False), which weights whole traces",
)
ONE_ALIGNMENT_SITE = Requirement(
    "exactly one alignment site",
    lambda s: len(s.alignment_sites) == 1,
    "use RWS(local=False)",
)
NO_DISCRETE_LATENTS = Requirement(
    "no discrete latent sites (every latent reparameterizable)",
    lambda s: not s.alignment_sites and not s.discrete_sites,
    "use a method for discrete choices: enum, vi-enum, reinforce, gumbel, ...",
)


def independent_alignments(why: str) -> Requirement:
    """The model's alignments are independent of each other (no chain): ``why`` says what the
    method would get wrong on a chain."""
    return Requirement(
        f"alignments independent of each other ({why})",
        lambda s: not s.chained_alignments,
        "on a chain of alignments use enum or exact (the chain summed exactly), reinforce, "
        "rws, hard, hard-sample, gumbel, soft or VISample(estimator='tracegraph')",
    )


def closed_form(update: str) -> Requirement:
    """The model provides the closed-form update ``update`` (see
    :meth:`~pyro_attention.models.AlignmentModel.closed_form_updates`)."""
    return Requirement(
        f"a closed-form {update!r} update",
        lambda s: update in s.closed_form_updates,
        f"define {update}(data, *, max_iter, tol, seed, progress) on the model, returning a "
        "pyro_attention.models.ClosedFormResult (conjugate models can); or use enum",
    )


class InferenceMethod:
    """Base class of the inference methods; subclasses set the class attributes below.

    A subclass registered with :func:`~pyro_attention.infer.registry.register_method` runs
    by name in ``fit()``, ``compare()`` and the CLI on every model meeting :attr:`requires`.
    """

    name: ClassVar[str] = "base"
    #: the loop that executes the method: one of :data:`RUNNERS`
    runner: ClassVar[str] = "svi"
    #: what the training objective is: one of :data:`OBJECTIVES`
    objective: ClassVar[str] = "ELBO"
    #: what the method needs of a model
    requires: ClassVar[tuple[Requirement, ...]] = (HAS_ALIGNMENTS,)
    #: what the guide does with alignment sites (see :mod:`pyro_attention.guides.auto`)
    alignment_guide: ClassVar[str] = "marginalized"
    #: the guide's alignment sites are enumerated (their expectation is exact)
    enumerate_guide: ClassVar[bool] = False
    #: the method works with mini-batches (``subsample_size``)
    supports_subsampling: ClassVar[bool] = True
    #: the gradient is a stochastic estimate whose variance is worth measuring
    stochastic_gradient: ClassVar[bool] = True
    #: the fit is a point estimate of the globals (EM, MAP), not a distribution
    point_estimate: ClassVar[bool] = False

    # ------------------------------------------------------------------ contract
    def unmet(self, structure: ModelStructure) -> list[Requirement]:
        """The requirements ``structure`` does not meet."""
        return [req for req in self.requires if not req(structure)]

    def check(self, structure: ModelStructure, *, subsample_size: int | None = None) -> None:
        """Refuse a model this method cannot run on, or a bad option, naming the fix."""
        unmet = self.unmet(structure)
        if unmet:
            reasons = "; ".join(f"it needs {req.needs} ({req.fix})" for req in unmet)
            raise ValueError(f"method {self.name!r} does not apply to {structure.model}: {reasons}")
        if subsample_size is not None and not structure.accepts_subsample_size:
            raise ValueError(
                f"subsample_size={subsample_size} needs a model that takes it: write "
                f"{structure.model}'s model as model(data, *, subsample_size=None) and pass it "
                "to the data plate, pyro.plate('data', len(data), subsample_size=...) "
                "(see PointMixtureModel)"
            )
        if subsample_size is not None and not self.supports_subsampling:
            raise ValueError(
                f"method {self.name!r} cannot use mini-batches (subsample_size="
                f"{subsample_size}) with {structure.model}: it needs every data point at once; "
                "drop subsample_size or use 'enum', 'reinforce' or 'gumbel'"
            )

    # ------------------------------------------------------------------ the problem
    def prepare(self, model: Callable) -> Callable:
        """The model function as this method needs it (a handler applied)."""
        return model

    def guide_spec(self) -> GuideSpec:
        """What the guide must do with the alignment sites."""
        return GuideSpec(
            kind=self.alignment_guide,
            enumerate=self.enumerate_guide,
            site_infer=self.guide_site_infer,
        )

    def guide(self, model_obj: AlignmentModel) -> Callable:
        """The model's guide matching this method."""
        return model_obj.guide(self.guide_spec())

    def predictive(self, model: Callable) -> Callable:
        """The model function whose likelihood scores this method's fit on held-out data.

        The model itself (alignments summed out by the evaluator) except for methods that
        change the model, such as soft attention.
        """
        return model

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        """The Pyro loss of this method."""
        raise ValueError(f"{self.name!r} has no Pyro loss (runner {self.runner!r}); call fit()")

    def guide_site_infer(
        self, name: str, batch_shape: Any, features: Any, plates: Any, args: Any, kwargs: Any
    ) -> dict:
        """Extra ``infer`` entries for the guide's alignment site ``name`` (baselines)."""
        return {}

    def phases(self, num_steps: int) -> list[tuple[InferenceMethod, int]]:
        """The SVI runs that make up ``num_steps`` steps of this method, in order."""
        return [(self, num_steps)]

    def options(self) -> dict[str, Any]:
        """The method's settings, as passed to its constructor."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({fields})"


class Enum(InferenceMethod):
    """Exact marginalisation of the alignments by parallel enumeration (``TraceEnum_ELBO``)."""

    name = "enum"
    alignment_guide = "marginalized"

    def prepare(self, model: Callable) -> Callable:
        return handlers.enumerate_alignments(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceEnum_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class Exact(Enum):
    """:class:`Enum` under the name of Deng et al. (2018): the exact marginal likelihood."""

    name = "exact"


class VIEnum(InferenceMethod):
    """Categorical guide :math:`q(z)` whose expectation is enumerated exactly in the guide."""

    name = "vi-enum"
    alignment_guide = "enumerated"
    enumerate_guide = True
    requires = (
        HAS_ALIGNMENTS,
        independent_alignments("a chain guide's expectation spans S^T joint alignments"),
    )

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceEnum_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class _ScoreFunction(InferenceMethod):
    """Shared by the methods whose alignment gradient is a score-function estimate."""

    def __init__(self, baseline: Baseline | None = None, num_particles: int = 1) -> None:
        self.baseline = DecayingAverageBaseline() if baseline is None else baseline
        self.num_particles = _positive_int(num_particles, "num_particles")

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
    objective = "Jensen bound"


class HardEnum(InferenceMethod):
    """Hard attention trained on the Jensen bound :math:`E_{p(z)}[\\log p(y \\mid z)]`, the
    expectation summed exactly (the prior enumerated in the guide; Deng et al. 2018)."""

    name = "hard-enum"
    alignment_guide = "prior"
    objective = "Jensen bound"
    enumerate_guide = True
    stochastic_gradient = False
    requires = (
        HAS_ALIGNMENTS,
        independent_alignments("the prior of a chain would be enumerated over S^T alignments"),
    )

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceEnum_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class _PaperScoreFunction(InferenceMethod):
    """The estimator of Deng et al. (2018): likelihood reward, soft-prior baseline, exact KL."""

    def __init__(self, baseline: str = "soft-prior", num_particles: int = 1) -> None:
        self.baseline = baseline
        self.num_particles = _positive_int(num_particles, "num_particles")

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
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
    objective = "Jensen bound"


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

    @property
    def requires(self) -> tuple[Requirement, ...]:  # type: ignore[override]
        if self.estimator == "tracegraph":
            return (HAS_ALIGNMENTS,)
        why = (
            "the analytic KL of each position leaves the later positions' KL out of the "
            "reward of the earlier draws, a biased gradient on a chain; "
            "estimator='tracegraph' is unbiased"
        )
        return (HAS_ALIGNMENTS, independent_alignments(why))

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
    objective = "importance-weighted bound"
    supports_subsampling = False

    def __init__(self, num_particles: int = 10, insomnia: float = 1.0, local: bool = False) -> None:
        if local and insomnia != 1.0:
            raise ValueError(
                f"insomnia={insomnia} needs a sleep phase, which local=True does not have; "
                "use insomnia=1.0 with local=True, or local=False"
            )
        if not 0.0 <= insomnia <= 1.0:
            raise ValueError(f"insomnia must be in [0, 1], got {insomnia}")
        self.num_particles = _positive_int(num_particles, "num_particles")
        self.insomnia = insomnia
        self.local = local

    @property
    def requires(self) -> tuple[Requirement, ...]:  # type: ignore[override]
        if self.local:
            return (HAS_ALIGNMENTS, ONE_ALIGNMENT_SITE, NO_GLOBAL_LATENTS)
        return (HAS_ALIGNMENTS,)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        if self.local:
            return LocalReweightedWakeSleep(self.num_particles, _nesting(max_plate_nesting))
        return ReweightedWakeSleep(
            num_particles=self.num_particles,
            insomnia=self.insomnia,
            vectorize_particles=True,
            max_plate_nesting=_nesting(max_plate_nesting),
        )


class Gumbel(InferenceMethod):
    """Gumbel-softmax relaxation (Jang et al. 2017; Maddison et al. 2017).

    :param temperature: τ > 0; in float32 keep τ ≳ 0.3.
    :param straight_through: discrete one-hot samples with relaxed gradients and the exact KL
        of the choices (``TraceMeanField_ELBO``; default; the objective is the ELBO of the
        discrete model), or the Concrete relaxation in model and guide (``Trace_ELBO``; the
        ELBO of the relaxed model).
    """

    name = "gumbel"
    alignment_guide = "relaxed"

    def __init__(self, temperature: float = 0.5, straight_through: bool = True) -> None:
        self.temperature = _positive_float(temperature, "temperature")
        self.straight_through = straight_through

    @property
    def objective(self) -> str:  # type: ignore[override]
        return "ELBO" if self.straight_through else "relaxed-model ELBO"

    def guide_spec(self) -> GuideSpec:
        return GuideSpec(
            kind="relaxed", temperature=self.temperature, straight_through=self.straight_through
        )

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

    :param concentration: ``c > 0`` of :class:`pyro_attention.handlers.dirichlet`.
    :param pretrain_steps: spend this many of the ``num_steps`` training the model on the
        Jensen bound (:class:`HardEnum`), as Deng et al. (2018) do, then the rest on the
        Dirichlet ELBO.
    """

    name = "dirichlet"
    alignment_guide = "dirichlet"
    objective = "relaxed-model ELBO"
    requires = (
        HAS_ALIGNMENTS,
        independent_alignments(
            "a Dirichlet relaxation of each position given a relaxed previous one is no "
            "relaxation of the chain"
        ),
    )

    def __init__(self, concentration: float = 1.0, pretrain_steps: int = 0) -> None:
        if isinstance(pretrain_steps, bool) or not isinstance(pretrain_steps, int):
            raise ValueError(f"pretrain_steps must be an integer >= 0, got {pretrain_steps!r}")
        if pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {pretrain_steps}")
        self.concentration = _positive_float(concentration, "concentration")
        self.pretrain_steps = pretrain_steps

    def phases(self, num_steps: int) -> list[tuple[InferenceMethod, int]]:
        if self.pretrain_steps >= num_steps:
            raise ValueError(
                f"dirichlet's pretrain_steps={self.pretrain_steps} leaves none of num_steps="
                f"{num_steps} for the Dirichlet ELBO; use fewer pre-training steps"
            )
        if not self.pretrain_steps:
            return [(self, num_steps)]
        return [(HardEnum(), self.pretrain_steps), (self, num_steps - self.pretrain_steps)]

    def prepare(self, model: Callable) -> Callable:
        return handlers.dirichlet(self.concentration)(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class Soft(InferenceMethod):
    """Soft attention: each alignment replaced by its prior mean (deterministic)."""

    name = "soft"
    alignment_guide = "deterministic"
    objective = "soft-model ELBO"
    stochastic_gradient = False

    def prepare(self, model: Callable) -> Callable:
        return handlers.soft()(model)

    def predictive(self, model: Callable) -> Callable:
        return handlers.soft()(model)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class ReparamSVI(InferenceMethod):
    """Plain SVI for models whose latents are all continuous: ``Trace_ELBO`` with the global
    guide's reparameterized draws (pathwise gradients)."""

    name = "svi"
    requires = (NO_DISCRETE_LATENTS,)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class MeanFieldSVI(ReparamSVI):
    """:class:`ReparamSVI` with ``TraceMeanField_ELBO``: the KL of every latent whose guide and
    prior have a closed-form KL (Gaussians, the GP inducing outputs) is exact, the rest sampled;
    lower variance than ``svi`` on the same ELBO."""

    name = "svi-kl"

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return TraceMeanField_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class MAP(InferenceMethod):
    """Maximum a posteriori globals (``AutoDelta``) with the networks by maximum likelihood;
    GP noise at zero (:class:`~pyro_attention.handlers.gp_mean`), so a sparse-GP attention layer
    is the point-estimate kernel attention and a model without latents is fitted by maximum
    likelihood. The objective is :math:`\\log p(y, \\theta)`, the fit a point."""

    name = "map"
    objective = "log-joint"
    requires = (NO_DISCRETE_LATENTS,)
    point_estimate = True

    def prepare(self, model: Callable) -> Callable:
        return handlers.gp_mean()(model)

    def predictive(self, model: Callable) -> Callable:
        return handlers.gp_mean()(model)

    def guide_spec(self) -> GuideSpec:
        return GuideSpec(kind=self.alignment_guide, point_estimate=True)

    def loss(self, max_plate_nesting: int | None = None) -> ELBO:
        return Trace_ELBO(max_plate_nesting=_nesting(max_plate_nesting))


class _ClosedForm(InferenceMethod):
    """A closed-form update of the model (:attr:`update`), run until the objective gains less
    than ``tol`` or ``max_iter`` iterations."""

    runner = "closed-form"
    supports_subsampling = False
    stochastic_gradient = False
    #: the name of the model's update (:meth:`AlignmentModel.closed_form_updates`)
    update: ClassVar[str] = ""

    def __init__(self, max_iter: int, tol: float) -> None:
        self.max_iter = _positive_int(max_iter, "max_iter")
        self.tol = _positive_float(tol, "tol")

    @property
    def requires(self) -> tuple[Requirement, ...]:  # type: ignore[override]
        return (closed_form(self.update),)

    def guide_spec(self) -> GuideSpec:
        raise ValueError(f"{self.name!r} is closed-form and has no guide; call fit() instead")


class CAVI(_ClosedForm):
    """Coordinate-ascent (free-form) variational inference with the model's conjugate updates.

    :param max_iter: iteration cap; :param tol: stop when the bound gains less than ``tol``.
    """

    name = "cavi"
    update = "cavi"

    def __init__(self, max_iter: int = 1000, tol: float = 1e-4) -> None:
        super().__init__(max_iter, tol)


class EM(_ClosedForm):
    """Expectation-maximisation for the maximum-likelihood (or MAP) globals: a point estimate."""

    name = "em"
    update = "em"
    objective = "log-likelihood"
    point_estimate = True

    def __init__(self, max_iter: int = 500, tol: float = 1e-6) -> None:
        super().__init__(max_iter, tol)


class NUTS(InferenceMethod):
    """NUTS (Hoffman & Gelman 2014) over the continuous globals, alignments enumerated.

    :param num_samples: draws kept per chain; :param warmup_steps: adaptation draws;
    :param num_chains: chains (run one after another on CPU).
    :param jit_compile: trace the potential energy with ``torch.jit`` (about 3.5x faster on
        the GMM).
    :param float64: run the chains in float64 (draws are returned in the data's dtype); in
        float32 the step-size adaptation fights round-off and NUTS was 5x slower on the GMM.
    :param max_rhat: the status is ``warn`` when a site's R-hat exceeds this
        (Vehtari et al. 2021 recommend 1.01).
    :param min_ess: ... or when a site's bulk ESS is below this.
    """

    name = "nuts"
    runner = "mcmc"
    objective = "none"
    requires = (HAS_CONTINUOUS_GLOBALS, NO_NETWORK_PARAMETERS, NO_LOCAL_CONTINUOUS)
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
        max_rhat: float = 1.01,
        min_ess: float = 100.0,
    ) -> None:
        self.num_samples = _positive_int(num_samples, "num_samples")
        if self.num_samples < 4:
            raise ValueError(
                f"num_samples must be at least 4 draws per chain (split R-hat and the ESS need "
                f"them), got {num_samples}"
            )
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.num_chains = _positive_int(num_chains, "num_chains")
        if not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
        self.target_accept_prob = target_accept_prob
        self.jit_compile = jit_compile
        self.float64 = float64
        self.max_rhat = _positive_float(max_rhat, "max_rhat")
        self.min_ess = _positive_float(min_ess, "min_ess")

    def prepare(self, model: Callable) -> Callable:
        return handlers.enumerate_alignments(model)

    def guide_spec(self) -> GuideSpec:
        raise ValueError("'nuts' samples the posterior directly and has no guide; call fit()")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _positive_float(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not (number > 0 and number < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _nesting(max_plate_nesting: int | None) -> int | float:
    return float("inf") if max_plate_nesting is None else max_plate_nesting
