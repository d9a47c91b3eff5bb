"""Inference methods by name, the runners, the method-independent evaluation and compare()."""

from pyro_attention.infer.baselines import (
    Baseline,
    DecayingAverageBaseline,
    NeuralBaseline,
    ValueBaseline,
)
from pyro_attention.infer.compare import Comparison, compare
from pyro_attention.infer.evaluate import check_model
from pyro_attention.infer.fit import fit, runner_options
from pyro_attention.infer.methods import (
    CAVI,
    EM,
    NUTS,
    RWS,
    Dirichlet,
    Enum,
    Exact,
    Gumbel,
    Hard,
    HardEnum,
    HardSample,
    InferenceMethod,
    Reinforce,
    ReparamSVI,
    Requirement,
    Soft,
    VIEnum,
    VISample,
)
from pyro_attention.infer.registry import (
    applicable_methods,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from pyro_attention.infer.results import FitResult, NonFiniteLossError, PosteriorDraws

__all__ = [
    "CAVI",
    "EM",
    "NUTS",
    "RWS",
    "Baseline",
    "Comparison",
    "DecayingAverageBaseline",
    "Dirichlet",
    "Enum",
    "Exact",
    "FitResult",
    "Gumbel",
    "Hard",
    "HardEnum",
    "HardSample",
    "InferenceMethod",
    "NeuralBaseline",
    "NonFiniteLossError",
    "PosteriorDraws",
    "Reinforce",
    "ReparamSVI",
    "Requirement",
    "Soft",
    "VIEnum",
    "VISample",
    "ValueBaseline",
    "applicable_methods",
    "check_model",
    "compare",
    "fit",
    "get_method",
    "method_names",
    "register_method",
    "runner_options",
    "unregister_method",
]
