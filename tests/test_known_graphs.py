"""Known-graph benchmarks: the tabular twin's verdicts, JVP-PC and PC on labels, the CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("causallearn", reason="PC needs causal-learn (the graph extra)")

from causal_delta.cli import main
from causal_delta.datasets.scm import SCM
from causal_delta.experiments._graph_verdicts import (
    middle_node,
    normalise_rows,
    tail_share,
    trim_rows,
)
from causal_delta.experiments.known_graphs import (
    KnownGraphsConfig,
    role_assignment,
    run_known_graphs,
)
from causal_delta.graphs import KNOWN_GRAPHS, known_graph, skeleton_shd
from causal_delta.graphs.pc import pc_labels


@pytest.fixture(scope="module")
def tabular_twin(tmp_path_factory):
    """Fork, chain and collider at three seeds, plus the five-node graph at one (test scale)."""
    # the memorisation line is checked by test_reproduce_quick_writes_its_files; here it would cost minutes
    # the solver as before (midpoint, 8 steps; still checked): these tests are about the verdicts, and
    # test_reproduce_quick_writes_its_files runs the per-flow choice ("auto")
    kw = dict(tabular_steps=400, tabular_probes=1000, n_rows=2000, image_graphs=(), n_boot=100, memorisation=False,
              method="midpoint")
    motifs = KnownGraphsConfig.quick(tabular_graphs=("fork", "chain", "collider"), tabular_seeds=(0, 1, 2), **kw)
    five = KnownGraphsConfig.quick(tabular_graphs=("five",), tabular_seeds=(0,), **kw)
    return [r for cfg in (motifs, five)
            for r in run_known_graphs(cfg, tmp_path_factory.mktemp("kg"), progress=False)["results"]["tabular"]]


def test_tabular_twin_verdicts_at_three_seeds(tabular_twin):
    motifs = [r for r in tabular_twin if "motif" in r]
    assert sorted((r["name"], r["seed"]) for r in motifs) == sorted(
        (g, s) for g in ("fork", "chain", "collider") for s in (0, 1, 2))
    for r in motifs:
        raw = r["motif"]["raw"]
        # conditioning on the middle node lowers |Corr| for fork and chain, raises it for the collider,
        # and the intervals separate, with both estimators
        assert raw["verdict_conditioned"] and raw["verdict_hold_fixed"], (r["name"], r["seed"], raw)
        assert raw["separated_hold_fixed"], (r["name"], r["seed"], raw)
        if r["name"] == "collider":
            assert abs(raw["jvp"]["estimate"]) < 0.15 < abs(raw["hold_fixed"]["estimate"])
        else:
            assert abs(raw["jvp"]["estimate"]) > 0.4 > abs(raw["hold_fixed"]["estimate"])


def test_jvp_pc_recovers_the_five_node_skeleton(tabular_twin):
    five = [r for r in tabular_twin if r["name"] == "five"]
    assert len(five) == 1
    for r in five:
        assert r["jvp_pc_hold_fixed"]["skeleton_shd"] <= 1, r["jvp_pc_hold_fixed"]


@pytest.mark.parametrize("graph", sorted(KNOWN_GRAPHS))
def test_pc_on_labels_recovers_every_skeleton(graph):
    # Fisher-z tests *linear* partial correlations, so it sees the graph when the mechanisms are
    # linear (noise non-Gaussian); with the non-linear mechanisms see the benchmark's report.
    scm = SCM(graph, mechanism="linear", noise="mixed", seed=0, n_reference=20_000)
    data = scm.sample(20_000, torch.Generator().manual_seed(1))
    res = pc_labels(data.numpy(), list(scm.names), test="fisherz", alpha=0.01)
    assert skeleton_shd(res, known_graph(graph)) == 0


def test_middle_node_and_roles():
    assert middle_node(known_graph("fork"))[0::3] == ("fork", "A")
    assert middle_node(known_graph("chain"))[0::3] == ("chain", "B")
    assert middle_node(known_graph("collider"))[0::3] == ("collider", "C")
    attrs = ("size", "hue", "brightness")
    middles = {role_assignment(known_graph("collider"), attrs, s)[1] for s in range(3)}
    assert middles == set(attrs)  # every attribute takes a turn as the middle node
    assign, middle = role_assignment(known_graph("chain"), attrs, 1)
    assert assign[1] == middle == "hue"
    with pytest.raises(ValueError, match="3 nodes and 2 edges"):
        middle_node(known_graph("five"))


def test_tail_share_and_robust_rows():
    x = torch.ones(1000, dtype=torch.float64)
    assert tail_share(x) == pytest.approx(0.01)
    x[0] = 1000.0  # one huge row carries almost everything
    assert tail_share(x) > 0.99
    dy = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(normalise_rows(dy).norm(dim=1), torch.ones(500, dtype=torch.float64))
    assert trim_rows(dy).shape[0] == 495


def test_reproduce_quick_writes_its_files(tmp_path, capsys):
    out = tmp_path / "kg"
    assert main(["reproduce", "known-graphs", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    for name in ("report.json", "summary.md", "forest.png", "scenes.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    assert {r["name"] for r in res["tabular"]} == {"fork", "five"} and res["images"][0]["name"] == "fork"
    img = res["images"][0]
    assert set(img["fidelity"]) >= {"labels", "readout_on_training_images", "readout_on_generated", "corr_gap_max"}
    for block in ("raw", "robust", "normalised"):
        assert {"jvp", "conditioned", "hold_fixed"} <= set(img["motif"][block])
    assert np.isfinite(img["motif"]["raw"]["jvp"]["estimate"])
    summary = (out / "summary.md").read_text()
    assert "## Images (scenes)" in summary
    # the memorisation diagnostic beside the estimates: one line in summary.md, numbers per flow
    line = next(ln for ln in summary.splitlines() if ln.startswith("**Memorisation diagnostic**"))
    assert "tabular (" in line and "images (" in line and "Jacobian rank" in line
    # each flow's solver and steps come from its own discretisation check (identity read-out for the
    # tabular twin, the scene read-out for images): the chosen steps are the check's, its diagnostic
    # ran on them, and the motif's JVP correlation is the check's estimate at those steps
    assert next(ln for ln in summary.splitlines() if ln.startswith("**Solver**")).count("check passed for") == 2
    for row in res["tabular"] + res["images"]:
        s = row["solver"]
        assert s["chosen_by"].startswith("discretisation check") and s["check"]["steps"] == s["steps"] >= 8
        assert json.loads(Path(row["memorisation"]["report"]).read_text())["config"]["steps"] == s["steps"]
        if "motif" in row:
            i, j = (row["nodes"].index(v) for v in row["motif"]["pair"])
            assert row["motif"]["raw"]["jvp"]["estimate"] == pytest.approx(s["check"]["estimate"][i][j], abs=1e-6)
    assert sum("motif" in row for row in res["tabular"] + res["images"]) == 2
    for row in res["tabular"] + res["images"]:
        mem = row["memorisation"]
        assert 0.0 <= mem["copy_fraction"] <= 1.0 and 0.0 < mem["real_median_ratio"] < 1.0
        assert mem["verdict"] in ("memorised", "not memorised") and Path(mem["report"]).is_file()


@pytest.mark.parametrize(
    ("setting", "match"),
    [('tabular_graphs=["A->B, B->A"]', "not a DAG"), ('image_graphs=["five"]', "3 nodes and 2 edges"),
     ('attributes=["size","hue","mood"]', "attributes must be three"), ("quantile=0", "quantile")],
)
def test_bad_settings_fail_before_training(tmp_path, capsys, setting, match):
    assert main(["reproduce", "known-graphs", "--quick", "--out", str(tmp_path / "x"), "--no-progress",
                 "--set", setting]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the error is one line
    assert last.startswith("causal-delta reproduce: error:") and match in last
    assert not (tmp_path / "x" / "tabular").exists()
