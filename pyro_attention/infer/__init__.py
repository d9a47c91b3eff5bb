"""Inference methods by name, the fit loop and the method-independent evaluation."""

from pyro_attention.infer.baselines import (
    Baseline,
    DecayingAverageBaseline,
    NeuralBaseline,
    ValueBaseline,
)
from pyro_attention.infer.compare import Comparison, compare
from pyro_attention.infer.fit import FitResult, NonFiniteLossError, PosteriorDraws, fit
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
    Soft,
    VIEnum,
    VISample,
)
from pyro_attention.infer.registry import get_method, method_names, register_method

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
    "Soft",
    "VIEnum",
    "VISample",
    "ValueBaseline",
    "compare",
    "fit",
    "get_method",
    "method_names",
    "register_method",
]
