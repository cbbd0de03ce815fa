"""`causal-delta reproduce`: every experiment's quick mode at a minimal size, report schemas, errors."""

import json

import numpy as np
import pytest
import torch

from causal_delta import cli
from causal_delta.experiments import EXPERIMENTS, get_experiment
from causal_delta.experiments.pixels import PAPER_PAIR, map_pixel_pair, region_box, region_features

REPORT_KEYS = {"experiment", "paper", "version", "quick", "seed", "config", "results", "published",
               "timings_s", "figures", "environment"}


def _check_outputs(out, report, experiment):
    assert REPORT_KEYS <= set(report)
    assert report["experiment"] == experiment and report["quick"] is True
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"]["headline"] == report["results"]["headline"]
    assert (out / "summary.md").read_text().startswith(f"# {experiment}")
    assert report["figures"] and all((out / f).is_file() for f in report["figures"])
    assert report["timings_s"]["total"] > 0


def test_registry_lists_every_experiment():
    assert set(EXPERIMENTS) == {"gaussian-1d", "gaussian-2d", "mixture", "pixels", "attributes", "known-graphs",
                                "memorisation", "flux"}
    for name in EXPERIMENTS:
        config_cls, fn = get_experiment(name)
        assert callable(fn) and config_cls.quick().seed == 0
    with pytest.raises(ValueError, match="experiment must be one of"):
        get_experiment("nope")


def test_gaussian_1d_quick(tmp_path):
    config_cls, run = get_experiment("gaussian-1d")
    cfg = config_cls.quick(train_steps=300, n_train=1000, solver_steps=10, n_eval=200, jacobian_times=3)
    report = run(cfg, tmp_path, progress=False)
    _check_outputs(tmp_path, report, "gaussian-1d")
    res = report["results"]
    assert res["jacobian_t1"]["exact"] == 2.0
    assert abs(res["jacobian_t1"]["learned_mean"] - 2.0) < 0.4
    assert res["jacobian_over_t"]["learned_mean"][0] == 1.0 and len(res["jacobian_over_t"]["t"]) == 4
    # the max sits at the tails (x0 = ±2.5), which a short run fits least; the rms is the check
    assert 0 <= res["trajectory_gap_rms"] < 0.5 and res["trajectory_gap_rms"] <= res["trajectory_gap_max"]


def test_gaussian_2d_quick_recovers_rho(tmp_path):
    config_cls, run = get_experiment("gaussian-2d")
    cfg = config_cls.quick(train_steps=400, solver_steps=10, n_probe=2000, n_jacobian=50, n_boot=50)
    report = run(cfg, tmp_path, progress=False)
    _check_outputs(tmp_path, report, "gaussian-2d")
    res = report["results"]
    assert abs(res["corr_jvp"] - 0.55) < 0.1
    lo, hi = res["corr_jvp_ci95"]
    assert lo <= res["corr_jvp"] <= hi and hi - lo < 0.1
    assert res["jacobian_t1"]["mean_frobenius_gap"] < 0.5
    assert abs(res["corr_samples"] - 0.55) < 0.15
    # solver and steps chosen by the discretisation check, on the same pairs as the estimate
    solver = res["solver"]
    assert solver["chosen_by"].startswith("discretisation check") and solver["check"]["steps"] == solver["steps"]
    assert solver["passed"] and res["corr_jvp"] == pytest.approx(solver["check"]["estimate"][0][1], abs=1e-6)


def test_pixel_pair_mapping_and_region():
    assert map_pixel_pair(PAPER_PAIR, 28, 28) == ((14, 8), (15, 8))
    assert map_pixel_pair(PAPER_PAIR, 8, 8) == ((4, 2), (5, 2))
    assert map_pixel_pair(PAPER_PAIR, 64, 64) == ((32, 18), (33, 18))
    with pytest.raises(ValueError, match="maps onto one pixel"):
        map_pixel_pair(((0, 0), (1, 0)), 1, 5)
    assert region_box(((4, 2), (5, 2)), 8, 8, 8) == (0, 8, 0, 8)
    r0, r1, c0, c1 = region_box(((14, 8), (15, 8)), 8, 28, 28)
    assert r1 - r0 == 8 and c1 - c0 == 8 and r0 <= 14 < 15 < r1 and c0 <= 8 < c1
    # the check's read-out: the region's pixels of channel 0, row-major, as the region statistics index them
    assert region_features((0, 8, 0, 8), 8) == list(range(64))
    img = torch.arange(3 * 28 * 28).reshape(1, 3, 28, 28)
    box = img[0, 0, r0:r1, c0:c1].flatten().tolist()
    assert img.flatten(1)[0, region_features((r0, r1, c0, c1), 28)].tolist() == box


def test_pixels_quick_on_digits(tmp_path):
    pytest.importorskip("sklearn", reason="needs scikit-learn (the vision extra)")
    config_cls, run = get_experiment("pixels")
    cfg = config_cls.quick(train_steps=60, n_samples=64, jvp_batch_size=32, solver_steps=5, n_boot=20)
    report = run(cfg, tmp_path, progress=False)
    _check_outputs(tmp_path, report, "pixels")
    res = report["results"]
    assert res["dataset"]["classes"] == ["5"] and res["dataset"]["image_shape"] == [1, 8, 8]
    assert res["pixel_pair"]["mapped"] == [[4, 2], [5, 2]]
    assert res["region"]["n_pixels"] == 64 and res["region"]["n_pairs_compared"] == 2016
    # solver and steps chosen by the discretisation check on the reported statistic (the region's JVP
    # correlation, here every pixel): the chosen steps are the check's, the pair's estimate the check's
    solver = res["solver"]
    method, steps = solver["method"], solver["steps"]
    assert cfg.method == "auto" and solver["chosen_by"].startswith("discretisation check")
    assert solver["check"]["steps"] == steps >= cfg.solver_steps and solver["check"]["method"] == method
    assert solver["check"]["samples"] == 64 and len(solver["check"]["estimate"]) == 64
    assert res["pixel_pair"]["jvp"] == pytest.approx(solver["check"]["estimate"][4 * 8 + 2][5 * 8 + 2], abs=1e-6)
    assert solver["line"] in (tmp_path / "summary.md").read_text()
    assert res["memorisation"]["report"] and json.loads((tmp_path / "memorisation" / "report.json").read_text()
                                                        )["config"]["steps"] == steps
    # Recompute each reported number by another route: the saved checkpoint, the library's
    # attribute_jvp (identity read-out over all 64 pixels), sample() and numpy's corrcoef.
    from causal_delta import dependence
    from causal_delta.checkpoint import load_flow
    from causal_delta.datasets.images import load_images
    from causal_delta.jvp import attribute_jvp
    from causal_delta.solvers import sample

    velocity, _ = load_flow(res["checkpoint"])
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x0, z = torch.randn(64, 1, 8, 8, generator=gen), torch.randn(64, 1, 8, 8, generator=gen)
    dy = attribute_jvp(velocity, x0, z, steps=steps, method=method).responses.double()
    corr_jvp = dependence.correlation(dy).numpy()  # (64, 64), the paper's uncentred estimator
    gen_img = sample(velocity, x0, steps=steps, method=method).flatten(1).double().numpy()
    corr_gen = np.corrcoef(gen_img, rowvar=False)
    real = load_images("digits", classes=cfg.classes, size=cfg.image_size, limit=cfg.limit).images
    real = real.flatten(1).double().numpy()
    a, b = 4 * 8 + 2, 5 * 8 + 2
    assert res["pixel_pair"]["jvp"] == pytest.approx(corr_jvp[a, b], abs=1e-4)
    assert res["pixel_pair"]["empirical_generated"] == pytest.approx(corr_gen[a, b], abs=1e-4)
    assert res["pixel_pair"]["empirical_real"] == pytest.approx(np.corrcoef(real[:, a], real[:, b])[0, 1], abs=1e-9)
    iu = np.triu_indices(64, k=1)
    ok = np.isfinite(corr_jvp[iu]) & np.isfinite(corr_gen[iu])
    pearson = np.corrcoef(corr_jvp[iu][ok], corr_gen[iu][ok])[0, 1]
    assert res["region"]["pearson_jvp_vs_generated"] == pytest.approx(pearson, abs=1e-4)
    gap = np.abs(corr_jvp[iu][ok] - corr_gen[iu][ok]).mean()
    assert res["region"]["mean_abs_gap_jvp_vs_generated"] == pytest.approx(gap, abs=1e-4)
    # At this size (64 samples, 20 replicates) the resampled Pearson sits wholly on one side of the
    # estimate (duplicated rows add shared structure to both matrices), so no interval is asserted
    # to contain it; the interval's kind is reported.
    lo, hi = res["region"]["pearson_ci95"]
    assert lo <= hi and res["interval"].startswith("bca")
    # Trained UNet: central FD and forward mode agree (float64 to FD truncation, float32 loosely).
    assert res["fd_vs_forward"]["relative_error_float64"] < 1e-6
    assert res["fd_vs_forward"]["relative_error_float32"] < 1e-2
    assert {"derivative.png", "scatter.png", "corr_maps.png", "samples.png"} == set(report["figures"])
    # The memorisation diagnostic sits beside the estimates: one line in summary.md, numbers in
    # report.json, the full diagnostic in memorisation/ (its baseline: the 182 fives leave-one-out).
    mem = res["memorisation"]
    assert mem["n_train"] == 182 and mem["real_reference"].endswith("(leave-one-out)")
    assert 0.0 <= mem["copy_fraction"] <= 1.0 and 0.0 < mem["real_median_ratio"] < 1.0
    assert mem["verdict"] in ("memorised", "not memorised")
    summary = (tmp_path / "summary.md").read_text()
    assert f"Memorisation diagnostic ({mem['verdict']}): {mem['line']}" in summary
    assert mem["line"].startswith("own-pair (copies, d1/d2 < 1/3)") and "Jacobian rank (fresh, of top 5)" in mem["line"]
    assert json.loads((tmp_path / "memorisation" / "report.json").read_text())["fresh"]["median_ratio"] == \
        pytest.approx(mem["median_ratio"])


def test_cli_all_quick_minimal(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="pixels runs on scikit-learn's digits (the vision extra)")
    rc = cli.main(["reproduce", "all", "--quick", "--out", str(tmp_path), "--no-progress",
                   "--set", "train_steps=30", "--set", "n_points=50", "--set", "n_samples=32",
                   "--set", "jvp_batch_size=32", "--set", "n_probe=200", "--set", "n_boot=10",
                   "--set", "solver_steps=4", "--set", "n_eval=50"])
    assert rc == 0
    index = json.loads((tmp_path / "report.json").read_text())
    assert index["experiments"]["attributes"]["status"] == "skipped"
    assert "celeba-root" in index["experiments"]["attributes"]["note"]
    for name in ("gaussian-1d", "gaussian-2d", "mixture", "pixels"):
        assert index["experiments"][name]["status"] == "done"
        assert (tmp_path / name / "report.json").is_file()
    mixture = json.loads((tmp_path / "mixture" / "report.json").read_text())
    closed = mixture["results"]["closed_form"]
    assert "learned_flow" in closed["gap_mean"] and len(mixture["results"]["learned"]["times"]) == 5
    assert closed["headline"]["autodiff_gap_max_over_t"] < 1e-8
    assert (tmp_path / "mixture" / "closed_form" / "report.json").is_file()
    chosen = mixture["results"]["learned"]["solver"]
    assert chosen["check"]["method"] == chosen["method"]
    out = capsys.readouterr().out
    assert "all done" in out and "[pixels] done" in out


def test_attributes_needs_celeba_root(tmp_path, capsys):
    config_cls, run = get_experiment("attributes")
    with pytest.raises(ValueError, match=r"needs --celeba-root: the CelebA folder"):
        run(config_cls.quick(), tmp_path)
    with pytest.raises(FileNotFoundError, match="CelebA: image folder img_align_celeba/ not found"):
        run(config_cls.quick(celeba_root=str(tmp_path)), tmp_path)
    assert cli.main(["reproduce", "attributes", "--quick", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "error: attributes needs --celeba-root" in err and "Traceback" not in err


def test_cli_bad_settings(tmp_path, capsys):
    assert cli.main(["reproduce", "gaussian-1d", "--quick", "--out", str(tmp_path), "--set", "nope=1"]) == 2
    assert "--set nope: unknown key for Gaussian1DConfig; valid keys: " in capsys.readouterr().err
    assert cli.main(["reproduce", "gaussian-1d", "--quick", "--out", str(tmp_path), "--set", "lr"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["reproduce", "gaussian-2d", "--quick", "--out", str(tmp_path), "--set",
                     "train_steps=many"]) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert cli.main(["reproduce", "pixels", "--quick", "--out", str(tmp_path), "--dataset", "mnist"]) == 2
    assert "needs root" in capsys.readouterr().err
    assert cli.main(["reproduce", "pixels", "--quick", "--out", str(tmp_path), "--dataset", "mnist",
                     "--data-root", str(tmp_path / "none")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_memorisation_verdict_needs_a_material_and_significant_excess_over_real_data():
    from causal_delta.experiments._checks import memorisation_verdict

    base = {"n_fresh": 182, "n_train": 182, "real_copy_fraction": 0.02}
    assert memorisation_verdict({**base, "copy_fraction": 0.9}) == "memorised"
    assert memorisation_verdict({**base, "copy_fraction": 0.1}) == "not memorised"  # +0.08: not material
    # +0.15 is material, but with 20 samples not significant: 3 SE = 3 sqrt(.17 .83 / 20 + .02 .98 / 182) = 0.25
    assert memorisation_verdict({**base, "n_fresh": 20, "copy_fraction": 0.17}) == "not memorised"
    assert memorisation_verdict({**base, "n_fresh": 2000, "copy_fraction": 0.17}) == "memorised"
    assert memorisation_verdict({"n_fresh": 10, "n_train": 2, "copy_fraction": 0.6, "real_copy_fraction": None}) == \
        "memorised"


def test_choose_solver_cap_and_named_solver():
    """``choose_solver`` on the closed-form Gaussian flow: a cap that no solver passes is said so, the
    closest check is used; a solver name keeps its steps and is still checked; a cap below the start fails."""
    from causal_delta.closed_form import GaussianFlow
    from causal_delta.experiments._checks import choose_solver

    flow = GaussianFlow(torch.tensor([[1.0, 0.55], [0.55, 1.0]], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    x0, z = torch.randn(2000, 2, generator=gen, dtype=torch.float64), torch.randn(2000, 2, generator=gen,
                                                                                  dtype=torch.float64)
    capped = choose_solver(flow.velocity, x0, z, steps=2, max_steps=2, subsample=400, n_boot=100, progress=False)
    assert capped["passed"] is False and capped["steps"] == 2 and capped["check"]["converged"] is False
    assert "no solver passed within 2 steps" in capped["chosen_by"] and "not converged" in capped["line"]
    ratios = {m: t["checks"][0]["ratio"] for m, t in capped["trials"].items()}
    # the closest trial's solver, checked in full there (its own SE, not the first trial's: close, not equal)
    assert capped["method"] == min(ratios, key=ratios.get) and capped["check"]["ratio"] > 1
    assert capped["check"]["ratio"] == pytest.approx(min(ratios.values()), rel=0.05)
    free = choose_solver(flow.velocity, x0, z, steps=2, subsample=400, n_boot=100, progress=False)
    assert free["passed"] and free["steps"] > 2 and free["chosen_by"] == "discretisation check (choose_steps)"
    named = choose_solver(flow.velocity, x0, z, method="euler", steps=4, subsample=400, n_boot=100, progress=False)
    assert (named["method"], named["steps"], named["chosen_by"]) == ("euler", 4, "config")
    assert named["check"]["steps"] == 4 and named["check"]["verdict"] == "not converged"  # 4 Euler steps: too few
    with pytest.raises(ValueError, match=r"max_steps .* must be at least the starting steps \(8\)"):
        choose_solver(flow.velocity, x0, z, steps=8, max_steps=4, progress=False)
