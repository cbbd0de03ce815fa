"""Structural causal models over known DAGs (causal_delta.datasets.scm)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from causal_delta.cli import main
from causal_delta.datasets import load_data_source
from causal_delta.datasets.scm import SCM, _noise, partial_correlations_given_rest
from causal_delta.dependence import correlation
from causal_delta.graphs.pc import partial_correlation as _pc


def partial_correlation(x, i, j, given=()):
    return _pc(x.numpy(), i, j, list(given))

N = 20_000
SE = 1.0 / math.sqrt(N)  # standard error of a correlation near 0


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "uniform", "gamma"])
def test_noise_has_zero_mean_unit_variance(kind):
    n = 200_000
    x = _noise(kind, n, torch.Generator().manual_seed(3))
    # mean within 3 SE; variance within 3 SE of the sample variance (kurtosis <= 6 + 3 here)
    assert abs(float(x.mean())) < 3.0 / math.sqrt(n)
    assert abs(float(x.var()) - 1.0) < 3.0 * math.sqrt(9.0 / n)


def test_noise_kurtosis_is_the_named_distribution():
    g = torch.Generator().manual_seed(0)
    kurt = {k: float((_noise(k, 200_000, g) ** 4).mean()) for k in ("laplace", "uniform", "gamma")}
    assert kurt["laplace"] == pytest.approx(6.0, abs=0.3)   # Laplace: 6
    assert kurt["uniform"] == pytest.approx(1.8, abs=0.02)  # uniform: 9/5
    assert kurt["gamma"] == pytest.approx(6.0, abs=0.3)     # Gamma(2): 3 + 6/2


def _sample(graph, mechanism="mixed", seed=0, noise="mixed"):
    scm = SCM(graph, mechanism=mechanism, noise=noise, seed=seed, n_reference=50_000)
    return scm, scm.sample(N, torch.Generator().manual_seed(100 + seed))


@pytest.mark.parametrize("graph", ["fork", "collider", "chain", "independent", "five"])
def test_outputs_are_standardised_and_reproducible(graph):
    scm, x = _sample(graph)
    assert x.shape == (N, scm.dim) and x.dtype == torch.float64
    assert x.mean(0).abs().max() < 4 * SE + 3 / math.sqrt(50_000)
    assert (x.std(0) - 1).abs().max() < 0.05
    again = SCM(graph, seed=0, n_reference=50_000).sample(10, torch.Generator().manual_seed(7))
    assert torch.equal(again, SCM(graph, seed=0, n_reference=50_000).sample(10, torch.Generator().manual_seed(7)))
    assert not torch.equal(again, SCM(graph, seed=1, n_reference=50_000).sample(10, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("seed", [0, 1])
def test_fork_dependence(seed):
    scm, x = _sample("fork", mechanism="linear", seed=seed)
    a, b, c = (scm.index(v) for v in ("A", "B", "C"))
    assert abs(partial_correlation(x, b, c)) > 0.2
    assert abs(partial_correlation(x, b, c, [a])) < 4 * SE  # B ⟂ C | A for linear mechanisms


@pytest.mark.parametrize("mechanism", ["linear", "mixed"])
def test_collider_dependence(mechanism):
    scm, x = _sample("collider", mechanism=mechanism)
    a, b, c = (scm.index(v) for v in ("A", "B", "C"))
    assert abs(partial_correlation(x, a, b)) < 4 * SE  # A ⟂ B: independent causes
    assert abs(partial_correlation(x, a, b, [c])) > 0.2  # dependent given their common effect


def test_chain_dependence():
    scm, x = _sample("chain", mechanism="linear")
    a, b, c = (scm.index(v) for v in ("A", "B", "C"))
    assert abs(partial_correlation(x, a, c)) > 0.2
    assert abs(partial_correlation(x, a, c, [b])) < 4 * SE


def test_independent_graph_is_uncorrelated():
    _, x = _sample("independent")
    off = correlation(x, centered=True) - torch.eye(3, dtype=x.dtype)
    assert off.abs().max() < 4 * SE


def test_partial_correlation_two_routes_agree():
    _, x = _sample("five")
    p = partial_correlations_given_rest(x)
    m = x.shape[1]
    for i in range(m):
        for j in range(i + 1, m):
            rest = [k for k in range(m) if k not in (i, j)]
            assert partial_correlation(x, i, j, rest) == pytest.approx(float(p[i, j]), abs=1e-10)
    # with nothing given it is Pearson's r
    assert partial_correlation(x, 0, 1) == pytest.approx(float(np.corrcoef(x.T.numpy())[0, 1]), abs=1e-12)


def test_data_source_and_spec_graphs():
    src = load_data_source("scm", graph="X->Y, Y->Z", seed=2, n_reference=10_000)
    assert src.event_shape == (3,) and src.names == ("X", "Y", "Z")
    s = src.sample(5, torch.Generator().manual_seed(0))
    assert s.shape == (5, 3) and s.dtype == torch.float32
    assert src.scm.describe()["edges"] == [["X", "Y"], ["Y", "Z"]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"graph": "A->B, B->A"}, "not a DAG"), ({"graph": "spiral"}, "graph must be one of"),
     ({"graph": "fork", "mechanism": "cosine"}, "mechanism must be one of"),
     ({"graph": "fork", "noise": "cauchy"}, "noise must be one of"),
     ({"graph": "fork", "strength": 0}, "strength must be"), ({"graph": "fork", "seed": -1}, "seed must be")],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCM(**kwargs, n_reference=100)


def test_cli_trains_on_scm(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "scm", "--data-args", '{"graph": "fork", "seed": 0, "n_reference": 1000}',
                 "--steps", "3", "--batch-size", "8", "--out", str(run), "--no-progress", "--device", "cpu",
                 "--model-args", '{"hidden": 8, "depth": 1}']) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert main(["train", "--data", "scm", "--data-args", '{"graph": "A->B, B->A"}', "--steps", "3",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "not a DAG" in capsys.readouterr().err
