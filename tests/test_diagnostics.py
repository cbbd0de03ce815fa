"""Memorisation diagnostics: MMD against its closed form, per-sample gradient variance against a loop,
Proposition 1 (an exact field has zero gradient variance), copy statistics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from causal_delta.diagnostics import (
    gaussian_mmd2,
    gradient_variance,
    median_bandwidth,
    mmd2_biased,
    mmd2_unbiased,
    nearest_copy_statistics,
    own_pair_statistics,
)


def test_mmd_unbiased_against_closed_form():
    # X ~ N(0, I_2), Y ~ N((0.8, 0), I_2), h = 1.5: the mean of many small-sample estimates is the
    # exact MMD² within 3 standard errors; the V-statistic (diagonal kept) is not.
    g = torch.Generator().manual_seed(0)
    mu2, h, m, reps = torch.tensor([0.8, 0.0]), 1.5, 6, 1000
    exact = gaussian_mmd2(torch.zeros(2), mu2, 1.0, h)
    u, v = [], []
    for _ in range(reps):
        x = torch.randn(m, 2, generator=g, dtype=torch.float64)
        y = torch.randn(m, 2, generator=g, dtype=torch.float64) + mu2
        est, used = mmd2_unbiased(x, y, bandwidth=h)
        assert used == h
        u.append(est)
        k = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * h * h))  # noqa: E731
        v.append(float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))
    u, v = np.array(u), np.array(v)
    se = u.std(ddof=1) / math.sqrt(reps)
    assert abs(u.mean() - exact) < 3 * se, (u.mean(), exact, se)
    assert abs(v.mean() - exact) > 3 * se  # the biased estimator is caught: the test has power


def test_closed_form_matches_monte_carlo_kernel_mean():
    # an independent route to E k(X, Y): plain Monte Carlo of the kernel, 3 SE
    g = torch.Generator().manual_seed(1)
    d, s, h = 3, 0.7, 1.2
    mu1, mu2 = torch.zeros(d), torch.tensor([0.5, -0.3, 0.2])
    n = 200_000
    x = mu1 + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    xp = mu1 + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = mu2 + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    yp = mu2 + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    k = lambda a, b: torch.exp(-(a - b).square().sum(1) / (2 * h * h))  # noqa: E731
    terms = k(x, xp) + k(y, yp) - 2 * k(x, y)
    se = float(terms.std()) / math.sqrt(n)
    assert abs(float(terms.mean()) - gaussian_mmd2(mu1, mu2, s, h)) < 3 * se


def test_median_bandwidth_and_errors():
    pdist = pytest.importorskip("scipy.spatial.distance", reason="the reference distances are scipy's").pdist

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 4, generator=g), torch.randn(20, 4, generator=g) + 1
    want = float(np.median(pdist(torch.cat([x, y]).double().numpy())))
    assert median_bandwidth(x, y) == pytest.approx(want, rel=1e-12)
    _, h = mmd2_unbiased(x, y)
    assert h == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd2_unbiased(x[:1], y)
    with pytest.raises(ValueError, match="same event size"):
        mmd2_unbiased(x, y[:, :3])
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        mmd2_unbiased(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        mmd2_unbiased(x, torch.full((3, 4), math.nan))
    with pytest.raises(ValueError, match="all points coincide"):
        median_bandwidth(torch.ones(5, 2))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x, t):
        return self.b(torch.tanh(self.a(torch.cat([x, t[:, None]], 1))))


def test_per_sample_gradient_variance_matches_a_loop():
    torch.manual_seed(0)
    net = _Net().double()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(10, 2, generator=g, dtype=torch.float64)
    x1 = torch.randn(10, 2, generator=g, dtype=torch.float64) + 3
    res = gradient_variance(net, x0, x1, [0.3, 0.8], chunk=4)  # chunks of 4, 4, 2
    for j, t in enumerate((0.3, 0.8)):
        grads = []
        for i in range(10):
            net.zero_grad()
            xt = (1 - t) * x0[i:i + 1] + t * x1[i:i + 1]
            loss = (net(xt, torch.full((1,), t, dtype=torch.float64)) - (x1 - x0)[i:i + 1]).square().mean()
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        G = torch.stack(grads)
        want = float((G - G.mean(0)).square().sum() / 9)
        assert res.trace[j].item() == pytest.approx(want, rel=1e-10)
        assert res.mean_grad_sq[j].item() == pytest.approx(float(G.mean(0).square().sum()), rel=1e-10)
    assert res.n == 10 and res.n_params == sum(p.numel() for p in net.parameters())


class ExactPairs(nn.Module):
    """v(x, t) = a · Σ_i w_i(x, t) (x1_i - x0_i) + W [x, t] + b with w = softmax(-‖x - x_{t,i}‖² / τ).

    At a = 1, W = 0, b = 0 it equals x1_i - x0_i on line i (the other weights are exp(-huge) = 0),
    so every pair is fitted exactly (Proposition 1 of arXiv 2510.18118).
    """

    def __init__(self, x0, x1, tau=1e-4):
        super().__init__()
        self.register_buffer("x0", x0)
        self.register_buffer("x1", x1)
        self.tau = tau
        self.a = nn.Parameter(torch.ones((), dtype=x0.dtype))
        self.lin = nn.Linear(x0.shape[1] + 1, x0.shape[1], dtype=x0.dtype)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, x, t):
        pts = (1 - t)[:, None, None] * self.x0 + t[:, None, None] * self.x1  # (B, N, d)
        w = torch.softmax(-(x[:, None, :] - pts).square().sum(-1) / self.tau, dim=1)
        return self.a * w @ (self.x1 - self.x0) + self.lin(torch.cat([x, t[:, None]], 1))


def test_proposition_1_exact_field_has_zero_gradient_variance():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(12, 5, generator=g, dtype=torch.float64)
    x1 = torch.randn(12, 5, generator=g, dtype=torch.float64) + 5
    field = ExactPairs(x0, x1)
    ts = [0.0, 0.2, 0.5, 0.7, 1.0]
    res = gradient_variance(field, x0, x1, ts)
    assert res.loss.abs().max() < 1e-25 and res.trace.abs().max() < 1e-25, (res.loss, res.trace)
    # the same field under path noise, or on lines that cross, is not exact: the test can fail
    noisy = gradient_variance(field, x0, x1, ts, sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert (noisy.trace[1:-1] > 1e-3).all()
    c0 = torch.randn(12, 2, generator=g, dtype=torch.float64)
    cross = gradient_variance(ExactPairs(c0, 5 - c0), c0, 5 - c0, [0.4, 0.5])
    assert cross.trace[0] < 1e-20 < 1.0 < cross.trace[1]  # exact off t = ½, not at the crossing


def test_gradient_variance_errors():
    net = _Net()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="same shape"):
        gradient_variance(net, x, x[:3], [0.5])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        gradient_variance(net, x[:1], x[:1], [0.5])
    with pytest.raises(ValueError, match=r"times in \[0, 1\]"):
        gradient_variance(net, x, x, [1.5])
    with pytest.raises(ValueError, match="sigma"):
        gradient_variance(net, x, x, [0.5], sigma=-1.0)


def test_copy_statistics():
    g = torch.Generator().manual_seed(5)
    targets = torch.randn(20, 3, generator=g, dtype=torch.float64) * 5
    copies = targets + 1e-3 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    own = own_pair_statistics(copies, targets)
    assert own["fraction"] == 1.0 and own["median_own_over_other"] < 1e-2
    shuffled = own_pair_statistics(copies.roll(1, 0), targets)
    assert shuffled["fraction"] == 0.0
    near = nearest_copy_statistics(copies, targets)
    assert near["median_ratio"] < 1e-2 and near["fraction_below_1/3"] == 1.0
    diverged = copies.clone()
    diverged[0] = math.inf
    stats = own_pair_statistics(diverged, targets)
    assert stats["fraction"] == pytest.approx(19 / 20) and stats["nonfinite"] == 1
    assert nearest_copy_statistics(diverged, targets)["nonfinite"] == 1
    with pytest.raises(ValueError, match="row for row"):
        own_pair_statistics(copies[:5], targets)


def test_real_data_baseline_and_one_line_summary_for_the_independent_coupling():
    from causal_delta.diagnostics import one_line_summary, real_copy_statistics

    g = torch.Generator().manual_seed(7)
    targets = torch.randn(40, 6, generator=g, dtype=torch.float64)
    real = real_copy_statistics(targets)
    # leave-one-out by a plain loop: each row against the 39 others
    ratios = []
    for i in range(40):
        d = sorted(float((targets[i] - targets[j]).norm()) for j in range(40) if j != i)
        ratios.append(d[0] / d[1])
    assert real["median_ratio"] == pytest.approx(sorted(ratios)[19], rel=1e-12)  # torch.median: the lower middle
    assert real["fraction_below_1/3"] == pytest.approx(np.mean(np.array(ratios) < 1 / 3))
    assert "leave-one-out" in real["reference"]
    held = torch.randn(10, 6, generator=g, dtype=torch.float64)
    assert real_copy_statistics(targets, held)["median_ratio"] == pytest.approx(
        nearest_copy_statistics(held, targets)["median_ratio"])
    with pytest.raises(ValueError, match="at least 3 rows"):
        real_copy_statistics(targets[:2])
    # independent coupling (no sources): own-pair is the copy fraction of fresh samples, beside real data's
    copies = targets[:20] + 1e-4 * torch.randn(20, 6, generator=g, dtype=torch.float64)
    report = {"fresh": nearest_copy_statistics(copies, targets), "real": real,
              "jacobian": {"fresh": {"k": 5, "mean_rank": 2.0}}}
    line = one_line_summary(report)
    assert line.startswith("own-pair (copies, d1/d2 < 1/3) 100.0% (real data ")
    assert f"(real data {real['median_ratio']:.3f})" in line and line.endswith("Jacobian rank (fresh, of top 5) 2.0")
    report["own_pair"] = {"fraction": 0.5}  # fixed coupling: the own-pair fraction itself
    assert one_line_summary(report).startswith("own-pair 50.0% / nearest-copy ratio (fresh, median) 0.000")


def test_biased_mmd_and_paired_copies():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    assert mmd2_biased(x, x.clone(), 1.0) == pytest.approx(0.0, abs=1e-15)
    u, _ = mmd2_unbiased(x, x.clone(), 1.0)
    k = torch.exp(-torch.cdist(x, x).square() / 2)
    S, n = float(k.sum()), 40
    assert u == pytest.approx(2 * ((S - n) / (n * (n - 1)) - S / n**2), rel=1e-10)
    assert u < 0  # the U-statistic of paired copies is negative (see causal_delta.diagnostics.mmd)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2_biased(x, x, -1.0)


def test_jacobian_spectra_on_image_shaped_points_match_the_full_jacobian():
    from causal_delta.diagnostics import jacobian_spectra
    from causal_delta.jvp import jacobian
    from causal_delta.models import build_model
    from causal_delta.paths import VelocityField

    torch.manual_seed(0)
    flow = VelocityField(build_model("mlp-small", event_shape=(1, 2, 2), hidden=16, depth=2)).double().eval()
    pts = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    res = jacobian_spectra(flow, pts, k=4, method="rk4", steps=8)  # (1, H, W) keeps its channel
    want = torch.linalg.svdvals(jacobian(flow, pts, method="rk4", steps=8))
    torch.testing.assert_close(torch.tensor(res["values"], dtype=torch.float64), want, rtol=1e-8, atol=1e-10)
    assert res["mean_rank"] == 4.0 and res["n"] == 2
