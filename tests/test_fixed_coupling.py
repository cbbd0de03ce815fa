"""Fixed-coupling training (given pairs), its exact resume, the pairs formats and their errors,
and `causal-delta train --pairs` / `causal-delta diagnose memorisation` end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from causal_delta import cli
from causal_delta.datasets.pairs import PairedSource, load_pairs, paired_source, save_pairs
from causal_delta.training import TrainConfig, train


def _pairs(n=16, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 5


def test_pairs_formats_agree(tmp_path):
    x0, x1 = _pairs()
    a = load_pairs(save_pairs(tmp_path / "p.npz", x0, x1))
    np.save(tmp_path / "p.npy", torch.stack([x0, x1], 1).numpy())
    b = load_pairs(tmp_path / "p.npy")
    torch.save({"x0": x0, "x1": x1}, tmp_path / "p.pt")
    c = load_pairs(tmp_path / "p.pt")
    np.save(tmp_path / "x0.npy", x0.numpy())
    np.save(tmp_path / "x1.npy", x1.numpy())
    d = paired_source(str(tmp_path / "x1.npy"), source=str(tmp_path / "x0.npy"))
    for p in (a, b, c, d):
        assert torch.equal(p.x0, x0) and torch.equal(p.x1, x1) and p.event_shape == (3,)
    s0, s1 = a.sample_pairs(50, torch.Generator().manual_seed(1))
    rows = (s0[:, None, :] == x0[None]).all(-1).int().argmax(1)  # each drawn x0 is row `rows`
    assert torch.equal(s1, x1[rows])  # ... and comes with its own x1


def test_pairs_errors(tmp_path):
    x0, x1 = _pairs()
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        load_pairs(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", a=x0.numpy())
    with pytest.raises(ValueError, match="needs arrays 'x0' and 'x1'"):
        load_pairs(tmp_path / "bad.npz")
    np.save(tmp_path / "flat.npy", x0.numpy())
    with pytest.raises(ValueError, match=r"shape \(N, 2, \*event\)"):
        load_pairs(tmp_path / "flat.npy")
    (tmp_path / "p.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="expected .npz"):
        load_pairs(tmp_path / "p.csv")
    with pytest.raises(ValueError, match="same shape"):
        PairedSource(x0, x1[:5])
    np.save(tmp_path / "x0.npy", x0[:5].numpy())
    np.save(tmp_path / "x1.npy", x1.numpy())
    with pytest.raises(ValueError, match="row for row"):
        paired_source(str(tmp_path / "x1.npy"), source=str(tmp_path / "x0.npy"))
    with pytest.raises(ValueError, match="finite data set"):
        paired_source("gaussian", {"dim": 3}, source=str(tmp_path / "x0.npy"))
    with pytest.raises(ValueError, match="coupling must be one of"):
        TrainConfig(coupling="random").validate()


def _cfg(tmp_path, path, **kw):
    base = dict(data=str(path), coupling="fixed", preset="mlp-small", model_args={"hidden": 16, "depth": 2},
                steps=12, batch_size=8, lr=1e-2, sigma=0.05, out_dir=str(tmp_path))
    base.update(kw)
    return TrainConfig(**base)


def test_fixed_coupling_resume_is_bit_exact(tmp_path):
    path = save_pairs(tmp_path / "p.npz", *_pairs())
    full = train(_cfg(tmp_path / "full", path), progress=False)

    class Killed(Exception):
        pass

    def kill_at_7(step, loss):
        if step == 7:
            raise Killed

    cfg = _cfg(tmp_path / "part", path, checkpoint_every=5)
    with pytest.raises(Killed):
        train(cfg, progress=False, callback=kill_at_7)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.resumed_from == 5 and resumed.losses == full.losses
    x, t = torch.randn(5, 3), torch.rand(5)
    torch.testing.assert_close(resumed.flow(x, t), full.flow(x, t), atol=0, rtol=0)
    # the coupling is part of the run: resuming it as an independent run is refused
    with pytest.raises(ValueError, match="coupling"):
        train(_cfg(tmp_path / "part", path, checkpoint_every=5, coupling="independent", steps=14),
              resume=True, progress=False)
    saved = json.loads((resumed.checkpoint / "meta.json").read_text())
    assert saved["train_config"]["coupling"] == "fixed" and saved["data"]["coupling"] == "fixed"


def test_cli_train_pairs_and_diagnose(tmp_path, capsys):
    x0, x1 = _pairs(n=24, d=2)
    path = save_pairs(tmp_path / "p.npz", x0, x1)
    np.save(tmp_path / "held.npy", (torch.randn(24, 2) + 5).numpy())
    run = tmp_path / "run"
    assert cli.main(["train", "--pairs", str(path), "--steps", "20", "--batch-size", "8", "--model-args",
                     '{"hidden": 16, "depth": 2}', "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "diag"
    rc = cli.main(["diagnose", "memorisation", "--checkpoint", str(run), "--heldout", str(tmp_path / "held.npy"),
                   "--out", str(out), "--steps", "4", "--t-grid", "0.25,0.5", "--jacobian-points", "2",
                   "--jacobian-k", "2", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["coupling"] == "fixed" and report["own_pair"]["n"] == 24
    assert set(report["mmd"]) >= {"memorisation", "generalisation", "fresh_vs_train", "kernel"}
    assert report["gradient_variance"]["t"] == [0.25, 0.5] and len(report["jacobian"]["train"]["values"]) == 2
    assert {"gradient_variance.png", "jacobian_spectrum.png"} <= {p.name for p in out.iterdir()}
    assert "own-pair" in (out / "summary.md").read_text() and "own-pair" in capsys.readouterr().out
    # the same with the targets only: no own-pair statistics
    np.save(tmp_path / "x1.npy", x1.numpy())
    assert cli.main(["diagnose", "memorisation", "--checkpoint", str(run), "--train-data", str(tmp_path / "x1.npy"),
                     "--out", str(tmp_path / "d2"), "--steps", "4", "--t-grid", "0.5", "--jacobian-points", "0",
                     "--no-progress"]) == 0
    assert "own_pair" not in json.loads((tmp_path / "d2" / "report.json").read_text())


def test_cli_diagnose_errors(tmp_path, capsys):
    path = save_pairs(tmp_path / "p.npz", *_pairs(n=8, d=2))
    run = tmp_path / "run"
    assert cli.main(["train", "--pairs", str(path), "--steps", "2", "--batch-size", "4", "--model-args",
                     '{"hidden": 8, "depth": 1}', "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    np.save(tmp_path / "wide.npy", np.zeros((8, 3), dtype=np.float32))
    cases = [(["--train-data", str(tmp_path / "wide.npy")], "event shape"),
             (["--t-grid", "2"], r"times in \[0, 1\]"),
             (["--train-data", str(tmp_path / "none.npy")], "not found"),
             (["--train-data", "gaussian"], "not a finite data set"),  # a sampler: crashed once
             (["--steps", "0"], "--steps"),
             (["--n-fresh", "-1"], "--n-fresh")]
    for extra, message in cases:
        rc = cli.main(["diagnose", "memorisation", "--checkpoint", str(run), "--out", str(tmp_path / "d"),
                       "--jacobian-points", "0", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and re.search(message, err), (extra, err)
    with pytest.raises(SystemExit) as exc:  # a value that is not a number: argparse's error, exit status 2
        cli.main(["diagnose", "memorisation", "--checkpoint", str(run), "--t-grid", "0.5,x"])
    assert exc.value.code == 2
    assert "argument --t-grid: expected comma-separated values (a number)" in capsys.readouterr().err
    assert cli.main(["train", "--pairs", str(path), "--source", str(path), "--out", str(tmp_path / "r2")]) == 2
    assert "--pairs holds both halves" in capsys.readouterr().err
    assert cli.main(["train", "--pairs", str(path), "--data", "x.npy", "--out", str(tmp_path / "r3")]) == 2
    assert "--pairs replaces --data" in capsys.readouterr().err
