"""A guide for a chain of alignments: ``q(z_1) ∏_j q(z_j | z_{j-1})``, sampled left to right.

A model whose alignment ``z_j`` depends on ``z_{j-1}`` (a Markov alignment prior; see
:mod:`pyro_attention.alignment_chain`) writes one ``alignment`` site per target position inside
``pyro.markov``; the number of sites follows each batch's target length, so a guide built once
from a prototype trace (:class:`~pyro_attention.guides.AutoAlignmentGuide`) cannot serve it.
:class:`AlignmentChainGuide` asks the model for the chain's tables at every call and samples
the sites in order, each from the row its previous draw selects
(:func:`~pyro_attention.alignment_chain.transition_row`):

==============  ================================================================================
``prior``         the model's own prior tables: :math:`q = p` (``hard``, ``hard-sample``)
``categorical``   the model's ``q`` tables (an inference network), sampled (``reinforce``, ``rws``)
``relaxed``       the same rows, straight-through Gumbel-softmax or Concrete (``gumbel``)
``marginalized``  nothing (``enum``: the model sums the chain)
``deterministic`` nothing (``soft``)
==============  ================================================================================

Guide-side enumeration (``vi-enum``, ``hard-enum``) and Dirichlet relaxations are refused by
the methods' contract for chained alignments, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import InferDict

from pyro_attention.alignment_chain import transition_row
from pyro_attention.distributions import StraightThroughCategorical
from pyro_attention.guides.auto import GuideSpec, as_guide_spec

#: guide kinds a chain guide builds
CHAIN_GUIDE_KINDS = ("marginalized", "deterministic", "prior", "categorical", "relaxed")

#: ``batch -> (init_logits (B, S), transition_logits (B, T - 1, S, S))``
ChainTables = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


class AlignmentChainGuide(PyroModule):
    """Guide for the sites ``site_name(0) .. site_name(T - 1)`` of a chain of alignments.

    :param spec: a :class:`~pyro_attention.guides.GuideSpec`, a kind or an inference method.
    :param prior_tables: the model's prior tables of a batch (for the ``prior`` kind).
    :param guide_tables: the tables of ``q`` (for ``categorical`` and ``relaxed``).
    :param network: the module ``guide_tables`` runs (an inference network), registered as
        ``pyro.module("chain_guide", network)`` so that its parameters are the guide's.
    :param create_plate: ``batch -> pyro.plate`` over the sequences, as the model's.
    :param num_positions: ``batch -> T``.
    :param site_name: ``j -> name`` of the model's site at position ``j``.
    :param local_features: ``batch -> (B, T, F)`` features of each position (inputs of a
        neural baseline, one network shared by the positions).
    """

    def __init__(
        self,
        spec: Any,
        *,
        prior_tables: ChainTables,
        guide_tables: ChainTables | None,
        network: torch.nn.Module | None = None,
        create_plate: Callable[[Any], pyro.plate],
        num_positions: Callable[[Any], int],
        site_name: Callable[[int], str],
        local_features: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.spec: GuideSpec = as_guide_spec(spec)
        if self.spec.kind not in CHAIN_GUIDE_KINDS:
            raise ValueError(
                f"a chain of alignments has no {self.spec.kind!r} guide; expected one of "
                f"{CHAIN_GUIDE_KINDS}"
            )
        if self.spec.enumerate:
            raise ValueError(
                "a chain guide cannot be enumerated (its expectation spans S^T joint "
                "alignments); use enum, which sums the chain in the model"
            )
        if self.spec.kind in ("categorical", "relaxed") and guide_tables is None:
            raise ValueError(
                f"the {self.spec.kind!r} guide of a chain needs q's tables; build the model "
                "with its inference network"
            )
        self.prior_tables = prior_tables
        self.guide_tables = guide_tables
        self.network = network
        self.create_plate = create_plate
        self.num_positions = num_positions
        self.site_name = site_name
        self.local_features = local_features

    def global_site_names(self) -> list[str]:
        """The guide's global latent sites: none (a chain guide samples alignments only)."""
        return []

    def _site_dist(self, logits: torch.Tensor) -> dist.TorchDistribution:
        if self.spec.kind != "relaxed":
            return dist.Categorical(logits=logits)
        temperature = logits.new_tensor(self.spec.temperature)
        if self.spec.straight_through:
            return StraightThroughCategorical(temperature, logits=logits, validate_args=False)
        return dist.RelaxedOneHotCategorical(temperature, logits=logits, validate_args=False)

    def _infer(self, position: int, batch_shape: torch.Size, plate: pyro.plate, batch: Any) -> dict:
        """The method's baseline entries for the site at ``position`` (one baseline network,
        keyed ``"alignment"``, for every position)."""
        if self.spec.site_infer is None:
            return {}

        def features() -> torch.Tensor:
            if self.local_features is None:
                raise ValueError(
                    "a neural baseline of a chain needs per-position features: pass "
                    "local_features=batch -> (B, T, F) to AlignmentChainGuide"
                )
            return self.local_features(batch)[:, position]

        plates = {plate.name: plate}
        return self.spec.site_infer("alignment", batch_shape, features, plates, (batch,), {})

    def forward(self, batch: Any, *args: Any, observations: Any = None, **kwargs: Any) -> dict:
        """Sample the chain of ``batch`` position by position; ``observations`` (passed by RWS)
        is accepted and unused."""
        if self.spec.kind in ("marginalized", "deterministic"):
            return {}
        tables = self.prior_tables if self.spec.kind == "prior" else self.guide_tables
        if self.network is not None and self.spec.kind != "prior":
            pyro.module("chain_guide", self.network)
        init, transition = cast(ChainTables, tables)(batch)
        plate = self.create_plate(batch)
        values: dict[str, torch.Tensor] = {}
        previous: torch.Tensor | None = None
        with plate:
            for j in pyro.markov(range(self.num_positions(batch))):
                if previous is None:
                    logits = init
                else:
                    logits = transition_row(transition[:, j - 1], previous)
                fn = self._site_dist(logits)
                name = self.site_name(j)
                infer = self._infer(j, fn.batch_shape, plate, batch)
                previous = pyro.sample(name, fn, infer=cast(InferDict, infer))
                values[name] = previous
        return values
