r"""Directed structure in a stationary field: the linear SCM and its triangular flux field.

A linear structural causal model ``x = B x + e``, ``B`` strictly lower-triangular over the
variable order, ``e ~ N(0, diag(ω²))``, has covariance ``Σ = (I - B)⁻¹ diag(ω²) (I - B)⁻ᵀ``.
Smoothed by the KDE bandwidth, the stationary law is ``N(0, Σ + σ² I)``.

Among linear fields ``f(x) = -A x``, those leaving ``N(0, Σ)`` invariant under
``dx = f dt + √2 dW`` solve the Lyapunov equation ``A Σ + Σ Aᵀ = 2 I``. The score
``A = Σ⁻¹`` is the symmetric solution; there is exactly one *lower-triangular* one (``d(d+1)/2``
unknowns, as many equations; unique for SPD ``Σ``), which :func:`triangular_stationary_drift`
returns. A field whose Jacobian is masked lower-triangular and that is trained by Flux
Matching can therefore reach it; score matching under the same mask cannot represent
``Σ⁻¹`` and fits the best triangular approximation of the score instead, whose stationary law
is not the data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_positive_int, check_spd

__all__ = ["linear_scm_sample", "linear_scm_covariance", "triangular_stationary_drift"]


def _check_weights(weights: Tensor) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"weights must be a square (d, d) matrix, got shape {tuple(w.shape)}")
    if torch.triu(w).abs().max() > 0:
        raise ValueError("weights must be strictly lower-triangular (x_i depends only on x_j with j < i)")
    return w


def linear_scm_covariance(weights: Tensor, noise_std: Tensor | float = 1.0) -> Tensor:
    """``Σ = (I - B)⁻¹ diag(ω²) (I - B)⁻ᵀ`` in float64, (d, d)."""
    w = _check_weights(weights)
    d = w.shape[0]
    om = torch.as_tensor(noise_std, dtype=torch.float64).expand(d)
    m = torch.linalg.inv(torch.eye(d, dtype=torch.float64) - w)
    return m @ torch.diag(om**2) @ m.T


def linear_scm_sample(weights: Tensor, n: int, *, noise_std: Tensor | float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of ``x = (I - B)⁻¹ e``, ``e ~ N(0, diag(ω²))``: (n, d) float32."""
    w = _check_weights(weights)
    check_positive_int("n", n)
    d = w.shape[0]
    om = torch.as_tensor(noise_std, dtype=torch.float64).expand(d)
    e = torch.randn(n, d, generator=generator, dtype=torch.float64) * om
    x = torch.linalg.solve_triangular(torch.eye(d, dtype=torch.float64) - w, e.T, upper=False).T
    return x.float()


def triangular_stationary_drift(cov: Tensor) -> Tensor:
    r"""The lower-triangular ``A`` with ``A Σ + Σ Aᵀ = 2 I`` (``f(x) = -A x`` keeps ``N(0, Σ)``), (d, d)."""
    cov = torch.as_tensor(cov, dtype=torch.float64)
    check_spd("cov", cov)
    d = cov.shape[0]
    rows, cols = torch.tril_indices(d, d)
    m = rows.numel()
    # Equation (i, j), i >= j: sum_k A[i,k] Σ[k,j] + A[j,k] Σ[k,i] = 2 δ_ij, unknowns A[r, c], c <= r.
    M = torch.zeros(m, m, dtype=torch.float64)
    for e, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
        for u, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            M[e, u] = (cov[c, j] if r == i else 0.0) + (cov[c, i] if r == j else 0.0)
    rhs = torch.tensor([2.0 if i == j else 0.0 for i, j in zip(rows.tolist(), cols.tolist())], dtype=torch.float64)
    sol = torch.linalg.solve(M, rhs)
    A = torch.zeros(d, d, dtype=torch.float64)
    A[rows, cols] = sol
    return A
