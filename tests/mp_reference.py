"""Extended-precision (mpmath, 50 digits) references for the closed forms, used by the tests.

Independent of the library's code paths: explicit inverses and determinants, the textbook
(uncentred) form of Eq. 4 and ``exp``-normalised responsibilities, all at 50 significant
digits, so the ``|x|²``-sized cancellations that float64 must avoid cost nothing here.
"""

from __future__ import annotations

import mpmath as mp
import torch

__all__ = ["mixture_reference", "gaussian_flow_reference"]


def _vec(t: torch.Tensor) -> mp.matrix:
    return mp.matrix([float(v) for v in t.reshape(-1)])


def _mat(t: torch.Tensor) -> mp.matrix:
    return mp.matrix(t.tolist())


def _to_torch(m: mp.matrix, shape) -> torch.Tensor:
    return torch.tensor([[float(v) for v in row] for row in m.tolist()], dtype=torch.float64).reshape(shape)


def mixture_reference(mix, x: torch.Tensor, t: float, dps: int = 50):
    """``(γ (K,), v (d,), J (d, d))`` of ``mix`` at one point ``x (d,)`` (Eq. 2-4 of MATH.md §3).

    The float64 inputs are converted exactly; everything after that is at ``dps`` digits.
    """
    with mp.workdps(dps):
        tt = mp.mpf(float(t))
        X = _vec(x)
        d, K = len(X), mix.n_components
        mu0, S0 = _vec(mix.base_mean), _mat(mix.base_cov)
        log_joint, b, g, A = [], [], [], []
        for k in range(K):
            S = (1 - tt) ** 2 * S0 + tt**2 * _mat(mix.covs[k])
            P = mp.inverse(S)
            mk = (1 - tt) * mu0 + tt * _vec(mix.means[k])
            dk = X - mk
            log_joint.append(mp.log(mp.mpf(float(mix.weights[k]))) - (dk.T * P * dk)[0] / 2
                             - mp.log(mp.det(S)) / 2)
            Ak = (tt * _mat(mix.covs[k]) - (1 - tt) * S0) * P
            A.append(Ak)
            b.append(_vec(mix.means[k]) - mu0 + Ak * dk)
            g.append(P * (mk - X))  # S_k⁻¹ (m_k - x)
        top = max(log_joint)
        w = [mp.exp(lj - top) for lj in log_joint]
        gam = [wk / sum(w) for wk in w]
        gbar = sum((gam[k] * g[k] for k in range(K)), mp.zeros(d, 1))
        v = sum((gam[k] * b[k] for k in range(K)), mp.zeros(d, 1))
        J = sum((gam[k] * A[k] for k in range(K)), mp.zeros(d, d))
        for k in range(K):  # Σ_k b_k (∇γ_k)ᵀ, ∇γ_k = γ_k (g_k - ḡ)
            J += b[k] * (gam[k] * (g[k] - gbar)).T
        gam_t = torch.tensor([float(gk) for gk in gam], dtype=torch.float64)
        return gam_t, _to_torch(v, (d,)), _to_torch(J, (d, d))


def gaussian_flow_reference(cov: torch.Tensor, x: torch.Tensor, t: float, dps: int = 50):
    """``(v (d,), A (d, d))`` of the Gaussian flow N(0, I) → N(0, Σ): ``A = (tΣ - (1-t)I) S⁻¹``."""
    with mp.workdps(dps):
        tt = mp.mpf(float(t))
        Sig = _mat(cov)
        d = Sig.rows
        eye = mp.eye(d)
        A = (tt * Sig - (1 - tt) * eye) * mp.inverse((1 - tt) ** 2 * eye + tt**2 * Sig)
        return _to_torch(A * _vec(x), (d,)), _to_torch(A, (d, d))
