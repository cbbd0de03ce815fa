r"""Optimal-transport construction between two Gaussians (paper Section 5.2).

For ``x0 ~ N(m0, Σ0)`` and ``x1 ~ N(m1, Σ1)``:

.. math::
    A = Σ_0^{-1/2} (Σ_0^{1/2} Σ_1 Σ_0^{1/2})^{1/2} Σ_0^{-1/2}, \qquad L = \log A,

    m(t) = (1-t) m_0 + t m_1, \qquad φ_t(x_0) = m(t) + e^{tL} (x_0 - m_0),

    Y(t) = ∂φ_t/∂x_0 = e^{tL}, \qquad Σ(t) = Y(t) Σ_0 Y(t)^\top, \quad Σ(1) = Σ_1.

``x ↦ m1 + A (x - m0)`` is the Wasserstein-2 optimal map, so ``φ_1`` pushes ``N(m0, Σ0)``
onto ``N(m1, Σ1)``. The velocity of this path is ``v(x, t) = m1 - m0 + L (x - m(t))``.

**Which path is this?** It is the exponential ("log-map") path of Section 5.2: it shares its
end points with, but differs at intermediate times from, (a) McCann's displacement
interpolation ``(1-t) x0 + t (m1 + A (x0 - m0))`` and (b) the flow-matching path of the
*independent* coupling (``x_t = (1-t) x0 + t x1`` with ``x0``, ``x1`` independent), whose
marginal covariance is ``(1-t)² Σ0 + t² Σ1`` and whose velocity is the ``K = 1`` case of
:class:`causal_delta.closed_form.GaussianMixture`. A flow-matching model trained with the
independent coupling learns path (b), not this one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_shape, check_spd
from ._common import Time, as_float_tensor, check_points, prepare_time, sym_fn

__all__ = ["GaussianOT"]


class GaussianOT:
    r"""OT flow between ``N(mean0, cov0)`` and ``N(mean1, cov1)`` (Section 5.2, see module doc).

    ``φ_t(x0) = m(t) + e^{tL} (x0 - m0)`` with ``L = log A``. This is **not** the path a
    flow-matching model learns with the independent coupling (same end points, different
    intermediate marginals); for that path use ``GaussianMixture([1.0], mean1[None],
    cov1[None], base_mean=mean0, base_cov=cov0)``.

    Args:
        mean0: ``m0`` ``(d,)``.
        cov0: ``Σ0`` ``(d, d)``, symmetric positive-definite.
        mean1: ``m1`` ``(d,)``.
        cov1: ``Σ1`` ``(d, d)``, symmetric positive-definite.
        dtype: parameter dtype (float64 by default).

    Attributes:
        A: the symmetric positive-definite OT matrix ``(d, d)``.
        L: ``log A`` ``(d, d)`` (symmetric), the constant Jacobian of :meth:`velocity`.

    Shapes: ``t`` a float / 0-dim tensor gives matrices ``(d, d)`` and means ``(d,)``; a tensor
    ``t (...,)`` gives ``(..., d, d)`` and ``(..., d)``.

    Example:
        From ``N(0, I)`` to ``N(0, 4I)`` the OT map is ``x ↦ 2x``, so ``A = 2I``:

        >>> eye = torch.eye(2)
        >>> ot = GaussianOT(torch.zeros(2), eye, torch.zeros(2), 4 * eye)
        >>> ot.A.diagonal().tolist()
        [2.0, 2.0]
    """

    def __init__(self, mean0: Tensor, cov0: Tensor, mean1: Tensor, cov1: Tensor, *,
                 dtype: torch.dtype = torch.float64, device=None):
        cov0 = as_float_tensor(cov0, dtype, device)
        if cov0.ndim != 2 or cov0.shape[0] != cov0.shape[1]:
            raise ValueError(f"cov0 must have shape (d, d), got {tuple(cov0.shape)}")
        d = cov0.shape[0]
        device = cov0.device
        mean0 = check_shape("mean0", as_float_tensor(mean0, dtype, device), (d,))
        mean1 = check_shape("mean1", as_float_tensor(mean1, dtype, device), (d,))
        cov1 = check_shape("cov1", as_float_tensor(cov1, dtype, device), (d, d))
        check_spd("cov0", cov0)
        check_spd("cov1", cov1)
        self.mean0, self.cov0, self.mean1, self.cov1 = mean0, cov0, mean1, cov1
        root0 = sym_fn(cov0, torch.sqrt)  # Σ0^{1/2}
        middle = sym_fn(root0 @ cov1 @ root0, torch.sqrt)  # (Σ0^{1/2} Σ1 Σ0^{1/2})^{1/2}
        chol = torch.linalg.cholesky(0.5 * (root0 + root0.mT))
        left = torch.cholesky_solve(middle, chol)  # Σ0^{-1/2} middle
        A = torch.cholesky_solve(left.mT, chol)  # Σ0^{-1/2} middle Σ0^{-1/2}
        self.A = 0.5 * (A + A.mT)
        self._alpha, self._V = torch.linalg.eigh(self.A)  # A = V diag(α) Vᵀ, α > 0
        self.L = (self._V * torch.log(self._alpha).unsqueeze(-2)) @ self._V.mT

    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return self.A.shape[-1]

    def _time(self, t: Time, batch_shape=None, dtype=None, device=None) -> tuple[Tensor, bool]:
        return prepare_time(t, batch_shape, dtype or self.A.dtype, device or self.A.device)

    def mean(self, t: Time) -> Tensor:
        """``m(t) = (1-t) m0 + t m1``: ``(d,)`` or ``(..., d)``."""
        tt, scalar = self._time(t)
        t1 = tt if scalar else tt[..., None]
        return (1 - t1) * self.mean0 + t1 * self.mean1

    def jacobian(self, t: Time) -> Tensor:
        """Flow-map Jacobian ``Y(t) = e^{tL} = V diag(α^t) Vᵀ``: ``(d, d)`` or ``(..., d, d)``."""
        tt, scalar = self._time(t)
        t1 = tt if scalar else tt[..., None]
        return (self._V * (self._alpha**t1).unsqueeze(-2)) @ self._V.mT

    def cov(self, t: Time) -> Tensor:
        """Marginal covariance ``Σ(t) = Y(t) Σ0 Y(t)ᵀ``: ``(d, d)`` or ``(..., d, d)``."""
        Y = self.jacobian(t)
        return Y @ self.cov0 @ Y.mT

    def flow_map(self, x0: Tensor, t: Time) -> Tensor:
        """``φ_t(x0) = m(t) + e^{tL} (x0 - m0)`` for ``x0 (..., d)``, ``t`` float or ``(...,)``."""
        check_points(x0, self.dim, "x0")
        dtype = x0.dtype if x0.is_floating_point() else self.A.dtype
        x0 = x0.to(dtype)
        tt, scalar = self._time(t, x0.shape[:-1], dtype, x0.device)
        V, alpha = self._V.to(dtype=dtype, device=x0.device), self._alpha.to(dtype=dtype, device=x0.device)
        m0, m1 = self.mean0.to(x0), self.mean1.to(x0)
        t1 = tt if scalar else tt[..., None]
        return (1 - t1) * m0 + t1 * m1 + ((alpha**t1) * ((x0 - m0) @ V)) @ V.mT

    def velocity(self, x: Tensor, t: Time) -> Tensor:
        """``v(x, t) = m1 - m0 + L (x - m(t))`` (the time derivative of ``φ_t`` at ``φ_t = x``).

        ``x (..., d)``, ``t`` a float or ``(...,)`` such as the solvers' ``(B,)``.
        """
        check_points(x, self.dim)
        dtype = x.dtype if x.is_floating_point() else self.A.dtype
        x = x.to(dtype)
        tt, scalar = self._time(t, x.shape[:-1], dtype, x.device)
        m0, m1, L = self.mean0.to(x), self.mean1.to(x), self.L.to(x)
        t1 = tt if scalar else tt[..., None]
        m_t = (1 - t1) * m0 + t1 * m1
        return (m1 - m0) + (x - m_t) @ L.mT

    def __repr__(self) -> str:
        return f"GaussianOT(dim={self.dim}, dtype={self.A.dtype})"
