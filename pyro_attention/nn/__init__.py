"""Attention layers read as mixture models (:mod:`pyro_attention.nn.mixture_attention`) and
stacked attention with and without the carried latent map
(:mod:`pyro_attention.nn.stacked_latent_attention`)."""

from pyro_attention.nn.mixture_attention import MixtureAttention, dot_product_attention
from pyro_attention.nn.stacked_latent_attention import StackedAttention, StackedLatentAttention

__all__ = [
    "MixtureAttention",
    "StackedAttention",
    "StackedLatentAttention",
    "dot_product_attention",
]
