"""``reproduce`` under torchrun (gloo, 2 processes) gives the report of one process.

Each experiment's flow trains with DDP (the same global batch, gradients averaged over the
ranks), its per-sample loops split over the ranks (``experiments._common.split_rows``) and rank 0
writes. So every number of ``report.json``'s ``results`` must equal the single-process run's to
float tolerance (DDP training equals one process to float rounding, see test_distributed), and
the files must be written once, by rank 0. One torchrun launch runs every case
(tests/_reproduce_worker.py). ``{celeba}`` in a case stands for a fabricated mini-CelebA folder
(tests/_celeba_fixture.py); a case whose optional dependency (``REQUIRES``) is missing is skipped.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from causal_delta import cli

HERE = Path(__file__).parent

# experiment -> --set items: the quick size, cut further so that both runs take seconds
CASES = {
    "gaussian-2d": ["train_steps=60", "method=rk4", "solver_steps=6", "check_samples=64", "n_probe=600",
                    "n_jacobian=20", "n_boot=40"],
    "gaussian-1d": ["train_steps=60", "n_train=512", "solver_steps=6", "n_eval=200", "jacobian_times=3"],
    "mixture": ["train_steps=60", "n_points=100", "times=0,0.5,0.99", "method=rk4", "solver_steps=4"],
    "memorisation": ["hidden=32", "time_embed=8", "steps=40", "crossing_steps=40", "batch_size=64",
                     "crossing_pairs=32", "crossing_sigmas=0,0.5", "pairs_dim=5", "pairs_n=16", "pairs_sigmas=0,0.5",
                     "mixture_dims=3", "mixture_n=32", "mixture_sigmas=0", "heldout=32", "t_grid=0.45,0.5,0.55",
                     "solver_steps=4"],
    "flux": ["datasets=ring", "train_steps=30", "batch_size=64", "hidden=16", "n_data=400", "n_samples=100",
             "langevin_steps=50", "curl_grid=20", "directed_hidden=16"],
    # a small UNet; a small lr: Adam turns the rounding noise of DDP's averaged gradients into
    # lr-sized steps on parameters whose gradient is ~0 (biases before a GroupNorm), smaller steps
    # drift less. The memorisation diagnostic (fresh sources split over ranks) runs here.
    "pixels": ["limit=20", "batch_size=16", 'overrides=[["base_channels", 8], ["channel_mult", [1, 2]], '
               '["time_embed_dim", 16], ["norm_groups", 4]]', "train_steps=10", "lr=5e-4", "n_samples=64",
               "jvp_batch_size=32", "solver_steps=2", "n_boot=20"],
    # no sweep quantile below 0.17: intervals of a correlation of 2-5 rows amplify that drift
    "attributes": ["celeba_root={celeba}", "image_size=16", 'overrides=[["base_channels", 8], ["channel_mult", '
                   '[1, 2]], ["time_embed_dim", 16], ["norm_groups", 4]]', "train_steps=10", "classifier_steps=10",
                   "n_samples=48", "jvp_batch_size=24", "solver_steps=4", "hold_fixed_samples=16",
                   "hold_fixed_chunk=8", "sweep_quantiles=[1.0, 0.5, 0.17]", "n_boot=30", "fidelity_images=8"],
    # one tabular and one image graph at one seed, the read-out trained enough that its outputs
    # vary (an untrained one's near-constant outputs amplify the drift); the diagnostic runs in pixels
    "known-graphs": ['tabular_graphs=["fork"]', "n_rows=500", "tabular_steps=30", "tabular_probes=64",
                     'image_graphs=["fork"]', "image_steps=30", "readout_train=200", "readout_steps=40",
                     "image_rows=100", "image_probes=32", "hold_fixed_samples=16", "n_boot=20", "memorisation=false"],
}
REQUIRES = {"pixels": "sklearn", "attributes": "PIL", "known-graphs": "causallearn"}  # optional extras

# DDP's averaged gradients move the weights in their last bits (see test_distributed); bootstrap
# bounds and solver-choice statistics on top of that drift by up to ~1e-4 relative. A wrong shard
# or a rank computing other rows moves numbers by O(1).
RTOL, ATOL = 1e-3, 1e-6
# Measures of float rounding itself (pixels' central FD vs forward mode): when DDP's averaged
# gradients move the trained weights in their last bits, these errors are redrawn (by up to
# ~10 %), so they are held to their order of magnitude only.
ROUNDOFF, ROUNDOFF_RTOL = ("relative_error_float32", "relative_error_float64"), 0.5
# The discretisation check's differences between N and N/2 steps (and |diff| / SE): differences of
# nearly equal correlations, so float rounding is all of their relative error when they are tiny;
# held to an absolute tolerance (the verdicts themselves are compared exactly).
DIFFERENCES, DIFFERENCES_ATOL = {"diff", "max_abs_diff", "ratio"}, 1e-3
NUMBER = re.compile(r"([-+]?\d+\.?\d*(?:e[-+]?\d+)?)")


def _numbers_match(a, b, where, skip_roots):
    """Every number of ``a`` within tolerance of ``b`` (same structure); paths under the roots skipped."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            if not k.endswith("seconds"):  # a wall-clock time (flux's train_seconds), not a result
                _numbers_match(a[k], b[k], f"{where}.{k}", skip_roots)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers_match(x, y, f"{where}[{i}]", skip_roots)
    elif isinstance(a, bool) or a is None:
        assert a == b, f"{where}: {a!r} vs {b!r}"
    elif isinstance(a, (int, float)):
        rtol = ROUNDOFF_RTOL if where.endswith(ROUNDOFF) else RTOL
        atol = DIFFERENCES_ATOL if DIFFERENCES & set(re.split(r"[.\[]", where)) else ATOL
        assert isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=rtol, abs_tol=atol), f"{where}: {a} vs {b}"
    elif isinstance(a, str) and any(r in a for r in skip_roots):
        pass  # a path into the run's own folder
    elif isinstance(a, str) and isinstance(b, str):  # a sentence with printed numbers: same words, close numbers
        pa, pb = NUMBER.split(a), NUMBER.split(b)
        assert pa[::2] == pb[::2], f"{where}: {a!r} vs {b!r}"
        for x, y in zip(pa[1::2], pb[1::2]):
            assert math.isclose(float(x), float(y), rel_tol=0.02, abs_tol=1e-3), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _runnable_cases(root):
    """CASES whose extras are installed, ``{celeba}`` replaced by a fabricated folder under ``root``."""
    cases = {name: sets for name, sets in CASES.items()
             if name not in REQUIRES or importlib.util.find_spec(REQUIRES[name]) is not None}
    if any("{celeba}" in item for sets in cases.values() for item in sets):
        from _celeba_fixture import make_mini_celeba

        celeba = str(make_mini_celeba(root / "celeba", n=48))
        cases = {name: [item.replace("{celeba}", celeba) for item in sets] for name, sets in cases.items()}
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce_ddp")
    cases = _runnable_cases(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run([*torchrun, str(HERE / "_reproduce_worker.py"), str(root / "two"), json.dumps(cases)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs (conftest's one_thread is not up yet for a module fixture)
    try:
        for name, sets in cases.items():
            argv = ["reproduce", name, "--quick", "--no-progress", "--out", str(root / "one" / name)]
            for item in sets:
                argv += ["--set", item]
            assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return root, proc, cases


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_give_the_report_of_one(runs, name):
    root, _, cases = runs
    if name not in cases:
        pytest.skip(f"{name} needs {REQUIRES[name]} (an optional extra)")
    one = json.loads((root / "one" / name / "report.json").read_text())
    two = json.loads((root / "two" / name / "report.json").read_text())
    _numbers_match(one["results"], two["results"], "results", (str(root / "one"), str(root / "two")))
    assert one["config"] == two["config"] and one["figures"] == two["figures"]
    assert one["environment"]["processes"] == 1 and two["environment"]["processes"] == 2
    assert "2 processes (torchrun)" in (root / "two" / name / "summary.md").read_text()
    for fig in two["figures"]:
        assert (root / "two" / name / fig).stat().st_size > 0


def test_rank_0_alone_prints_and_writes(runs):
    root, proc, cases = runs
    for name in cases:
        assert proc.stdout.count(f"[{name}] done") == 1, proc.stdout
        assert not any(p.name.startswith(".") and p.name.endswith(".tmp") for p in (root / "two" / name).rglob("*"))
