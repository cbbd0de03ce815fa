"""Gaussian closed forms: GaussianFlow, linear-map conditioning, the OT construction."""

from __future__ import annotations

import pytest
import torch

import causal_delta.closed_form as cf
from causal_delta.closed_form import GaussianFlow, GaussianMixture, GaussianOT, linear_map_conditional_mean
from causal_delta.solvers import integrate

F64 = torch.float64


def _spd(d: int, g: torch.Generator, jitter: float = 0.3) -> torch.Tensor:
    B = torch.randn(d, d, generator=g, dtype=F64)
    return B @ B.mT / d + jitter * torch.eye(d, dtype=F64)


def test_public_api_exports():
    for name in cf.__all__:
        assert hasattr(cf, name), name
    assert {"GaussianFlow", "GaussianOT", "GaussianMixture", "linear_map_conditional_mean"} <= set(cf.__all__)


# ---------------------------------------------------------------- GaussianFlow
def test_gaussian_flow_matrices_and_endpoints():
    g = torch.Generator().manual_seed(0)
    cov = _spd(3, g)
    flow = GaussianFlow(cov)
    eye = torch.eye(3, dtype=F64)
    assert flow.dim == 3 and flow.cov.dtype == F64
    torch.testing.assert_close(flow.A(0.0), -eye, atol=1e-14, rtol=0)
    torch.testing.assert_close(flow.A(1.0), eye, atol=1e-12, rtol=0)
    t = 0.3
    S = (1 - t) ** 2 * eye + t**2 * cov
    torch.testing.assert_close(flow.S(t), S)
    # A(t) S(t) = tΣ - (1-t) I, and A is symmetric.
    torch.testing.assert_close(flow.A(t) @ S, t * cov - (1 - t) * eye, atol=1e-13, rtol=0)
    torch.testing.assert_close(flow.A(t), flow.A(t).mT, atol=1e-13, rtol=0)
    # Jacobian of the generator at t = 1 is Σ^{1/2}.
    R = flow.flow_jacobian(1.0)
    torch.testing.assert_close(R @ R, cov, atol=1e-12, rtol=0)
    torch.testing.assert_close(R, R.mT)


def test_gaussian_flow_batched_time_matches_scalar():
    g = torch.Generator().manual_seed(1)
    flow = GaussianFlow(_spd(2, g))
    x = torch.randn(5, 2, generator=g, dtype=F64)
    tb = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    v = flow.velocity(x, tb)
    for i in range(5):
        torch.testing.assert_close(v[i], flow.velocity(x[i], float(tb[i])), atol=1e-14, rtol=0)
    assert flow.A(tb).shape == (5, 2, 2) and flow.flow_jacobian(tb).shape == (5, 2, 2)
    assert flow.S(torch.full((3,), 0.5)).shape == (3, 2, 2)
    torch.testing.assert_close(flow.flow_map(x, tb), (flow.flow_jacobian(tb) @ x.unsqueeze(-1)).squeeze(-1))


def test_gaussian_flow_rk4_reproduces_exact_flow_map():
    g = torch.Generator().manual_seed(2)
    flow = GaussianFlow(_spd(3, g))
    x0 = torch.randn(64, 3, generator=g, dtype=F64)
    sol = integrate(flow.velocity, x0, method="rk4", steps=60, return_trajectory=True)
    exact = flow.flow_map(x0, 1.0)
    assert (sol.x - exact).abs().max() < 1e-8
    torch.testing.assert_close(exact, x0 @ flow.flow_jacobian(1.0).mT)
    mid = sol.trajectory[30]  # t = 0.5
    assert (mid - flow.flow_map(x0, 0.5)).abs().max() < 1e-8


def test_gaussian_flow_velocity_is_time_derivative_of_flow_map():
    g = torch.Generator().manual_seed(3)
    flow = GaussianFlow(_spd(2, g))
    x0 = torch.randn(4, 2, generator=g, dtype=F64)
    for t in (0.1, 0.5, 0.8):
        tt = torch.tensor(t, dtype=F64)
        phi, dphi = torch.func.jvp(lambda s: flow.flow_map(x0, s), (tt,), (torch.ones_like(tt),))
        torch.testing.assert_close(dphi, flow.velocity(phi, t), atol=1e-12, rtol=0)


def test_gaussian_flow_equals_one_component_mixture():
    g = torch.Generator().manual_seed(4)
    cov = _spd(3, g)
    flow = GaussianFlow(cov)
    mix = GaussianMixture([1.0], torch.zeros(1, 3), cov[None])
    x = 3 * torch.randn(10, 3, generator=g, dtype=F64)
    for t in (0.0, 0.25, 0.5, 0.99, 1.0):
        assert (mix.velocity(x, t) - flow.velocity(x, t)).abs().max() < 1e-12
        assert (mix.jacobian(x, t) - flow.A(t)).abs().max() < 1e-12


def test_gaussian_flow_validation():
    with pytest.raises(ValueError, match=r"cov must be positive-definite, its smallest eigenvalue is -1"):
        GaussianFlow(torch.diag(torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match=r"cov must have shape \(d, d\)"):
        GaussianFlow(torch.ones(2, 3))
    flow = GaussianFlow(torch.eye(2))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got values in \[1\.5, 1\.5\]"):
        flow.velocity(torch.zeros(3, 2), 1.5)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\), got \(3, 4\)"):
        flow.velocity(torch.zeros(3, 4), 0.5)
    with pytest.raises(ValueError, match=r"t must be a float or a tensor broadcastable to the batch shape \(3,\)"):
        flow.velocity(torch.zeros(3, 2), torch.tensor([0.1, 0.2]))


# ------------------------------------------------------ linear-map conditioning
def test_linear_map_conditional_mean_formula_and_regression():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 2, generator=g, dtype=F64)  # AAᵀ singular (rank 2)
    t = 0.6
    n = 200_000
    z = torch.randn(n, 3, generator=g, dtype=F64)
    x = torch.randn(n, 2, generator=g, dtype=F64) @ A.mT
    xt = (1 - t) * z + t * x
    # Least-squares regression of x on x_t estimates the (linear) posterior mean.
    coef = torch.linalg.lstsq(xt, x).solution.mT  # (3, 3)
    pred = linear_map_conditional_mean(A, xt[:5], t)
    C = A @ A.mT
    W = t * C @ torch.linalg.solve((1 - t) ** 2 * torch.eye(3, dtype=F64) + t**2 * C, torch.eye(3, dtype=F64))
    torch.testing.assert_close(pred, xt[:5] @ W.mT, atol=1e-12, rtol=0)
    assert (coef - W).abs().max() < 0.02
    assert linear_map_conditional_mean(A, torch.zeros(4, 5, 3, dtype=F64), 0.3).shape == (4, 5, 3)
    tb = torch.tensor([0.2, 0.6], dtype=F64)
    both = linear_map_conditional_mean(A, xt[:2], tb)
    torch.testing.assert_close(both[1], pred[1])


def test_linear_map_conditional_mean_matches_mixture_k1():
    g = torch.Generator().manual_seed(6)
    A = torch.randn(2, 2, generator=g, dtype=F64)
    mix = GaussianMixture([1.0], torch.zeros(1, 2), (A @ A.mT)[None])
    x = torch.randn(7, 2, generator=g, dtype=F64)
    for t in (0.0, 0.4, 1.0):
        torch.testing.assert_close(linear_map_conditional_mean(A, x, t), mix.cond_mean_x1(x, t), atol=1e-12, rtol=0)


def test_linear_map_conditional_mean_validation():
    with pytest.raises(ValueError, match=r"A must be a 2-D tensor of shape \(d, m\)"):
        linear_map_conditional_mean(torch.ones(3), torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match=r"x_t must have shape \(\.\.\., 3\)"):
        linear_map_conditional_mean(torch.ones(3, 3), torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        linear_map_conditional_mean(torch.eye(3), torch.zeros(2, 3), -0.1)
    with pytest.raises(ValueError, match=r"at t = 1, AAᵀ must be non-singular"):
        linear_map_conditional_mean(torch.ones(3, 1), torch.zeros(2, 3), 1.0)


# ---------------------------------------------------------------------- OT
def _ot(d: int = 3, seed: int = 7) -> GaussianOT:
    g = torch.Generator().manual_seed(seed)
    return GaussianOT(torch.randn(d, generator=g, dtype=F64), _spd(d, g),
                      torch.randn(d, generator=g, dtype=F64), _spd(d, g))


def test_ot_pushes_forward_moments_exactly():
    ot = _ot()
    torch.testing.assert_close(ot.mean(1.0), ot.mean1, atol=1e-14, rtol=0)
    torch.testing.assert_close(ot.mean(0.0), ot.mean0, atol=1e-14, rtol=0)
    torch.testing.assert_close(ot.cov(1.0), ot.cov1, atol=1e-12, rtol=0)
    torch.testing.assert_close(ot.cov(0.0), ot.cov0, atol=1e-12, rtol=0)
    # A Σ0 A = Σ1 and A is SPD; Y(1) = e^{L} = A.
    torch.testing.assert_close(ot.A @ ot.cov0 @ ot.A, ot.cov1, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(ot.A).min() > 0
    torch.testing.assert_close(ot.jacobian(1.0), ot.A, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.matrix_exp(0.3 * ot.L), ot.jacobian(0.3), atol=1e-12, rtol=0)
    x0 = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(ot.flow_map(x0, 1.0), ot.mean1 + (x0 - ot.mean0) @ ot.A.mT, atol=1e-12, rtol=0)
    # Batched t.
    tb = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    assert ot.cov(tb).shape == (3, 3, 3) and ot.mean(tb).shape == (3, 3)
    torch.testing.assert_close(ot.cov(tb)[1], ot.cov(0.5))


def test_ot_rk4_velocity_matches_flow_map():
    ot = _ot(seed=8)
    g = torch.Generator().manual_seed(9)
    x0 = ot.mean0 + torch.randn(32, 3, generator=g, dtype=F64) @ torch.linalg.cholesky(ot.cov0).mT
    sol = integrate(ot.velocity, x0, method="rk4", steps=100, return_trajectory=True)
    assert (sol.x - ot.flow_map(x0, 1.0)).abs().max() < 1e-8
    assert (sol.trajectory[30] - ot.flow_map(x0, 0.3)).abs().max() < 1e-8


def test_ot_path_differs_from_flow_matching_path():
    ot = _ot(seed=10)
    fm_cov_half = 0.25 * ot.cov0 + 0.25 * ot.cov1  # independent coupling, t = 1/2
    assert (ot.cov(0.5) - fm_cov_half).abs().max() > 1e-2


def test_ot_validation():
    with pytest.raises(ValueError, match=r"cov1 must be positive-definite, its smallest eigenvalue is -2"):
        GaussianOT(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.diag(torch.tensor([1.0, -2.0])))
    with pytest.raises(ValueError, match=r"mean1 must have shape \(2\), got \(3,\)"):
        GaussianOT(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match=r"cov1 must have shape \(2, 2\), got \(3, 3\)"):
        GaussianOT(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        _ot().cov(2.0)
