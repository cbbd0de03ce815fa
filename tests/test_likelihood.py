"""Log-likelihood by the instantaneous change of variables (causal_delta.likelihood, CLI likelihood).

Ground truth: the GaussianFlow N(0, I) -> N(0, Σ) carries N(0, I) exactly onto N(0, Σ), so
log p_1(x) is the closed-form Gaussian log-density, and div v(x, t) = tr A(t).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from causal_delta.cli import main
from causal_delta.closed_form import GaussianFlow, GaussianMixture
from causal_delta.likelihood import (
    LogLikelihood,
    dequantize,
    divergence,
    log_likelihood,
    standard_normal_log_prob,
)

F64 = torch.float64


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def flow(gen):
    B = torch.randn(3, 3, generator=gen, dtype=F64)
    return GaussianFlow(B @ B.T + 0.3 * torch.eye(3, dtype=F64))


def _gaussian_log_density(flow: GaussianFlow, x):
    return torch.distributions.MultivariateNormal(torch.zeros(flow.dim, dtype=F64), flow.cov).log_prob(x)


def _data(flow, n, gen):
    return torch.randn(n, flow.dim, generator=gen, dtype=F64) @ torch.linalg.cholesky(flow.cov).T


def test_exact_divergence_is_trace_of_drift(flow, gen):
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0], dtype=F64)
    got = divergence(flow.velocity, x, t)
    want = torch.stack([torch.trace(flow.A(float(s))) for s in t])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_hutchinson_divergence_unbiased(flow, gen):
    # Rademacher: E[εᵀAε] = tr A; per-probe variance 2 Σ_{i≠j} A_ij² (A symmetric).
    P, t = 4000, 0.7
    x = torch.randn(1, 3, generator=gen, dtype=F64).expand(P, 3)  # one point, P independent probes
    est = divergence(flow.velocity, x, torch.full((P,), t, dtype=F64), method="hutchinson", generator=gen)
    A = flow.A(t)
    var = 2.0 * (A.pow(2).sum() - A.diagonal().pow(2).sum())
    assert abs(float(est.mean() - torch.trace(A))) < 3.0 * math.sqrt(float(var) / P)
    torch.testing.assert_close(est.var(), var, rtol=0.15, atol=0.0)


@pytest.mark.parametrize("method,kw", [("rk4", {"steps": 200}), ("dopri5", {"atol": 1e-11, "rtol": 1e-11})])
def test_exact_matches_closed_form_gaussian(flow, gen, method, kw):
    x = _data(flow, 64, gen)
    res = log_likelihood(flow.velocity, x, method=method, batch_size=64, **kw)
    want = _gaussian_log_density(flow, x)
    assert (res.log_prob - want).abs().max() < 1e-8
    # the pieces: x(0) = Σ^{-1/2} x (exact inverse flow) and ∫ div v dt = ½ log det Σ
    torch.testing.assert_close(res.x0, torch.linalg.solve(flow.flow_jacobian(1.0), x.T).T, rtol=0, atol=1e-8)
    torch.testing.assert_close(res.divergence_integral, torch.full((64,), 0.5 * float(torch.logdet(flow.cov)),
                                                                   dtype=F64), rtol=0, atol=1e-8)
    torch.testing.assert_close(res.log_prob, res.log_prob_source - res.divergence_integral, rtol=0, atol=1e-14)


def test_exact_matches_gaussian_mixture_density(gen):
    # a nonlinear field (divergence varies along each path): the mixture flow's own log p_1
    mix = GaussianMixture([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]],
                          [[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]])

    class Field:  # the mixture's analytic forward_jvp (exact Jacobian), so no autodiff per stage
        __call__, forward_jvp = staticmethod(mix.velocity), staticmethod(mix.forward_jvp)

    x = 1.2 * torch.randn(16, 2, generator=gen, dtype=F64)
    res = log_likelihood(Field(), x, method="dopri5", atol=1e-10, rtol=1e-10)
    assert (res.log_prob - mix.log_prob(x, 1.0)).abs().max() < 1e-8


def test_hutchinson_within_three_se(flow, gen):
    x = _data(flow, 400, gen)
    res = log_likelihood(flow.velocity, x, divergence="hutchinson", probes=2, steps=40, generator=gen)
    diff = res.log_prob - _gaussian_log_density(flow, x)  # probe noise only (RK4 error ~1e-7)
    se = float(diff.std() / math.sqrt(diff.numel()))
    assert se > 1e-3  # the estimator is noisy; a zero spread would mean the probes did nothing
    assert abs(float(diff.mean())) < 3.0 * se
    assert res.probes == 2 and res.divergence == "hutchinson"


def test_summary_bits_per_dim_and_ci(flow, gen):
    x = _data(flow, 50, gen)
    res = log_likelihood(flow.velocity, x, steps=50)
    s = res.summary(level=0.9, bin_width=2 / 255)
    lp = res.log_prob
    mean, se = float(lp.mean()), float(lp.std() / math.sqrt(50))
    assert s["log_likelihood"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert s["log_likelihood"]["se"] == pytest.approx(se, rel=1e-12)
    z = 1.6448536269514722
    assert s["log_likelihood"]["ci"] == pytest.approx([mean - z * se, mean + z * se], rel=1e-9)
    assert s["bits_per_dim"]["mean"] == pytest.approx(-mean / (3 * math.log(2)), rel=1e-12)
    assert s["bits_per_dim"]["ci"][0] < s["bits_per_dim"]["mean"] < s["bits_per_dim"]["ci"][1]
    disc = -(mean + 3 * math.log(2 / 255)) / (3 * math.log(2))
    assert s["bits_per_dim_discrete"]["mean"] == pytest.approx(disc, rel=1e-12)


def test_standard_normal_log_prob_and_dequantize(gen):
    x = torch.randn(7, 2, 3, generator=gen, dtype=F64)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(x).reshape(7, -1).sum(1)
    torch.testing.assert_close(standard_normal_log_prob(x), want, rtol=0, atol=1e-12)
    grid = torch.arange(-4, 5, dtype=F64)[:, None] * 0.25
    y = dequantize(grid.repeat(200, 1), 0.25, gen)
    assert ((y - grid.repeat(200, 1)).abs() <= 0.125).all()
    assert abs(float((y - grid.repeat(200, 1)).var()) - 0.25**2 / 12) < 0.2 * 0.25**2 / 12


def test_model_with_forward_jvp_image_shape(gen):
    # a linear field on images (1, 2, 2) with a hand-written forward_jvp: div = tr W, exactly
    W = torch.randn(4, 4, generator=gen, dtype=F64) * 0.3

    class Field(torch.nn.Module):
        calls = 0

        def forward(self, x, t):
            return (x.reshape(x.shape[0], 4) @ W.T).reshape(x.shape)

        def forward_jvp(self, x, t, dx):
            Field.calls += 1
            return self(x, t), self(dx, t)

    x = torch.randn(6, 1, 2, 2, generator=gen, dtype=F64)
    res = log_likelihood(Field(), x, method="rk4", steps=60)
    assert Field.calls > 0
    # x(t) = e^{W (t - 1)} x: x(0) = e^{-W} x, log p1 = log N(e^{-W} x) - tr W
    x0 = x.reshape(6, 4) @ torch.linalg.matrix_exp(-W).T
    want = standard_normal_log_prob(x0) - torch.trace(W)
    torch.testing.assert_close(res.log_prob, want, rtol=0, atol=1e-9)
    assert isinstance(res, LogLikelihood) and res.dim == 4


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"divergence": "trace"}, "divergence must be one of"), ({"probes": 0}, "probes"),
     ({"method": "heun"}, "method must be one of"), ({"batch_size": 0}, "batch_size"),
     ({"grid": torch.linspace(0, 1, 5, dtype=F64)}, "from t = 1 down to t = 0")],
)
def test_bad_arguments(flow, kw, match):
    with pytest.raises(ValueError, match=match):
        log_likelihood(flow.velocity, torch.zeros(2, 3, dtype=F64), **kw)


def test_bad_data(flow):
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        log_likelihood(flow.velocity, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="x must be finite"):
        log_likelihood(flow.velocity, torch.full((2, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="bin_width"):
        dequantize(torch.zeros(2, 3), 0.0)


def test_cli_likelihood(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "gaussian", "--steps", "4", "--batch-size", "16", "--out", str(run),
                 "--model-args", '{"hidden": 16, "depth": 2}', "--no-progress", "--device", "cpu"]) == 0
    out = tmp_path / "lik"
    argv = ["likelihood", "--checkpoint", str(run), "-n", "24", "--steps", "8", "--out", str(out),
            "--no-progress", "--device", "cpu", "--seed", "3"]
    assert main(argv) == 0
    assert "bits/dim" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert s["n"] == 24 and s["dim"] == 2 and s["divergence"] == "exact" and report["data"] == "gaussian"
    assert (out / "summary.md").read_text().startswith("# Log-likelihood")
    per_point = np.load(out / "log_prob.npy")
    assert per_point.shape == (24,) and per_point.mean() == pytest.approx(s["log_likelihood"]["mean"], rel=1e-9)
    # the library on the same flow and the same seeded draws gives the same numbers
    from causal_delta.checkpoint import load_flow
    from causal_delta.datasets import load_data_source

    flow, _ = load_flow(run)
    x = load_data_source("gaussian").sample(24, torch.Generator().manual_seed(3))
    lib = log_likelihood(flow, x, steps=8, batch_size=64).summary()
    assert s["log_likelihood"]["mean"] == pytest.approx(lib["log_likelihood"]["mean"], rel=1e-6)
    # hutchinson through the CLI, and a bad option is one line with exit status 2
    assert main([*argv[:-4], "--divergence", "hutchinson", "--probes", "2", "--out", str(tmp_path / "h"),
                 "--pixel-levels", "256"]) == 0
    h = json.loads((tmp_path / "h" / "report.json").read_text())["summary"]
    assert h["probes"] == 2 and "bits_per_dim_discrete" in h
    capsys.readouterr()
    assert main([*argv[:-4], "--pixel-levels", "1", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--pixel-levels" in err
