"""Generative models, one per module, each with the guide for every inference method.

Your own model: subclass :class:`AlignmentModel` and write ``model(data)``, or wrap a plain Pyro
model function with :class:`FunctionModel`; see :mod:`pyro_attention.models.base`. Make it a
comparison of the command line (``pyro-attention compare <name>``) with :func:`register_model`;
see :mod:`pyro_attention.models.registry`.
"""

from pyro_attention.models.base import (
    AlignmentModel,
    ClosedFormResult,
    FunctionModel,
    PointMixtureModel,
    as_model,
)
from pyro_attention.models.bernoulli_mixture import BernoulliMixture
from pyro_attention.models.gmm import BayesianGMM
from pyro_attention.models.gmm_conjugate import GMMPrior
from pyro_attention.models.gp_attention import GPAttentionClassifier
from pyro_attention.models.registry import (
    ModelOptions,
    ModelSetup,
    get_model,
    model_names,
    register_model,
    unregister_model,
)
from pyro_attention.models.seq2seq import LatentAlignmentSeq2Seq
from pyro_attention.models.structure import ModelStructure, inspect_model

__all__ = [
    "AlignmentModel",
    "BayesianGMM",
    "BernoulliMixture",
    "ClosedFormResult",
    "FunctionModel",
    "GMMPrior",
    "GPAttentionClassifier",
    "LatentAlignmentSeq2Seq",
    "ModelOptions",
    "ModelSetup",
    "ModelStructure",
    "PointMixtureModel",
    "as_model",
    "get_model",
    "inspect_model",
    "model_names",
    "register_model",
    "unregister_model",
]
