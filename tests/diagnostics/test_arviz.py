"""The ArviZ bridge: DataTree layout, arviz-stats without extra arguments, netCDF round trip."""

from __future__ import annotations

import math
import os

import arviz_base
import arviz_stats
import numpy as np
import pytest
import torch
import xarray as xr

from pyro_attention.diagnostics import load_datatree, save_datatree, to_datatree

S, K, F, N = 200, 3, 2, 7


def _gmm_like(device: torch.device, generator: torch.Generator) -> dict[str, dict]:
    """Posterior, pointwise log-likelihood, data and stats shaped like a small GMM fit."""
    locs = torch.randn(S, K, F, generator=generator, dtype=torch.float64) + torch.tensor(
        [[3.0, -1.5], [0.0, 2.0], [-4.0, 0.5]], dtype=torch.float64
    )
    weights = torch.distributions.Dirichlet(torch.ones(K, dtype=torch.float64)).sample((S,))
    return {
        "posterior": {"locs": locs.to(device), "weights": weights.to(device)},
        "log_likelihood": {
            "obs": torch.randn(S, N, generator=generator, dtype=torch.float64).to(device) - 2.0
        },
        "observed_data": {"obs": torch.randn(N, F, generator=generator).to(device)},
        "sample_stats": {"lp": torch.randn(S, generator=generator).to(device)},
    }


DIMS = {"locs": ["component", "feature"], "weights": ["component"], "obs": ["data"]}
OBS_DIMS = {**DIMS, "obs": ["data", "feature"]}


def _tree(groups: dict[str, dict], **kwargs) -> xr.DataTree:
    return to_datatree(
        groups["posterior"],
        log_likelihood=groups["log_likelihood"],
        observed_data=groups["observed_data"],
        sample_stats=groups["sample_stats"],
        **kwargs,
    )


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def test_groups_dims_sizes_and_values(device: torch.device) -> None:
    groups = _gmm_like(device, torch.Generator().manual_seed(0))
    # log_likelihood 'obs' is pointwise (S, N) while observed_data 'obs' is (N, F): one dims
    # entry names both, the event dim 'feature' is dropped for the log-likelihood.
    dt = _tree(
        groups, dims=OBS_DIMS, coords={"component": ["a", "b", "c"]}, attrs={"method": "enum"}
    )

    assert set(dt.children) == {"posterior", "log_likelihood", "observed_data", "sample_stats"}
    post = dt["posterior"]
    assert post["locs"].dims == ("chain", "draw", "component", "feature")
    assert post["weights"].dims == ("chain", "draw", "component")
    assert dict(post.sizes) == {"chain": 1, "draw": S, "component": K, "feature": F}
    assert list(post["component"].values) == ["a", "b", "c"]
    assert dt["log_likelihood"]["obs"].dims == ("chain", "draw", "data")
    assert dt["observed_data"]["obs"].dims == ("data", "feature")
    assert dt["sample_stats"]["lp"].dims == ("chain", "draw")
    for group, variables in groups.items():
        for name, value in variables.items():
            expected = _numpy(value)
            got = dt[group][name].values
            if group != "observed_data":
                got = got[0]  # the single chain
            np.testing.assert_array_equal(got, expected)
    assert dt.attrs["method"] == "enum"
    assert dt.attrs["sample_dims"] == ["chain", "draw"]
    assert dt.attrs["input_sample_dims"] == ["sample"]
    assert dt["posterior"].attrs["sample_dims"] == ["chain", "draw"]
    # the draws stack back into one 'sample' dim
    stacked = arviz_base.extract(dt)
    assert stacked.sizes["sample"] == S


def test_chain_draw_layout() -> None:
    rng = np.random.default_rng(1)
    C, D = 4, 50
    mu = rng.normal(2.0, 1.0, size=(C, D))
    ll = rng.normal(size=(C, D, N))
    diverging = np.zeros((C, D), dtype=bool)
    diverging[1, 3] = True
    dt = to_datatree(
        {"mu": mu},
        sample_dims=("chain", "draw"),
        log_likelihood={"obs": ll},
        sample_stats={"diverging": diverging},
        dims={"obs": ["data"]},
        coords={"draw": np.arange(100, 100 + D)},
    )
    assert dt["posterior"]["mu"].dims == ("chain", "draw")
    assert dt["posterior"]["draw"].values[0] == 100
    assert dict(dt["log_likelihood"].sizes) == {"chain": C, "draw": D, "data": N}
    np.testing.assert_array_equal(dt["posterior"]["mu"].values, mu)
    np.testing.assert_array_equal(dt["log_likelihood"]["obs"].values, ll)
    assert dt["sample_stats"]["diverging"].values.dtype == np.bool_
    assert int(dt["sample_stats"]["diverging"].sum()) == 1
    assert dt.attrs["input_sample_dims"] == ["chain", "draw"]


def test_tensor_inputs_with_grad_and_low_precision(device: torch.device) -> None:
    mu = torch.randn(S, device=device, requires_grad=True)
    half = torch.randn(S, 2, device=device).to(torch.bfloat16)
    dt = to_datatree({"mu": mu * 2, "h": half})
    np.testing.assert_allclose(dt["posterior"]["mu"].values[0], (mu * 2).detach().cpu().numpy())
    np.testing.assert_array_equal(dt["posterior"]["h"].values[0], half.float().cpu().numpy())


@pytest.mark.parametrize("layout", [("sample",), ("chain", "draw")])
def test_summary_and_ess_without_arguments(layout: tuple[str, ...]) -> None:
    groups = _gmm_like(torch.device("cpu"), torch.Generator().manual_seed(2))
    posterior = groups["posterior"]
    if layout == ("chain", "draw"):
        posterior = {k: v.reshape(4, S // 4, *v.shape[1:]) for k, v in posterior.items()}
    dt = to_datatree(posterior, sample_dims=layout, dims=DIMS)

    table = arviz_stats.summary(dt)
    locs_mean = groups["posterior"]["locs"].mean(0).numpy()
    for k in range(K):
        for f in range(F):
            row = table.loc[f"locs[{k}, {f}]"]
            assert math.isfinite(row["mean"])
            assert row["mean"] == pytest.approx(locs_mean[k, f], abs=0.006)  # rounded to 2
            assert row["ess_bulk"] > 0.5 * S  # independent draws
    r_hat = table["r_hat"]
    if layout == ("sample",):
        assert r_hat.isna().all()  # one chain: no between-chain comparison
    else:
        assert (r_hat < 1.1).all()

    ess = arviz_stats.ess(dt)
    assert ess["locs"].dims == ("component", "feature")
    assert (ess["locs"].values > 0.5 * S).all()


def _conjugate_normal(seed: int, num_samples: int = 4000, num_data: int = 20):
    """Exact posterior draws, pointwise log-likelihood and exact LOO of a conjugate normal.

    ``mu ~ N(m0, s0^2)``, ``y_n ~ N(mu, 1)``. The posterior without point ``n`` is normal with
    precision ``1/s0^2 + N - 1`` and mean ``(m0/s0^2 + sum_{j != n} y_j) / precision``, so
    ``log p(y_n | y_{-n}) = log N(y_n; mean_{-n}, 1 + 1/precision_{-n})`` in closed form; the
    in-sample ``log p(y_n | y)`` likewise with the full posterior.
    """
    g = torch.Generator().manual_seed(seed)
    m0, s0 = 0.0, 2.0
    y = 0.5 + torch.randn(num_data, generator=g, dtype=torch.float64)
    precision = 1 / s0**2 + num_data
    mean = (m0 / s0**2 + y.sum()) / precision
    mu = mean + precision**-0.5 * torch.randn(num_samples, generator=g, dtype=torch.float64)
    log_lik = torch.distributions.Normal(mu[:, None], 1.0).log_prob(y)
    precision_loo = precision - 1
    mean_loo = (m0 / s0**2 + y.sum() - y) / precision_loo
    exact = torch.distributions.Normal(mean_loo, (1 + 1 / precision_loo) ** 0.5).log_prob(y)
    lppd = torch.distributions.Normal(mean, (1 + 1 / precision) ** 0.5).log_prob(y).sum().item()
    # Monte Carlo standard error of each importance-sampling LOO estimate
    # log(1 / mean_s(1/p(y_n | mu_s))) by the delta method.
    ratios = torch.exp(-(log_lik - log_lik.max(0).values))
    mcse = ratios.std(0) / (math.sqrt(num_samples) * ratios.mean(0))
    return mu, y, log_lik, exact, mcse, lppd


@pytest.mark.parametrize("layout", [("sample",), ("chain", "draw")])
def test_loo_matches_exact_leave_one_out(layout: tuple[str, ...]) -> None:
    mu, y, log_lik, exact, mcse, lppd = _conjugate_normal(seed=3)
    if layout == ("chain", "draw"):
        mu, log_lik = mu.reshape(4, -1), log_lik.reshape(4, -1, log_lik.shape[-1])
    dt = to_datatree(
        {"mu": mu},
        sample_dims=layout,
        log_likelihood={"y": log_lik},
        observed_data={"y": y},
        dims={"y": ["data"]},
    )
    result = arviz_stats.loo(dt, pointwise=True)

    assert result.n_samples == 4000
    assert result.n_data_points == 20
    assert (result.pareto_k.values < 0.5).all()
    assert abs(result.elpd - exact.sum().item()) < 3 * mcse.sum().item()
    np.testing.assert_array_less(np.abs(result.elpd_i.values - exact.numpy()), 4 * mcse.numpy())
    # p_loo = lppd - elpd_loo, both exact here (lppd's own Monte Carlo error is tiny)
    assert abs(result.p - (lppd - exact.sum().item())) < 3 * mcse.sum().item() + 0.02


def test_loo_runs_without_arguments() -> None:
    mu, _, log_lik, exact, mcse, _ = _conjugate_normal(seed=4, num_samples=1000)
    dt = to_datatree({"mu": mu}, log_likelihood={"y": log_lik})
    result = arviz_stats.loo(dt)
    assert abs(result.elpd - exact.sum().item()) < 3 * mcse.sum().item()


def test_netcdf_round_trip(tmp_path) -> None:
    groups = _gmm_like(torch.device("cpu"), torch.Generator().manual_seed(5))
    attrs = {
        "method": "enum",
        "model": "gmm",
        "seed": 0,
        "lr": 0.01,
        "converged": True,
        "note": None,
        "sites": ["locs"],
        "config": {"num_components": 3, "dims": ["component"]},
    }
    dt = _tree(
        groups,
        dims=OBS_DIMS,
        coords={"component": ["a", "b", "c"], "feature": ["x", "y"]},
        attrs=attrs,
    )
    path = tmp_path / "runs" / "gmm" / "posterior.nc"  # parents do not exist yet
    assert save_datatree(dt, path) == path
    assert path.is_file()
    assert dt.attrs["sample_dims"] == ["chain", "draw"]  # the caller's tree is untouched

    back = load_datatree(path)
    assert set(back.children) == set(dt.children)
    for group in dt.children:
        assert back[group].dims == dt[group].dims
        for name in dt[group].data_vars:
            assert back[group][name].dims == dt[group][name].dims
            np.testing.assert_array_equal(back[group][name].values, dt[group][name].values)
        for coord in dt[group].coords:
            np.testing.assert_array_equal(back[group][coord].values, dt[group][coord].values)
        assert back[group].attrs == dt[group].attrs
    assert back.attrs == dt.attrs
    assert back.attrs["sample_dims"] == ["chain", "draw"]
    assert back.attrs["input_sample_dims"] == ["sample"]  # a one-element list stays a list
    assert back.attrs["converged"] is True and back.attrs["note"] is None
    # a loaded tree works with arviz-stats exactly like the original
    assert arviz_stats.summary(back).equals(arviz_stats.summary(dt))

    # loaded into memory: the file can go away
    os.remove(path)
    np.testing.assert_array_equal(back["posterior"]["locs"].values, dt["posterior"]["locs"].values)


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "posterior.nc"
    first = to_datatree({"mu": np.zeros(30)}, attrs={"version": 1})
    second = to_datatree({"mu": np.ones(40)}, attrs={"version": 2})
    save_datatree(first, path)
    save_datatree(second, str(path))
    assert os.listdir(tmp_path) == ["posterior.nc"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # permissions follow the umask like any new file
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    plain.unlink()
    back = load_datatree(path)
    assert back.attrs["version"] == 2
    assert back["posterior"].sizes["draw"] == 40

    def broken_write(self, filepath, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataTree, "to_netcdf", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_datatree(first, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["posterior.nc"]  # temporary removed
    assert load_datatree(path).attrs["version"] == 2  # old file intact


def test_save_and_load_errors(tmp_path) -> None:
    dt = to_datatree({"mu": np.zeros(30)})
    dt.attrs["bad"] = object()
    with pytest.raises(TypeError, match="'bad'"):
        save_datatree(dt, tmp_path / "x.nc")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="save_datatree"):
        load_datatree(tmp_path / "missing.nc")
    with pytest.raises(TypeError, match="DataTree"):
        save_datatree({"mu": np.zeros(3)}, tmp_path / "x.nc")


def test_refuses_mismatched_sample_dims() -> None:
    with pytest.raises(ValueError, match=r"posterior\['b'\].*\(99,\).*posterior\['a'\].*\(100,\)"):
        to_datatree({"a": np.zeros(100), "b": np.zeros((99, 2))})
    with pytest.raises(ValueError, match=r"log_likelihood\['obs'\].*\(100,\)"):
        to_datatree({"a": np.zeros(50)}, log_likelihood={"obs": np.zeros((100, 3))})
    with pytest.raises(ValueError, match=r"sample_stats\['lp'\].*\(4, 25\).*\(4, 20\)"):
        to_datatree(
            {"a": np.zeros((4, 20))},
            sample_dims=("chain", "draw"),
            sample_stats={"lp": np.zeros((4, 25))},
        )
    with pytest.raises(ValueError, match=r"posterior\['a'\].*\(4,\).*\(C, D\)"):
        to_datatree({"a": np.zeros(4)}, sample_dims=("chain", "draw"))
    with pytest.raises(ValueError, match="sample_dims must be"):
        to_datatree({"a": np.zeros(4)}, sample_dims=("draw",))


def test_refuses_nan_empty_and_bad_dims() -> None:
    mu = torch.zeros(100, 2)
    mu[17, 1] = float("nan")
    with pytest.raises(ValueError, match=r"posterior\['mu'\].*NaN.*\(17, 1\)"):
        to_datatree({"ok": torch.zeros(100), "mu": mu})
    with pytest.raises(ValueError, match=r"log_likelihood\['obs'\].*NaN"):
        to_datatree({"a": np.zeros(10)}, log_likelihood={"obs": np.full((10, 2), np.nan)})
    with pytest.raises(ValueError, match="posterior is empty"):
        to_datatree({})
    with pytest.raises(ValueError, match=r"posterior\['a'\] has no draws"):
        to_datatree({"a": np.zeros((0, 3))})
    with pytest.raises(ValueError, match=r"dims\['a'\].*2 non-sample dim"):
        to_datatree({"a": np.zeros((10, 3, 2))}, dims={"a": ["component"]})
    with pytest.raises(ValueError, match=r"dim 'component' has size 4 in posterior\['b'\]"):
        to_datatree(
            {"a": np.zeros((10, 3)), "b": np.zeros((10, 4))},
            dims={"a": ["component"], "b": ["component"]},
        )
    with pytest.raises(ValueError, match="reserved name 'draw'"):
        to_datatree({"a": np.zeros((10, 3))}, dims={"a": ["draw"]})
    with pytest.raises(ValueError, match=r"coords\['component'\]"):
        to_datatree(
            {"a": np.zeros((10, 3))}, dims={"a": ["component"]}, coords={"component": ["x"]}
        )
    with pytest.raises(ValueError, match=r"coords\['draw'\].*size 10"):
        to_datatree({"a": np.zeros(10)}, coords={"draw": np.arange(5)})
    with pytest.raises(ValueError, match=r"coords\['sample'\]"):
        to_datatree({"a": np.zeros(10)}, coords={"sample": np.arange(10)})
    with pytest.raises(ValueError, match=r"attrs\['sample_dims'\]"):
        to_datatree({"a": np.zeros(10)}, attrs={"sample_dims": ["sample"]})
    with pytest.raises(TypeError, match=r"attrs\['fn'\]"):
        to_datatree({"a": np.zeros(10)}, attrs={"fn": print})


def test_posterior_predictive_group_round_trips(tmp_path) -> None:
    draws = torch.randint(0, 3, (6, 4))
    dt = to_datatree(
        {"u": torch.randn(6, 2)},
        posterior_predictive={"y": draws},
        observed_data={"y": torch.tensor([0, 1, 2, 0])},
        dims={"y": ["sequence"]},
    )
    assert dict(dt.posterior_predictive["y"].sizes) == {"chain": 1, "draw": 6, "sequence": 4}
    back = load_datatree(save_datatree(dt, tmp_path / "ppc.nc"))
    np.testing.assert_array_equal(back.posterior_predictive["y"].values[0], draws.numpy())
    with pytest.raises(ValueError, match="leading sample shape"):
        to_datatree({"u": torch.randn(6, 2)}, posterior_predictive={"y": draws[:5]})


def test_an_attribute_named_like_a_group_is_refused():
    """ArviZ looks groups up as attributes: a root attribute ``log_likelihood`` would make
    ``arviz_stats.loo`` of a tree without that group fail with an AttributeError."""
    samples = {"mu": torch.randn(4, 2)}
    with pytest.raises(ValueError, match=r"attrs\['log_likelihood'\] has the name of an ArviZ"):
        to_datatree(samples, attrs={"log_likelihood": "held-out points"})
    tree = to_datatree(samples, attrs={"log_likelihood_of": "held-out points"})
    with pytest.raises(TypeError, match="log likelihood not found"):
        arviz_stats.loo(tree)
