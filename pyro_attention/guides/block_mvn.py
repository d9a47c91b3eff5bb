"""A guide with one full-covariance Gaussian per batch element of each multivariate-normal site.

For a global site with a multivariate-normal prior of batch shape ``(H, d)`` over ``M`` values
(e.g. the whitened global inducing outputs of sparse-GP attention, one Gaussian per head and
output dimension), the guide is :math:`q(u_{hd}) = \\mathcal N(m_{hd}, \\tilde S_{hd}\\tilde
S_{hd}^\\top)` with :math:`\\tilde S_{hd}` lower triangular: the structure of the prior, so
``TraceMeanField_ELBO`` computes every KL in closed form. ``AutoMultivariateNormal`` would couple
every value of every site in one ``(HdM)^2`` covariance, ``AutoNormal`` would drop the
correlations within a block.

Each site is sampled under the scale the model gives it (``poutine.scale``), so a model that
weights its KL (``kl_scale``) weights :math:`\\log q` alike and the ELBO stays a KL.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam


def _base_mvn(fn: Any) -> torch.distributions.MultivariateNormal | None:
    while isinstance(fn, dist.Independent | torch.distributions.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.MultivariateNormal) else None


class AutoBlockMultivariateNormal(AutoGuide):
    """One ``MultivariateNormal(loc, scale_tril)`` per batch element of every global site whose
    prior is a (batched, ``.to_event``) multivariate normal.

    :param model: the model (its other latent sites hidden).
    :param init_loc_fn: initial means (default :func:`init_to_feasible`: zeros).
    :param init_scale: initial ``scale_tril = init_scale · I`` (1.0: the whitened prior).
    """

    def __init__(
        self,
        model: Callable,
        *,
        init_loc_fn: Callable = init_to_feasible,
        init_scale: float = 1.0,
        create_plates: Callable | None = None,
    ) -> None:
        if not (init_scale > 0 and init_scale < float("inf")):
            raise ValueError(f"init_scale must be a finite positive number, got {init_scale!r}")
        self._init_loc_fn = init_loc_fn
        self._init_scale = float(init_scale)
        super().__init__(model, create_plates=create_plates)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.locs = PyroModule()
        self.scale_trils = PyroModule()
        self._event_ndims: dict[str, int] = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            fn = site["fn"]
            if _base_mvn(fn) is None:
                raise ValueError(
                    f"AutoBlockMultivariateNormal covers multivariate-normal sites only; site "
                    f"{name!r} has {type(fn).__name__}: use AutoNormal for it"
                )
            if any(frame.vectorized for frame in site["cond_indep_stack"]):
                raise ValueError(
                    f"AutoBlockMultivariateNormal covers global sites only; {name!r} is inside a "
                    "plate"
                )
            loc = self._init_loc_fn(site).detach()
            size = loc.shape[-1]
            eye = torch.eye(size, dtype=loc.dtype, device=loc.device)
            tril = (self._init_scale * eye).expand(loc.shape + (size,)).clone()
            self._event_ndims[name] = fn.event_dim - 1
            deep_setattr(self.locs, name, PyroParam(loc.clone(), constraints.real))
            deep_setattr(self.scale_trils, name, PyroParam(tril, constraints.lower_cholesky))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            loc = attrgetter(name)(self.locs)
            tril = attrgetter(name)(self.scale_trils)
            fn = dist.MultivariateNormal(loc, scale_tril=tril).to_event(self._event_ndims[name])
            with poutine.scale(scale=site["scale"]):
                result[name] = pyro.sample(name, fn)
        return result

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The means of the Gaussians (their medians)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {
            name: attrgetter(name)(self.locs).detach()
            for name, _ in self.prototype_trace.iter_stochastic_nodes()
        }
