"""Flux Matching (causal_delta.flux): reference score, OU dynamics, divergence, residual, loss, fields."""

import math

import pytest
import torch

from causal_delta.closed_form import GaussianMixture
from causal_delta.datasets.synthetic import DEFAULT_MIXTURE
from causal_delta.flux import (
    MaskedMLP,
    TimeFree,
    annealed_langevin,
    block_triangular_mask,
    curl_2d,
    divergence,
    dsm_loss,
    field_jacobian,
    fit_field,
    flux_matching_loss,
    kde_score,
    kde_score_divergence,
    kde_score_jvp,
    langevin,
    mean_abs_curl,
    mmd2,
    ou_simulate,
    ou_step,
    stein_residual,
)
from causal_delta.models import build_model

R90 = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)


def _kde_logp(z, ref, sigma):
    d2 = (z[:, None, :] - ref[None]).pow(2).sum(-1)
    return torch.logsumexp(-d2 / (2 * sigma**2), dim=-1)


def test_kde_score_jacobian_divergence_match_autodiff():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(7, 3, generator=g, dtype=torch.float64)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sigma = 0.7
    auto = torch.func.vmap(torch.func.grad(lambda p: _kde_logp(p[None], ref, sigma)[0]))(z)
    assert torch.allclose(kde_score(z, ref, sigma), auto, atol=1e-12)
    jac = torch.func.vmap(torch.func.jacfwd(lambda p: kde_score(p[None], ref, sigma)[0]))(z)
    v = torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(kde_score_jvp(z, v, ref, sigma), (jac @ v[..., None])[..., 0], atol=1e-10)
    assert torch.allclose(kde_score_divergence(z, ref, sigma), jac.diagonal(dim1=-2, dim2=-1).sum(-1), atol=1e-10)


def test_ou_one_kernel_is_exact_in_mean_and_variance():
    # One-point reference: the KDE is N(c, σ² I) and the OU is exact for any number of steps.
    g = torch.Generator().manual_seed(1)
    c = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    sigma, t, n = 0.5, 0.8, 20000
    z0 = torch.tensor([[3.0, 0.5]], dtype=torch.float64).expand(n, 2)
    for steps in (1, 4):
        zt = ou_simulate(z0, c, sigma, t, steps=steps, generator=g)
        mean = c + math.exp(-t) * (z0[0] - c)
        var = sigma**2 * (1 - math.exp(-2 * t))
        se_mean = math.sqrt(var / n)
        assert (zt.mean(0) - mean[0]).abs().max() < 4 * se_mean
        se_var = var * math.sqrt(2 / n)
        assert (zt.var(0) - var).abs().max() < 4 * se_var
    zero = ou_step(z0[:3], c, sigma, 0.0, torch.randn(3, 2, generator=g, dtype=torch.float64))
    assert torch.equal(zero, z0[:3])


def _mlp64(d, seed=0):
    torch.manual_seed(seed)
    return TimeFree(build_model("mlp-small", event_shape=(d,), hidden=16, depth=2).double())


def test_field_jacobian_and_double_differentiable_jvp():
    g = torch.Generator().manual_seed(2)
    f = _mlp64(3)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    auto = torch.func.vmap(torch.func.jacrev(lambda p: f(p[None])[0]))(x)
    assert torch.allclose(field_jacobian(f, x), auto, atol=1e-12)
    # ∇_x (εᵀ J ε) through the hand-written JVP equals the reverse-over-reverse route
    eps = torch.randint(0, 2, (4, 3), generator=g).double() * 2 - 1
    xa = x.clone().requires_grad_(True)
    ga = torch.autograd.grad(divergence(f, xa, method="forward", probes=eps).sum(), xa)[0]
    xb = x.clone().requires_grad_(True)
    gb = torch.autograd.grad(divergence(f, xb, method="backward", probes=eps).sum(), xb)[0]
    assert torch.allclose(ga, gb, atol=1e-10)


def test_hutchinson_divergence_is_unbiased_in_d5():
    g = torch.Generator().manual_seed(3)
    f = _mlp64(5, seed=3)
    x = torch.randn(1, 5, generator=g, dtype=torch.float64)
    exact = float(divergence(f, x, method="exact")[0].detach())
    n = 4000
    xs = x.expand(n, 5)
    est = divergence(f, xs, method="forward", generator=g).detach()
    se = float(est.std()) / math.sqrt(n)
    assert se > 0  # a single probe is noisy; the test is about the mean
    assert abs(float(est.mean()) - exact) < 3 * se
    # same probes, both modes: identical estimates
    eps = torch.randint(0, 2, (n, 5), generator=g).double() * 2 - 1
    assert torch.allclose(divergence(f, xs, method="forward", probes=eps),
                          divergence(f, xs, method="backward", probes=eps), atol=1e-10)


def _mixture():
    return GaussianMixture(DEFAULT_MIXTURE["weights"], DEFAULT_MIXTURE["means"], DEFAULT_MIXTURE["covs"])


def test_stein_residual_vanishes_on_distribution_preserving_fields():
    mix = _mixture()
    g = torch.Generator().manual_seed(4)
    x = mix.sample(200, generator=g)
    score = lambda y: mix.score(y, 1.0)  # noqa: E731
    c = torch.tensor([[0.3, -0.2]], dtype=torch.float64)

    def psi_grad(y):  # ψ = exp(-|y - a|²/8) sin(y_1): smooth, not radial
        a = torch.tensor([0.5, 1.0], dtype=torch.float64)
        e = torch.exp(-(y - a).pow(2).sum(-1, keepdim=True) / 8)
        sin = torch.sin(y[:, :1])
        grad = -(y - a) / 4 * e * sin
        return grad + torch.cat([e * torch.cos(y[:, :1]), torch.zeros_like(sin)], dim=-1)

    preserving = {
        "R90 grad psi / p": lambda y: psi_grad(y) @ R90.T / mix.log_prob(y, 1.0).exp()[:, None],
        "R90 s": lambda y: score(y) @ R90.T,
    }
    violating = {"constant drift": lambda y: c.expand_as(y), "s (u = s, f = 2s)": score}
    viol = {k: stein_residual(u, x, score).abs().mean() for k, u in violating.items()}
    scale = min(viol.values())
    assert scale > 0.1
    for name, u in preserving.items():
        r = stein_residual(u, x, score)
        assert float(r.abs().max()) <= 1e-3 * float(scale), name
        assert float(r.abs().max()) < 1e-8, name  # float64: exact to round-off


def test_flux_loss_gradient_is_zero_on_preserving_kde_fields_and_not_on_violating():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    sigma = 0.5
    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0, 0.5], dtype=torch.float64)
    s = lambda y: kde_score(y, x, sigma)  # noqa: E731
    families = {"rotation": lambda y: s(y) + theta * s(y) @ R90.T,
                "drift": lambda y: s(y) + theta * c}
    grads = {}
    for name, f in families.items():
        for sampling in ("uniform", "exponential"):
            vals = []
            for seed in range(20):
                gen = torch.Generator().manual_seed(seed)
                loss = flux_matching_loss(f, x, sigma, method="exact", time_sampling=sampling, generator=gen)
                vals.append(float(torch.autograd.grad(loss, theta)[0]))
            grads[name, sampling] = torch.tensor(vals, dtype=torch.float64)
    for sampling in ("uniform", "exponential"):
        assert grads["rotation", sampling].abs().max() < 1e-8
        drift = grads["drift", sampling]
        # J(θ) grows with |θ| along a violating direction: the mean gradient is positive
        assert drift.mean() > 3 * drift.std() / math.sqrt(drift.numel())
    # importance sampling of t changes the variance, not the expectation
    u, e = grads["drift", "uniform"], grads["drift", "exponential"]
    se = math.sqrt(u.var() / u.numel() + e.var() / e.numel())
    assert abs(float(u.mean() - e.mean())) < 3 * se


def test_dsm_loss_minimiser_is_the_smoothed_score():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4000, 1, generator=g, dtype=torch.float64) * 2.0  # N(0, 4); smoothed N(0, 4 + σ²)
    sigma = 0.5
    losses = {}
    for a in (4 + sigma**2, 3.0, 6.0):
        gen = torch.Generator().manual_seed(7)
        losses[a] = float(dsm_loss(lambda y: -y / a, x, sigma, generator=gen))
    assert losses[4 + sigma**2] < losses[3.0] and losses[4 + sigma**2] < losses[6.0]


def test_masked_mlp_jacobian_entries_are_exactly_zero():
    from causal_delta.jvp import jacobian

    torch.manual_seed(8)
    blocks = (0, 1, 1, 2)
    f = MaskedMLP(blocks, hidden=12, depth=2).eval()
    mask = block_triangular_mask(blocks)
    x = torch.randn(6, 4)
    J = field_jacobian(f, x)
    assert torch.count_nonzero(J * (1 - mask)) == 0
    assert torch.all((J * mask).abs().sum(0)[mask.bool()] > 0)  # allowed entries are used
    auto = torch.func.vmap(torch.func.jacrev(lambda p: f(p[None])[0]))(x)
    assert torch.allclose(J, auto, atol=1e-6)
    # the flow map of the field inherits the triangular structure (library JVP tools)
    G = jacobian(f, x, method="rk4", steps=5)
    assert torch.count_nonzero(G * (1 - mask)) == 0


def test_langevin_stationary_variance_matches_the_discrete_chain():
    g = torch.Generator().manual_seed(9)
    v, eta, n = 0.5, 0.1, 20000
    out = langevin(lambda y: -y / v, torch.zeros(n, 1, dtype=torch.float64), steps=200, eta=eta, generator=g)
    a = 1 - eta / (2 * v)
    var = eta / (1 - a * a)  # exact stationary variance of the Euler–Maruyama chain
    assert out.nfe == 200
    assert abs(float(out.x.var()) - var) < 4 * var * math.sqrt(2 / n)
    ann = annealed_langevin(lambda y, s: -y / (v + s[:, None] ** 2), torch.zeros(5, 1, dtype=torch.float64),
                            [1.0, 0.5, 0.1], steps_per_level=7, eta=0.01, generator=g)
    assert ann.nfe == 21 and torch.isfinite(ann.x).all()


def test_langevin_blocks_of_rows_are_the_rows_of_the_full_run():
    # A block of chains draws the noise of all rows and keeps its own: concatenated blocks are
    # the full run (how the flux experiment splits its chains over torchrun ranks).
    field = lambda y: -y**3 + torch.sin(y.flip(-1))  # noqa: E731  nonlinear, couples coordinates
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    full = langevin(field, x, steps=30, eta=0.05, generator=torch.Generator().manual_seed(12)).x
    parts = [langevin(field, x, steps=30, eta=0.05, generator=torch.Generator().manual_seed(12), rows=r).x
             for r in (range(0, 3), range(3, 3), range(3, 7))]
    assert [len(p) for p in parts] == [3, 0, 4]
    assert torch.equal(torch.cat(parts), full)
    wrong = langevin(field, x[3:], steps=30, eta=0.05, generator=torch.Generator().manual_seed(12)).x
    assert not torch.allclose(wrong, full[3:])  # without rows the block would draw other noise


def test_metrics_curl_and_mmd():
    rot = lambda y: y @ R90.T.to(y.dtype)  # noqa: E731  f = (-y, x): curl 2
    pts = torch.randn(10, 2)
    assert torch.allclose(curl_2d(rot, pts), torch.full((10,), 2.0))
    assert abs(mean_abs_curl(lambda y: -y) - 0.0) < 1e-7  # a gradient field
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    assert abs(mmd2(a, b)) < 0.02 < mmd2(a, b + 1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: kde_score(torch.zeros(3, 2), torch.zeros(4, 3), 1.0), r"z must have shape \(N, 3\)"),
    (lambda: kde_score(torch.zeros(3, 2), torch.zeros(4, 2), 0.0), "sigma must be a finite number > 0"),
    (lambda: divergence(lambda y: y, torch.zeros(3, 2), method="fd"), "method must be one of"),
    (lambda: flux_matching_loss(lambda y: y, torch.zeros(3), 1.0), r"x must be a tensor of shape \(B, d\)"),
    (lambda: flux_matching_loss(lambda y: y, torch.zeros(3, 2), 1.0, pairing="x"), "pairing must be one of"),
    (lambda: flux_matching_loss(lambda y: y, torch.zeros(3, 2), 1.0, horizon=0), "horizon must be a number > 0"),
    (lambda: flux_matching_loss(lambda y: y, torch.zeros(3, 2), 1.0, time_sampling="log"), "time_sampling must be one"),
    (lambda: langevin(lambda y: y, torch.zeros(3, 2), eta=-1.0), "eta must be a finite number > 0"),
    (lambda: langevin(lambda y: y, torch.zeros(3, 2), rows=range(2, 5)), "rows must be a contiguous range"),
    (lambda: annealed_langevin(lambda y, s: y, torch.zeros(3, 2), [0.1, 1.0]), "sigmas must be a non-empty decreasing"),
    (lambda: block_triangular_mask([0, -1]), "blocks must be a non-empty sequence"),
    (lambda: mmd2(torch.zeros(1, 2), torch.zeros(3, 2)), "x and y must have shapes"),
    (lambda: fit_field(torch.nn.Linear(2, 2), torch.zeros(4, 2), lr_schedule="step"), "lr_schedule must be"),
    (lambda: fit_field(torch.nn.Linear(2, 2), torch.zeros(4, 2), objective="sm"), "objective must be one of"),
])
def test_bad_arguments_name_themselves(call, match):
    with pytest.raises(ValueError, match=match):
        call()
