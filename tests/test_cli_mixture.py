"""`causal-delta mixture` and :mod:`causal_delta.experiments.mixture`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from causal_delta.cli import build_parser, main
from causal_delta.experiments.mixture import (
    PAPER_MIXTURE,
    PUBLISHED,
    MixtureConfig,
    default_estimators,
    paper_mixture,
    run_mixture,
)


def test_cli_mixture_writes_report_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "mix"
    rc = main(["mixture", "--out", str(out), "--quick", "--no-progress", "--n-points", "150",
               "--times", "0", "0.5", "0.99"])
    assert rc == 0
    for name in ("report.json", "summary.md", "drift_field.png", "jacobian_gaps.png"):
        assert (out / name).is_file(), name
    assert "wrote report.json" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    assert res["times"] == [0.0, 0.5, 0.99]
    g = res["gap_mean"]
    assert max(g["autodiff_jacfwd_float64"]) < 1e-12
    assert max(g["central_fd_float64"]) < 1e-7
    assert min(g["forward_fd_float32"]) > 1e-3  # float32 rounding, the paper's "numerical" gap
    assert g["intervention_generating"][0] < 1e-12  # t = 0: J = A_k = -I for every k
    assert g["intervention_generating"][1] > 1e-2
    assert report["published"]["numerical_vs_analytical"] == PUBLISHED["numerical_vs_analytical"]
    assert res["table4"]["intervention_vs_analytical"]["published"] == PUBLISHED["intervention_vs_analytical"]
    torch.testing.assert_close(torch.tensor(res["mixture"]["means"], dtype=torch.float64),
                               torch.tensor(PAPER_MIXTURE["means"], dtype=torch.float64))
    assert res["headline"]["autodiff_gap_max_over_t"] < 1e-12
    assert report["config"]["n_points"] == 150 and report["quick"] is True
    summary = (out / "summary.md").read_text()
    assert "paper: numerical" in summary and "forward_fd_float32" in summary


@pytest.mark.parametrize("argv, message", [
    (["--times", "1.5"], r"times must lie in [0, 1]"),
    (["--n-points", "0"], "n_points must be an integer >= 1, got 0"),
    (["--fd-eps", "0"], "fd_eps_central must be a number in (0, 1), got 0.0"),
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
])
def test_cli_mixture_bad_input_exits_2_with_message(tmp_path, capsys, argv, message):
    rc = main(["mixture", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert "causal-delta mixture: error:" in err and message in err


def test_cli_registers_mixture_and_imports_lazily():
    args = build_parser().parse_args(["mixture", "--out", "x"])
    # n_points None: the size's own (2000 full, 300 with --quick)
    assert args.command == "mixture" and args.n_points is None and args.points == "path"
    code = "import sys, causal_delta.commands.mixture as m; print('torch' in sys.modules, bool(m.HELP))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "True"]


def test_run_mixture_api_custom_estimator_and_validation(tmp_path):
    seen = []

    def zero(points):
        seen.append(points.t)
        return torch.zeros(points.x.shape[0], 2, 2, dtype=torch.float64)

    estimators = {"analytic_again": lambda p: p.mixture.jacobian(p.x, p.t), "zero": zero}
    config = MixtureConfig.quick(n_points=50, times=(0.25, 0.75), figure_times=(), out_dir=str(tmp_path / "a"),
                                 points="standard_normal", progress=False)
    report = run_mixture(config, estimators=estimators)
    assert seen == [0.25, 0.75]
    g = report["results"]["gap_mean"]
    assert g["analytic_again"] == [0.0, 0.0]
    assert g["zero"] == pytest.approx(report["results"]["analytic_norm_mean"])
    assert report["figures"] == ["jacobian_gaps.png"]
    assert list(default_estimators())[:4] == ["autodiff_jacfwd_float64", "central_fd_float64",
                                              "forward_fd_float64", "forward_fd_float32"]
    assert paper_mixture().n_components == 3 and paper_mixture().dim == 2
    with pytest.raises(ValueError, match=r"points must be one of \('path', 'standard_normal'\)"):
        run_mixture(MixtureConfig(points="grid"), tmp_path)
    with pytest.raises(ValueError, match=r"intervention_label must be one of"):
        run_mixture(MixtureConfig(intervention_label="max"), tmp_path)
    with pytest.raises(ValueError, match=r"out_dir must be given"):
        run_mixture(MixtureConfig())
    with pytest.raises(ValueError, match=r"weights, means and covs must be given together"):
        run_mixture(MixtureConfig(weights=(0.5, 0.5)), tmp_path)
