"""Extended-precision (mpmath, 50 digits) references for the closed forms, used by the tests.

Independent of the library's code paths: mpmath Cholesky factors and hand-written triangular
solves, the textbook (uncentred) form of Eq. 4 and ``exp``-normalised responsibilities, all at
50 significant digits, so the ``|x|²``-sized cancellations that float64 must avoid cost nothing.
"""

from __future__ import annotations

import pytest
import torch

mp = pytest.importorskip("mpmath", reason="the 50-digit references need mpmath (dev extra)")

__all__ = ["mixture_reference", "gaussian_flow_reference"]


def _vec(t: torch.Tensor) -> list:
    return [mp.mpf(float(v)) for v in t.reshape(-1)]


def _mat(t: torch.Tensor) -> list:
    return [[mp.mpf(float(v)) for v in row] for row in t.tolist()]


def _chol_solve(L, b):
    """``S⁻¹ b`` for ``S = L Lᵀ`` (forward then back substitution)."""
    d = len(b)
    y = [mp.mpf(0)] * d
    for i in range(d):
        y[i] = (b[i] - mp.fsum(L[i, j] * y[j] for j in range(i))) / L[i, i]
    x = [mp.mpf(0)] * d
    for i in reversed(range(d)):
        x[i] = (y[i] - mp.fsum(L[j, i] * x[j] for j in range(i + 1, d))) / L[i, i]
    return x


def _matvec(A, x):
    return [mp.fsum(a * b for a, b in zip(row, x)) for row in A]


def _lin(a, A, b, B):
    return [[a * p + b * q for p, q in zip(r, s)] for r, s in zip(A, B)]


def _tensor(values, shape) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64).reshape(shape)


def mixture_reference(mix, x: torch.Tensor, t: float, w: torch.Tensor | None = None, dps: int = 50):
    """``(γ (K,), v (d,), J)`` of ``mix`` at one point ``x (d,)`` (Eq. 2-4 of MATH.md §3).

    ``J`` is the full Jacobian ``(d, d)``, or ``J w`` ``(d,)`` when a direction ``w`` is given
    (cheaper for large ``d``). The float64 inputs are converted exactly; everything after that
    is at ``dps`` digits.
    """
    with mp.workdps(dps):
        tt = mp.mpf(float(t))
        X = _vec(x)
        d, K = len(X), mix.n_components
        mu0, S0 = _vec(mix.base_mean), _mat(mix.base_cov)
        cols = [[mp.mpf(int(i == j)) for i in range(d)] for j in range(d)] if w is None else [_vec(w)]
        log_joint, b, g, Acols = [], [], [], []
        for k in range(K):
            Sig_k = _mat(mix.covs[k])
            L = mp.cholesky(mp.matrix(_lin((1 - tt) ** 2, S0, tt**2, Sig_k)))
            M = _lin(tt, Sig_k, -(1 - tt), S0)
            mk = [(1 - tt) * a + tt * c for a, c in zip(mu0, _vec(mix.means[k]))]
            dk = [a - c for a, c in zip(X, mk)]
            u = _chol_solve(L, dk)  # S_k⁻¹ δ_k
            logdet = 2 * mp.fsum(mp.log(L[i, i]) for i in range(d))
            log_joint.append(mp.log(mp.mpf(float(mix.weights[k]))) - mp.fsum(a * c for a, c in zip(dk, u)) / 2
                             - logdet / 2)
            Mu = _matvec(M, u)
            b.append([c - a + e for c, a, e in zip(_vec(mix.means[k]), mu0, Mu)])
            g.append([-c for c in u])  # S_k⁻¹ (m_k - x)
            Acols.append([_matvec(M, _chol_solve(L, col)) for col in cols])  # A_k col
        top = max(log_joint)
        ex = [mp.exp(lj - top) for lj in log_joint]
        gam = [e / mp.fsum(ex) for e in ex]
        gbar = [mp.fsum(gam[k] * g[k][i] for k in range(K)) for i in range(d)]
        v = [mp.fsum(gam[k] * b[k][i] for k in range(K)) for i in range(d)]
        out = []
        for c, col in enumerate(cols):  # J col = Σ γ_k A_k col + Σ_k b_k γ_k (g_k - ḡ)·col
            s = [mp.fsum(gam[k] * Acols[k][c][i] for k in range(K)) for i in range(d)]
            for k in range(K):
                coef = gam[k] * mp.fsum((g[k][i] - gbar[i]) * col[i] for i in range(d))
                s = [si + coef * bi for si, bi in zip(s, b[k])]
            out.append(s)
        if w is None:
            J = torch.stack([_tensor(col, (d,)) for col in out], dim=1)
        else:
            J = _tensor(out[0], (d,))
        return _tensor(gam, (K,)), _tensor(v, (d,)), J


def gaussian_flow_reference(cov: torch.Tensor, x: torch.Tensor, t: float, dps: int = 50) -> torch.Tensor:
    """``v = (tΣ - (1-t)I) S⁻¹ x`` with ``S = (1-t)² I + t² Σ`` (Gaussian flow N(0, I) → N(0, Σ))."""
    with mp.workdps(dps):
        tt = mp.mpf(float(t))
        Sig = _mat(cov)
        d = len(Sig)
        eye = [[mp.mpf(int(i == j)) for j in range(d)] for i in range(d)]
        L = mp.cholesky(mp.matrix(_lin((1 - tt) ** 2, eye, tt**2, Sig)))
        return _tensor(_matvec(_lin(tt, Sig, -(1 - tt), eye), _chol_solve(L, _vec(x))), (d,))
