"""Variance-reduction baselines for score-function (REINFORCE) gradients.

The score-function estimator of :math:`\\nabla_\\phi E_{q_\\phi(z)}[f(z)]` is
:math:`(f(z) - b)\\,\\nabla_\\phi \\log q_\\phi(z)`; any ``b`` independent of ``z`` keeps it
unbiased and a good one cuts its variance (Williams 1992; Mnih & Gregor 2014). Each baseline
returns the ``infer["baseline"]`` entry that Pyro's ``TraceGraph_ELBO`` reads on a guide site.

* :class:`DecayingAverageBaseline` — running average of the downstream cost.
* :class:`NeuralBaseline` — a network of per-site features, trained by Pyro on the squared
  error to the downstream cost.
* :class:`ValueBaseline` — a value the user computes (a tensor, or a callable of the site and
  the model's arguments); always detached so that it can never train the model through the
  baseline loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch


class Baseline:
    """Base class: no baseline (plain REINFORCE)."""

    def site_infer(
        self,
        name: str,
        batch_shape: torch.Size,
        features: Callable[[], torch.Tensor],
        plates: dict,
        args: tuple,
        kwargs: dict,
    ) -> dict:
        """The ``infer`` entries for guide site ``name`` of batch shape ``batch_shape``.

        :param features: call it for per-site features (neural baselines).
        :param plates: the guide's plates (``plates[name].indices`` is the subsample).
        """
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class DecayingAverageBaseline(Baseline):
    """:math:`b_t = \\beta b_{t-1} + (1 - \\beta) f_t`, tracked by Pyro per site.

    Pyro keeps one running value per element of the site, so the site's shape must not change
    between steps (fixed data or fixed-size subsamples; not variable-length sequence batches).

    :param beta: decay in ``[0, 1)``.
    """

    def __init__(self, beta: float = 0.9) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = float(beta)

    def site_infer(self, name, batch_shape, features, plates, args, kwargs) -> dict:
        return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}}


class NeuralBaseline(Baseline):
    """:math:`b = g_\\psi(h)`, a small MLP of per-site features ``h``.

    The features come from the model's ``local_features(plates, *args, **kwargs)`` (for a
    mixture: the data points of the current subsample). Pass ``module`` to use your own network
    (output shape must equal the site's batch shape).

    :param hidden: width of the default two-layer MLP.
    :param module: optional ``torch.nn.Module`` mapping features to baseline values.
    """

    def __init__(self, hidden: int = 32, module: torch.nn.Module | None = None) -> None:
        self.hidden = hidden
        self.module = module
        self._modules: dict[str, torch.nn.Module] = {}

    def _network(self, name: str, inputs: torch.Tensor) -> torch.nn.Module:
        if self.module is not None:
            return self.module
        if name not in self._modules:
            net = torch.nn.Sequential(
                torch.nn.Linear(inputs.shape[-1], self.hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(self.hidden, 1),
                torch.nn.Flatten(-2, -1),
            ).to(device=inputs.device, dtype=inputs.dtype)
            self._modules[name] = net
        return self._modules[name]

    def site_infer(self, name, batch_shape, features, plates, args, kwargs) -> dict:
        inputs = features()
        net = pyro.module(f"baseline_{name}", self._network(name, inputs))
        return {"baseline": {"nn_baseline": net, "nn_baseline_input": inputs}}


class ValueBaseline(Baseline):
    """A user-supplied baseline value, detached.

    :param value: a tensor broadcastable to the site's batch shape, in the units of Pyro's
        downstream cost (the ELBO terms log p - log q downstream of the site), or a callable
        ``value(name, plates, *args, **kwargs) -> tensor``.
    """

    def __init__(self, value: torch.Tensor | Callable[..., torch.Tensor]) -> None:
        self.value = value

    def site_infer(self, name, batch_shape, features, plates, args, kwargs) -> dict:
        value: Any = self.value
        if callable(value):
            value = value(name, plates, *args, **kwargs)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"baseline value for site {name!r} must be a tensor, got {type(value)}")
        return {"baseline": {"baseline_value": value.detach().expand(batch_shape)}}
