"""Multi-process runs (torch.distributed, gloo, 2 processes under torchrun) equal single-process ones.

One torchrun launch (tests/_ddp_worker.py) trains through the CLI and the library and writes what
the tests compare: DDP training for N steps against one process on the same global batch (float
tolerance), DDP resume (exact) and a one-process checkpoint resumed by two processes, a user's
nn.Module on a raw tensor, and `jvp` responses from 2 processes against 1 process at 2 batch sizes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _ddp_common import UserNet, small_config, user_data
from causal_delta import _rng, cli
from causal_delta import distributed as dist
from causal_delta.checkpoint import load_checkpoint
from causal_delta.training import train

HERE = Path(__file__).resolve().parent


def test_single_process_helpers_are_no_ops():
    assert not dist.launched() or "RANK" in os.environ
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.init()) == (0, 1, True, False)
    dist.barrier()
    x = torch.arange(3.0)
    assert dist.all_gather(x) is x and dist.all_reduce(x, "mean") is x and dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.shard(5) == range(5)
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(x, "prod")


@pytest.mark.parametrize("n, w", [(7, 2), (10, 3), (2, 4), (0, 2)])
def test_shards_tile_the_range_in_rank_order(n, w):
    blocks = [dist.shard(n, rank_=r, world_size_=w) for r in range(w)]
    assert [i for b in blocks for i in b] == list(range(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError, match="rank must lie in"):
        dist.shard(n, rank_=w, world_size_=w)
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        dist.shard(-1)


def test_counter_based_draws_depend_on_the_index_only():
    whole = _rng.normal(3, "x0", range(50), (2, 3))
    parts = torch.cat([_rng.normal(3, "x0", r, (2, 3)) for r in (range(7), range(7, 8), range(8, 50))])
    assert torch.equal(whole, parts) and whole.dtype == torch.float64 and whole.shape == (50, 2, 3)
    assert not torch.equal(whole, _rng.normal(4, "x0", range(50), (2, 3)))  # the seed matters
    z = _rng.probes(3, range(10, 20), (2, 3), probes=4)
    assert not torch.equal(z[:, 0], whole[10:20])  # probes are their own stream
    torch.testing.assert_close(z.flatten(2).norm(dim=2), torch.ones(10, 4, dtype=torch.float64))
    signs = _rng.probes(3, range(5), (6,), probes=2, kind="rademacher", normalize=False)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="stream must be one of"):
        _rng.normal(0, "noise", range(3), (2,))
    with pytest.raises(ValueError, match="rows must be a contiguous range"):
        _rng.normal(0, "x0", range(0, 6, 2), (2,))
    with pytest.raises(ValueError, match="seed must be an integer"):
        _rng.normal(-1, "x0", range(3), (2,))
    with pytest.raises(ValueError, match="kind must be"):
        _rng.probes(0, range(3), (2,), kind="uniform")


def test_counter_based_normals_are_standard_normal():
    # 200,000 draws: mean 0 and variance 1 within 3 standard errors, P(z < 1.0) within 3 SE of Phi(1).
    z = _rng.normal(11, "probes", range(20_000), (10,)).flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 3 / n**0.5
    assert abs(float(z.var()) - 1) < 3 * (2 / n) ** 0.5
    p = 0.8413447460685429
    assert abs(float((z < 1.0).double().mean()) - p) < 3 * (p * (1 - p) / n) ** 0.5
    r = _rng.rademacher(11, "x0", range(20_000), (10,))
    assert abs(float(r.mean())) < 3 / n**0.5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process reference runs, then two torchrun launches (most of this file's time: each
    starts three interpreters that import torch)."""
    root = tmp_path_factory.mktemp("ddp")
    single = train(small_config(root / "single"), progress=False)
    torch.manual_seed(0)
    user = train(UserNet(), user_data(), small_config(root / "user", steps=4), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # The CLI as users launch it (it joins the group, rank 0 locks, writes and prints, it leaves).
    proc = subprocess.run([*torchrun, "-m", "causal_delta.cli", "train", "--model-args", '{"hidden": 16, "depth": 2}',
                           "--steps", "4", "--batch-size", "8", "--device", "cpu", "--no-progress", "--out",
                           str(root / "cli_train")], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    worker = subprocess.run([*torchrun, str(HERE / "_ddp_worker.py"), str(root)], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert worker.returncode == 0, worker.stderr[-4000:]
    assert worker.stderr.count("causal-delta mixture: error: mixture runs in one process; launch it without "
                               "torchrun (under torchrun: train, sample, jvp, reproduce)") == 1, worker.stderr[-3000:]
    assert worker.stderr.count("causal-delta mixture (rank 1): error: mixture runs in one process") == 1
    return root, single, user, json.loads((root / "ddp.json").read_text()), proc.stdout + worker.stdout


def _weights(run_dir):
    ckpt = load_checkpoint(run_dir)
    return ckpt.model_state, ckpt.ema_state


def test_ddp_training_equals_single_process(runs):
    root, single, _, ddp, _ = runs
    assert ddp["world"] == 2
    np.testing.assert_allclose(ddp["full"], single.losses, rtol=1e-5)
    (w1, e1), (w2, e2) = _weights(root / "single"), _weights(root / "ddp")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e2[k], e1[k], rtol=1e-5, atol=1e-6)
    assert load_checkpoint(root / "ddp").meta["world_size"] == 2


def test_resume_under_ddp_is_exact_and_across_world_sizes(runs, tmp_path):
    root, single, _, ddp, _ = runs
    assert ddp["resumed_from"] == 3 and ddp["resumed"] == ddp["full"]  # bit for bit
    (w1, e1), (w2, e2) = _weights(root / "ddp"), _weights(root / "ddp_resume")
    assert all(torch.equal(w1[k], w2[k]) and torch.equal(e1[k], e2[k]) for k in w1)
    # Three steps in one process, three more in two: the one-process run to float tolerance.
    assert ddp["from_one"][:3] == single.losses[:3]
    np.testing.assert_allclose(ddp["from_one"], single.losses, rtol=1e-5)
    # And back: a checkpoint written by two processes, continued by one.
    from_two = train(small_config(tmp_path / "from_two"), resume=root / "ddp_resume" / "checkpoints" / "step-00000003",
                     progress=False)
    assert from_two.resumed_from == 3 and from_two.losses[:3] == ddp["full"][:3]
    np.testing.assert_allclose(from_two.losses, single.losses, rtol=1e-5)


def test_user_module_and_dataset_train_under_ddp(runs):
    # The single-process run trained on the raw tensor: a Dataset of it draws the same rows.
    root, _, user, ddp, _ = runs
    np.testing.assert_allclose(ddp["user"], user.losses, rtol=1e-5)
    meta = load_checkpoint(root / "ddp_user").meta
    assert meta["model_source"] == {"kind": "user", "class": "_ddp_common.UserNet"}
    assert meta["train_config"]["preset"] is None and meta["train_config"]["data"] == "user:TensorDataset"


def test_gather_and_reduce_across_ranks(runs):
    _, _, _, ddp, _ = runs
    assert ddp["gathered"] == [2.0 * i for i in range(7)] and ddp["total"] == 7.0


def test_map_rows_and_on_main_across_ranks(runs):
    root, _, _, ddp, _ = runs
    other = json.loads((root / "ddp_rank1.json").read_text())
    assert ddp["blocks"] == [[0, 2]] and other["blocks"] == [[2, 5]]  # each rank computed its block only
    assert ddp["squares"] == other["squares"] == [0, 1, 4, 9, 16]
    assert ddp["ranks"] == [[0, 0], [0, 0], [1, 1], [1, 1], [1, 1]]
    assert ddp["on_main"] == other["on_main"] == {"rank": 0} and ddp["ran"] == [1] and other["ran"] == []
    assert "invalid literal" in ddp["failure"] and other["failure"].startswith("rank 0 failed: invalid literal")
    assert not (root / "written_by_rank1.json").exists()  # report writers write on rank 0 only


def test_map_rows_in_one_process_is_fn_of_all_rows():
    out = dist.map_rows(lambda r: (torch.arange(r.start, r.stop), torch.ones(len(r), 3)), 4)
    assert out[0].tolist() == [0, 1, 2, 3] and out[1].shape == (4, 3)
    with pytest.raises(ValueError, match="rows in dim 0"):
        dist.map_rows(lambda r: torch.ones(len(r) + 1), 4)
    with pytest.raises(ValueError, match="n must be an integer"):
        dist.map_rows(lambda r: torch.ones(len(r)), 0)
    assert dist.on_main(lambda: 3) == 3


def test_cli_under_torchrun_rank_0_writes_and_prints(runs):
    root, _, _, _, stdout = runs
    assert stdout.count("trained 4 steps on 2 processes") == 1, stdout
    assert stdout.count("wrote ") == 2, stdout  # jvp and sample: one line each, from rank 0
    assert load_checkpoint(root / "cli_train").meta["world_size"] == 2
    assert not (root / "cli_train" / ".causal-delta.lock").exists()


@pytest.mark.parametrize("batch_size", ["2", "7"])
def test_jvp_from_two_processes_equals_one_process_at_any_batch_size(runs, tmp_path, batch_size):
    root = runs[0]
    out = tmp_path / "jvp_1"
    assert cli.main(["jvp", "--checkpoint", str(root / "cli_train"), "-n", "7", "--probes", "2", "--steps", "3",
                     "--batch-size", batch_size, "--dtype", "float64", "--save-samples", "--out", str(out)]) == 0
    one, two = np.load(out / "responses.npz"), np.load(root / "jvp_2" / "responses.npz")
    assert np.array_equal(one["x0"], two["x0"])  # the draws are bit-identical
    assert np.array_equal(one["sample_index"], two["sample_index"])
    assert one["sample_index"].tolist() == [i for i in range(7) for _ in range(2)]
    np.testing.assert_allclose(two["responses"], one["responses"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(two["samples"], one["samples"], rtol=1e-12, atol=1e-14)
    rep = json.loads((root / "jvp_2" / "report.json").read_text())
    assert rep["processes"] == 2 and rep["solver"]["batches"] == 4  # shards of 3 and 4 in batches of 2


def test_sample_from_two_processes_equals_one_process(runs, tmp_path):
    root = runs[0]
    out = tmp_path / "samples_1.npy"
    assert cli.main(["sample", "--checkpoint", str(root / "cli_train"), "-n", "7", "--steps", "3", "--batch-size", "7",
                     "--device", "cpu", "--out", str(out)]) == 0
    one, two = np.load(out), np.load(root / "samples_2.npy")
    assert one.shape == two.shape == (7, 2)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-7)  # float32, batches of 3 and 4 against 7
