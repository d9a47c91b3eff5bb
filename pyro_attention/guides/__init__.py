"""Guides: the autoguide that shapes itself to what an inference method asks of it."""

from pyro_attention.guides.auto import (
    ALIGNMENT_GUIDE_KINDS,
    LOCAL_KINDS,
    AutoAlignmentGuide,
    GuideSpec,
    as_guide_spec,
)
from pyro_attention.guides.block_mvn import AutoBlockMultivariateNormal

__all__ = [
    "ALIGNMENT_GUIDE_KINDS",
    "LOCAL_KINDS",
    "AutoAlignmentGuide",
    "AutoBlockMultivariateNormal",
    "GuideSpec",
    "as_guide_spec",
]
