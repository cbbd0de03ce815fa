"""``causal-delta jvp --moments-only`` and ``causal-delta dependence`` on the moments file."""

import json
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

from causal_delta import cli
from causal_delta.checkpoint import save_checkpoint
from causal_delta.commands import _jvp_moments
from causal_delta.dependence import correlation
from causal_delta.jvp import attribute_jvp
from causal_delta.models import build_model
from causal_delta.moments import MomentAccumulator

N, P, FEATURES = 60, 2, [0, 1, 3]


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    flow = build_model("mlp-small", event_shape=(2, 2))
    return save_checkpoint(root / "flow", 1, model_state=flow.state_dict(), meta={
        "model_config": asdict(flow.config), "event_shape": [2, 2],
        "train_config": {"parametrization": "velocity", "preset": "mlp-small"}})


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # A small pilot, so that a 60-sample run crosses it.
    monkeypatch.setattr(_jvp_moments, "PILOT_SAMPLES", 16)


def _jvp(flow_dir, out, *extra):
    argv = ["jvp", "--checkpoint", str(flow_dir), "-n", str(N), "--probes", str(P), "--features", "0,1,3",
            "--solver", "euler", "--steps", "3", "--dtype", "float64", "--moments-only", "--n-boot", "50",
            "--condition-on", "0", "--quantiles", "1,0.5,0.2", "--out", str(out), *extra]
    assert cli.main(argv) == 0
    return MomentAccumulator.load(out / "moments.npz")


def _same(a, b, tol=1e-12):
    for name in MomentAccumulator._SUMS:
        x, y = getattr(a, name).double(), getattr(b, name).double()
        assert float((x - y).abs().max()) <= tol * max(float(x.abs().max()), 1.0), name


def test_moments_do_not_depend_on_the_batch_size_and_equal_the_rows(flow_dir, tmp_path):
    a = _jvp(flow_dir, tmp_path / "a", "--batch-size", "7")
    b = _jvp(flow_dir, tmp_path / "b", "--batch-size", "64")
    _same(a, b)
    assert a.n == N * P
    # the same settings; the pilot thresholds to float64 rounding (BLAS sums differ with the batch size)
    for x, y in zip(a._config(), b._config(), strict=True):
        assert np.allclose(x, y, rtol=1e-12, atol=0) if isinstance(x, tuple) else x == y
    # Draws are a function of (seed, sample index): any sub-range is the slice of the whole.
    x0, z = _jvp_moments.draw(0, 0, N, (2, 2), probes=P, kind="gaussian", normalize=True)
    x5, z5 = _jvp_moments.draw(0, 5, 21, (2, 2), probes=P, kind="gaussian", normalize=True)
    assert torch.equal(x5, x0[5:21]) and torch.equal(z5, z0 := z[5:21]) and z0.shape == (16, P, 2, 2)
    # The file holds the sums of the rows that the raw route computes from the same draws.
    from causal_delta.checkpoint import load_flow

    velocity, _ = load_flow(str(flow_dir))
    res = attribute_jvp(velocity.double(), x0, z, features=FEATURES, method="euler", steps=3)
    dy = res.responses.double()
    rows = MomentAccumulator(3, n_boot=50, seed=0, k=0, thresholds=a.thresholds, quantiles=a.quantiles)
    _same(a, rows.update(dy, index=res.sample_index), tol=1e-10)
    assert float((a.correlation() - correlation(dy)).abs().max()) < 1e-10
    # The thresholds are the pilot's quantiles of |dy_0| (first 16 samples = 32 rows); 1 keeps all.
    pilot = dy[: 16 * P, 0].abs()
    assert a.thresholds[0] == float("inf") and abs(float(a.thresholds[1]) - float(torch.quantile(pilot, 0.5))) < 1e-12
    assert int(a.cond_count[1]) == int((dy[:, 0].abs() <= a.thresholds[1]).sum())
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["responses_file"] == "moments.npz" and rep["n_responses"] == N * P
    assert rep["moments"]["pilot_samples"] == 16 and not (tmp_path / "a" / "responses.npz").exists()


def _table(text):
    rows = re.findall(r"~ .+?\s{2,}([-0-9.]+)\s+\[([-0-9.]+), ([-0-9.]+)\]\s+(\d+)", text)
    return [(float(e), float(lo), float(hi), int(n)) for e, lo, hi, n in rows]


def test_dependence_reads_moments_and_prints_the_table_of_the_rows(flow_dir, tmp_path, capsys):
    acc = _jvp(flow_dir, tmp_path / "m")
    x0, z = _jvp_moments.draw(0, 0, N, (2, 2), probes=P, kind="gaussian", normalize=True)
    from causal_delta.checkpoint import load_flow

    velocity, _ = load_flow(str(flow_dir))
    res = attribute_jvp(velocity.double(), x0, z, features=FEATURES, method="euler", steps=3)
    raw = tmp_path / "responses.npz"
    np.savez(raw, responses=res.responses.double().numpy(), sample_index=res.sample_index.numpy(),
             names=np.array(["pixel 0", "pixel 1", "pixel 3"]))
    capsys.readouterr()
    assert cli.main(["dependence", "--responses", str(raw), "--n-boot", "50", "--interval", "percentile",
                     "--out", str(tmp_path / "d_raw")]) == 0
    from_rows = capsys.readouterr().out
    assert cli.main(["dependence", "--responses", str(tmp_path / "m" / "moments.npz"), "--condition-on", "0",
                     "--quantile", "0.5", "--quantiles", "1,0.2", "--out", str(tmp_path / "d_mom")]) == 0
    from_moments = capsys.readouterr().out
    assert from_rows.splitlines()[0] == from_moments.splitlines()[0]  # same header: 95 % CI (percentile)
    t_rows, t_mom = _table(from_rows), _table(from_moments)
    assert len(t_rows) == len(t_mom) == 3
    for r, s in zip(t_rows, t_mom):
        assert r[0] == s[0] and r[3] == s[3] == N  # same estimate and sample count
        assert s[1] <= s[0] <= s[2]
    rep = json.loads((tmp_path / "d_mom" / "report.json").read_text())
    assert rep["interval"] == "percentile" and rep["n_boot"] == 50 and rep["bootstrap_groups"] == "samples"
    cond = rep["conditioning"]
    assert cond["kept"] == int(acc.cond_count[1]) and cond["threshold"] == float(acc.thresholds[1])
    assert rep["sweep"]["quantiles"] == [1.0, 0.2] and rep["sweep"]["kept"][0] == N * P
    assert (tmp_path / "d_mom" / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--n-boot", "10"], "--n-boot: only with --moments-only"),
    (["--moments-only", "--save-samples"], "--save-samples holds every sample"),
    (["--moments-only", "--condition-on", "5"], r"--condition-on must be a feature index in \[0, 3\)"),
    (["--moments-only", "--seed", "-1"], "--seed must be >= 0 with --moments-only"),
])
def test_jvp_moments_bad_input(flow_dir, tmp_path, capsys, argv, message):
    rc = cli.main(["jvp", "--checkpoint", str(flow_dir), "-n", "4", "--features", "0,1,3", "--steps", "2",
                   "--out", str(tmp_path / "x"), *argv])
    assert rc == 2 and re.search(message, capsys.readouterr().err)


def test_dependence_moments_bad_input(flow_dir, tmp_path, capsys):
    _jvp(flow_dir, tmp_path / "m")
    path = str(tmp_path / "m" / "moments.npz")
    plain = tmp_path / "plain.npz"
    MomentAccumulator(3, n_boot=5).update(torch.randn(10, 3, dtype=torch.float64)).save(plain)
    for argv, message in [
        (["--interval", "bca"], "--interval bca needs the rows"),
        (["--n-boot", "51"], "--n-boot must be <= the 50 replicates"),
        (["--seed", "1"], "--seed: the replicates in .* were drawn with seed 0"),
        (["--condition-on", "1"], "--condition-on must be 0, the feature"),
        (["--condition-on", "0", "--quantile", "0.3"], r"holds the quantiles \[1.0, 0.5, 0.2\]; got 0.3"),
        (["--condition-on", "0", "--threshold", "0.123"], "threshold must be one of the accumulated thresholds"),
    ]:
        rc = cli.main(["dependence", "--responses", path, "--out", str(tmp_path / "d"), *argv])
        assert rc == 2 and re.search(message, capsys.readouterr().err), argv
    rc = cli.main(["dependence", "--responses", str(plain), "--condition-on", "0", "--out", str(tmp_path / "d")])
    assert rc == 2 and "holds no conditioning sums" in capsys.readouterr().err


def _rank_main(rank: int, world: int, port: int, argv: list) -> None:
    import torch.distributed as dist

    from causal_delta.commands import jvp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        jvp.run(cli.build_parser().parse_args(argv))  # not cli.main: its output lock is one per folder
    finally:
        dist.destroy_process_group()


def test_two_processes_write_the_moments_of_one(flow_dir, tmp_path):
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    one = _jvp(flow_dir, tmp_path / "one", "--batch-size", "5")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["jvp", "--checkpoint", str(flow_dir), "-n", str(N), "--probes", str(P), "--features", "0,1,3",
            "--solver", "euler", "--steps", "3", "--dtype", "float64", "--moments-only", "--n-boot", "50",
            "--condition-on", "0", "--quantiles", "1,0.5,0.2", "--batch-size", "9", "--out", str(tmp_path / "two")]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # fork keeps the small blocks
    if method != "fork":
        pytest.skip("needs the fork start method (the test shrinks the pilot in this process)")
    mp.start_processes(_rank_main, args=(2, port, argv), nprocs=2, join=True, start_method=method)
    two = MomentAccumulator.load(tmp_path / "two" / "moments.npz")
    _same(one, two)
    rep = json.loads((tmp_path / "two" / "report.json").read_text())
    assert rep["n_responses"] == N * P


def test_moments_equal_the_sums_of_the_raw_route(flow_dir, tmp_path):
    """Both routes draw sample i's x0 and probes from (seed, i): the streamed sums are the raw rows' sums."""
    acc = _jvp(flow_dir, tmp_path / "m", "--batch-size", "16")
    argv = ["jvp", "--checkpoint", str(flow_dir), "-n", str(N), "--probes", str(P), "--features", "0,1,3",
            "--solver", "euler", "--steps", "3", "--dtype", "float64", "--out", str(tmp_path / "raw")]
    assert cli.main(argv) == 0
    dy = torch.from_numpy(np.load(tmp_path / "raw" / "responses.npz")["responses"])
    assert acc.n == dy.shape[0]
    torch.testing.assert_close(acc.outer.double(), dy.T @ dy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.total.double(), dy.sum(0), rtol=1e-12, atol=1e-12)
