"""Generative models, one per module, each with the guide for every inference method."""

from pyro_attention.models.base import AlignmentModel, PointMixtureModel
from pyro_attention.models.bernoulli_mixture import BernoulliMixture
from pyro_attention.models.gmm import BayesianGMM
from pyro_attention.models.gmm_conjugate import GMMPrior
from pyro_attention.models.seq2seq import LatentAlignmentSeq2Seq

__all__ = [
    "AlignmentModel",
    "BayesianGMM",
    "BernoulliMixture",
    "GMMPrior",
    "LatentAlignmentSeq2Seq",
    "PointMixtureModel",
]
