"""Diagnostics: the ArviZ bridge (DataTree, netCDF), the PSIS k-hat of importance weights, and
calibration, OOD and true-posterior metrics of a classifier's probabilities, and
simulation-based calibration of a posterior approximation."""

from pyro_attention.diagnostics.arviz import load_datatree, save_datatree, to_datatree
from pyro_attention.diagnostics.calibration import (
    classification_metrics,
    mean_and_error,
    ood_detection,
    ood_scores,
    reliability_bins,
    true_posterior_metrics,
)
from pyro_attention.diagnostics.psis import psis_khat
from pyro_attention.diagnostics.sbc import SBCResult, plot_rank_histograms, sbc_ranks

__all__ = [
    "SBCResult",
    "classification_metrics",
    "load_datatree",
    "mean_and_error",
    "ood_detection",
    "ood_scores",
    "plot_rank_histograms",
    "psis_khat",
    "reliability_bins",
    "save_datatree",
    "sbc_ranks",
    "to_datatree",
    "true_posterior_metrics",
]
