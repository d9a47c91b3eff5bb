"""Every registered method × every model: it runs and scores finitely, or it is refused with a
``ValueError`` naming the reason — never another exception.

The models are the library's and the test models of ``zoo.py`` (a user's function, network
parameters with a global, continuous local latents, no alignment, no global). The method
registered from outside the package in ``warmup_method.py`` joins the matrix.

``python tests/infer/test_validity_matrix.py`` prints the matrix as a table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pytest
import torch
import warmup_method  # noqa: F401  (registers "vi-enum-warmup")
from zoo import (
    KeylessLookup,
    KeyValueAttention,
    ScaleMixture,
    kv_data,
    linear_regression,
    lookup_data,
    poisson_data,
    poisson_mixture,
    regression_data,
    scale_data,
)

from pyro_attention.data import ClassificationData, get_task, load_gmm2d, make_alignment_dataset
from pyro_attention.infer import CAVI, EM, NUTS, Dirichlet, fit, get_method, method_names
from pyro_attention.infer.compare import evaluate_fit
from pyro_attention.infer.fit import runner_options
from pyro_attention.models import (
    BayesianGMM,
    BernoulliMixture,
    GPAttentionClassifier,
    LatentAlignmentSeq2Seq,
)

Case = tuple[Callable[[], Any], Any, Any]


def _gmm() -> Case:
    data = load_gmm2d()
    return (lambda: BayesianGMM(2, 2)), data.train[:150], data.test[:60]


def _bernoulli() -> Case:
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(120, 8, generator=gen) < 0.3).float()
    return (lambda: BernoulliMixture(2, 8)), data[:80], data[80:]


def _seq2seq() -> Case:
    data = make_alignment_dataset(get_task("reverse"), num_train=24, num_valid=4, num_test=8)
    make = lambda: LatentAlignmentSeq2Seq(  # noqa: E731
        len(data.source_vocab), len(data.target_vocab), embed_dim=4, hidden_dim=6
    )
    return make, data.tensors("train"), data.tensors("test")


def _seq2seq_markov() -> Case:
    data = make_alignment_dataset(get_task("reverse"), num_train=24, num_valid=4, num_test=8)
    make = lambda: LatentAlignmentSeq2Seq(  # noqa: E731
        len(data.source_vocab), len(data.target_vocab), embed_dim=4, hidden_dim=6,
        alignment_prior="markov",
    )
    return make, data.tensors("train"), data.tensors("test")


def _gp_attention() -> Case:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 7, (60, 5), generator=gen)
    mask = torch.ones(60, 5, dtype=torch.bool)
    mask[::3, 3:] = False
    tokens = tokens * mask
    labels = (tokens.sum(-1) > 12).long()
    data = ClassificationData(tokens, mask, labels, 2, vocab_size=7)
    make = lambda: GPAttentionClassifier(  # noqa: E731
        num_classes=2, vocab_size=7, max_len=5, d_model=4, num_heads=2, num_inducing=3
    )
    return make, data.subset(slice(0, 40)), data.subset(slice(40, 60))


MODELS: dict[str, Callable[[], Case]] = {
    "gmm": _gmm,
    "bernoulli": _bernoulli,
    "seq2seq": _seq2seq,
    "seq2seq-markov": _seq2seq_markov,
    "poisson-fn": lambda: (lambda: poisson_mixture, poisson_data(80), poisson_data(40, 1)),
    "kv-attention": lambda: (KeyValueAttention, kv_data(80), kv_data(40, 1)),
    "scale-mixture": lambda: (ScaleMixture, scale_data(80), scale_data(40, 1)),
    "regression-fn": lambda: (
        lambda: linear_regression,
        regression_data(80),
        regression_data(40, 1),
    ),
    "keyless-lookup": lambda: (KeylessLookup, lookup_data(80), lookup_data(40, 1)),
    "gp-attention": _gp_attention,
}

#: small settings, so that every cell takes two steps (or a few iterations/draws)
FAST: dict[str, Callable[[], Any]] = {
    "nuts": lambda: NUTS(num_samples=4, warmup_steps=4, num_chains=2, jit_compile=False),
    "cavi": lambda: CAVI(max_iter=3),
    "em": lambda: EM(max_iter=3),
    "dirichlet": lambda: Dirichlet(pretrain_steps=1),
}

#: methods for models whose latents are all continuous
CONTINUOUS_ONLY = ("svi", "svi-kl", "map")

#: cells that must be refused (the reason is in the message); everything else must run
REFUSED = {
    ("nuts", "seq2seq"),  # no continuous globals, network parameters
    ("nuts", "kv-attention"),  # network parameters
    ("nuts", "scale-mixture"),  # continuous local latents
    ("nuts", "keyless-lookup"),
    ("cavi", "bernoulli"),
    ("nuts", "seq2seq-markov"),
} | {
    (method, "seq2seq-markov")  # each position enumerated, scored or relaxed on its own
    for method in ("vi-enum", "vi-enum-warmup", "hard-enum", "vi-sample", "dirichlet")
} | {
    (continuous, model)  # these need every latent continuous
    for continuous in CONTINUOUS_ONLY
    for model in ("gmm", "bernoulli", "seq2seq", "seq2seq-markov", "poisson-fn", "kv-attention")
    + ("scale-mixture", "keyless-lookup")
} | {
    (closed, model)
    for closed in ("cavi", "em")
    for model in MODELS
    if model not in ("gmm", "bernoulli")
} | {
    (method, "regression-fn")
    for method in method_names()
    if method not in (*CONTINUOUS_ONLY, "nuts")
} | {
    (method, "gp-attention")  # no alignment; networks and continuous local noise
    for method in method_names()
    if method not in CONTINUOUS_ONLY
}


def run_cell(method_name: str, model_name: str) -> tuple[str, str]:
    """``("runs", held-out score)`` or ``("refused", reason)``; any other error propagates."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    make, train, test = MODELS[model_name]()
    model = make()
    method = FAST[method_name]() if method_name in FAST else get_method(method_name)
    try:
        options = {"num_steps": 2, "progress": False, "seed": 0}
        accepted = {k: v for k, v in options.items() if k in runner_options(method)}
        fitted = fit(model, train, method, **accepted)
    except ValueError as err:
        return "refused", str(err)
    row, _, _ = evaluate_fit(model, fitted, train, test, num_samples=3, grad_draws=2,
                             local_draws=4)
    score = row["heldout_log_lik"]
    assert np.isfinite(score), (method_name, model_name, row)
    return "runs", f"{score:.3f}"


# nuts on the small GMM can warn about R-hat with 4 draws; that is a status, not an error
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method_name", method_names())
def test_cell_runs_or_is_refused_with_a_reason(method_name, model_name):
    outcome, detail = run_cell(method_name, model_name)
    if (method_name, model_name) in REFUSED:
        assert outcome == "refused", detail
        assert f"method {method_name!r} does not apply" in detail, detail
        assert "it needs" in detail, detail
    else:
        assert outcome == "runs", detail


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    names = method_names()
    print("| method | " + " | ".join(MODELS) + " |")
    print("|---" * (len(MODELS) + 1) + "|")
    for method_name in names:
        cells = []
        for model_name in MODELS:
            try:
                outcome, _ = run_cell(method_name, model_name)
            except Exception as err:  # reported as a failure of the cell
                outcome = f"FAILS ({type(err).__name__})"
            cells.append(outcome)
        print(f"| {method_name} | " + " | ".join(cells) + " |")
