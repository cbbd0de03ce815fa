"""Read-out training: exact resume, held-out report vs scikit-learn, loading, CLI, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from causal_delta.classifier_training import (
    ClassifierTrainConfig,
    evaluate_classifier,
    load_classifier,
    roc_auc,
    train_classifier,
)

from _celeba_fixture import make_mini_celeba


def _toy(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    a, b = x[:, 0, :4].mean((1, 2)), x[:, 0, 4:].mean((1, 2))
    return x, torch.stack([(a > 0).float(), (b > 0).float()], 1), torch.stack([3 * a + 1, b], 1)


def _cfg(tmp_path, name, **kw):
    base = dict(arch="small-cnn", model_args={"width": 8, "norm_groups": 4}, steps=6, batch_size=16, lr=3e-3,
                lr_schedule="constant", out_dir=str(tmp_path / name), device="cpu")
    base.update(kw)
    return ClassifierTrainConfig(**base)


@pytest.mark.parametrize("head,arch", [("binary", "small-cnn"), ("regression", "resnet18")])
def test_resume_to_2n_equals_2n_straight(tmp_path, head, arch):
    if arch.startswith("resnet"):
        pytest.importorskip("torchvision", reason="ResNet classifiers need torchvision (the vision extra)")
    x, yb, yr = _toy()
    y = yb if head == "binary" else yr
    kw = dict(head=head, arch=arch, model_args={} if arch == "resnet18" else None)
    kw = {k: v for k, v in kw.items() if v is not None}
    n = 1 if arch == "resnet18" else 6
    straight = train_classifier(_cfg(tmp_path, "straight", steps=2 * n, **kw), images=x, targets=y, progress=False)
    first = train_classifier(_cfg(tmp_path, "split", steps=n, **kw), images=x, targets=y, progress=False)
    resumed = train_classifier(_cfg(tmp_path, "split", steps=2 * n, **kw), images=x, targets=y, progress=False,
                               resume=True)
    assert resumed.resumed_from == n and first.losses == resumed.losses[:n]
    assert resumed.losses == straight.losses  # bit for bit
    a, b = straight.classifier.state_dict(), resumed.classifier.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm running statistics included (ResNet)
    assert torch.equal(resumed.classifier(x[:4]), load_classifier(tmp_path / "split")(x[:4]))
    with pytest.raises(ValueError, match="resume: config differs .* lr"):
        train_classifier(_cfg(tmp_path, "split", steps=3 * n, lr=1e-2, **kw), images=x, targets=y,
                         progress=False, resume=True)
    with pytest.raises(ValueError, match="training data differ"):
        train_classifier(_cfg(tmp_path, "split", steps=3 * n, **kw), images=x + 0.5, targets=y, progress=False,
                         resume=True)


def test_held_out_report_matches_sklearn(tmp_path):
    pytest.importorskip("sklearn", reason="needs scikit-learn (the vision extra)")
    from sklearn.metrics import accuracy_score, r2_score, roc_auc_score

    x, yb, yr = _toy(160)
    for head, y in (("binary", yb), ("regression", yr)):
        res = train_classifier(_cfg(tmp_path, head, head=head, steps=20, holdout_fraction=0.25), images=x,
                               targets=y, progress=False)
        rep = json.loads((tmp_path / head / "report.json").read_text())
        idx = rep["held_out_index"]
        assert len(idx) == 40 and rep["n_train"] == 120 and (tmp_path / head / "summary.md").exists()
        clf = load_classifier(tmp_path / head)
        with torch.no_grad():
            out = clf(x[idx]).numpy()
        for k, name in enumerate(rep["attributes"]):
            got = rep["held_out"]["per_attribute"][name]
            if head == "binary":
                assert got["roc_auc"] == pytest.approx(roc_auc_score(y[idx, k].numpy(), out[:, k]), abs=1e-12)
                assert got["accuracy"] == pytest.approx(accuracy_score(y[idx, k].numpy(), out[:, k] > 0), abs=1e-12)
            else:
                assert got["r2"] == pytest.approx(r2_score(y[idx, k].numpy(), out[:, k]), abs=1e-5)
        assert rep["held_out"] == res.report["held_out"]
    # regression outputs are attribute values: their mean is near the targets' mean (3a + 1 ~ 1)
    assert abs(float(clf(x).mean(0)[0]) - float(yr[:, 0].mean())) < 0.5
    # the read-out's own forward_jvp (scale applied to the tangent, not the shift) = torch.func.jvp
    dx = torch.randn(x[:4].shape, generator=torch.Generator().manual_seed(5))
    y1, dy1 = clf.forward_jvp(x[:4], dx)
    y2, dy2 = torch.func.jvp(clf, (x[:4],), (dx,))
    assert torch.allclose(y1, y2, atol=1e-6) and torch.allclose(dy1, dy2, rtol=1e-5, atol=1e-6)
    train_rows = sorted(set(range(160)) - set(idx))
    assert torch.allclose(clf.scale, yr[train_rows].double().std(0).float()) and torch.allclose(
        clf.shift, yr[train_rows].double().mean(0).float())


def test_roc_auc_with_ties_and_one_class():
    pytest.importorskip("sklearn", reason="needs scikit-learn (the vision extra)")
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = (rng.random(200) < 0.3 + 0.1 * s).astype(int)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-14)
    assert np.isnan(roc_auc(s, np.ones(200)))


def test_learns_a_separable_task(tmp_path):
    x, yb, _ = _toy(300, seed=1)
    res = train_classifier(_cfg(tmp_path, "learn", steps=150, lr=1e-2, lr_schedule="cosine", model_args={}),
                           images=x, targets=yb, progress=False)
    assert res.report["held_out"]["mean"]["roc_auc"] > 0.9, res.report["held_out"]


def test_select_and_output_mismatch_errors(tmp_path):
    x, yb, _ = _toy()
    train_classifier(_cfg(tmp_path, "sel", attributes=["left", "right"]), images=x, targets=yb, progress=False)
    clf = load_classifier(tmp_path / "sel")
    right = load_classifier(tmp_path / "sel", attributes=["right"])
    assert right.attributes == ("right",) and torch.equal(right(x[:3])[:, 0], clf(x[:3])[:, 1])
    _, dy = right.forward_jvp(x[:3], torch.ones_like(x[:3]))
    assert dy.shape == (3, 1)
    with pytest.raises(ValueError, match=r"classifier outputs \['left', 'right'\] do not include \['Rosy_Cheeks'\]"):
        load_classifier(tmp_path / "sel", attributes=["Rosy_Cheeks"])
    with pytest.raises(ValueError, match="classifier outputs .* per image, the targets have"):
        evaluate_classifier(clf, x, yb[:, :1])
    with pytest.raises(ValueError, match="attributes name 3 outputs but the targets have 2 columns"):
        train_classifier(_cfg(tmp_path, "e1", attributes=["a", "b", "c"]), images=x, targets=yb, progress=False)
    with pytest.raises(ValueError, match="head 'binary' needs targets in"):
        train_classifier(_cfg(tmp_path, "e2"), images=x, targets=yb + 0.5, progress=False)
    with pytest.raises(ValueError, match="weights_path is for the ResNet"):
        train_classifier(_cfg(tmp_path, "e3", weights_path="w.pth"), images=x, targets=yb, progress=False)
    with pytest.raises(ValueError, match="needs images and targets"):
        train_classifier(_cfg(tmp_path, "e4"), progress=False)
    from causal_delta.training import TrainConfig, train

    train(TrainConfig(steps=1, batch_size=4, model_args={"hidden": 8, "depth": 1}, out_dir=str(tmp_path / "f")),
          progress=False)
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "f")


def _cli(*args, cwd, capsys):
    """Run the CLI in-process from ``cwd``; returns (exit code, stdout, stderr)."""
    from causal_delta.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(["classifier", *args])
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_npz_celeba_and_errors(tmp_path, capsys):
    x, _, yr = _toy(60)
    np.savez(tmp_path / "scenes.npz", images=((x + 1) * 127.5).round().to(torch.uint8).numpy(), targets=yr.numpy(),
             attributes=np.array(["size", "hue"]))
    r = _cli("train", "--data", "scenes.npz", "--head", "regression", "--steps", "4", "--batch-size", "8",
             "--out", "reg", "--no-progress", cwd=tmp_path, capsys=capsys)
    assert r[0] == 0, r[2]
    rep = json.loads((tmp_path / "reg" / "report.json").read_text())
    assert rep["attributes"] == ["size", "hue"] and set(rep["held_out"]["mean"]) == {"r2", "rmse"}
    root = make_mini_celeba(tmp_path / "celeba", n=24)
    r = _cli("train", "--data", "celeba", "--celeba-root", str(root), "--attributes", "Heavy_Makeup", "Pointy_Nose",
             "--image-size", "16", "--steps", "3", "--batch-size", "4", "--out", "clf", "--no-progress",
             cwd=tmp_path, capsys=capsys)
    assert r[0] == 0, r[2]
    rep = json.loads((tmp_path / "clf" / "report.json").read_text())
    assert rep["attributes"] == ["Heavy_Makeup", "Pointy_Nose"] and rep["n_train"] == 16
    assert rep["held_out"]["n"] == 3 and "roc_auc" in rep["held_out"]["per_attribute"]["Pointy_Nose"]
    r = _cli("train", "--data", "celeba", "--celeba-root", str(root), "--attributes", "Pointy_Noze",
             cwd=tmp_path, capsys=capsys)
    assert r[0] == 2 and "did you mean ['Pointy_Nose']" in r[2] and len(r[2].strip().splitlines()) == 1
    r = _cli("train", "--data", "missing.npz", cwd=tmp_path, capsys=capsys)
    assert r[0] == 2 and "data file not found" in r[2]
    with pytest.raises(SystemExit):
        _cli("train", "--help", cwd=tmp_path, capsys=capsys)
    out = capsys.readouterr().out
    assert "--weights FILE" in out and "never downloaded" in out
    r = _cli(cwd=tmp_path, capsys=capsys)
    assert r[0] == 0 and "train" in r[1]


def test_cli_evaluate(tmp_path, capsys):
    root = make_mini_celeba(tmp_path / "celeba", n=24)
    r = _cli("train", "--data", "celeba", "--celeba-root", str(root), "--attributes", "Heavy_Makeup", "Pointy_Nose",
             "--image-size", "16", "--steps", "2", "--batch-size", "4", "--out", "clf", "--no-progress",
             cwd=tmp_path, capsys=capsys)
    assert r[0] == 0, r[2]
    r = _cli("evaluate", "--classifier", "clf", "--data", "celeba", "--celeba-root", str(root), "--split", "all",
             "--attributes", "Pointy_Nose", "--out", "ev", cwd=tmp_path, capsys=capsys)
    assert r[0] == 0, r[2]
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["n"] == 24 and list(rep["per_attribute"]) == ["Pointy_Nose"]
    pytest.importorskip("sklearn", reason="needs scikit-learn (the vision extra)")
    from sklearn.metrics import roc_auc_score

    from causal_delta.datasets.celeba import load_celeba

    data = load_celeba(root, split="all", attributes=["Pointy_Nose"], size=16)
    with torch.no_grad():
        scores = load_classifier(tmp_path / "clf", attributes=["Pointy_Nose"])(data.images)[:, 0].numpy()
    assert rep["per_attribute"]["Pointy_Nose"]["roc_auc"] == pytest.approx(
        roc_auc_score(data.labels[:, 0].numpy(), scores), abs=1e-12)
    # an .npz whose columns do not include the classifier's outputs: one clear line
    np.savez(tmp_path / "other.npz", images=np.zeros((4, 3, 16, 16), np.float32), targets=np.zeros((4, 1)),
             attributes=np.array(["Smiling"]))
    r = _cli("evaluate", "--classifier", "clf", "--data", "other.npz", cwd=tmp_path, capsys=capsys)
    assert r[0] == 2 and "classifier outputs ['Heavy_Makeup', 'Pointy_Nose'] are not all columns" in r[2]
