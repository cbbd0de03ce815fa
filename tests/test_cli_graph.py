"""``causal-delta graph`` end to end on a tiny flow trained on a linear collider A -> C <- B."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

pytest.importorskip("causallearn", reason="needs causal-learn (the graph extra)")

from causal_delta import cli
from causal_delta.checkpoint import save_checkpoint
from causal_delta.graphs import GraphResult, known_graph, shd
from causal_delta.models import MLPClassifier, MLPClassifierConfig


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A CSV with header A,B,C from the collider A -> C <- B, and mlp-small trained 150 steps on it."""
    root = tmp_path_factory.mktemp("graph")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4000))
    c = a + b + 0.7 * rng.standard_normal(4000)
    data = root / "collider.csv"
    np.savetxt(data, np.column_stack([a, b, c]), delimiter=",", header="A,B,C", comments="")
    run = root / "flow"
    assert cli.main(["train", "--data", str(data), "--steps", "150", "--batch-size", "128", "--lr", "2e-3",
                     "--out", str(run), "--no-progress"]) == 0
    return root, data, run


def _graph(run, out, *extra):
    return cli.main(["graph", "--checkpoint", str(run), "--n-samples", "800", "--steps", "6", "--n-boot", "100",
                     "--out", str(out), *extra])


def test_graph_tabular(flow, tmp_path):
    root, _, run = flow
    out = tmp_path / "g"
    assert _graph(run, out) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["attributes"] == ["A", "B", "C"]  # from the training CSV's header
    assert rep["labels_source"].endswith("collider.csv") and rep["labels_graph"]["test"] == "fisherz"
    assert shd(GraphResult.from_dict(rep["labels_graph"]), known_graph("collider")) == 0
    jg = rep["jvp_graph"]
    assert jg["test"] == "jvp-condition" and jg["records"] and jg["settings"]["quantile"] == 0.05
    # C depends on A and on B strongly enough that even a 150-step flow keeps both edges
    assert {frozenset(e) for e in jg["directed"] + jg["undirected"]} >= {frozenset("AC"), frozenset("BC")}
    assert len(rep["differences"]) == rep["shd"]
    dot = (out / "graphs.dot").read_text()
    assert dot.count("digraph") == 2 and '"A" -> "C"' in dot
    assert (out / "graphs.png").stat().st_size > 1000
    assert "labels (PC, fisherz" in (out / "summary.md").read_text()


def test_graph_hold_fixed_with_npy_labels(flow, tmp_path):
    root, data, run = flow
    labels = np.genfromtxt(data, delimiter=",", skip_header=1)
    np.save(root / "labels.npy", labels[:, [0, 2]])
    out = tmp_path / "h"
    assert _graph(run, out, "--estimator", "hold_fixed", "--attributes", "A,2", "--labels", str(root / "labels.npy"),
                  "--dtype", "float64") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["attributes"] == ["A", "C"] and rep["jvp_graph"]["test"] == "jvp-hold_fixed"
    assert rep["labels_graph"]["undirected"] == [["A", "C"]]


def test_graph_classifier_readout(flow, tmp_path, capsys):
    root, _, run = flow
    torch.manual_seed(0)
    clf = MLPClassifier.from_config(MLPClassifierConfig(event_shape=(3,), n_classes=3))
    ok = save_checkpoint(root / "clf", 1, model_state=clf.state_dict(),
                         meta={"model_config": asdict(clf.config), "class_names": ["P", "Q", "R"]})
    out = tmp_path / "c"
    assert _graph(run, out, "--classifier", str(ok), "--attributes", "P,R") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["attributes"] == ["P", "R"] and rep["attribute_indices"] == [0, 2]
    assert rep["labels_graph"] is None and len(rep["corr_uncentred"]) == 2
    bad = save_checkpoint(root / "clf-bad", 1, model_state=clf.state_dict(),
                          meta={"model_config": asdict(clf.config), "class_names": ["P", "Q"]})
    assert _graph(run, tmp_path / "b", "--classifier", str(bad)) == 2
    assert "outputs 3 values but names 2 attributes" in capsys.readouterr().err


@pytest.mark.parametrize("extra,match", [
    (["--attributes", "A,Z"], "--attributes: unknown attribute 'Z'; known attributes are ['A', 'B', 'C']"),
    (["--attributes", "A"], "--attributes must name at least 2 distinct attributes"),
    (["--attributes", "0,7"], "--attributes index 7 must lie in [0, 3)"),
    (["--labels", "missing.npy"], "--labels not found"),
    (["--alpha", "0"], "--alpha must lie in (0, 1)"),
    (["--quantile", "2"], "--quantile must lie in (0, 1]"),
    (["--n-boot", "0"], "--n-boot must be an integer >= 1"),
])
def test_graph_errors(flow, tmp_path, capsys, extra, match):
    _, _, run = flow
    assert _graph(run, tmp_path / "e", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("causal-delta graph: error:") and match in err[-1]


def test_graph_label_file_errors(flow, tmp_path, capsys):
    root, _, run = flow
    np.savetxt(root / "bad.csv", np.zeros((5, 2)), delimiter=",", header="A,Q", comments="")
    assert _graph(run, tmp_path / "e", "--labels", str(root / "bad.csv")) == 2
    assert "--labels: columns ['B', 'C'] are not in the header" in capsys.readouterr().err
    np.save(root / "bad.npy", np.zeros((5, 4)))
    assert _graph(run, tmp_path / "e", "--labels", str(root / "bad.npy")) == 2
    assert "has 4 columns; expected 3 (every attribute) or 3 (the selected ones)" in capsys.readouterr().err
