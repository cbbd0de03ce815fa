"""Gaussian-mixture closed forms (Eq. 2-4): drift, Jacobian, responsibilities, density."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from causal_delta.closed_form import GaussianFlow, GaussianMixture

F64 = torch.float64
TIMES = (0.0, 0.25, 0.5, 0.75, 0.99)


def _spd(d: int, g: torch.Generator, jitter: float = 0.3) -> torch.Tensor:
    B = torch.randn(d, d, generator=g, dtype=F64)
    return B @ B.mT / d + jitter * torch.eye(d, dtype=F64)


def random_mixture(K: int, d: int, seed: int = 0) -> GaussianMixture:
    """Random mixture with a non-identity base N(μ0, Σ0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=F64) + 0.2
    covs = torch.stack([_spd(d, g) for _ in range(K)])
    return GaussianMixture(w / w.sum(), 2.0 * torch.randn(K, d, generator=g, dtype=F64), covs,
                           base_mean=0.5 * torch.randn(d, generator=g, dtype=F64), base_cov=_spd(d, g, 0.5))


# ------------------------------------------------------------------ drift
def _importance_drift(mix: GaussianMixture, x: torch.Tensor, t: float, n: int, g: torch.Generator):
    """Independent Monte-Carlo estimate of E[x1 - x0 | x_t = x] and its standard error.

    p(x1 | x_t = x) ∝ p1(x1) p0((x - t x1) / (1 - t)), so draw x1 from the target and weight each
    draw by the base density at the x0 it implies (self-normalised importance sampling). Uses
    only ``sample`` and torch.distributions, none of the closed-form drift code.
    """
    x1 = mix.sample(n, generator=g)
    x0 = (x - t * x1) / (1 - t)
    logw = MultivariateNormal(mix.base_mean, mix.base_cov).log_prob(x0)
    w = torch.softmax(logw, 0).unsqueeze(-1)
    f = x1 - x0
    est = (w * f).sum(0)
    se = ((w**2) * (f - est) ** 2).sum(0).sqrt()
    return est, se


@pytest.mark.parametrize("t", [0.0, 0.3, 0.6, 0.8])
def test_drift_matches_importance_sampling_monte_carlo(t):
    mix = random_mixture(3, 2, seed=1)
    g = torch.Generator().manual_seed(100 + int(10 * t))
    points = torch.tensor([[0.0, 0.0], [1.0, -0.5], [-0.8, 1.2]], dtype=F64) + t * mix.means[0]
    v = mix.velocity(points, t)
    for x, vx in zip(points, v):
        est, se = _importance_drift(mix, x, t, 200_000, g)
        assert ((vx - est).abs() <= 3 * se).all(), (t, x, vx, est, se)


def test_drift_matches_binned_regression_1d():
    # Exact-bin regression in 1-D: mean of x1 - x0 over samples with x_t in a narrow bin.
    mix = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [[[0.5]], [[1.0]]])
    g = torch.Generator().manual_seed(7)
    n, t, x, h = 2_000_000, 0.5, 0.2, 0.01
    x1 = mix.sample(n, generator=g)
    x0 = mix.sample_base(n, generator=g)
    xt = (1 - t) * x0 + t * x1
    keep = (xt - x).abs().squeeze(-1) < h
    f = (x1 - x0)[keep].squeeze(-1)
    est, se = f.mean(), f.std() / math.sqrt(f.numel())
    # Bin bias is O(h²·v''), far below the standard error here.
    assert abs(float(mix.velocity(torch.tensor([x], dtype=F64), t)) - float(est)) <= 3 * float(se)


def test_one_component_equals_gaussian_flow():
    g = torch.Generator().manual_seed(2)
    cov = _spd(4, g)
    mix = GaussianMixture(torch.ones(1), torch.zeros(1, 4), cov[None])
    flow = GaussianFlow(cov)
    x = 3.0 * torch.randn(20, 4, generator=g, dtype=F64)
    for t in TIMES + (1.0,):
        assert (mix.velocity(x, t) - flow.velocity(x, t)).abs().max() < 1e-12
        assert (mix.velocity(x, t) - x @ flow.A(t).mT).abs().max() < 1e-12


def test_endpoint_identities():
    mix = random_mixture(3, 3, seed=3)
    x = 2.0 * torch.randn(50, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    mean1 = (mix.weights[:, None] * mix.means).sum(0)
    assert (mix.velocity(x, 0.0) - (mean1 - x)).abs().max() < 1e-12
    assert (mix.velocity(x, 1.0) - (x - mix.base_mean)).abs().max() < 1e-12
    torch.testing.assert_close(mix.responsibilities(x, 0.0), mix.weights.expand(50, 3), atol=1e-14, rtol=0)


def test_math_md_regression_slope_is_1_2_not_1_6():
    # d = 1, Σ0 = 1, Σ1 = 4, t = 0.5: A = (0.5·4 - 0.5) / (0.25 + 0.25·4) = 1.2 (original code: 1.6).
    mix = GaussianMixture([1.0], [[0.0]], [[[4.0]]])
    assert abs(float(mix.A(0.5)) - 1.2) < 1e-14
    assert abs(float(mix.jacobian(torch.tensor([[0.7]], dtype=F64), 0.5)) - 1.2) < 1e-14
    assert abs(float(mix.velocity(torch.tensor([[1.0]], dtype=F64), 0.5)) - 1.2) < 1e-14
    assert abs(float(GaussianFlow([[4.0]]).A(0.5)) - 1.2) < 1e-14
    # The denominator is (1 - t)² + t² Σ: at t = 0.25, S = 0.5625 + 0.25 = 0.8125.
    assert abs(float(GaussianFlow([[4.0]]).S(0.25)) - 0.8125) < 1e-15


def test_conditional_means_decompose_drift():
    mix = random_mixture(3, 2, seed=4)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    for t in (0.0, 0.3, 1.0):
        v = mix.velocity(x, t)
        torch.testing.assert_close(mix.cond_mean_x1(x, t) - mix.cond_mean_x0(x, t), v, atol=1e-12, rtol=0)
        c1 = mix.cond_mean_x1(x, t, per_component=True)
        assert c1.shape == (10, 3, 2) and mix.cond_mean_x0(x, t, per_component=True).shape == (10, 3, 2)
        gam = mix.responsibilities(x, t)
        torch.testing.assert_close((gam.unsqueeze(-1) * c1).sum(-2), mix.cond_mean_x1(x, t))
    # t = 1: E[x1 | x_1 = x] = x; t = 0: E[x0 | x_0 = x] = x.
    torch.testing.assert_close(mix.cond_mean_x1(x, 1.0), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(mix.cond_mean_x0(x, 0.0), x, atol=1e-12, rtol=0)


# --------------------------------------------------------------- Jacobian
@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("d", [1, 2, 7])
def test_analytic_jacobian_matches_jacrev(K, d):
    mix = random_mixture(K, d, seed=10 * K + d)
    x = 1.5 * torch.randn(8, d, generator=torch.Generator().manual_seed(d), dtype=F64)
    for t in TIMES:
        J = mix.jacobian(x, t)
        J_ad = torch.func.vmap(torch.func.jacrev(lambda xi: mix.velocity(xi, t)))(x)
        assert J.shape == (8, d, d)
        assert (J - J_ad).abs().max() < 1e-10, (K, d, t)


def test_jacobian_per_point_time_and_batch_shapes():
    mix = random_mixture(3, 2, seed=5)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, 2, generator=g, dtype=F64)
    tb = torch.rand(4, 6, generator=g, dtype=F64)
    J = mix.jacobian(x, tb)
    assert J.shape == (4, 6, 2, 2)
    for i, j in [(0, 0), (3, 5), (2, 1)]:
        torch.testing.assert_close(J[i, j], mix.jacobian(x[i, j], float(tb[i, j])), atol=1e-13, rtol=0)
    # Per-point times through jacrev (the solvers' (B,) convention).
    xb, tt = x[0], tb[0]
    J_ad = torch.func.jacrev(lambda z: mix.velocity(z, tt).sum(0))(xb).permute(1, 0, 2)
    assert (mix.jacobian(xb, tt) - J_ad).abs().max() < 1e-10
    v, J2 = mix.velocity_and_jacobian(x, 0.4)
    torch.testing.assert_close(v, mix.velocity(x, 0.4))
    torch.testing.assert_close(J2, mix.jacobian(x, 0.4))
    # Matrices keep the shape of a tensor t, even when its entries are equal.
    same = torch.full((4,), 0.3, dtype=F64)
    assert mix.A(same).shape == (4, 3, 2, 2) and mix.S(same).shape == (4, 3, 2, 2)
    assert mix.component_means(same).shape == (4, 3, 2)
    torch.testing.assert_close(mix.A(same)[2], mix.A(0.3))
    torch.testing.assert_close(mix.jacobian(x[0], tb[0, :1].expand(6)), mix.jacobian(x[0], float(tb[0, 0])))


def test_drift_through_solver_supports_forward_mode():
    from causal_delta.solvers import integrate

    mix = random_mixture(3, 2, seed=12)
    x0 = mix.sample_base(6, generator=torch.Generator().manual_seed(12))

    def generator_map(z):
        return integrate(mix.velocity, z, method="rk4", steps=20).x

    J = torch.func.jacfwd(lambda z: generator_map(z[None])[0])(x0[0])
    eps = 1e-6
    cols = [(generator_map(x0[:1] + eps * e) - generator_map(x0[:1] - eps * e))[0] / (2 * eps)
            for e in torch.eye(2, dtype=F64)]
    torch.testing.assert_close(J, torch.stack(cols, -1), atol=1e-7, rtol=0)
    assert torch.isfinite(generator_map(x0)).all()


def test_forward_jvp_matches_torch_func_jvp():
    mix = random_mixture(3, 4, seed=6)
    g = torch.Generator().manual_seed(6)
    x, dx = torch.randn(9, 4, generator=g, dtype=F64), torch.randn(9, 4, generator=g, dtype=F64)
    for t in (0.0, 0.5, torch.full((9,), 0.7, dtype=F64), torch.rand(9, generator=g, dtype=F64)):
        v, jv = mix.forward_jvp(x, t, dx)
        v_ref, jv_ref = torch.func.jvp(lambda z: mix.velocity(z, t), (x,), (dx,))
        torch.testing.assert_close(v, v_ref, atol=1e-13, rtol=0)
        torch.testing.assert_close(jv, jv_ref, atol=1e-12, rtol=0)


def test_intervention_jacobian():
    mix = random_mixture(3, 2, seed=7)
    eye = torch.eye(2, dtype=F64)
    for k in range(3):
        torch.testing.assert_close(mix.intervention_jacobian(k, 0.0), -eye, atol=1e-14, rtol=0)
        torch.testing.assert_close(mix.intervention_jacobian(k, 1.0), eye, atol=1e-12, rtol=0)
        t = 0.4
        S = (1 - t) ** 2 * mix.base_cov + t**2 * mix.covs[k]
        torch.testing.assert_close(mix.intervention_jacobian(k, t) @ S, t * mix.covs[k] - (1 - t) * mix.base_cov,
                                   atol=1e-13, rtol=0)
    labels = torch.tensor([2, 0, 1, 2])
    A = mix.A(0.4)
    torch.testing.assert_close(mix.intervention_jacobian(labels, 0.4), A[labels])
    tb = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=F64)
    Jb = mix.intervention_jacobian(labels, tb)
    assert Jb.shape == (4, 2, 2)
    torch.testing.assert_close(Jb[3], mix.intervention_jacobian(2, 0.9))
    assert mix.intervention_jacobian(1, tb).shape == (4, 2, 2)
    # With one component the intervention and the full Jacobian coincide.
    one = GaussianMixture([1.0], mix.means[:1], mix.covs[:1], mix.base_mean, mix.base_cov)
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(one.jacobian(x, 0.3), one.intervention_jacobian(0, 0.3).expand(5, 2, 2),
                               atol=1e-13, rtol=0)


# ------------------------------------------------------- responsibilities
def test_responsibilities_stable_far_away():
    mix = GaussianMixture(torch.ones(3) / 3, [[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]],
                          torch.stack([torch.eye(2), 0.5 * torch.eye(2), 2.0 * torch.eye(2)]))
    x = torch.tensor([[40.0, 40.0], [1e3, 0.0], [-1e3, 1e3], [0.0, -1e3]], dtype=F64)
    for t in TIMES + (1.0,):
        gam = mix.responsibilities(x, t)
        assert torch.isfinite(gam).all()
        torch.testing.assert_close(gam.sum(-1), torch.ones(4, dtype=F64), atol=1e-12, rtol=0)
        assert torch.isfinite(mix.velocity(x, t)).all() and torch.isfinite(mix.jacobian(x, t)).all()
        assert torch.isfinite(mix.log_prob(x, t)).all()
    assert torch.isfinite(mix.responsibilities(x, 0.5, log=True)).all()


def test_responsibilities_stable_in_high_dimension():
    d = 1000
    g = torch.Generator().manual_seed(8)
    covs = torch.stack([torch.diag(0.5 + torch.rand(d, generator=g, dtype=F64)) for _ in range(3)])
    mix = GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), torch.randn(3, d, generator=g, dtype=F64), covs)
    x = torch.randn(4, d, generator=g, dtype=F64)
    x[1] *= 1e3 / x[1].norm()
    for t in (0.25, 0.99):
        gam = mix.responsibilities(x, t)
        assert torch.isfinite(gam).all()
        torch.testing.assert_close(gam.sum(-1), torch.ones(4, dtype=F64), atol=1e-12, rtol=0)
        assert torch.isfinite(mix.velocity(x, t)).all()


# ---------------------------------------------------------- density, score
def test_log_prob_endpoints_and_score():
    mix = random_mixture(3, 2, seed=9)
    x = 2.0 * torch.randn(30, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    target = MixtureSameFamily(Categorical(probs=mix.weights), MultivariateNormal(mix.means, mix.covs))
    torch.testing.assert_close(mix.log_prob(x, 1.0), target.log_prob(x), atol=1e-12, rtol=0)
    base = MultivariateNormal(mix.base_mean, mix.base_cov)
    torch.testing.assert_close(mix.log_prob(x, 0.0), base.log_prob(x), atol=1e-12, rtol=0)
    for t in (0.0, 0.4, 0.99):
        xs = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob(xs, t).sum(), xs)
        torch.testing.assert_close(mix.score(x, t), grad, atol=1e-11, rtol=0)


def test_sampling_moments_and_reproducibility():
    mix = random_mixture(3, 2, seed=11)
    x, labels = mix.sample(200_000, generator=torch.Generator().manual_seed(0), return_labels=True)
    assert x.shape == (200_000, 2) and x.dtype == F64 and labels.shape == (200_000,)
    mean = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None, None] * (mix.covs + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    assert (x.mean(0) - mean).abs().max() < 5 * (cov.diagonal().max() / 200_000) ** 0.5
    assert (torch.cov(x.T) - cov).abs().max() < 0.05
    freq = torch.bincount(labels, minlength=3).to(F64) / 200_000
    assert (freq - mix.weights).abs().max() < 0.01
    again = mix.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    x0 = mix.sample_base(100_000, generator=torch.Generator().manual_seed(1))
    assert (x0.mean(0) - mix.base_mean).abs().max() < 0.02


def test_dtype_follows_points_and_defaults_to_float64():
    mix = GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[[1.0]], [[2.0]]])
    assert mix.dtype == F64 and mix.dim == 1 and mix.n_components == 2
    assert mix.velocity(torch.zeros(3, 1, dtype=torch.float32), 0.5).dtype == torch.float32
    assert mix.to(torch.float32).means.dtype == torch.float32
    assert "GaussianMixture" in repr(mix)


# ------------------------------------------------------------- validation
def test_validation_messages():
    eye = torch.eye(2)
    covs = torch.stack([eye, eye, eye])
    means = torch.zeros(3, 2)
    w = torch.ones(3) / 3
    with pytest.raises(ValueError, match=r"covs\[1\] must be positive-definite, its smallest eigenvalue is -0\.5"):
        GaussianMixture(w, means, torch.stack([eye, torch.diag(torch.tensor([1.0, -0.5])), eye]))
    with pytest.raises(ValueError, match=r"base_cov must be positive-definite, its smallest eigenvalue is 0"):
        GaussianMixture(w, means, covs, base_cov=torch.diag(torch.tensor([1.0, 0.0])))
    with pytest.raises(ValueError, match=r"weights must sum to 1 \(within 1e-06\), got sum 0\.9"):
        GaussianMixture(torch.tensor([0.3, 0.3, 0.3]), means, covs)
    with pytest.raises(ValueError, match=r"weights must be positive, smallest weight is -0\.2"):
        GaussianMixture(torch.tensor([0.6, 0.6, -0.2]), means, covs)
    with pytest.raises(ValueError, match=r"means must have shape \(3, d\)"):
        GaussianMixture(w, torch.zeros(2, 2), covs)
    with pytest.raises(ValueError, match=r"covs must have shape \(3, 2, 2\), got \(3, 3, 3\)"):
        GaussianMixture(w, means, torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match=r"base_mean must have shape \(2\), got \(3,\)"):
        GaussianMixture(w, means, covs, base_mean=torch.zeros(3))
    with pytest.raises(ValueError, match=r"base_cov must have shape \(2, 2\), got \(1, 1\)"):
        GaussianMixture(w, means, covs, base_cov=torch.eye(1))
    with pytest.raises(ValueError, match=r"weights must have shape \(K,\)"):
        GaussianMixture(torch.ones(1, 3) / 3, means, covs)
    mix = GaussianMixture(w, means, covs)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got values in \[-0\.5, 0\.5\]"):
        mix.velocity(torch.zeros(2, 2), torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        mix.jacobian(torch.zeros(2, 2), float("nan"))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\), got \(4, 3\)"):
        mix.jacobian(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"k must be an int in \[0, 2\]"):
        mix.intervention_jacobian(3, 0.5)
    with pytest.raises(ValueError, match=r"k must hold labels in \[0, 2\], got values in \[0, 5\]"):
        mix.intervention_jacobian(torch.tensor([0, 5]), 0.5)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        mix.sample(0)


# ------------------------------------------------- far field (MATH.md §3)
def _shared_cov_mixture(K: int, d: int, seed: int) -> GaussianMixture:
    """Components sharing one covariance: far out, u_k and b_k grow like |x| but their spreads
    stay O(1), the case where the uncentred Eq. 4 cancels |x|²-sized terms."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=F64) + 0.3
    cov = _spd(d, g, 0.5)
    return GaussianMixture(w / w.sum(), 2.0 * torch.randn(K, d, generator=g, dtype=F64), cov.expand(K, d, d),
                           base_mean=0.5 * torch.randn(d, generator=g, dtype=F64), base_cov=_spd(d, g, 0.5))


def _tie_point(mix: GaussianMixture, t: float, radius: float, seed: int) -> torch.Tensor:
    """A point at distance ~radius where every component has the same log π_k + log N(x | m_k, S)
    (shared S, so each difference l_0 - l_k = a_k·x + c_k is affine in x)."""
    S, m = mix.S(t)[0], mix.component_means(t)
    P = torch.linalg.inv(S)
    a = torch.stack([P @ (m[0] - m[k]) for k in range(1, mix.n_components)])  # (K-1, d)
    c = torch.stack([torch.log(mix.weights[0] / mix.weights[k]) - 0.5 * (m[0] @ P @ m[0] - m[k] @ P @ m[k])
                     for k in range(1, mix.n_components)])
    base = -torch.linalg.pinv(a) @ c  # a x + c = 0, minimum norm
    r = torch.randn(mix.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    Q, _ = torch.linalg.qr(a.mT)
    r = r - Q @ (Q.mT @ r)  # stay on the tie set
    return base + radius * r / r.norm()


@pytest.mark.parametrize("radius", [1e3, 1e5])
@pytest.mark.parametrize("K,d", [(2, 2), (2, 3), (3, 3)])
@pytest.mark.parametrize("t", [0.3, 0.8])
def test_far_field_tie_points_match_50_digit_reference(radius, K, d, t):
    # The uncentred form gave relative errors 4e-12..9e-12 at |x| = 1e3 and 6e-8 at 1e5 on these
    # points; float64 autodiff of the drift shares the cancellation, so the reference is mpmath.
    from mp_reference import mixture_reference

    mix = _shared_cov_mixture(K, d, seed=10 * K + d)
    x = _tie_point(mix, t, radius, seed=d)
    gam_ref, v_ref, J_ref = mixture_reference(mix, x, t)
    assert (gam_ref - 1.0 / K).abs().max() < 1e-3  # really a tie
    # Conditioning floor: moving x by one ulp (relative ~2^-52) moves the log-ratios by ~|x|·2^-52
    # (~1e-11 at 1e5). At a two-way tie J is stationary in γ (it depends on γ1γ2), at a three-way
    # tie it is not; no float64 algorithm can beat the reference's own change under that move.
    flip = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0).to(F64) * math.inf
    gam_p, v_p, J_p = mixture_reference(mix, torch.nextafter(x, flip), t)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    tol_J, tol_v = max(1e-12, 10 * rel(J_p, J_ref)), max(1e-12, 10 * rel(v_p, v_ref))
    if K == 2:
        assert tol_J == 1e-12
    v, J = mix.velocity_and_jacobian(x, t)
    assert rel(J, J_ref) < tol_J and rel(v, v_ref) < tol_v, (rel(J, J_ref), rel(v, v_ref), tol_J)
    dx = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=F64)
    v2, jv = mix.forward_jvp(x, t, dx)
    assert rel(jv, J_ref @ dx) < tol_J and rel(v2, v_ref) < tol_v
    gam_tol = max(1e-12, 10 * float((gam_p - gam_ref).abs().max()))
    torch.testing.assert_close(mix.responsibilities(x, t), gam_ref, atol=gam_tol, rtol=0)
    torch.testing.assert_close(mix.score(x, t), mix.score(x[None], torch.tensor([t], dtype=F64))[0])
