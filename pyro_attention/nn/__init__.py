"""Attention layers read as mixture models (:mod:`pyro_attention.nn.mixture_attention`)."""

from pyro_attention.nn.mixture_attention import MixtureAttention, dot_product_attention

__all__ = ["MixtureAttention", "dot_product_attention"]
