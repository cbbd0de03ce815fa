r"""Gaussian closed forms for the linear interpolant (paper Section 4.1, Appendix B).

Flow matching with ``x_t = (1 - t) x0 + t x1`` and independent ``x0``, ``x1``; the optimal
velocity is ``u(x, t) = E[x1 - x0 | x_t = x]`` (Eq. 1). For Gaussian end points it is linear
in ``x``.

- :func:`linear_map_conditional_mean`: ``x = A z̃`` with ``z, z̃ ~ N(0, I)``,
  ``E[x | x_t] = t AAᵀ ((1-t)² I + t² AAᵀ)⁻¹ x_t``.
- :class:`GaussianFlow`: ``x0 ~ N(0, I)``, ``x1 ~ N(0, Σ)``; ``S(t) = (1-t)² I + t² Σ``,
  ``v(x, t) = A(t) x`` with ``A(t) = (tΣ - (1-t) I) S(t)⁻¹``, exact flow map
  ``φ_t(x0) = S(t)^{1/2} x0`` (symmetric square root) with Jacobian ``S(t)^{1/2}``.

All linear solves use Cholesky factors; no matrix is inverted explicitly. Computations run in
float64 unless the inputs are of another floating dtype (the points' dtype wins).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_spd
from ._common import Time, as_float_tensor, check_points, is_transformed, prepare_time

__all__ = ["GaussianFlow", "linear_map_conditional_mean"]


def linear_map_conditional_mean(A: Tensor, x_t: Tensor, t: Time) -> Tensor:
    r"""Posterior mean ``E[x | x_t]`` for ``x = A z̃``, ``x_t = (1-t) z + t x`` (Section 4.1).

    .. math:: E[x | x_t] = t\,AA^\top \big((1-t)^2 I + t^2 AA^\top\big)^{-1} x_t

    Args:
        A: ``(d, m)`` linear map (``m`` latent dimensions; ``AAᵀ`` may be singular for
            ``t < 1``; at ``t = 1`` it must be non-singular).
        x_t: points ``(..., d)``.
        t: float, 0-dim tensor, or per point ``(...,)``; in [0, 1].

    Returns:
        ``(..., d)``, dtype of ``x_t`` (float64 for non-float input).

    Example:
        With ``A = I``: ``E[x | x_t] = t x_t / ((1-t)² + t²)``, so ``x_t`` itself at ``t = 1``.

        >>> A = torch.eye(2, dtype=torch.float64)
        >>> linear_map_conditional_mean(A, torch.tensor([[1.0, 2.0]], dtype=torch.float64), 0.5).tolist()
        [[1.0, 2.0]]
        >>> linear_map_conditional_mean(A, torch.tensor([[1.0, 2.0]], dtype=torch.float64), 0.25).tolist()
        [[0.4, 0.8]]
    """
    if not isinstance(A, Tensor) or A.ndim != 2:
        raise ValueError(f"A must be a 2-D tensor of shape (d, m), got {getattr(A, 'shape', type(A))}")
    d = A.shape[0]
    check_points(x_t, d, "x_t")
    dtype = x_t.dtype if x_t.is_floating_point() else torch.float64
    x_t = x_t.to(dtype)
    A = A.to(dtype=dtype, device=x_t.device)
    tt, scalar = prepare_time(t, x_t.shape[:-1], dtype, x_t.device)
    C = A @ A.mT
    eye = torch.eye(d, dtype=dtype, device=x_t.device)
    t4 = tt if scalar else tt[..., None, None]
    L = _cholesky_or_raise((1 - t4) ** 2 * eye + t4**2 * C)
    if scalar:
        flat = x_t.reshape(-1, d)
        w = torch.cholesky_solve(flat.mT, L)  # (d, N) = S⁻¹ x_t
        return (tt * (C @ w)).mT.reshape(x_t.shape)
    w = torch.cholesky_solve(x_t.unsqueeze(-1), L)
    return tt[..., None] * (C @ w).squeeze(-1)


def _cholesky_or_raise(S: Tensor) -> Tensor:
    L, info = torch.linalg.cholesky_ex(S)
    if not isinstance(info, Tensor) or info.numel() == 0 or is_transformed(info) or not bool((info != 0).any()):
        return L
    raise ValueError("(1-t)² I + t² AAᵀ must be positive-definite: at t = 1, AAᵀ must be non-singular "
                     "(A of full row rank)")


class GaussianFlow:
    r"""Flow-matching field from ``x0 ~ N(0, I)`` to ``x1 ~ N(0, Σ)`` (independent coupling).

    .. math::
        S(t) = (1-t)^2 I + t^2 Σ, \quad A(t) = (tΣ - (1-t) I)\,S(t)^{-1}, \quad v(x, t) = A(t)\,x,

    and the exact flow map ``φ_t(x0) = S(t)^{1/2} x0`` (``S(t)`` and ``A(t)`` commute, both
    being functions of ``Σ``), so the generator's Jacobian at ``t = 1`` is ``Σ^{1/2}``.

    Args:
        cov: ``Σ``, a symmetric positive-definite ``(d, d)`` matrix.
        dtype: parameter dtype (float64 by default).

    ``Σ`` is treated as a constant: its eigendecomposition is computed once here and reused by
    :meth:`velocity`, :meth:`flow_map` and :meth:`flow_jacobian` (differentiable in ``x`` and
    ``t``); :meth:`S` and :meth:`A` use ``Σ`` directly (Cholesky solve).

    Shapes: ``t`` is a float / 0-dim tensor (matrices ``(d, d)``) or a tensor ``(...,)``
    (matrices ``(..., d, d)``); points are ``(..., d)``.

    Example:
        >>> flow = GaussianFlow(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        >>> flow.flow_jacobian(1.0).diagonal().tolist()  # Σ^{1/2}
        [2.0, 1.0]
        >>> flow.A(0.0).diagonal().tolist(), flow.A(1.0).diagonal().tolist()
        ([-1.0, -1.0], [1.0, 1.0])
        >>> x0 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> flow.velocity(x0, torch.zeros(1)).tolist()  # v(x, 0) = -x
        [[-1.0, -1.0]]
    """

    def __init__(self, cov: Tensor, *, dtype: torch.dtype = torch.float64, device=None):
        cov = as_float_tensor(cov, dtype, device)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"cov must have shape (d, d), got {tuple(cov.shape)}")
        check_spd("cov", cov)
        self.cov = cov
        self._lam, self._U = torch.linalg.eigh(cov)  # Σ = U diag(λ) Uᵀ (treated as a constant)

    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return self.cov.shape[-1]

    def _time(self, t: Time, dtype=None, device=None, batch_shape=None) -> tuple[Tensor, bool]:
        return prepare_time(t, batch_shape, dtype or self.cov.dtype, device or self.cov.device)

    def _S_M(self, tt: Tensor, scalar: bool, cov: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        t4 = tt if scalar else tt[..., None, None]
        return (1 - t4) ** 2 * eye + t4**2 * cov, t4 * cov - (1 - t4) * eye

    def S(self, t: Time) -> Tensor:
        """``S(t) = (1-t)² I + t² Σ``, the covariance of ``x_t``: ``(d, d)`` or ``(..., d, d)``."""
        tt, scalar = self._time(t)
        return self._S_M(tt, scalar, self.cov)[0]

    def A(self, t: Time) -> Tensor:
        """Drift matrix ``A(t) = (tΣ - (1-t) I) S(t)⁻¹`` (Cholesky solve): ``(d, d)`` or ``(..., d, d)``.

        ``A(0) = -I`` and ``A(1) = I``.
        """
        tt, scalar = self._time(t)
        S, M = self._S_M(tt, scalar, self.cov)
        # A is symmetric (M and S commute), A = S⁻¹ M.
        return torch.cholesky_solve(M, torch.linalg.cholesky(S))

    def velocity(self, x: Tensor, t: Time) -> Tensor:
        """``v(x, t) = A(t) x`` for ``x (..., d)`` and ``t`` a float or ``(...,)`` (e.g. ``(B,)``).

        Evaluated in the eigenbasis of ``Σ = U diag(λ) Uᵀ`` (computed once at construction):
        ``A(t) = U diag((tλ - (1-t)) / ((1-t)² + t²λ)) Uᵀ``, so a solver step costs two small
        matrix products and no factorisation.
        """
        check_points(x, self.dim)
        dtype = x.dtype if x.is_floating_point() else self.cov.dtype
        x = x.to(dtype)
        tt, scalar = self._time(t, dtype, x.device, x.shape[:-1])
        lam, U = self._lam.to(dtype=dtype, device=x.device), self._U.to(dtype=dtype, device=x.device)
        t1 = tt if scalar else tt[..., None]
        slope = (t1 * lam - (1 - t1)) / ((1 - t1) ** 2 + t1**2 * lam)
        return (slope * (x @ U)) @ U.mT

    def flow_jacobian(self, t: Time) -> Tensor:
        """``∂φ_t/∂x0 = S(t)^{1/2}`` (symmetric square root): ``(d, d)`` or ``(..., d, d)``."""
        tt, scalar = self._time(t)
        lam, U = self._lam, self._U
        t2 = tt if scalar else tt[..., None]
        root = torch.sqrt((1 - t2) ** 2 + t2**2 * lam)  # eigenvalues of S(t)^{1/2}
        return (U * root.unsqueeze(-2)) @ U.mT

    def flow_map(self, x0: Tensor, t: Time) -> Tensor:
        """Exact solution ``φ_t(x0) = S(t)^{1/2} x0`` of ``dx/dt = A(t) x``, ``x0 (..., d)``."""
        check_points(x0, self.dim, "x0")
        dtype = x0.dtype if x0.is_floating_point() else self.cov.dtype
        x0 = x0.to(dtype)
        tt, scalar = prepare_time(t, x0.shape[:-1], dtype, x0.device)
        lam, U = self._lam.to(dtype=dtype, device=x0.device), self._U.to(dtype=dtype, device=x0.device)
        t2 = tt if scalar else tt[..., None]
        root = torch.sqrt((1 - t2) ** 2 + t2**2 * lam)
        # S^{1/2} x0 = U diag(root) Uᵀ x0, done as vector products.
        return (root * (x0 @ U)) @ U.mT

    def __repr__(self) -> str:
        return f"GaussianFlow(dim={self.dim}, dtype={self.cov.dtype})"

