"""Diagnostics: the ArviZ bridge (DataTree, netCDF) and the PSIS k-hat of importance weights."""

from pyro_attention.diagnostics.arviz import load_datatree, save_datatree, to_datatree
from pyro_attention.diagnostics.psis import psis_khat

__all__ = ["load_datatree", "psis_khat", "save_datatree", "to_datatree"]
