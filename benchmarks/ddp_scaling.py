"""Weak scaling of DDP training on the CPU (gloo): 1 process vs 2 processes under torchrun.

Weak scaling keeps the work per process fixed: one process trains with batch ``B``, two train
with the global batch ``2B`` (``B`` rows each). Throughput is training rows per second over the
timed steps (after warm-up steps); the printed ratio is throughput(2) / throughput(1), 2.0 being
perfect. Each measurement is a fresh ``torchrun`` launch (``--standalone``) of this script in
worker mode, each process on ``--threads`` intra-op threads; rank 0 reports.

    python benchmarks/ddp_scaling.py [--preset mlp-small] [--batch 256] [--steps 60] [--warmup 10]

On a machine with fewer free cores than processes × threads the two processes compete for the
same cores and the ratio measures that contention, not DDP: report the load with the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    from causal_delta import distributed as dist
    from causal_delta.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    dist.init()
    w = dist.world_size()
    stamps: list[float] = []
    cfg = TrainConfig(data=args.data, preset=args.preset, model_args=json.loads(args.model_args),
                      steps=args.warmup + args.steps, batch_size=args.batch * w, lr=1e-3, device="cpu",
                      out_dir=args.out)
    train(cfg, progress=False, callback=lambda step, loss: stamps.append(time.perf_counter()))
    if dist.is_main():
        timed = stamps[-1] - stamps[args.warmup - 1]
        rows = args.steps * args.batch * w
        print(json.dumps({"world_size": w, "seconds": timed, "rows_per_s": rows / timed,
                          "ms_per_step": 1e3 * timed / args.steps}), flush=True)
    dist.shutdown()


def launch(nproc: int, args) -> dict:
    out = tempfile.mkdtemp(prefix="ddp-scaling-")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           __file__, "--worker", "--out", out, "--preset", args.preset, "--model-args", args.model_args,
           "--data", args.data, "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--threads", str(args.threads)]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="mlp-small")
    p.add_argument("--model-args", default='{"hidden": 256, "depth": 4}')
    p.add_argument("--data", default="gaussian")
    p.add_argument("--batch", type=int, default=256, help="rows per process and step")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--repeats", type=int, default=1, help="alternate 1- and 2-process launches this many times")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.preset} {args.model_args}, {args.batch} rows per process, {args.steps} timed steps, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} CPUs, load average {load:.1f}")
    for _ in range(args.repeats):
        one, two = launch(1, args), launch(2, args)
        print(f"1 process : {one['rows_per_s']:9.0f} rows/s ({one['ms_per_step']:.1f} ms/step)")
        print(f"2 processes: {two['rows_per_s']:9.0f} rows/s ({two['ms_per_step']:.1f} ms/step)")
        print(f"weak-scaling throughput ratio 2 / 1: {two['rows_per_s'] / one['rows_per_s']:.2f} (ideal 2.00)")


if __name__ == "__main__":
    main()
