"""A latent-alignment fit on held-out data as an ArviZ tree, and its heat-maps read back from it.

The networks of a latent-alignment model are point estimates; what is uncertain is the
alignment :math:`z_j` of every target token. :func:`alignment_tree` writes, for the test split:

* ``posterior``: ``z`` ``(chain, draw, token)``, draws of every token's alignment from the exact
  posterior :math:`p(z \\mid x, y)` (whole chains under a Markov or monotonic prior; under soft
  attention, which has no posterior, from its attention weights — ``attrs["draws_of"]`` says
  which);
* ``heldout_log_likelihood``: ``y`` ``(chain, draw, example)`` :math:`\\log p(y \\mid x)` per test
  sequence and ``y_token`` ``(chain, draw, token)`` :math:`\\log p(y_j \\mid x, y_{<j})`, with one
  draw (the point estimate); :func:`~pyro_attention.diagnostics.elpd.heldout_elpd` ranks
  methods by ``y`` (defined for every prior);
* ``alignment_diagnostics`` (dims ``token``, ``source_position``; ``attrs["sample_dims"] =
  ["token"]``): per-token ``posterior_entropy`` (nats), ``prior_entropy``, the ``mode`` (the
  posterior's, Viterbi's on a chain, the attention's for soft), ``mode_matches_gold`` (1/0, NaN
  where no gold), ``gold_probability`` and the tables ``posterior_probs`` and ``prior_probs``::

      arviz_stats.summary(tree, group="alignment_diagnostics", sample_dims=["token"],
                          var_names=["posterior_entropy", "mode_matches_gold"], kind="stats")

* ``observed_data``: ``target`` ``(token)``; ``constant_data``: ``source`` ``(example,
  source_position)`` and ``gold`` ``(token)``.

Tokens are the real target tokens in data order; their non-index coordinates ``example`` and
``position`` say where each one is (``tree.posterior.z.where(tree.posterior.example == 3,
drop=True)``). The vocabularies are in the root's attrs, so the heat-maps are drawn from the
file alone (:func:`heatmap_examples`). There is no ``log_likelihood`` group: there are no
posterior draws of parameters, so ``arviz_stats.loo`` does not apply (it says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from pyro_attention.diagnostics.arviz import to_datatree
from pyro_attention.diagnostics.elpd import HELDOUT_GROUP
from pyro_attention.experiments.alignment_metrics import AlignmentPointwise

__all__ = ["DIAGNOSTICS_GROUP", "alignment_tree", "heatmap_examples"]

#: the group of per-token alignment diagnostics
DIAGNOSTICS_GROUP = "alignment_diagnostics"


def _with_token_coords(dataset: xr.Dataset, coords: Mapping[str, np.ndarray]) -> xr.Dataset:
    if "token" not in dataset.dims:
        return dataset
    return dataset.assign_coords({name: ("token", value) for name, value in coords.items()})


def alignment_tree(
    pointwise: AlignmentPointwise,
    *,
    source_vocab: Any,
    target_vocab: Any,
    attrs: Mapping[str, object],
) -> xr.DataTree:
    """The ArviZ tree of one method's fit on the test split (see the module's docstring).

    :param pointwise: :attr:`AlignmentScores.pointwise` of
        :func:`~pyro_attention.experiments.alignment_metrics.score_alignments` with
        ``num_draws >= 1``.
    :param source_vocab: the data set's :class:`~pyro_attention.data.Vocabulary` (likewise
        ``target_vocab``), kept in the attrs for decoding.
    :param attrs: metadata for the root (method, model, task, scores), JSON-like values.
    """
    t = pointwise.tensors()
    gold = t["gold"]
    token_coords = {"example": t["example"].numpy(), "position": t["position"].numpy()}
    draws = t["draws"]
    if t["source"].shape[-1] <= torch.iinfo(torch.int16).max:  # 4x smaller files
        draws = draws.to(torch.int16)
    tree = to_datatree(
        {"z": draws},
        observed_data={"target": t["target"]},
        constant_data={"source": t["source"], "gold": gold},
        dims={
            "z": ["token"],
            "target": ["token"],
            "gold": ["token"],
            "source": ["example", "source_position"],
        },
        attrs={
            **attrs,
            "point_estimate": True,
            "parameters": "point estimates; the posterior holds draws of the test alignments z",
            "draws_of": pointwise.draws_of,
            "heldout": "held-out log-likelihood of the test split, not LOO",
            "source_vocab": list(source_vocab.tokens),
            "target_vocab": list(target_vocab.tokens),
        },
    )
    posterior = t["posterior_probs"]
    belief_mode = t["mode"]
    matches = torch.where(gold >= 0, (belief_mode == gold).double(), torch.nan)
    gold_probability = torch.where(
        gold >= 0, posterior.gather(-1, gold.clamp_min(0)[:, None])[:, 0].double(), torch.nan
    )
    diagnostics = xr.Dataset(
        {
            "posterior_entropy": ("token", t["posterior_entropy"].double().numpy()),
            "prior_entropy": ("token", t["prior_entropy"].double().numpy()),
            "mode": ("token", belief_mode.numpy()),
            "mode_matches_gold": ("token", matches.numpy()),
            "gold_probability": ("token", gold_probability.numpy()),
            "posterior_probs": (("token", "source_position"), posterior.double().numpy()),
            "prior_probs": (("token", "source_position"), t["prior_probs"].double().numpy()),
        },
        attrs={
            "sample_dims": ["token"],
            "about": "per test token; the tokens are the sample dim of arviz summaries",
        },
    )
    heldout = xr.Dataset(
        {
            "y": (("chain", "draw", "example"), t["example_log_lik"].double().numpy()[None, None]),
            "y_token": (("chain", "draw", "token"), t["log_lik"].double().numpy()[None, None]),
        },
        attrs={"sample_dims": ["chain", "draw"], "kind": "heldout (point estimate: one draw)"},
    )
    tree[HELDOUT_GROUP] = xr.DataTree(heldout)
    tree[DIAGNOSTICS_GROUP] = xr.DataTree(diagnostics)
    for group in ("posterior", "observed_data", "constant_data", HELDOUT_GROUP, DIAGNOSTICS_GROUP):
        node = tree[group]
        node.dataset = _with_token_coords(node.to_dataset(), token_coords)
    return tree


def heatmap_examples(
    tree: xr.DataTree, count: int
) -> tuple[list[dict[str, torch.Tensor]], list[list[str]], list[list[str]]]:
    """The first ``count`` test examples of an :func:`alignment_tree` as the heat-maps take
    them: ``(examples, source tokens, target tokens)``; each example holds ``prior``,
    ``posterior`` ``(T, S)`` and ``gold`` ``(T,)``."""
    diagnostics = tree[DIAGNOSTICS_GROUP].to_dataset()
    source = tree["constant_data"].to_dataset()["source"].values
    gold = tree["constant_data"].to_dataset()["gold"].values
    target = tree["observed_data"].to_dataset()["target"].values
    example_of = diagnostics["example"].values
    source_words = list(tree.attrs["source_vocab"])
    target_words = list(tree.attrs["target_vocab"])
    examples, sources, targets = [], [], []
    for b in range(min(count, source.shape[0])):
        tokens = np.flatnonzero(example_of == b)
        length = int((source[b] != 0).sum())
        examples.append(
            {
                key: torch.as_tensor(diagnostics[f"{key}_probs"].values[tokens][:, :length])
                for key in ("prior", "posterior")
            }
            | {"gold": torch.as_tensor(gold[tokens])}
        )
        sources.append([source_words[i] for i in source[b, :length]])
        targets.append([target_words[i] for i in target[tokens]])
    return examples, sources, targets
