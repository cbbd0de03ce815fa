"""Peak memory of ``causal-delta jvp --moments-only`` at 10⁶ vs 10⁴ probes (target ≤ 1.2×).

Each run is a fresh subprocess that runs the real command (``causal_delta.cli.main``) and prints
its own peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so the two runs
do not share a high-water mark. The flow is a small MLP (d = 16, hidden 32, depth 2, random
weights: memory does not depend on training), all 16 coordinates read (m = 16), Euler 2 steps,
batches of 256 samples (so the small run, too, holds full batches), 16 probes per sample, 1,000
Poisson-bootstrap replicates and an 8-threshold conditioning sweep — every accumulator the
command keeps. ``--raw`` adds the raw-responses route at the same sizes for contrast.

    PYTHONPATH=src python benchmarks/moments_memory.py [--probes 1000000] [--raw]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

LAUNCH = """
import resource, sys, time
from causal_delta.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
print("BENCH", rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""


def _checkpoint(root: Path) -> Path:
    import torch

    from causal_delta.checkpoint import save_checkpoint
    from causal_delta.models import MLP, MLPConfig

    torch.manual_seed(0)
    flow = MLP(MLPConfig(event_shape=(16,), hidden=32, depth=2))
    return save_checkpoint(root / "flow", 1, model_state=flow.state_dict(), meta={
        "model_config": asdict(flow.config), "event_shape": [16],
        "train_config": {"parametrization": "velocity", "preset": "custom"}})


def _run(ckpt: Path, out: Path, probes: int, per_sample: int, moments: bool) -> dict:
    argv = ["jvp", "--checkpoint", str(ckpt), "-n", str(probes // per_sample), "--probes", str(per_sample),
            "--solver", "euler", "--steps", "2", "--batch-size", "256", "--dtype", "float32", "--out", str(out)]
    if moments:
        argv += ["--moments-only", "--n-boot", "1000", "--condition-on", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *argv], env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"jvp failed ({proc.returncode}): {proc.stderr[-2000:]}")
    _, _, maxrss_kib, seconds = line[-1].split()
    return {"probes": probes, "route": "moments" if moments else "raw", "peak_rss_mib": int(maxrss_kib) / 1024,
            "seconds": float(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1_000_000, help="the large run's probes (small: 10^4)")
    parser.add_argument("--per-sample", type=int, default=16, help="probes per sample")
    parser.add_argument("--raw", action="store_true", help="also run the raw-responses route")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = _checkpoint(root)
        rows = []
        for moments in (True, False) if args.raw else (True,):
            for n in (10_000, args.probes):
                rows.append(_run(ckpt, root / f"out{len(rows)}", n, args.per_sample, moments))
                print(json.dumps(rows[-1]), flush=True)
    for route in ("moments", "raw"):
        r = [x for x in rows if x["route"] == route]
        if len(r) == 2:
            small, large = r
            ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
            print(f"{route}: peak RSS {large['peak_rss_mib']:.0f} MiB at {large['probes']:,} probes vs "
                  f"{small['peak_rss_mib']:.0f} MiB at {small['probes']:,}: ratio {ratio:.3f} "
                  f"({large['seconds']:.0f} s vs {small['seconds']:.0f} s)")
    print(time.strftime("%Y-%m-%d"), "load average", os.getloadavg())


if __name__ == "__main__":
    main()
