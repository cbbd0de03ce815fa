"""`reproduce attributes --quick` end to end on a fabricated mini-CelebA folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from causal_delta import cli
from causal_delta.experiments.attributes import AttributesConfig, run_attributes, top_share

from _celeba_fixture import make_mini_celeba

# Sizes that make the quick configuration run in seconds on the fabricated folder.
TINY = ["--set", "image_size=16", "--set", 'overrides=[["base_channels", 8]]', "--set", "train_steps=30",
        "--set", "classifier_steps=30", "--set", "n_samples=48", "--set", "jvp_batch_size=48",
        "--set", "solver_steps=4", "--set", "hold_fixed_samples=16", "--set", "hold_fixed_chunk=16",
        "--set", "n_boot=50", "--set", "fidelity_images=8"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_mini_celeba(tmp_path_factory.mktemp("celeba"), n=48)


def test_reproduce_attributes_quick_end_to_end(mini, tmp_path, capsys):
    out = tmp_path / "attr"
    code = cli.main(["reproduce", "attributes", "--quick", "--celeba-root", str(mini), "--out", str(out),
                     "--no-progress", *TINY])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    res = rep["results"]
    assert rep["quick"] and set(rep["figures"]) == {"sweep.png", "samples.png", "graphs.png"}
    assert all((out / f).stat().st_size > 0 for f in ("sweep.png", "samples.png", "summary.md"))
    assert res["attributes"] == {"common_cause": "Heavy_Makeup", "pair": ["Pointy_Nose", "Rosy_Cheeks"]}
    for key in ("jvp", "conditioned", "hold_fixed"):
        e = res[key]
        assert -1 <= e["lower"] <= e["estimate"] <= e["upper"] <= 1, (key, e)
    assert res["conditioned"]["kept"] == 8 and res["conditioned"]["n"] == 48  # quantile 0.17 of 48 rows
    # hold-fixed probes null the common cause's response to first order
    assert res["hold_fixed"]["residual_rms_ratio_common_cause"] < 1e-3
    # the label statistics are those of the attribute file's training rows
    lines = (mini / "list_attr_celeba.txt").read_text().splitlines()[2:]
    part = dict(ln.split() for ln in (mini / "list_eval_partition.txt").read_text().splitlines())
    y = np.array([[int(v) for v in ln.split()[1:]] for ln in lines if part[ln.split()[0]] == "0"])[:, [18, 27, 29]]
    assert res["empirical_labels"]["pair"]["estimate"] == pytest.approx(np.corrcoef(y[:, 1], y[:, 2])[0, 1], abs=1e-12)
    assert res["empirical_labels"]["pair"]["n"] == len(y) == 33
    assert len(res["sweep"]["estimate"]) == 6
    assert set(res["graphs"]) == {"labels", "generator", "differences"}
    assert res["graphs"]["labels"]["test"] == "chisq" and res["graphs"]["generator"]["test"] == "jvp-condition"
    assert (out / "graphs.png").exists() and (out / "graphs.dot").exists()
    fid = res["fidelity"]
    assert fid["generated"]["n"] == 48 and fid["real_held_out"]["n"] == 7
    assert 0 < res["top_1pct_share_of_second_moment"]["Pointy_Nose"] <= 1
    assert res["classifier"]["held_out"]["n"] == 7
    text = (out / "summary.md").read_text()
    assert "hold-fixed probes" in text and "generator fidelity" in text
    # solver and steps chosen by the discretisation check on the classifier's responses to these probes:
    # the chosen steps are the check's, and the JVP estimate is the check's estimate at those steps
    solver = res["solver"]
    assert rep["config"]["method"] == "auto" and solver["chosen_by"].startswith("discretisation check")
    assert solver["check"]["steps"] == solver["steps"] >= 4 and solver["check"]["samples"] == 48
    assert res["jvp"]["estimate"] == pytest.approx(solver["check"]["estimate"][1][2], abs=1e-6)
    assert solver["line"] in text
    # reuse both trained models: a classifier without the triple's attributes is refused
    cfg = AttributesConfig.quick(celeba_root=str(mini), image_size=16, n_samples=8, jvp_batch_size=8, solver_steps=2,
                                 method="midpoint",
                                 hold_fixed_samples=4, hold_fixed_chunk=4, n_boot=10, fidelity_images=4,
                                 flow_checkpoint=str(out / "train"), classifier_checkpoint=str(out / "classifier"),
                                 pair=("Pointy_Nose", "Smiling"))
    with pytest.raises(ValueError, match=r"classifier outputs \[.*\] do not include \['Smiling'\]"):
        run_attributes(cfg, tmp_path / "again", progress=False)
    again = run_attributes(dataclasses.replace(cfg, pair=("Pointy_Nose", "Rosy_Cheeks")), tmp_path / "again",
                           progress=False)["results"]
    assert again["flow"]["train_steps"] == 0 and again["conditioned"]["n"] == 8
    # a solver name keeps its steps; the check is still run and reported
    assert again["solver"]["chosen_by"] == "config" and (again["solver"]["method"], again["solver"]["steps"]) == (
        "midpoint", 2)
    assert again["solver"]["check"]["steps"] == 2 and again["solver"]["check"]["coarse_steps"] == 1


def test_config_errors(mini, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown attribute 'Rosy_Cheek'; did you mean \['Rosy_Cheeks'\]"):
        run_attributes(AttributesConfig.quick(celeba_root=str(mini), pair=("Pointy_Nose", "Rosy_Cheek")), tmp_path)
    with pytest.raises(ValueError, match="each name at most once"):
        run_attributes(AttributesConfig.quick(celeba_root=str(mini), pair=("Heavy_Makeup", "Rosy_Cheeks")), tmp_path)
    with pytest.raises(ValueError, match=r"classifier_attributes .* must include \['Heavy_Makeup'\]"):
        run_attributes(AttributesConfig.quick(celeba_root=str(mini), classifier_attributes=("Pointy_Nose",
                                                                                            "Rosy_Cheeks")), tmp_path)
    assert cli.main(["reproduce", "attributes", "--quick", "--celeba-root", str(tmp_path / "nope")]) == 2
    assert "CelebA: root folder not found" in capsys.readouterr().err


def test_top_share():
    v = np.array([10.0] + [1.0] * 99)
    assert top_share(v) == pytest.approx(100 / 199)
    assert top_share(torch.ones(1000)) == pytest.approx(0.01)
    assert np.isnan(top_share(np.zeros(5)))
