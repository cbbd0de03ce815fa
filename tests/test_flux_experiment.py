"""Flux Matching end to end: a ring at test scale, the directed SCM closed form, `reproduce flux`."""

import json
import math

import pytest
import torch

from causal_delta import cli
from causal_delta.experiments.flux import FluxConfig, ring_data, run_flux
from causal_delta.flux import TimeFree, fit_field, langevin, radius_stats
from causal_delta.flux.directed import linear_scm_covariance, linear_scm_sample, triangular_stationary_drift
from causal_delta.models import build_model


def test_ring_at_test_scale_reaches_the_smoothed_radius():
    g = torch.Generator().manual_seed(0)
    data = ring_data(2000, 3.0, 0.1, g)
    sigma = 0.3
    target_mean, _ = radius_stats(data + sigma * torch.randn(data.shape, generator=g))
    torch.manual_seed(0)
    field = TimeFree(build_model("mlp-small", event_shape=(2,), hidden=64, depth=2))
    fit = fit_field(field, data, objective="flux", sigma=sigma, steps=300, batch_size=256, lr=3e-3, seed=0)
    assert len(fit.losses) == 300 and all(math.isfinite(v) for v in fit.losses)
    x = langevin(field, 3 * torch.randn(1000, 2, generator=g), steps=600, eta=0.02, generator=g).x
    mean, _ = radius_stats(x)
    assert abs(mean - target_mean) < 0.1


def test_triangular_stationary_drift_solves_lyapunov_and_matches_2d_closed_form():
    beta, v = 0.8, 0.5  # x2 = β x1 + e2, var(x1) = 1, var(e2) = v
    B = torch.tensor([[0.0, 0.0], [beta, 0.0]])
    cov = linear_scm_covariance(B, torch.tensor([1.0, math.sqrt(v)]))
    A = triangular_stationary_drift(cov)
    e = (1 + beta**2) / v
    expected = torch.tensor([[1.0, 0.0], [-beta * (1 + e), e]], dtype=torch.float64)
    assert torch.allclose(A, expected, atol=1e-12)
    B4 = torch.tensor([[0, 0, 0, 0], [0.8, 0, 0, 0], [0, -0.6, 0, 0], [0.5, 0, 0.7, 0]])
    cov4 = linear_scm_covariance(B4) + 0.25 * torch.eye(4, dtype=torch.float64)
    A4 = triangular_stationary_drift(cov4)
    assert torch.count_nonzero(torch.triu(A4, 1)) == 0
    assert torch.allclose(A4 @ cov4 + cov4 @ A4.T, 2 * torch.eye(4, dtype=torch.float64), atol=1e-12)
    # the sampler draws from the covariance it claims (Monte Carlo, 3 SE per entry)
    x = linear_scm_sample(B4, 20000, generator=torch.Generator().manual_seed(1)).double()
    emp = torch.cov(x.T)
    truth = linear_scm_covariance(B4)
    se = torch.sqrt((truth**2 + torch.outer(truth.diagonal(), truth.diagonal())) / x.shape[0])
    assert ((emp - truth).abs() < 4 * se).all()


def test_scm_weights_must_be_strictly_lower_triangular():
    with pytest.raises(ValueError, match="strictly lower-triangular"):
        linear_scm_covariance(torch.eye(2))


def test_run_flux_minimal_writes_report_and_figures(tmp_path):
    cfg = FluxConfig.quick(train_steps=20, n_data=300, n_samples=64, langevin_steps=20, curl_grid=10,
                           hidden=16, batch_size=64, directed_hidden=8)
    report = run_flux(cfg, tmp_path, progress=False)
    res = report["results"]
    assert set(res) == {"ring", "mixture", "directed", "directed_oscillator", "headline"}
    ring = res["ring"]
    for objective in ("flux", "dsm"):
        assert ring[objective]["nfe"] == 20 and "radius" in ring[objective]
        assert ring[objective]["finite_fraction"] == 1.0
    for system in ("directed", "directed_oscillator"):
        for objective in ("flux", "dsm"):
            assert res[system][objective]["masked_field_entries_nonzero"] == 0
            assert res[system][objective]["masked_flow_map_entries_nonzero"] == 0
    assert set(report["figures"]) == {"fields.png", "directed.png"}
    assert all((tmp_path / f).is_file() for f in report["figures"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["published"]["mean_abs_curl"] == {"flux": 0.41, "dsm": 0.12, "flux_spiral_penalty": 1.64}
    assert "Directed field" in (tmp_path / "summary.md").read_text()


def test_cli_reproduce_flux_and_bad_settings(tmp_path, capsys):
    rc = cli.main(["reproduce", "flux", "--quick", "--out", str(tmp_path / "a"), "--no-progress",
                   "--set", "train_steps=5", "--set", "n_data=100", "--set", "n_samples=20",
                   "--set", "langevin_steps=5", "--set", "curl_grid=5", "--set", "directed=false",
                   "--set", "datasets=ring", "--set", "spiral_penalty=0.1"])
    assert rc == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert set(report["results"]) == {"ring", "headline"}
    assert {"flux", "dsm", "flux+spiral"} <= set(report["results"]["ring"])
    assert "ring_curl_flux_spiral" in report["results"]["headline"]
    assert cli.main(["reproduce", "flux", "--quick", "--out", str(tmp_path / "b"), "--set",
                     "datasets=moons"]) == 2
    assert "datasets must be a non-empty subset" in capsys.readouterr().err
    assert cli.main(["reproduce", "flux", "--quick", "--out", str(tmp_path / "c"), "--set", "n_samples=80",
                     "--set", "n_data=100"]) == 2
    assert "n_data >= 2 * n_samples" in capsys.readouterr().err


def test_oscillator_trajectory_starts_and_stays_stationary():
    from causal_delta.experiments.flux_directed import oscillator_system

    B, std = oscillator_system(4, rho=0.9, omega=0.6, noise=0.5)
    cov = linear_scm_covariance(B, std)
    stationary = 0.25 / (1 - 0.81) * torch.eye(2, dtype=torch.float64)
    for k in range(4):  # every time step has the stationary marginal N(0, q / (1 - ρ²) I)
        assert torch.allclose(cov[2 * k: 2 * k + 2, 2 * k: 2 * k + 2], stationary, atol=1e-12)
    # lag-one cross-covariance E[z_{k+1} z_kᵀ] = ρ R(ω) · stationary
    rot = 0.9 * torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=torch.float64)
    assert torch.allclose(cov[2:4, 0:2], rot @ stationary, atol=1e-12)
