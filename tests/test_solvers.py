"""Solvers against the exact Gaussian flow map (MATH.md §2).

For x0 ~ N(0, I), x1 ~ N(0, Σ): v(x, t) = A(t) x with S(t) = (1-t)² I + t² Σ and
A(t) = (tΣ - (1-t) I) S(t)⁻¹; the exact flow map is x0 -> S(t)^{1/2} x0.
"""

from __future__ import annotations

import math

import pytest
import torch

from causal_delta import solvers
from causal_delta.solvers import dopri5_grid, integrate, sample, time_grid

SIGMA = torch.tensor([[4.0, 1.1], [1.1, 1.0]], dtype=torch.float64)


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    w, q = torch.linalg.eigh(m)
    return (q * w.sqrt()) @ q.T


def _S(t: float) -> torch.Tensor:
    eye = torch.eye(2, dtype=torch.float64)
    return (1 - t) ** 2 * eye + t**2 * SIGMA


def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Batched A(t) x; t of shape (B,). Differentiable in x (forward and reverse mode)."""
    eye = torch.eye(2, dtype=x.dtype)
    tt = t[:, None, None]
    S = (1 - tt) ** 2 * eye + tt**2 * SIGMA.to(x.dtype)
    A = torch.linalg.solve(S, tt * SIGMA.to(x.dtype) - (1 - tt) * eye, left=False)
    return (A @ x[..., None])[..., 0]


def exact(x0: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return x0 @ _sqrtm(_S(t)).T


@pytest.fixture
def x0() -> torch.Tensor:
    return torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _error(x0, method, steps) -> float:
    sol = integrate(velocity, x0, method=method, steps=steps)
    return float((sol.x - exact(x0)).abs().max())


def test_velocity_matches_flow_map_derivative(x0):
    # d/dt S(t)^{1/2} x0 = A(t) S(t)^{1/2} x0 (central difference, float64).
    t, h = 0.37, 1e-5
    deriv = (exact(x0, t + h) - exact(x0, t - h)) / (2 * h)
    v = velocity(exact(x0, t), torch.full((x0.shape[0],), t, dtype=torch.float64))
    torch.testing.assert_close(v, deriv, atol=1e-8, rtol=0)


M = torch.tensor([[0.3, -2.0], [1.5, -0.4]], dtype=torch.float64)


def generic_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = t M x, exact flow x0 -> expm(M / 2) x0 at t = 1."""
    return t[:, None] * (x @ M.T)


def _order(field, exact_x1, x0, method, steps) -> list[float]:
    errors = []
    for n in steps:
        grid = time_grid(n, dtype=torch.float64)  # explicit grid: dopri5 takes exactly n steps
        errors.append(float((integrate(field, x0, method=method, grid=grid).x - exact_x1).abs().max()))
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize(
    ("method", "order", "steps"),
    [("euler", 1, (32, 64, 128)), ("midpoint", 2, (16, 32, 64)), ("rk4", 4, (8, 16, 32)),
     ("dopri5", 5, (8, 16, 32))],
)
def test_convergence_order_generic_linear_ode(x0, method, order, steps):
    # Halving the step divides the error by about 2^order: 2, 4, 16, 32.
    observed = _order(generic_velocity, x0 @ torch.linalg.matrix_exp(M / 2).T, x0, method, steps)
    assert all(abs(p - order) < 0.3 for p in observed), (method, observed)


@pytest.mark.parametrize(
    ("method", "order", "steps"),
    [("euler", 1, (32, 64, 128)), ("midpoint", 3, (16, 32, 64)), ("rk4", 4, (16, 32, 64))],
)
def test_convergence_order_gaussian_flow(x0, method, order, steps):
    # Gaussian closed form: Euler /2, RK4 /16, dopri5 /32 per halving. The explicit midpoint
    # rule is superconvergent on this particular field (observed order 3, error /8; its
    # order-2 error term integrates to zero here), while it shows order 2 on the generic ODE.
    observed = _order(velocity, exact(x0), x0, method, steps)
    assert abs(observed[-1] - order) < 0.3 and observed[0] > order - 0.3, (method, observed)


def test_dopri5_adaptive_reaches_tolerance_cheaper_than_rk4(x0):
    sol = integrate(velocity, x0, method="dopri5", atol=1e-9, rtol=1e-9)
    err = float((sol.x - exact(x0)).abs().max())
    assert err < 1e-6
    assert sol.grid[0] == 0 and sol.grid[-1] == 1
    assert sol.nfe > 6 * (sol.grid.numel() - 1)  # grid search + replay are both counted
    # Smallest uniform RK4 grid reaching the same error.
    lo, hi = 1, 2
    while _error(x0, "rk4", hi) > err:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # smallest n with error <= err
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _error(x0, "rk4", mid) <= err else (mid, hi)
    rk4_nfe = 4 * hi
    grid, grid_nfe = dopri5_grid(velocity, x0, atol=1e-9, rtol=1e-9)
    assert grid_nfe < rk4_nfe, (grid_nfe, rk4_nfe, err)


def test_dopri5_grid_monotone_and_reused(x0):
    grid, _ = dopri5_grid(velocity, x0, atol=1e-7, rtol=1e-7)
    assert grid.dtype == x0.dtype and (grid[1:] > grid[:-1]).all()
    a = integrate(velocity, x0, method="dopri5", grid=grid)
    b = integrate(velocity, x0, method="dopri5", atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(a.x, b.x, atol=1e-12, rtol=0)


def test_backward_integration_inverts(x0):
    fwd = integrate(velocity, x0, method="rk4", steps=40).x
    back = integrate(velocity, fwd, method="rk4", steps=40, t0=1.0, t1=0.0).x
    torch.testing.assert_close(back, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5"])
def test_forward_mode_jvp_through_integrate(x0, method):
    dx = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    grid = time_grid(40, dtype=torch.float64)

    def flow(z):
        return integrate(velocity, z, method=method, grid=grid).x

    out, tangent = torch.func.jvp(flow, (x0,), (dx,))
    torch.testing.assert_close(out, flow(x0), atol=1e-12, rtol=0)
    # The ODE is linear, so the discrete flow is linear: its JVP is the flow of dx.
    torch.testing.assert_close(tangent, flow(dx), atol=1e-12, rtol=0)
    tol = {"euler": 0.3, "midpoint": 1e-3, "rk4": 1e-6, "dopri5": 1e-8}[method]
    torch.testing.assert_close(tangent, dx @ _sqrtm(SIGMA).T, atol=tol, rtol=0)


def test_jacfwd_and_vmap_through_integrate():
    def flow_one(z):
        return integrate(velocity, z[None], method="rk4", steps=50).x[0]

    z = torch.tensor([0.3, -1.2], dtype=torch.float64)
    jac = torch.func.jacfwd(flow_one)(z)
    torch.testing.assert_close(jac, _sqrtm(SIGMA), atol=1e-7, rtol=0)
    batch = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    jacs = torch.func.vmap(torch.func.jacfwd(flow_one))(batch)
    torch.testing.assert_close(jacs, _sqrtm(SIGMA).expand(5, 2, 2), atol=1e-7, rtol=0)


def test_reverse_mode_through_integrate(x0):
    z = x0.clone().requires_grad_(True)
    integrate(velocity, z, method="rk4", steps=30).x.sum().backward()
    torch.testing.assert_close(z.grad, (torch.ones(2, dtype=torch.float64) @ _sqrtm(SIGMA)).expand_as(x0),
                               atol=1e-6, rtol=0)


def test_trajectory_and_nfe(x0):
    sol = integrate(velocity, x0, method="midpoint", steps=10, return_trajectory=True)
    assert sol.trajectory.shape == (11, *x0.shape)
    torch.testing.assert_close(sol.trajectory[0], x0)
    torch.testing.assert_close(sol.trajectory[-1], sol.x)
    assert sol.nfe == 20
    assert sol.grid.shape == (11,)


def test_sample_batches_equal_integrate(x0):
    whole = integrate(velocity, x0, method="rk4", steps=12).x
    batched = sample(velocity, x0, method="rk4", steps=12, batch_size=5)
    torch.testing.assert_close(batched, whole, atol=1e-14, rtol=0)
    assert not batched.requires_grad


def test_float32_input_keeps_dtype():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    sol = integrate(velocity, x, method="rk4", steps=5)
    assert sol.x.dtype == torch.float32 and sol.grid.dtype == torch.float32


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps(x0, steps):
    with pytest.raises(ValueError, match="steps"):
        integrate(velocity, x0, method="euler", steps=steps)
    with pytest.raises(ValueError, match="steps"):
        sample(velocity, x0, steps=steps)


def test_bad_method(x0):
    with pytest.raises(ValueError, match="method"):
        integrate(velocity, x0, method="heun3")
    with pytest.raises(ValueError, match="method"):
        sample(velocity, x0, method="")


def test_bad_grid_and_tolerances(x0):
    with pytest.raises(ValueError, match="grid"):
        integrate(velocity, x0, grid=torch.tensor([0.0, 0.5, 0.4, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="grid"):
        integrate(velocity, x0, grid=torch.tensor([0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="atol"):
        integrate(velocity, x0, method="dopri5", atol=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        sample(velocity, x0, batch_size=0)


def test_public_api():
    for name in solvers.__all__:
        assert hasattr(solvers, name)


def test_forward_mode_jvp_through_adaptive_dopri5(x0):
    dx = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=x0.dtype)
    out, tangent = torch.func.jvp(
        lambda z: integrate(velocity, z, method="dopri5", atol=1e-9, rtol=1e-9).x, (x0,), (dx,))
    torch.testing.assert_close(out, exact(x0), atol=1e-6, rtol=0)
    torch.testing.assert_close(tangent, dx @ _sqrtm(SIGMA).T, atol=1e-6, rtol=0)
