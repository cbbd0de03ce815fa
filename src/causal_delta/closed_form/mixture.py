r"""Flow matching onto a Gaussian mixture: drift, Jacobian, density (paper Eq. 2-4, App. B.3).

Independent coupling, linear interpolant ``x_t = (1-t) x0 + t x1`` with
``x0 ~ N(μ0, Σ0)`` and ``x1 ~ Σ_k π_k N(μ_k, Σ_k)``. Given the label ``K = k``, ``x_t`` is
Gaussian with

.. math::
    m_k(t) = (1-t) μ_0 + t μ_k, \qquad S_k(t) = (1-t)^2 Σ_0 + t^2 Σ_k, \qquad δ_k = x_t - m_k.

Responsibilities (Eq. 2), computed in log space with ``log_softmax``:

.. math:: γ_k(x_t) = \mathrm{softmax}_k\big(\log π_k + \log N(x_t \mid m_k, S_k)\big).

Conditional means and drift (Eq. 3), with ``u_k = S_k^{-1} δ_k``:

.. math::
    E[x_1 | x_t, k] = μ_k + t Σ_k u_k, \qquad E[x_0 | x_t, k] = μ_0 + (1-t) Σ_0 u_k,

    v(x_t, t) = \sum_k γ_k b_k, \qquad b_k = μ_k - μ_0 + A_k δ_k, \qquad
    A_k(t) = (t Σ_k - (1-t) Σ_0) S_k^{-1}.

Jacobian (Eq. 4), with ``∇γ_k = γ_k (ū - u_k)`` and ``ū = Σ_j γ_j u_j``:

.. math::
    ∇v = \sum_k γ_k A_k + \sum_k b_k (∇γ_k)^\top
       = \sum_k γ_k A_k - \sum_k γ_k (b_k - v)(u_k - ū)^\top .

The score of ``p_t`` is ``∇ \log p_t(x) = -ū``. End points: ``v(x, 0) = Σ_k π_k μ_k - x``
and ``v(x, 1) = x - μ0``.

Numerics far from the data (arXiv 2602.02793 Eq. 2–4, App. B.3): ``u_k`` and ``b_k`` grow like ``|x|`` while their
spreads ``u_k - ū``, ``b_k - v`` (and the log-density differences that set ``γ``) stay O(1) when
the components share ``S_k``. Forming ``v ūᵀ - Σ γ_k b_k u_kᵀ`` or ``softmax(log N_k)`` from the
large terms cancels ``|x|²``-sized numbers (relative error ~1e-6 at ``|x| = 1e5``). So every
quantity is taken relative to a reference component ``r`` (per point, the most responsible):

.. math::
    e_k = u_k - u_r = S_k^{-1}\big[(m_r - m_k) + (S_r - S_k) u_r\big], \qquad
    b_k - b_r = μ_k - μ_r + M_k e_k + (M_k - M_r) u_r,

    q_k - q_r = δ_r^\top e_k + (m_r - m_k)^\top u_k \quad (q_k = δ_k^\top S_k^{-1} δ_k),

with ``M_k = tΣ_k - (1-t)Σ0``; ``S_r - S_k`` and ``M_k - M_r`` are exactly zero for equal
covariances, so nothing of size ``|x|`` is subtracted from itself. ``γ`` is the softmax of the
log-joint differences, ``v = b_r + Σ_k γ_k (b_k - b_r)``, ``ū = u_r + Σ_k γ_k e_k``.

Implementation: one Cholesky factor per component (and per time when times differ between
points), triangular solves for every ``S_k⁻¹``, no explicit inverse, no Python loop over
points. Everything is differentiable with ``torch.autograd`` and ``torch.func``.

Note: the original research code used ``A_k = t Σ_k S_k⁻¹`` (the slope of ``E[x1 | x_t]``),
which is not the drift's slope; see a known error of the paper's code, arXiv 2602.02793 App. B.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_finite, check_positive_int, check_shape, check_spd, check_weights
from ._common import Time, as_float_tensor, check_points, prepare_time

__all__ = ["GaussianMixture", "MixtureTerms"]


@dataclass
class MixtureTerms:
    """Intermediate quantities at flattened points ``x (N, d)`` and one time (or N times).

    Attributes:
        scalar_time: whether one time is shared by all points (then component matrices are
            ``(K, d, d)``), else they are ``(N, K, d, d)``.
        t: the time, 0-dim or ``(N,)``.
        log_gamma: ``log γ_k``, ``(N, K)``.
        gamma: ``γ_k``, ``(N, K)``.
        delta: ``δ_k = x - m_k``, ``(N, K, d)``.
        u: ``S_k⁻¹ δ_k``, ``(N, K, d)``.
        log_joint: ``log π_k + log N(x | m_k, S_k)``, ``(N, K)``.
        chol: Cholesky factors of ``S_k``, ``(K, d, d)`` or ``(N, K, d, d)``.
        M: ``t Σ_k - (1-t) Σ0``, same shape as ``chol``.
        ref: the reference component ``r`` of each point (largest ``γ``), ``(N,)`` int64.
        e: ``u_k - u_r`` computed without cancellation, ``(N, K, d)``.
        b_ref: ``b_r = μ_r - μ0 + M_r u_r``, ``(N, d)``.
        db: ``b_k - b_r`` computed without cancellation, ``(N, K, d)``.
    """

    scalar_time: bool
    t: Tensor
    log_gamma: Tensor
    gamma: Tensor
    delta: Tensor
    u: Tensor
    log_joint: Tensor
    chol: Tensor
    M: Tensor
    ref: Tensor
    e: Tensor
    b_ref: Tensor
    db: Tensor

    @property
    def velocity(self) -> Tensor:
        """``v = b_r + Σ_k γ_k (b_k - b_r)``, ``(N, d)``."""
        return self.b_ref + (self.gamma.unsqueeze(-1) * self.db).sum(-2)

    @property
    def ubar(self) -> Tensor:
        """``ū = Σ_k γ_k u_k = u_r + Σ_k γ_k e_k`` (minus the score), ``(N, d)``."""
        u_ref = _pick(self.u, self.ref)
        return u_ref + (self.gamma.unsqueeze(-1) * self.e).sum(-2)

    def spreads(self) -> tuple[Tensor, Tensor]:
        """``(b_k - v, u_k - ū)``, each ``(N, K, d)``: the centred factors of Eq. 4's second term."""
        g = self.gamma.unsqueeze(-1)
        beta = self.db - (g * self.db).sum(-2, keepdim=True)
        eta = self.e - (g * self.e).sum(-2, keepdim=True)
        return beta, eta


def _pick(values: Tensor, ref: Tensor) -> Tensor:
    """``values[n, ref[n]]`` for ``values (N, K, ...)`` and ``ref (N,)``."""
    idx = ref.reshape(-1, *([1] * (values.ndim - 1))).expand(-1, 1, *values.shape[2:])
    return torch.gather(values, 1, idx).squeeze(1)


def _ref_minus(mat: Tensor, ref: Tensor, vec: Tensor, scalar: bool) -> Tensor:
    """``(mat_r - mat_k) vec`` for every ``k``, ``(N, K, d)``; ``r = ref[n]``, ``vec (N, d)``.

    The matrix difference is formed before the product, so it is exactly zero (and
    contributes nothing) when two components share the matrix.
    """
    if scalar:  # mat (K, d, d): all (r, k) differences, then each point's own r.
        diff = mat.unsqueeze(1) - mat.unsqueeze(0)  # [r, k] = mat_r - mat_k
        every = torch.einsum("rkij,nj->nrki", diff, vec)  # (N, K_r, K, d)
        idx = ref.reshape(-1, 1, 1, 1).expand(-1, 1, *every.shape[2:])
        return torch.gather(every, 1, idx).squeeze(1)
    diff = _pick(mat, ref).unsqueeze(1) - mat  # (N, K, d, d)
    return (diff @ vec[:, None, :, None]).squeeze(-1)


class GaussianMixture:
    r"""Gaussian-mixture target with a Gaussian base, for the linear interpolant (Eq. 2-4).

    Args:
        weights: ``π`` ``(K,)``, positive, summing to 1 within 1e-6.
        means: ``μ_k`` ``(K, d)``.
        covs: ``Σ_k`` ``(K, d, d)``, each symmetric positive-definite.
        base_mean: ``μ0`` ``(d,)``; zeros by default.
        base_cov: ``Σ0`` ``(d, d)``; identity by default.
        dtype: parameter dtype, float64 by default. Methods compute in the dtype of the points
            they are given (so float32 points give a float32 computation); see :meth:`to`.

    Shapes: points ``x (..., d)``; ``t`` a Python float, a 0-dim tensor, or a tensor
    broadcastable to ``x.shape[:-1]`` (the solvers pass ``(B,)``), every entry in [0, 1].

    Raises:
        ValueError: bad shapes (naming the argument and the expected shape), a covariance that
            is not SPD (naming it and its smallest eigenvalue), weights not positive or not
            summing to 1 (reporting the sum).

    Example:
        One component ``N(m, I)``: at ``t = 1`` the marginal is the target itself.

        >>> mix = GaussianMixture([1.0], [[3.0, 0.0]], [torch.eye(2).tolist()])
        >>> x = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
        >>> round(float(mix.log_prob(x, 1.0)[0]), 6)  # log N(m; m, I) = -log 2π
        -1.837877
        >>> mix.velocity(torch.zeros(1, 2, dtype=torch.float64), 0.0).tolist()  # E[x1 - x0 | x0 = 0]
        [[3.0, 0.0]]
    """

    def __init__(self, weights, means, covs, base_mean=None, base_cov=None, *,
                 dtype: torch.dtype = torch.float64, device=None):
        weights = as_float_tensor(weights, dtype, device)
        device = weights.device
        means = as_float_tensor(means, dtype, device)
        covs = as_float_tensor(covs, dtype, device)
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got {tuple(weights.shape)}")
        K = weights.shape[0]
        if means.ndim != 2 or means.shape[0] != K:
            raise ValueError(f"means must have shape ({K}, d) (one row per weight), got {tuple(means.shape)}")
        d = means.shape[1]
        check_positive_int("dimension d (means.shape[1])", d)
        check_shape("covs", covs, (K, d, d))
        base_mean = torch.zeros(d, dtype=dtype, device=device) if base_mean is None else \
            as_float_tensor(base_mean, dtype, device)
        base_cov = torch.eye(d, dtype=dtype, device=device) if base_cov is None else \
            as_float_tensor(base_cov, dtype, device)
        check_shape("base_mean", base_mean, (d,))
        check_shape("base_cov", base_cov, (d, d))
        check_weights("weights", weights)
        check_shape("means", means, (K, d))
        check_finite("means", means)
        check_finite("base_mean", base_mean)
        for k in range(K):
            check_spd(f"covs[{k}]", covs[k])
        check_spd("base_cov", base_cov)
        self.weights, self.means, self.covs = weights, means, covs
        self.base_mean, self.base_cov = base_mean, base_cov

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self.weights.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.means.dtype

    def to(self, dtype: torch.dtype | None = None, device=None) -> GaussianMixture:
        """A copy with parameters in ``dtype`` / on ``device`` (no re-validation of values)."""
        new = object.__new__(GaussianMixture)
        for name in ("weights", "means", "covs", "base_mean", "base_cov"):
            value = getattr(self, name)
            setattr(new, name, value.to(dtype=dtype or value.dtype, device=device or value.device))
        return new

    def parameters_dict(self) -> dict[str, Tensor]:
        """``weights, means, covs, base_mean, base_cov`` (for reports)."""
        return {n: getattr(self, n) for n in ("weights", "means", "covs", "base_mean", "base_cov")}

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim}, dtype={self.dtype})"

    def _params(self, like: Tensor):
        return tuple(getattr(self, n).to(dtype=like.dtype, device=like.device)
                     for n in ("weights", "means", "covs", "base_mean", "base_cov"))

    def _prepare(self, x: Tensor, t: Time) -> tuple[Tensor, Tensor, bool, tuple[int, ...]]:
        check_points(x, self.dim)
        if not x.is_floating_point():
            x = x.to(self.dtype)
        batch = tuple(x.shape[:-1])
        tt, scalar = prepare_time(t, batch, x.dtype, x.device)
        flat = x.reshape(-1, self.dim)
        return flat, (tt if scalar else tt.reshape(-1)), scalar, batch

    # ------------------------------------------------------------ component terms
    def _SM(self, tt: Tensor, scalar: bool, covs: Tensor, base_cov: Tensor) -> tuple[Tensor, Tensor]:
        t4 = tt if scalar else tt[:, None, None, None]
        S = (1 - t4) ** 2 * base_cov + t4**2 * covs  # (K,d,d) or (N,K,d,d)
        M = t4 * covs - (1 - t4) * base_cov
        return S, M

    def _component_means(self, tt: Tensor, scalar: bool, means: Tensor, base_mean: Tensor) -> Tensor:
        t2 = tt if scalar else tt[:, None, None]
        return (1 - t2) * base_mean + t2 * means  # (K,d) or (N,K,d)

    @staticmethod
    def _tri(chol: Tensor, rhs: Tensor, scalar: bool, *, transpose: bool) -> Tensor:
        """Solve ``L y = rhs`` (or ``Lᵀ y = rhs``) per component; ``rhs`` (N, K, d)."""
        if scalar:
            # One solve per component with all N points as right-hand sides: (K, d, N).
            mat = chol.mT if transpose else chol
            out = torch.linalg.solve_triangular(mat, rhs.permute(1, 2, 0), upper=transpose)
            return out.permute(2, 0, 1).contiguous()
        mat = chol.mT if transpose else chol
        return torch.linalg.solve_triangular(mat, rhs.unsqueeze(-1), upper=transpose).squeeze(-1)

    def terms(self, x: Tensor, t: Time) -> MixtureTerms:
        """All intermediate quantities at ``x (..., d)`` (flattened to ``N`` points), time ``t``."""
        flat, tt, scalar, _ = self._prepare(x, t)
        return self._terms(flat, tt, scalar)

    def _terms(self, flat: Tensor, tt: Tensor, scalar: bool) -> MixtureTerms:
        weights, means, covs, base_mean, base_cov = self._params(flat)
        d = self.dim
        S, M = self._SM(tt, scalar, covs, base_cov)
        chol = torch.linalg.cholesky(S)
        m = self._component_means(tt, scalar, means, base_mean)
        delta = flat.unsqueeze(-2) - m  # (N, K, d)
        z = self._tri(chol, delta, scalar, transpose=False)  # L⁻¹ δ
        u = self._tri(chol, z, scalar, transpose=True)  # S⁻¹ δ
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,) or (N,K)
        log_normal = -0.5 * ((z * z).sum(-1) + logdet + d * math.log(2.0 * math.pi))
        log_joint = torch.log(weights) + log_normal  # (N, K)
        # Centre on the most responsible component r (module docstring): differences of
        # u, b and of the quadratic forms without subtracting |x|-sized terms from each other.
        ref = log_joint.argmax(-1)
        u_ref, delta_ref = _pick(u, ref), _pick(delta, ref)
        m_ref = m[ref] if scalar else _pick(m, ref)
        dm = m_ref.unsqueeze(-2) - m  # m_r - m_k, (N, K, d)
        rhs = dm + _ref_minus(S, ref, u_ref, scalar)
        e = self._tri(chol, self._tri(chol, rhs, scalar, transpose=False), scalar, transpose=True)
        dq = (delta_ref.unsqueeze(-2) * e).sum(-1) + (dm * u).sum(-1)  # q_k - q_r
        logdet_ref = logdet[ref] if scalar else _pick(logdet, ref)
        rel_joint = torch.log(weights) - 0.5 * (dq + logdet - logdet_ref.unsqueeze(-1))  # + const
        log_gamma = torch.log_softmax(rel_joint, dim=-1)
        Mu = self._matvec(M, u, scalar)  # M_k u_k
        b_ref = means[ref] - base_mean + _pick(Mu, ref)
        db = (means - means[ref].unsqueeze(-2)) + self._matvec(M, e, scalar) - _ref_minus(M, ref, u_ref, scalar)
        return MixtureTerms(scalar, tt, log_gamma, log_gamma.exp(), delta, u, log_joint, chol, M,
                            ref, e, b_ref, db)

    @staticmethod
    def _matvec(mat: Tensor, vec: Tensor, scalar: bool) -> Tensor:
        """``mat_k @ vec_k`` with ``mat`` (K,d,d) or (N,K,d,d) and ``vec`` (N,K,d)."""
        if scalar:
            return torch.einsum("kij,nkj->nki", mat, vec)
        return (mat @ vec.unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------------ public
    def S(self, t: Time) -> Tensor:
        """Component covariances of ``x_t``: ``S_k(t) = (1-t)² Σ0 + t² Σ_k``, ``(K, d, d)`` or ``(..., K, d, d)``."""
        tt, scalar = prepare_time(t, None, self.dtype, self.means.device)
        if not scalar:
            shape = tt.shape
            S, _ = self._SM(tt.reshape(-1), False, self.covs, self.base_cov)
            return S.reshape(*shape, *S.shape[1:])
        return self._SM(tt, True, self.covs, self.base_cov)[0]

    def component_means(self, t: Time) -> Tensor:
        """``m_k(t) = (1-t) μ0 + t μ_k``: ``(K, d)`` or ``(..., K, d)``."""
        tt, scalar = prepare_time(t, None, self.dtype, self.means.device)
        if not scalar:
            m = self._component_means(tt.reshape(-1), False, self.means, self.base_mean)
            return m.reshape(*tt.shape, *m.shape[1:])
        return self._component_means(tt, True, self.means, self.base_mean)

    def A(self, t: Time) -> Tensor:
        """Per-component drift matrices ``A_k(t) = (tΣ_k - (1-t)Σ0) S_k⁻¹``.

        Returns ``(K, d, d)`` for a scalar ``t``, ``(..., K, d, d)`` for ``t (...,)``. Computed
        as ``(S_k⁻¹ M_kᵀ)ᵀ`` with a Cholesky solve. ``A_k(0) = -I``, ``A_k(1) = I``.
        """
        tt, scalar = prepare_time(t, None, self.dtype, self.means.device)
        shape = tt.shape
        flat_t = tt if scalar else tt.reshape(-1)
        S, M = self._SM(flat_t, scalar, self.covs, self.base_cov)
        A = torch.cholesky_solve(M.mT, torch.linalg.cholesky(S)).mT
        return A if scalar else A.reshape(*shape, *A.shape[1:])

    def intervention_jacobian(self, k: int | Tensor, t: Time) -> Tensor:
        """The "intervention" Jacobian of Table 1: the drift's Jacobian with the label fixed,
        ``J_do = A_K(t)``.

        Args:
            k: a component index (int), or a tensor of labels ``(...,)`` (e.g. one per point).
            t: float / 0-dim tensor, or ``(...,)`` broadcastable with the labels.

        Returns:
            ``(d, d)`` for an int ``k`` and scalar ``t``; otherwise ``(..., d, d)``.
        """
        K = self.n_components
        A = self.A(t)  # (K,d,d) or (...,K,d,d)
        if isinstance(k, Tensor):
            if k.dtype.is_floating_point or k.dtype == torch.bool:
                raise ValueError(f"k must be an int or an integer tensor of labels, got dtype {k.dtype}")
            if k.numel() and (int(k.min()) < 0 or int(k.max()) >= K):
                raise ValueError(f"k must hold labels in [0, {K - 1}], got values in [{int(k.min())}, {int(k.max())}]")
            k = k.to(A.device)
            if A.ndim == 3:
                return A[k]
            batch = torch.broadcast_shapes(A.shape[:-3], k.shape)
            A = A.expand(*batch, *A.shape[-3:])
            idx = k.expand(batch)[..., None, None, None].expand(*batch, 1, *A.shape[-2:])
            return torch.gather(A, -3, idx).squeeze(-3)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < K:
            raise ValueError(f"k must be an int in [0, {K - 1}] or a tensor of labels, got {k!r}")
        return A[..., k, :, :]

    def responsibilities(self, x: Tensor, t: Time, *, log: bool = False) -> Tensor:
        """``γ_k(x, t)`` (Eq. 2), ``(..., K)``; ``log=True`` returns ``log γ_k`` (log-softmax)."""
        flat, tt, scalar, batch = self._prepare(x, t)
        T = self._terms(flat, tt, scalar)
        out = T.log_gamma if log else T.gamma
        return out.reshape(*batch, self.n_components)

    def velocity(self, x: Tensor, t: Time) -> Tensor:
        """Drift ``v(x, t) = Σ_k γ_k [μ_k - μ0 + A_k δ_k]`` (Eq. 3), shape of ``x (..., d)``.

        ``t`` may be a float or a tensor ``(...,)`` such as the solvers' ``(B,)``.
        """
        flat, tt, scalar, batch = self._prepare(x, t)
        return self._terms(flat, tt, scalar).velocity.reshape(*batch, self.dim)

    def _jacobian(self, flat: Tensor, T: MixtureTerms) -> tuple[Tensor, Tensor]:
        g = T.gamma
        # Σ_k γ_k A_k, A_k = (S_k⁻¹ M_kᵀ)ᵀ.
        A = torch.cholesky_solve(T.M.mT, T.chol).mT
        if T.scalar_time:
            J = torch.einsum("nk,kij->nij", g, A)
        else:
            J = torch.einsum("nk,nkij->nij", g, A)
        beta, eta = T.spreads()  # centred form of arXiv 2602.02793 Eq. 2–4, App. B.3: no |x|² cancellation
        J = J - torch.einsum("nki,nkj->nij", g.unsqueeze(-1) * beta, eta)
        return T.velocity, J

    def jacobian(self, x: Tensor, t: Time) -> Tensor:
        """Analytic Jacobian ``∂v/∂x`` (Eq. 4), ``(..., d, d)`` with rows = output coordinates.

        ``∇v = Σ_k γ_k A_k + Σ_k b_k (∇γ_k)ᵀ``, ``∇γ_k = γ_k (S_k⁻¹(m_k - x) - Σ_j γ_j S_j⁻¹(m_j - x))``,
        evaluated in the centred form ``Σ_k γ_k A_k - Σ_k γ_k (b_k - v)(u_k - ū)ᵀ`` (accurate far
        from the data; see the module docstring).
        """
        flat, tt, scalar, batch = self._prepare(x, t)
        _, J = self._jacobian(flat, self._terms(flat, tt, scalar))
        return J.reshape(*batch, self.dim, self.dim)

    def velocity_and_jacobian(self, x: Tensor, t: Time) -> tuple[Tensor, Tensor]:
        """``(v (..., d), ∂v/∂x (..., d, d))`` sharing one pass of the component terms."""
        flat, tt, scalar, batch = self._prepare(x, t)
        v, J = self._jacobian(flat, self._terms(flat, tt, scalar))
        return v.reshape(*batch, self.dim), J.reshape(*batch, self.dim, self.dim)

    def forward_jvp(self, x: Tensor, t: Time, dx: Tensor) -> tuple[Tensor, Tensor]:
        """``(v(x, t), J_x v · dx)`` without forming ``J`` (the optional fast forward mode of
        CONTRIBUTING), ``t`` held fixed. ``x``, ``dx`` of shape ``(..., d)``; or, as in the
        :class:`causal_delta.jvp.ForwardJVP` protocol, ``x`` ``(B, d)`` with ``dx`` ``(B·P, d)``
        (``P`` tangents per point, point-major), returning ``(v (B, d), J dx (B·P, d))``.

        ``J dx = Σ_k γ_k A_k dx - Σ_k γ_k (b_k - v) ((u_k - ū)·dx)`` (centred, as :meth:`jacobian`).
        """
        if x.ndim == 2 and dx.ndim == 2 and dx.shape[0] != x.shape[0] and x.shape[0] > 0 \
                and dx.shape[0] % x.shape[0] == 0:
            # P tangents per point: the component terms are cheap (d small), repeat them per tangent.
            P = dx.shape[0] // x.shape[0]
            tr = t.repeat_interleave(P, dim=0) if isinstance(t, Tensor) and t.ndim == 1 else t
            v, jv = self.forward_jvp(x.repeat_interleave(P, dim=0), tr, dx)
            return v[::P], jv
        flat, tt, scalar, batch = self._prepare(x, t)
        dflat = dx.to(flat).reshape(-1, self.dim)
        if dflat.shape[0] != flat.shape[0]:
            raise ValueError(f"dx must have the shape of x {tuple(x.shape)}, got {tuple(dx.shape)}")
        T = self._terms(flat, tt, scalar)
        g = T.gamma.unsqueeze(-1)
        rhs = dflat.unsqueeze(-2).expand(-1, self.n_components, -1)
        w = self._tri(T.chol, self._tri(T.chol, rhs, scalar, transpose=False), scalar, transpose=True)
        Adx = self._matvec(T.M, w, scalar)  # A_k dx = M_k S_k⁻¹ dx
        beta, eta = T.spreads()
        jv = (g * Adx).sum(-2) - (g * beta * (eta * dflat.unsqueeze(-2)).sum(-1, keepdim=True)).sum(-2)
        return T.velocity.reshape(*batch, self.dim), jv.reshape(*batch, self.dim)

    def cond_mean_x1(self, x: Tensor, t: Time, *, per_component: bool = False) -> Tensor:
        """``E[x1 | x_t = x]``.

        With ``per_component=True``: ``E[x1 | x_t, k] = μ_k + t Σ_k S_k⁻¹ δ_k``, ``(..., K, d)``;
        otherwise the mixture ``Σ_k γ_k E[x1 | x_t, k]``, ``(..., d)``.
        """
        return self._cond_mean(x, t, per_component, which=1)

    def cond_mean_x0(self, x: Tensor, t: Time, *, per_component: bool = False) -> Tensor:
        """``E[x0 | x_t = x]``.

        With ``per_component=True``: ``E[x0 | x_t, k] = μ0 + (1-t) Σ0 S_k⁻¹ δ_k``, ``(..., K, d)``;
        otherwise ``Σ_k γ_k E[x0 | x_t, k]``, ``(..., d)``. Note ``v = E[x1|x_t] - E[x0|x_t]``.
        """
        return self._cond_mean(x, t, per_component, which=0)

    def _cond_mean(self, x: Tensor, t: Time, per_component: bool, which: int) -> Tensor:
        flat, tt, scalar, batch = self._prepare(x, t)
        T = self._terms(flat, tt, scalar)
        _, means, covs, base_mean, base_cov = self._params(flat)
        t3 = tt if scalar else tt[:, None, None]
        if which == 1:
            comp = means + t3 * torch.einsum("kij,nkj->nki", covs, T.u)
        else:
            comp = base_mean + (1 - t3) * (T.u @ base_cov.mT)
        if per_component:
            return comp.reshape(*batch, self.n_components, self.dim)
        return (T.gamma.unsqueeze(-1) * comp).sum(-2).reshape(*batch, self.dim)

    def log_prob(self, x: Tensor, t: Time) -> Tensor:
        """``log p_t(x) = logsumexp_k(log π_k + log N(x | m_k(t), S_k(t)))``, shape ``(...,)``.

        ``t = 1`` gives the target density, ``t = 0`` the base ``N(μ0, Σ0)``.
        """
        flat, tt, scalar, batch = self._prepare(x, t)
        T = self._terms(flat, tt, scalar)
        return torch.logsumexp(T.log_joint, dim=-1).reshape(batch)

    def score(self, x: Tensor, t: Time) -> Tensor:
        """``∇_x log p_t(x) = Σ_k γ_k S_k⁻¹ (m_k - x)``, shape of ``x (..., d)``."""
        flat, tt, scalar, batch = self._prepare(x, t)
        return -self._terms(flat, tt, scalar).ubar.reshape(*batch, self.dim)

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               return_labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` points ``x1 ~ Σ_k π_k N(μ_k, Σ_k)``: ``(n, d)`` (and labels ``(n,)`` int64).

        Randomness only through ``generator`` (on the parameters' device).
        """
        check_positive_int("n", n)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.means.device)
        chol = torch.linalg.cholesky(self.covs)
        x = self.means[labels] + (chol[labels] @ eps.unsqueeze(-1)).squeeze(-1)
        return (x, labels) if return_labels else x

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points ``x0 ~ N(μ0, Σ0)``, ``(n, d)``."""
        check_positive_int("n", n)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.means.device)
        return self.base_mean + eps @ torch.linalg.cholesky(self.base_cov).mT
