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
