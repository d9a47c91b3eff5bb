"""Guides: the autoguide that shapes itself to the inference method."""

from pyro_attention.guides.auto import ALIGNMENT_GUIDE_KINDS, AutoAlignmentGuide

__all__ = ["ALIGNMENT_GUIDE_KINDS", "AutoAlignmentGuide"]
