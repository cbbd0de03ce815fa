"""``causal-delta jvp`` and ``causal-delta dependence`` end to end on a tiny checkpoint."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from causal_delta import cli
from causal_delta.checkpoint import save_checkpoint
from causal_delta.models import MLPClassifier, MLPClassifierConfig, build_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    flow = build_model("mlp-small", event_shape=(2, 2))
    flow_dir = save_checkpoint(root / "flow", 1, model_state=flow.state_dict(), meta={
        "model_config": asdict(flow.config), "event_shape": [2, 2],
        "train_config": {"parametrization": "velocity", "preset": "mlp-small"}})
    clf = MLPClassifier.from_config(MLPClassifierConfig(event_shape=(2, 2), n_classes=3))
    clf_dir = save_checkpoint(root / "clf", 1, model_state=clf.state_dict(), meta={
        "model_config": asdict(clf.config), "class_names": ["a", "b", "c"]})
    return flow_dir, clf_dir


def test_jvp_then_dependence(checkpoints, tmp_path, capsys):
    flow_dir, _ = checkpoints
    out = tmp_path / "jvp"
    rc = cli.main(["jvp", "--checkpoint", str(flow_dir), "-n", "40", "--probes", "2", "--features", "0,1:1,3",
                   "--steps", "4", "--batch-size", "16", "--out", str(out)])
    assert rc == 0
    data = np.load(out / "responses.npz")
    assert data["responses"].shape == (80, 3)
    assert data["features"].tolist() == [0, 3, 3]
    rep = json.loads((out / "report.json").read_text())
    # rk4 x 4 steps = 16 evaluations per solve, whatever the batching; 3 batches of <= 16 samples
    solver = {k: rep["solver"][k] for k in ("method", "steps", "nfe", "nfe_total", "batches")}
    assert solver == {"method": "rk4", "steps": 4, "nfe": 16, "nfe_total": 48, "batches": 3}
    assert rep["n_responses"] == 80

    dep = tmp_path / "dep"
    rc = cli.main(["dependence", "--responses", str(out / "responses.npz"), "--n-boot", "50",
                   "--condition-on", "0", "--quantile", "0.5", "--pair", "1,2", "--quantiles", "1,0.5",
                   "--out", str(dep)])
    assert rc == 0
    rep = json.loads((dep / "report.json").read_text())
    assert len(rep["corr"]) == 3 and rep["bootstrap_groups"] == "samples"
    assert rep["conditioning"]["kept"] == 40 and len(rep["sweep"]["estimate"]) == 2
    assert (dep / "corr.png").stat().st_size > 0 and (dep / "sweep.png").stat().st_size > 0


def test_jvp_with_classifier_and_finite_differences(checkpoints, tmp_path):
    flow_dir, clf_dir = checkpoints
    out = tmp_path / "clf"
    rc = cli.main(["jvp", "--checkpoint", str(flow_dir), "--classifier", str(clf_dir), "-n", "8",
                   "--mode", "central", "--dtype", "float64", "--steps", "3", "--save-samples",
                   "--out", str(out)])
    assert rc == 0
    data = np.load(out / "responses.npz")
    assert data["responses"].shape == (8, 3) and data["names"].tolist() == ["a", "b", "c"]
    assert data["x0"].shape == (8, 2, 2)
    assert json.loads((out / "report.json").read_text())["eps"] > 0


def test_jvp_with_unnamed_classifier(checkpoints, tmp_path):
    # a classifier checkpoint without class_names: its outputs are labelled "logit k"
    # (this crashed once: the labels of coordinate features were asked of no features)
    flow_dir, clf_dir = checkpoints
    clf = MLPClassifier.from_config(MLPClassifierConfig(event_shape=(2, 2), n_classes=2))
    unnamed = save_checkpoint(tmp_path / "clf", 1, model_state=clf.state_dict(),
                              meta={"model_config": asdict(clf.config)})
    out = tmp_path / "out"
    rc = cli.main(["jvp", "--checkpoint", str(flow_dir), "--classifier", str(unnamed), "-n", "4",
                   "--steps", "2", "--check-samples", "0", "--out", str(out)])
    assert rc == 0
    data = np.load(out / "responses.npz")
    assert data["responses"].shape == (4, 2) and data["names"].tolist() == ["logit 0", "logit 1"]


@pytest.mark.parametrize("argv, message", [
    (["--eps", "0", "--mode", "fd"], "--eps must be > 0"),
    (["--features", "17"], r"--features index '17' must lie in \[0, 4\)"),
    (["--features", "0:5"], "outside the sample shape"),
    (["-n", "0"], "-n must be an integer >= 1"),
])
def test_jvp_bad_input(checkpoints, tmp_path, capsys, argv, message):
    flow_dir, _ = checkpoints
    base = ["jvp", "--checkpoint", str(flow_dir), "--steps", "2", "--out", str(tmp_path)]
    if "--features" not in argv:
        base += ["--features", "0,1"]
    assert cli.main(base + argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_jvp_unknown_method_and_missing_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["jvp", "--checkpoint", "x", "--features", "0", "--mode", "reverse"])
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["dependence", "--responses", str(tmp_path / "nope.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    np.savez(tmp_path / "r.npz", responses=np.random.default_rng(0).normal(size=(20, 2)))
    assert cli.main(["dependence", "--responses", str(tmp_path / "r.npz"), "--condition-on", "5",
                     "--n-boot", "10", "--out", str(tmp_path / "o")]) == 2
    assert "--condition-on must be a feature index in [0, 2)" in capsys.readouterr().err


def test_same_seed_same_pairs_in_float32_and_float64(checkpoints, tmp_path):
    # x0 and the probes are drawn in float64 and cast, so the two runs see the same pairs and
    # their responses agree sample by sample (to float32 precision).
    flow_dir, _ = checkpoints
    runs = {}
    for dtype in ("float32", "float64"):
        out = tmp_path / dtype
        assert cli.main(["jvp", "--checkpoint", str(flow_dir), "-n", "12", "--probes", "2", "--features", "0,3",
                         "--steps", "4", "--dtype", dtype, "--save-samples", "--seed", "7", "--out", str(out)]) == 0
        runs[dtype] = np.load(out / "responses.npz")
    x32, x64 = runs["float32"]["x0"], runs["float64"]["x0"]
    assert x32.dtype == np.float32 and x64.dtype == np.float64
    np.testing.assert_array_equal(x32, x64.astype(np.float32))
    r32, r64 = runs["float32"]["responses"], runs["float64"]["responses"]
    np.testing.assert_allclose(r32, r64, rtol=1e-4, atol=1e-5 * np.abs(r64).max())
    # the samples differ as a whole when the pairs differ (the check above could fail)
    other = tmp_path / "seed8"
    assert cli.main(["jvp", "--checkpoint", str(flow_dir), "-n", "12", "--probes", "2", "--features", "0,3",
                     "--steps", "4", "--seed", "8", "--out", str(other)]) == 0
    assert np.abs(np.load(other / "responses.npz")["responses"] - r32).max() > 100 * np.abs(r32 - r64).max()


def test_jvp_reads_every_coordinate_by_default(checkpoints, tmp_path, capsys, monkeypatch):
    flow_dir, _ = checkpoints
    out = tmp_path / "all"
    argv = ["jvp", "--checkpoint", str(flow_dir), "-n", "5", "--steps", "2", "--dtype", "float64"]
    assert cli.main(argv + ["--out", str(out)]) == 0
    data = np.load(out / "responses.npz")
    assert data["features"].tolist() == [0, 1, 2, 3] and data["responses"].shape == (5, 4)
    explicit = tmp_path / "explicit"
    assert cli.main(argv + ["--features", "0,1,2,3", "--out", str(explicit)]) == 0
    assert np.array_equal(np.load(explicit / "responses.npz")["responses"], data["responses"])
    from causal_delta.commands import jvp as jvp_command

    monkeypatch.setattr(jvp_command, "MAX_IDENTITY_FEATURES", 3)
    assert cli.main(argv + ["--out", str(tmp_path / "big")]) == 2
    assert "give --features or --classifier: the samples have 4 coordinates" in capsys.readouterr().err


def test_jvp_discretisation_check_warns_and_reports(tmp_path, capsys):
    # a fast-varying flow (last layer scaled up): 2 Euler steps are far from converged, 64 RK4 steps are not
    torch.manual_seed(0)
    flow = build_model("mlp-small", event_shape=(2,))
    with torch.no_grad():
        flow.layers[-1].weight.mul_(100.0)
    ckpt = save_checkpoint(tmp_path / "flow", 1, model_state=flow.state_dict(), meta={
        "model_config": asdict(flow.config), "event_shape": [2],
        "train_config": {"parametrization": "velocity", "preset": "mlp-small"}})
    base = ["jvp", "--checkpoint", str(ckpt), "-n", "300", "--dtype", "float64"]
    assert cli.main(base + ["--solver", "euler", "--steps", "2", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: discretisation check (euler, 2 vs 1 steps, 64 paired")
    check = json.loads((tmp_path / "e" / "report.json").read_text())["discretisation"]
    assert check["converged"] is False and check["ratio"] > 1 and check["samples"] == 64 and check["nfe"] == 2
    assert check["max_abs_diff"] > check["se_at_worst"] > 0
    assert cli.main(base + ["--steps", "64", "--check-samples", "100", "--out", str(tmp_path / "r")]) == 0
    assert "warning" not in capsys.readouterr().err
    check = json.loads((tmp_path / "r" / "report.json").read_text())["discretisation"]
    assert check["converged"] is True and check["samples"] == 100 and check["coarse_steps"] == 32
    assert cli.main(base + ["--steps", "2", "--check-samples", "0", "--out", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["discretisation"] == {"skipped": "--check-samples 0"}
    assert cli.main(base + ["--check-samples", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--check-samples must be an integer >= 0" in capsys.readouterr().err
