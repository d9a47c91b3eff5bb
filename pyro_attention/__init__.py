"""pyro-attention: attention, mixtures and latent alignments as Pyro generative models.

Every model is written once with the :func:`alignment` primitive; the inference method
(``enum``, ``reinforce``, ``rws``, ``gumbel``, ``cavi``, ``nuts``, ...) is picked by name.
"""

from pyro_attention.alignment import alignment, attend

__version__ = "0.1.0"

__all__ = ["__version__", "alignment", "attend"]
