"""SGPA against references written here: an independent kernel (Pyro's GP kernel for RBF, a
plain numpy formula for the exponential kernel), the dense GP posterior, and Salimbeni et al.
(2018)'s orthogonally decoupled formulas — all in float64, at 1e-8."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.contrib.gp.kernels import RBF
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_attention.nn.sgpa import (
    SGPAttention,
    kernel_diagonal,
    kernel_matrix,
    robust_cholesky,
    whitened_kl,
)

TOL = 1e-8
B, T, D, H, M = 2, 5, 6, 2, 3


def _layer(variant: str, kernel: str = "exponential", covariance: str = "diag", **kw):
    torch.manual_seed(0)
    layer = SGPAttention(
        D,
        H,
        kernel=kernel,
        variant=variant,
        num_inducing=M,
        covariance=covariance,
        jitter=1e-15,
        **kw,
    ).double()
    with torch.no_grad():  # spread the kernel parameters so every term matters
        layer.log_sf.copy_(torch.tensor([0.1, -0.2]))
        layer.log_ls.add_(0.3 * torch.randn_like(layer.log_ls))
        layer.qk_proj.weight.mul_(0.6)
    return layer


def _inputs(padded: bool = False):
    torch.manual_seed(1)
    tokens = torch.randn(B, T, D, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.bool)
    if padded:
        mask[1, 3:] = False
    return tokens, mask


def _guide(layer: SGPAttention, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A whitened q(u): means and lower-triangular factors with a positive diagonal."""
    torch.manual_seed(seed)
    q_loc = torch.randn(layer.global_shape, dtype=torch.float64)
    q_tril = torch.randn(*layer.global_shape, M, dtype=torch.float64).tril() * 0.5
    q_tril.diagonal(dim1=-2, dim2=-1).abs_().add_(0.1)
    return q_loc, q_tril


def _numpy_kernel(layer: SGPAttention, x: np.ndarray, y: np.ndarray, head: int) -> np.ndarray:
    """k(x, y) of one head, from the formula (not the library's kernel)."""
    sf2 = np.exp(2 * layer.log_sf[head].item())
    ls = np.exp(layer.log_ls[head].detach().numpy())
    if layer.kernel == "exponential":
        return sf2 * np.exp((x / ls) @ (y / ls).T)
    diff = (x[:, None, :] - y[None, :, :]) / ls
    return sf2 * np.exp(-0.5 * (diff**2).sum(-1))


def _head_parts(layer: SGPAttention, tokens: torch.Tensor, head: int, row: int):
    """The head's tied projection of the tokens and the inducing inputs, and its values, by
    hand from the weights."""
    d, dv = layer.head_dim, layer.value_dim
    w = layer.qk_proj.weight.detach().numpy()[head * d : (head + 1) * d]
    wv = layer.v_proj.weight.detach().numpy()[head * dv : (head + 1) * dv]
    bv = layer.v_proj.bias.detach().numpy()[head * dv : (head + 1) * dv]
    x = tokens[row].detach().numpy()
    q = x @ w.T
    v = x @ wv.T + bv
    g = layer.inducing_inputs.detach().numpy() @ w.T if layer.variant == "decoupled" else None
    return q, v, g


# ---------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kind", ["exponential", "rbf"])
def test_kernel_matches_an_independent_implementation(kind):
    torch.manual_seed(2)
    x = torch.randn(H, 4, 3, dtype=torch.float64)
    y = torch.randn(H, 5, 3, dtype=torch.float64)
    log_sf = torch.tensor([0.2, -0.4], dtype=torch.float64)
    log_ls = torch.randn(H, 3, dtype=torch.float64).mul(0.3)
    got = kernel_matrix(x, y, log_sf, log_ls, kind)
    for h in range(H):
        if kind == "rbf":
            pyro.clear_param_store()  # the oracle's parameters live in Pyro's param store
            oracle = RBF(3, variance=log_sf[h].exp() ** 2, lengthscale=log_ls[h].exp())
            want = oracle(x[h], y[h]).detach()
        else:
            ls = log_ls[h].exp().numpy()
            want = torch.as_tensor(
                np.exp(2 * log_sf[h].item()) * np.exp((x[h].numpy() / ls) @ (y[h].numpy() / ls).T)
            )
        torch.testing.assert_close(got[h], want, rtol=TOL, atol=TOL)
    diag = kernel_diagonal(x, log_sf, log_ls, kind)
    full = kernel_matrix(x, x, log_sf, log_ls, kind).diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(diag, full, rtol=TOL, atol=TOL)


def test_unknown_kernel_is_refused():
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernel_matrix(x, x, torch.zeros(1), torch.zeros(1, 2), "matern")


# ---------------------------------------------------------------------- standard SGPA
@pytest.mark.parametrize("kernel", ["exponential", "rbf"])
def test_standard_posterior_is_the_dense_gp_posterior(kernel):
    layer = _layer("standard", kernel)
    tokens, mask = _inputs()
    mean, cov = layer.posterior(tokens, mask)
    s_all = torch.nn.functional.softplus(layer.s_proj(tokens)).detach().numpy()
    for row in range(B):
        for h in range(H):
            q, v, _ = _head_parts(layer, tokens, h, row)
            k = _numpy_kernel(layer, q, q, h)  # queries = keys = inducing inputs
            chol = np.linalg.cholesky(k)
            for d in range(layer.value_dim):
                s = s_all[row, :, h * layer.value_dim + d]
                m_u = k @ v[:, d]  # inducing mean whose whitened mean is Lᵀ v
                s_u = chol @ np.diag(s**2) @ chol.T
                k_inv = np.linalg.inv(k)
                want_mean = k @ k_inv @ m_u
                want_cov = k - k @ k_inv @ k + k @ k_inv @ s_u @ k_inv @ k
                np.testing.assert_allclose(mean[row, h, :, d].detach(), want_mean, atol=1e-7)
                np.testing.assert_allclose(cov[row, h, d].detach(), want_cov, atol=1e-7)


def test_standard_kl_is_the_kl_to_the_gp_prior():
    layer = _layer("standard")
    tokens, mask = _inputs()
    kl = layer.amortised_kl(tokens, mask)
    s_all = torch.nn.functional.softplus(layer.s_proj(tokens)).detach()
    for row in range(B):
        total = 0.0
        for h in range(H):
            q, v, _ = _head_parts(layer, tokens, h, row)
            k = torch.as_tensor(_numpy_kernel(layer, q, q, h))
            chol = torch.linalg.cholesky(k)
            for d in range(layer.value_dim):
                s = s_all[row, :, h * layer.value_dim + d]
                q_u = MultivariateNormal(k @ torch.as_tensor(v[:, d]), scale_tril=chol * s)
                total += kl_divergence(q_u, MultivariateNormal(torch.zeros(T).double(), k))
        assert abs(kl[row].item() - float(total)) < 1e-7 * max(1.0, abs(float(total)))


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("variant", ["standard", "decoupled"])
def test_sampled_output_has_the_posterior_moments(variant, covariance):
    """F is linear in (u, eps): its mean at u = m̃, eps = 0 and its covariance J Σ Jᵀ are the
    analytic posterior's (full: the whole T×T matrix; diag: its diagonal)."""
    layer = _layer(variant, covariance=covariance)
    tokens, mask = _inputs()
    q_loc, q_tril = _guide(layer, 3)
    mean, cov = layer.posterior(tokens, mask, q_loc, q_tril)
    u0 = q_loc if variant == "decoupled" else None
    eps0 = torch.zeros(layer.noise_shape(B, T), dtype=torch.float64)
    f_mean, _ = layer.sample_heads(tokens, mask, u0, eps0)
    torch.testing.assert_close(f_mean, mean, rtol=TOL, atol=TOL)
    # covariance through the Jacobian in (eps) and, for decoupled, in u ~ N(m̃, S̃S̃ᵀ)
    j_eps = torch.autograd.functional.jacobian(
        lambda e: layer.sample_heads(tokens, mask, u0, e)[0], eps0
    )  # (B, H, T, dv, B, H, T, dv)
    for row in range(B):
        for h in range(H):
            for d in range(layer.value_dim):
                je = j_eps[row, h, :, d, row, h, :, d]
                got = je @ je.T
                if variant == "decoupled":
                    ju = torch.autograd.functional.jacobian(
                        lambda u: layer.sample_heads(tokens, mask, u, eps0)[0], q_loc
                    )[row, h, :, d, h, d, :]
                    s = q_tril[h, d]
                    got = got + ju @ s @ s.T @ ju.T
                want = cov[row, h, d]
                if covariance == "diag":
                    got, want = got.diagonal(), want.diagonal()
                torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------------- decoupled SGPA
@pytest.mark.parametrize("kernel", ["exponential", "rbf"])
def test_decoupled_posterior_is_the_orthogonally_decoupled_one(kernel):
    layer = _layer("decoupled", kernel)
    tokens, mask = _inputs()
    q_loc, q_tril = _guide(layer, 4)
    mean, cov = layer.posterior(tokens, mask, q_loc, q_tril)
    for row in range(B):
        for h in range(H):
            q, v, g = _head_parts(layer, tokens, h, row)
            k_qq = _numpy_kernel(layer, q, q, h)
            k_qg = _numpy_kernel(layer, q, g, h)
            k_gg = _numpy_kernel(layer, g, g, h)
            k_gg_inv = np.linalg.inv(k_gg)
            chol = np.linalg.cholesky(k_gg)
            for d in range(layer.value_dim):
                m_tilde = q_loc[h, d].numpy()
                s_tilde = q_tril[h, d].numpy()
                a_g = np.linalg.solve(chol.T, m_tilde)  # a_g = L⁻ᵀ m̃
                # Salimbeni et al. (2018): mean (K_qa − K_qg K_gg⁻¹ K_ga) v_a + K_qg a_g
                want_mean = (k_qq - k_qg @ k_gg_inv @ k_qg.T) @ v[:, d] + k_qg @ a_g
                lk = np.linalg.solve(chol, k_qg.T)
                want_var = (
                    np.diag(k_qq)
                    - np.diag(k_qg @ k_gg_inv @ k_qg.T)
                    + ((s_tilde.T @ lk) ** 2).sum(0)
                )
                np.testing.assert_allclose(mean[row, h, :, d].detach(), want_mean, atol=TOL)
                np.testing.assert_allclose(cov[row, h, d].diagonal().detach(), want_var, atol=TOL)


def test_decoupled_kl_terms_match_the_official_formulas():
    layer = _layer("decoupled")
    tokens, mask = _inputs()
    q_loc, q_tril = _guide(layer, 5)
    got = whitened_kl(q_loc, q_tril)
    prior = MultivariateNormal(torch.zeros(M).double(), torch.eye(M).double())
    want = kl_divergence(MultivariateNormal(q_loc, scale_tril=q_tril), prior).sum()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the authors' form with a_g = L⁻ᵀ m̃: ½[‖S̃‖² + a_gᵀ K_gg a_g − 2 Σ log diag S̃ − M]
    official = 0.0
    for h in range(H):
        _, _, g = _head_parts(layer, tokens, h, 0)
        k_gg = _numpy_kernel(layer, g, g, h)
        chol = np.linalg.cholesky(k_gg)
        for d in range(layer.value_dim):
            s = q_tril[h, d].numpy()
            a_g = np.linalg.solve(chol.T, q_loc[h, d].numpy())
            official += 0.5 * ((s**2).sum() + a_g @ k_gg @ a_g - 2 * np.log(np.diag(s)).sum() - M)
    assert abs(got.item() - official) < 1e-8
    # the amortised part, per sequence: ½ Σ_{h,d} vᵀ (K_aa − K_ag K_gg⁻¹ K_ga) v
    kl = layer.amortised_kl(tokens, mask)
    for row in range(B):
        total = 0.0
        for h in range(H):
            q, v, g = _head_parts(layer, tokens, h, row)
            k_qq = _numpy_kernel(layer, q, q, h)
            k_qg = _numpy_kernel(layer, q, g, h)
            cond = k_qq - k_qg @ np.linalg.inv(_numpy_kernel(layer, g, g, h)) @ k_qg.T
            total += 0.5 * np.einsum("td,ts,sd->", v, cond, v)
        assert abs(kl[row].item() - total) < 1e-8 * max(1.0, abs(total))


def test_tying_holds_for_every_head():
    """Head h's global inducing keys are the inducing inputs through head h's own rows of the
    tied projection (the authors' fused projection ties head 0 only)."""
    layer = _layer("decoupled")
    keys = layer.inducing_keys().detach()
    d = layer.head_dim
    for h in range(H):
        w = layer.qk_proj.weight.detach()[h * d : (h + 1) * d]
        torch.testing.assert_close(keys[h], layer.inducing_inputs.detach() @ w.T)


# ---------------------------------------------------------------------- masks, errors
@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("variant", ["standard", "decoupled"])
def test_padding_does_not_reach_real_tokens(variant, covariance):
    layer = _layer(variant, covariance=covariance)
    tokens, mask = _inputs(padded=True)
    torch.manual_seed(6)
    u = torch.randn(layer.global_shape, dtype=torch.float64) if variant == "decoupled" else None
    eps = torch.randn(layer.noise_shape(B, T), dtype=torch.float64)
    out, kl = layer(tokens, mask, u, eps)
    changed = tokens.clone()
    changed[1, 3:] = 100 * torch.randn(T - 3, D, dtype=torch.float64)
    out2, kl2 = layer(changed, mask, u, eps)
    torch.testing.assert_close(out[1, :3], out2[1, :3], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(kl, kl2, rtol=1e-9, atol=1e-9)
    assert (out[1, 3:] == 0).all()
    # the short sequence alone gives the same real outputs (diag noise is per token)
    alone, _ = layer(tokens[1:, :3], mask[1:, :3], u, eps[1:, :, :3])
    if covariance == "diag":
        torch.testing.assert_close(out[1:, :3], alone, rtol=1e-9, atol=1e-9)


def test_vectorized_draws_broadcast():
    """Particle dims on the left of the globals and the noise give one output per particle."""
    layer = _layer("decoupled")
    tokens, mask = _inputs()
    u = torch.randn(4, 1, *layer.global_shape, dtype=torch.float64)
    eps = torch.randn(4, *layer.noise_shape(B, T), dtype=torch.float64)
    out, kl = layer(tokens, mask, u, eps)
    assert out.shape == (4, B, T, D) and kl.shape == (B,)
    one, _ = layer(tokens, mask, u[2, 0], eps[2])
    torch.testing.assert_close(out[2], one, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": "linear"}, "kernel must be one of"),
        ({"variant": "sparse"}, "variant must be one of"),
        ({"covariance": "low-rank"}, "covariance must be one of"),
        ({"num_inducing": 0}, "num_inducing must be a positive integer"),
        ({"head_dim": -1}, "head_dim must be a positive integer"),
        ({"jitter": 0.0}, "jitter must be a finite positive number"),
        ({"jitter": float("nan")}, "jitter must be a finite positive number"),
        ({"max_jitter_tries": -1}, "max_jitter_tries"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGPAttention(D, H, **kwargs)


def test_bad_sizes_and_masks_are_refused():
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        SGPAttention(D, 0)
    layer = _layer("decoupled")
    tokens, mask = _inputs()
    u = torch.zeros(layer.global_shape, dtype=torch.float64)
    eps = torch.zeros(layer.noise_shape(B, T), dtype=torch.float64)
    with pytest.raises(ValueError, match="mask must be bool of shape"):
        layer(tokens, mask[:, :3], u, eps)
    with pytest.raises(ValueError, match="mask must be bool of shape"):
        layer(tokens, mask.long(), u, eps)
    empty = mask.clone()
    empty[0] = False
    with pytest.raises(ValueError, match="at least one real token"):
        layer(tokens, empty, u, eps)
    with pytest.raises(ValueError, match="tokens must be"):
        layer(tokens[..., :3], mask, u, eps)
    with pytest.raises(ValueError, match="global outputs u of shape"):
        layer(tokens, mask, None, eps)


def test_cholesky_jitter_is_bounded_and_counted():
    bad = -torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite"):
        robust_cholesky(bad, 1e-6, max_tries=2)
    # eigenvalues 3, -1e-9, -1e-9: positive definite only from a jitter of about 1e-9
    singular = torch.ones(3, 3, dtype=torch.float64) - 1e-9 * torch.eye(3, dtype=torch.float64)
    factor, tries = robust_cholesky(singular, 1e-12, max_tries=8)
    assert tries >= 1 and torch.isfinite(factor).all()
    layer = _layer("decoupled")
    layer.jitter, layer.max_jitter_tries = 1e-12, 8
    layer._cholesky(singular)
    layer._cholesky(torch.eye(3, dtype=torch.float64))  # needs none
    assert layer.jitter_escalations == 1
