"""Sparse Gaussian-process attention (SGPA; Chen & Li, *Calibrating Transformers via Sparse
Gaussian Processes*, ICLR 2023): attention whose output is a draw from the posterior of a GP.

Per head :math:`h`, the tokens :math:`x_t` are projected to :math:`q_t = W_{qk} x_t` — queries
and keys are **tied** (:math:`W_q = W_k`, for every head), so the attention matrix is a kernel
matrix — and to values :math:`v_t = W_v x_t`. Kernels (:func:`kernel_matrix`), with learned
:math:`\\log\\sigma_f` per head and :math:`\\log\\ell` per head and dimension:

* ``"exponential"``: :math:`k(x, y) = \\sigma_f^2 \\exp((x/\\ell)\\cdot(y/\\ell))` (used for text);
* ``"rbf"`` (ARD): :math:`k(x, y) = \\sigma_f^2 \\exp(-\\tfrac12 \\lVert (x - y)/\\ell \\rVert^2)`.

**Standard SGPA** (``variant="standard"``) takes the keys as inducing inputs and amortises the
inducing outputs :math:`u_d` (per output dim :math:`d`): in the whitened basis :math:`u_d = L
w_d`, :math:`L = \\mathrm{chol}(K_{kk})`, :math:`q(w_d) = \\mathcal N(L^\\top v_d,
\\mathrm{diag}(s_d^2))` with :math:`s = \\mathrm{softplus}(W_s x)`. The posterior at the queries
has mean :math:`m_d = K_{qk} v_d` and covariance :math:`\\Sigma_d = K_{qq} + K_{qk}(K_{kk}^{-1}
S_d K_{kk}^{-1} - K_{kk}^{-1}) K_{kq}` with :math:`S_d = L\\,\\mathrm{diag}(s_d^2) L^\\top`;
with tied projections the queries are the keys and :math:`\\Sigma_d = S_d`. Its KL per
sequence is :math:`\\tfrac12 \\sum_{h,d} [\\lVert s_d\\rVert^2 + v_d^\\top K_{kk} v_d - T -
2\\sum\\log s_d]`.
Cost :math:`O(T^3)` per head.

**Decoupled SGPA** (``variant="decoupled"``) adds :math:`M` global inducing inputs :math:`Z`
per layer, projected like the tokens (:math:`g = W_{qk} Z`), with whitened global inducing
outputs :math:`\\tilde u_d \\sim \\mathcal N(0, I_M)` a priori and :math:`q(\\tilde u_d) =
\\mathcal N(\\tilde m_d, \\tilde S_d \\tilde S_d^\\top)`. With :math:`L = \\mathrm{chol}(K_{gg})`,
:math:`A = L^{-1} K_{gq}` and :math:`C = K_{qq} - A^\\top A`, the output given
:math:`\\tilde u` is

.. math:: F_d = C v_d + A^\\top \\tilde u_d + \\varepsilon_d \\odot \\sqrt{\\mathrm{diag}\\,C}
   \\quad(\\text{``diag''}),\\qquad F_d = C v_d + A^\\top \\tilde u_d + \\mathrm{chol}(C)
   \\varepsilon_d \\quad(\\text{``full''}),

so that, marginally over :math:`q(\\tilde u)`, the mean is :math:`(K_{qa} - K_{qg}K_{gg}^{-1}
K_{ga}) v_d + K_{qg} a_d` with :math:`a_d = L^{-\\top}\\tilde m_d`, and the variance is
:math:`\\mathrm{diag}(K_{qq}) - \\mathrm{diag}(K_{qg}K_{gg}^{-1}K_{gq}) + \\lVert \\tilde S_d^\\top
A\\rVert^2` per column — Salimbeni et al. (2018)'s orthogonally decoupled posterior. Its KL is
the whitened :math:`\\mathrm{KL}(q(\\tilde u) \\Vert \\mathcal N(0, I))` (:func:`whitened_kl`,
a Pyro site in :mod:`pyro_attention.models.gp_attention`) plus, per sequence, the amortised
part :math:`\\tfrac12 \\sum_{h,d} v_d^\\top C v_d` returned by :meth:`SGPAttention.forward`.
Cost :math:`O(T^2 M + M^3)` per head, plus :math:`O(T^3)` for ``covariance="full"``.

Where this departs from the authors' code, on purpose: every head's global inducing inputs are
projected with that head's own tied projection (the fused projection of the official code ties
head 0 only); the conditional variance is floored before its square root (round-off made it
negative, and the square root NaN); the Cholesky jitter escalates ×10 at most
``max_jitter_tries`` times and then fails with an error, and each escalation is counted
(:attr:`SGPAttention.jitter_escalations`); nothing is cached across calls.

Shapes: tokens ``(*P, B, T, D)`` with any leading dims ``P``; mask ``(B, T)`` bool (``True`` for
real tokens); whitened global outputs ``(*P', H, d_v, M)`` whose dims ``P'`` broadcast against
``(*P, B)`` (a particle dim on the left and a 1 for the batch); noise ``(*P, B, H, T, d_v)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KERNELS = ("exponential", "rbf")
VARIANTS = ("standard", "decoupled")
COVARIANCES = ("diag", "full")


def kernel_matrix(
    x: torch.Tensor, y: torch.Tensor, log_sf: torch.Tensor, log_ls: torch.Tensor, kind: str
) -> torch.Tensor:
    """:math:`K_{ij} = k(x_i, y_j)` per head.

    :param x: ``(..., H, T, d)``; :param y: ``(..., H, S, d)``.
    :param log_sf: ``(H,)`` log signal scale; :param log_ls: ``(H, d)`` log length-scales.
    :param kind: ``"exponential"`` or ``"rbf"``.
    :returns: ``(..., H, T, S)``.
    """
    ls = log_ls.exp().unsqueeze(-2)  # (H, 1, d)
    xs, ys = x / ls, y / ls
    log_sf2 = (2 * log_sf)[:, None, None]
    if kind == "exponential":
        return torch.exp(log_sf2 + xs @ ys.transpose(-1, -2))
    if kind == "rbf":
        sq = (
            xs.pow(2).sum(-1, keepdim=True)
            + ys.pow(2).sum(-1).unsqueeze(-2)
            - 2 * xs @ ys.transpose(-1, -2)
        )
        return torch.exp(log_sf2 - 0.5 * sq.clamp_min(0))
    raise ValueError(f"kernel must be one of {KERNELS}, got {kind!r}")


def kernel_diagonal(
    x: torch.Tensor, log_sf: torch.Tensor, log_ls: torch.Tensor, kind: str
) -> torch.Tensor:
    """:math:`k(x_t, x_t)`, ``(..., H, T)``, without forming the matrix."""
    log_sf2 = (2 * log_sf)[:, None]
    if kind == "exponential":
        xs = x / log_ls.exp().unsqueeze(-2)
        return torch.exp(log_sf2 + xs.pow(2).sum(-1))
    if kind == "rbf":
        return torch.exp(log_sf2).expand(x.shape[:-1])
    raise ValueError(f"kernel must be one of {KERNELS}, got {kind!r}")


def default_jitter(dtype: torch.dtype) -> float:
    """Relative Cholesky jitter: 1e-6 in float64, 1e-4 in lower precision (sparse GPs in
    float32 need about 1e-3 after escalation)."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def robust_cholesky(
    matrix: torch.Tensor, jitter: float, max_tries: int = 4
) -> tuple[torch.Tensor, int]:
    """Cholesky factor of ``matrix + j·mean(diag)·I``, ``j = jitter·10^i`` for the first
    ``i = 0..max_tries`` that succeeds everywhere in the batch.

    :returns: ``(L, i)``, the factor and the number of escalations.
    :raises ValueError: still not positive definite after ``max_tries`` escalations.
    """
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    scale = matrix.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1).abs()
    scale = scale.clamp_min(torch.finfo(matrix.dtype).tiny)
    for tries in range(max_tries + 1):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * 10**tries * scale * eye)
        if not bool((info != 0).any()):
            return factor, tries
    raise ValueError(
        f"a kernel matrix is not positive definite even with relative jitter "
        f"{jitter * 10**max_tries:g} (its diagonal reaches {float(scale.detach().max()):.3g}): use "
        "float64, the 'rbf' kernel, fewer or more distinct inducing inputs, or a larger jitter"
    )


def whitened_kl(loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathrm{KL}(\\mathcal N(m, \\tilde S \\tilde S^\\top) \\Vert \\mathcal N(0, I)) =
    \\tfrac12[\\lVert\\tilde S\\rVert_F^2 + \\lVert m\\rVert^2 - 2\\sum\\log\\mathrm{diag}\\tilde S
    - M]`, summed over every leading dim.

    :param loc: ``(..., M)``; :param scale_tril: ``(..., M, M)`` lower triangular.
    """
    diag = scale_tril.diagonal(dim1=-2, dim2=-1)
    return (
        0.5
        * (
            scale_tril.pow(2).sum((-2, -1))
            + loc.pow(2).sum(-1)
            - 2 * diag.abs().log().sum(-1)
            - loc.shape[-1]
        ).sum()
    )


class SGPAttention(nn.Module):
    """Multi-head sparse-GP attention (self-attention with tied query/key projections).

    :param d_model: token width ``D``.
    :param num_heads: ``H``; :param head_dim: ``d`` of the tied projection (default ``D // H``).
    :param value_dim: ``d_v`` per head (default ``head_dim``).
    :param kernel: ``"exponential"`` or ``"rbf"``.
    :param variant: ``"decoupled"`` (global inducing points) or ``"standard"``.
    :param num_inducing: ``M`` global inducing inputs (decoupled only).
    :param covariance: ``"diag"`` (marginal variances) or ``"full"`` (the T×T covariance).
    :param jitter: relative Cholesky jitter (default by dtype, :func:`default_jitter`).
    :param max_jitter_tries: escalations ×10 before giving up.

    Example::

        layer = SGPAttention(32, num_heads=2, num_inducing=8)
        u = torch.zeros(layer.global_shape)             # whitened global outputs
        eps = torch.randn(layer.noise_shape(4, 10))    # batch 4, length 10
        out, kl = layer(tokens, mask, u, eps)          # (4, 10, 32), (4,)
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        *,
        head_dim: int | None = None,
        value_dim: int | None = None,
        kernel: str = "exponential",
        variant: str = "decoupled",
        num_inducing: int = 16,
        covariance: str = "diag",
        jitter: float | None = None,
        max_jitter_tries: int = 4,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        head_dim = head_dim if head_dim is not None else max(1, d_model // num_heads)
        value_dim = value_dim if value_dim is not None else head_dim
        for name, value in (
            ("head_dim", head_dim),
            ("value_dim", value_dim),
            ("num_inducing", num_inducing),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if jitter is not None and not (jitter > 0 and math.isfinite(jitter)):
            raise ValueError(f"jitter must be a finite positive number, got {jitter!r}")
        if not isinstance(max_jitter_tries, int) or max_jitter_tries < 0:
            raise ValueError(f"max_jitter_tries must be an integer >= 0, got {max_jitter_tries}")
        self.d_model, self.num_heads = d_model, num_heads
        self.head_dim, self.value_dim = head_dim, value_dim
        self.kernel, self.variant, self.covariance = kernel, variant, covariance
        self.num_inducing = num_inducing if variant == "decoupled" else 0
        self.jitter, self.max_jitter_tries = jitter, max_jitter_tries
        #: how often a Cholesky needed more than the base jitter (since construction)
        self.jitter_escalations = 0
        self.qk_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_heads * value_dim)
        self.out_proj = nn.Linear(num_heads * value_dim, d_model)
        self.log_sf = nn.Parameter(torch.zeros(num_heads))
        # (x/ℓ)·(y/ℓ) with ℓ = d^¼ is the scaled dot product q·k/√d of softmax attention
        init_ls = 0.25 * math.log(head_dim) if kernel == "exponential" else 0.5 * math.log(head_dim)
        self.log_ls = nn.Parameter(torch.full((num_heads, head_dim), init_ls))
        if variant == "decoupled":
            self.inducing_inputs = nn.Parameter(torch.randn(num_inducing, d_model))
        else:
            self.s_proj = nn.Linear(d_model, num_heads * value_dim)

    # ------------------------------------------------------------------ shapes
    @property
    def global_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, d_v, M)`` of the whitened global inducing outputs (decoupled)."""
        return (self.num_heads, self.value_dim, self.num_inducing)

    def noise_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        """Shape ``(B, H, T, d_v)`` of the output noise for ``batch`` sequences of ``length``."""
        return (batch, self.num_heads, length, self.value_dim)

    # ------------------------------------------------------------------ pieces
    def _heads(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """``(..., T, H·w) -> (..., H, T, w)``."""
        return x.unflatten(-1, (self.num_heads, width)).transpose(-3, -2)

    def _jitter(self, dtype: torch.dtype) -> float:
        return self.jitter if self.jitter is not None else default_jitter(dtype)

    def _cholesky(self, matrix: torch.Tensor) -> torch.Tensor:
        factor, tries = robust_cholesky(matrix, self._jitter(matrix.dtype), self.max_jitter_tries)
        self.jitter_escalations += int(tries > 0)
        return factor

    def _kernel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return kernel_matrix(x, y, self.log_sf, self.log_ls, self.kernel)

    def _check(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        if tokens.dim() < 3 or tokens.shape[-1] != self.d_model:
            raise ValueError(
                f"tokens must be (..., B, T, {self.d_model}), got {tuple(tokens.shape)}"
            )
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(tokens.shape[-3:-1]):
            raise ValueError(
                f"mask must be bool of shape (B, T) = {tuple(tokens.shape[-3:-1])}, got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        if not bool(mask.any(-1).all()):
            raise ValueError("every sequence needs at least one real token (a row of mask)")

    def project(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tied queries/keys ``(..., B, H, T, d)`` and values ``(..., B, H, T, d_v)``, both
        zero at padding tokens (which take no part as keys, and whatever they hold cannot
        overflow a kernel)."""
        self._check(tokens, mask)
        keep = mask[:, None, :, None]
        q = self._heads(self.qk_proj(tokens), self.head_dim)
        v = self._heads(self.v_proj(tokens), self.value_dim)
        return q * keep.to(q.dtype), v * keep.to(v.dtype)

    def inducing_keys(self) -> torch.Tensor:
        """The global inducing inputs through each head's tied projection, ``(H, M, d)``."""
        return self._heads(self.qk_proj(self.inducing_inputs), self.head_dim)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        u: torch.Tensor | None,
        eps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of the attention output and the amortised KL per sequence.

        :param tokens: ``(*P, B, T, D)``; :param mask: ``(B, T)`` bool.
        :param u: whitened global inducing outputs ``(*P', H, d_v, M)`` (decoupled; ``None``
            for standard); :param eps: standard-normal noise ``(*P, B, H, T, d_v)`` (zeros give
            the posterior mean).
        :returns: output ``(*P, B, T, D)`` (padding positions zero) and KL ``(*P, B)``.
        """
        f, kl = self.sample_heads(tokens, mask, u, eps)
        out = self.out_proj(f.transpose(-3, -2).flatten(-2))  # (..., B, T, H·d_v) -> D
        return out * mask.unsqueeze(-1).to(out.dtype), kl

    def sample_heads(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        u: torch.Tensor | None,
        eps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`forward`, before the output projection: ``F`` per head
        ``(*P, B, H, T, d_v)`` (padding zero) and the KL ``(*P, B)``."""
        q, v = self.project(tokens, mask)
        keep = mask[:, None, :].to(q.dtype)  # (B, 1, T)
        if self.variant == "decoupled":
            if u is None or tuple(u.shape[-3:]) != self.global_shape:
                raise ValueError(
                    f"decoupled SGPA needs global outputs u of shape (..., {self.global_shape}), "
                    f"got {None if u is None else tuple(u.shape)}"
                )
            f, kl = self._decoupled(q, v, keep, u, eps)
        else:
            f, kl = self._standard(q, v, keep, tokens, eps)
        return f * keep.unsqueeze(-1), kl

    def _decoupled_parts(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`A = L^{-1} K_{gq}` ``(..., B, H, M, T)`` and :math:`K_{qq}` ``(..., B, H, T,
        T)``; :math:`C = K_{qq} - A^\\top A` is formed only where the full matrix is needed."""
        g = self.inducing_keys()
        chol = self._cholesky(self._kernel(g, g))  # (H, M, M)
        a = torch.linalg.solve_triangular(chol, self._kernel(g, q), upper=False)
        return a, self._kernel(q, q)

    def _standard_parts(
        self, q: torch.Tensor, keep: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:math:`K_{kk}`, its Cholesky factor ``(..., B, H, T, T)`` (padding rows: unit and
        apart) and the amortised whitened standard deviations :math:`s` ``(..., B, H, T, d_v)``
        (1 at padding: the prior)."""
        pair = keep.unsqueeze(-1) * keep.unsqueeze(-2)  # (B, 1, T, T)
        eye = torch.eye(q.shape[-2], dtype=q.dtype, device=q.device)
        k_kk = self._kernel(q, q) * pair + eye * (1 - keep.unsqueeze(-1))
        s = nn.functional.softplus(self._heads(self.s_proj(tokens), self.value_dim))
        s = s * keep.unsqueeze(-1) + (1 - keep.unsqueeze(-1))
        return k_kk, self._cholesky(k_kk), s

    def _decoupled(self, q, v, keep, u, eps):
        a, k_qq = self._decoupled_parts(q)
        a_t = a.transpose(-1, -2)
        c_v = k_qq @ v - a_t @ (a @ v)  # C v without the T×T matrix A^T A: O(T M d_v)
        mean = c_v + a_t @ u.transpose(-1, -2)  # (..., B, H, T, d_v)
        kl = 0.5 * (v * c_v).sum((-3, -2, -1))
        if self.covariance == "full":
            return mean + self._full_noise(k_qq - a_t @ a, keep, eps), kl
        floor = self._jitter(q.dtype) * self.log_sf.exp().pow(2)[:, None]
        var = (k_qq.diagonal(dim1=-2, dim2=-1) - a.pow(2).sum(-2)).clamp_min(floor)
        return mean + var.sqrt().unsqueeze(-1) * eps, kl

    def _standard(self, q, v, keep, tokens, eps):
        _, chol, s = self._standard_parts(q, keep, tokens)
        white_mean = chol.transpose(-1, -2) @ v  # Lᵀ v, ‖·‖² = vᵀ K v
        kl = 0.5 * (s.pow(2) + white_mean.pow(2) - 1 - 2 * s.log()).sum((-3, -2, -1))
        mean = chol @ white_mean  # K v
        if self.covariance == "full":
            return mean + chol @ (s * eps), kl
        std = (chol.pow(2) @ s.pow(2)).sqrt()  # diag(L diag(s²) Lᵀ)
        return mean + std * eps, kl

    def _full_noise(
        self, cond: torch.Tensor, keep: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """:math:`\\mathrm{chol}(C)\\,\\varepsilon`, padding rows kept apart."""
        pair = keep.unsqueeze(-1) * keep.unsqueeze(-2)
        eye = torch.eye(cond.shape[-1], dtype=cond.dtype, device=cond.device)
        return self._cholesky(cond * pair + eye * (1 - keep.unsqueeze(-1))) @ eps

    # ------------------------------------------------------------------ analytic posterior
    def posterior(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        q_loc: torch.Tensor | None = None,
        q_scale_tril: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output's posterior mean ``(..., B, H, T, d_v)`` and covariance
        ``(..., B, H, d_v, T, T)`` before the output projection, marginal over the global
        inducing outputs :math:`q(\\tilde u) = \\mathcal N(\\tilde m, \\tilde S\\tilde S^\\top)`
        (decoupled: ``q_loc (H, d_v, M)``, ``q_scale_tril (H, d_v, M, M)``)."""
        q, v = self.project(tokens, mask)
        keep = mask[:, None, :].to(q.dtype)
        if self.variant == "standard":
            k_kk, chol, s = self._standard_parts(q, keep, tokens)
            scaled = chol.unsqueeze(-3) * s.transpose(-1, -2).unsqueeze(-2)  # L diag(s_d)
            return k_kk @ v, scaled @ scaled.transpose(-1, -2)
        if q_loc is None or q_scale_tril is None:
            raise ValueError("decoupled SGPA's posterior needs q_loc and q_scale_tril")
        a, k_qq = self._decoupled_parts(q)
        cond = k_qq - a.transpose(-1, -2) @ a
        mean = cond @ v + a.transpose(-1, -2) @ q_loc.transpose(-1, -2)
        st_a = q_scale_tril.transpose(-1, -2) @ a.unsqueeze(-3)  # (..., H, d_v, M, T)
        cov = cond.unsqueeze(-3) + st_a.transpose(-1, -2) @ st_a
        return mean, cov

    def amortised_kl(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The per-sequence KL term ``(..., B)`` (it does not depend on the noise)."""
        eps = tokens.new_zeros(tokens.shape[:-3] + self.noise_shape(*tokens.shape[-3:-1]))
        u = tokens.new_zeros(self.global_shape) if self.variant == "decoupled" else None
        return self.forward(tokens, mask, u, eps)[1]
