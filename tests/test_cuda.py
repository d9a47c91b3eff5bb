"""On a GPU: tensors, fits and evaluation stay on the device of the data."""

import pytest
import torch

from pyro_attention.data import load_gmm2d
from pyro_attention.infer import compare, fit
from pyro_attention.models import BayesianGMM

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("method", ["enum", "reinforce", "gumbel", "cavi", "em"])
def test_fit_on_cuda(method):
    data = load_gmm2d(device="cuda")
    gmm = BayesianGMM(4, 2)
    result = fit(gmm, data.train, method, num_steps=50, progress=False)
    draws = result.draws(10)
    assert all(v.is_cuda for v in draws.samples.values())


def test_compare_on_cuda(tmp_path):
    data = load_gmm2d(device="cuda")
    comparison = compare(
        BayesianGMM(4, 2),
        data.train,
        data.test,
        ["enum", "cavi"],
        num_steps=50,
        num_samples=20,
        grad_draws=2,
        out=tmp_path,
        progress=False,
    )
    assert comparison.device.startswith("cuda")
    assert all(torch.isfinite(torch.tensor(r["heldout_log_lik"])) for r in comparison.rows)


def test_data_on_the_wrong_device_refused():
    data = load_gmm2d(device="cuda")
    gmm = BayesianGMM(4, 2)
    with pytest.raises(ValueError, match="cuda"):
        compare(gmm, data.train, data.test.cpu(), ["cavi"], progress=False)


def test_compare_alignment_on_cuda(tmp_path):
    from pyro_attention.data import get_task, make_alignment_dataset
    from pyro_attention.experiments.compare_alignment import PAPER_METHODS, compare_alignment
    from pyro_attention.models import LatentAlignmentSeq2Seq

    task = get_task("reverse", alphabet_size=6, min_length=2, max_length=5)
    data = make_alignment_dataset(task, num_train=40, num_valid=5, num_test=10, seed=0)

    def make_model():
        return LatentAlignmentSeq2Seq(
            len(data.source_vocab), len(data.target_vocab), 8, 8, emission_chunk_size=2
        )

    comparison = compare_alignment(
        make_model,
        data,
        PAPER_METHODS,
        num_steps=3,
        batch_size=8,
        device="cuda",
        out=tmp_path,
        progress=False,
    )
    assert comparison.device.startswith("cuda")
    for row in comparison.rows:
        assert torch.isfinite(torch.tensor([row["ppl"], row["prior_entropy"]])).all()
    fitted = comparison.fits["exact"]
    assert fitted.points_seen > 0


def test_sgpa_comparison_on_cuda(tmp_path):
    from pyro_attention.experiments.compare_sgpa import SGPASettings, compare_sgpa

    settings = SGPASettings(
        num_train=40, num_val=20, steps=3, d_model=8, num_inducing=4, ensemble_size=2,
        num_samples=2,
    )
    for task in ("digits", "sequence"):
        result = compare_sgpa(
            task,
            ["softmax", "sgpa", "sgpa-standard", "temperature", "ensemble"],
            settings=settings,
            device="cuda",
            out=tmp_path / task,
            progress=False,
        )
        assert not result.failed, str(result)
