"""``causal-delta sample``: draw samples from a trained checkpoint."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "DISTRIBUTED", "add_arguments", "outputs", "run"]

HELP = "generate samples from a checkpoint (.npy, optional PNG)"
DISTRIBUTED = True
"""Runs under ``torchrun`` (ranks share the work; rank 0 writes and prints)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory")
    parser.add_argument("-n", "--num-samples", type=int, default=1000)
    parser.add_argument("--solver", choices=("euler", "midpoint", "rk4", "dopri5"), default="rk4")
    parser.add_argument("--steps", type=int, default=50, help="solver steps (fixed grid)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.npy", help="output .npy file")
    parser.add_argument("--png", default=None, help="also write a PNG: image grid or 2-D scatter")
    parser.add_argument("--grid-png", dest="png", help=argparse.SUPPRESS)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def outputs(args: argparse.Namespace):
    """The samples file ``--out`` and the optional ``--png``, each locked while the run lasts."""
    from ._common import Output

    return [Output(args.out, kind="file"), Output(args.png, kind="file", arg="--png")]


def _write_png(samples, path) -> None:
    from ..report import new_figure, save_figure

    x = samples.float()
    if x.ndim == 4:
        n = min(64, x.shape[0])
        cols = int(n**0.5 + 0.999)
        rows = (n + cols - 1) // cols
        fig, axes = new_figure(rows, cols, figsize=(cols, rows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                img = ((x[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    elif x.ndim == 2 and x.shape[1] in (1, 2):
        fig, ax = new_figure(figsize=(5, 5))
        if x.shape[1] == 2:
            ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, alpha=0.5)
            ax.set_aspect("equal")
        else:
            ax.hist(x[:, 0].numpy(), bins=60)
    else:
        raise ValueError(f"--png needs images (N, C, H, W) or 1-/2-D samples, got shape {tuple(x.shape)}")
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    import io
    from pathlib import Path

    import numpy as np
    import torch

    from .. import _rng
    from .. import distributed as dist
    from .._validation import check_positive_int
    from ..checkpoint import load_flow
    from ..paths import GaussianSource
    from ..report import atomic_write_bytes
    from ..solvers import sample
    from ..training import make_source

    check_positive_int("num_samples", args.num_samples)
    check_positive_int("steps", args.steps)
    check_positive_int("batch_size", args.batch_size)
    device = dist.device(args.device)
    flow, info = load_flow(args.checkpoint, use_ema=not args.no_ema, device=device)
    source = make_source(info["train_config"], info["event_shape"])
    # Sample i's x0 depends on (--seed, i) only (the same x0 as `jvp` sample i), so under torchrun
    # each rank integrates its block of samples; rank 0 gathers and writes them.
    if args.num_samples < dist.world_size():
        raise ValueError(f"-n ({args.num_samples}) must be at least the number of processes ({dist.world_size()})")
    mine = dist.shard(args.num_samples)
    if isinstance(source, GaussianSource):
        x0 = _rng.normal(args.seed, "x0", mine, info["event_shape"]).to(torch.float32)
    else:  # a data source draws sequentially: every rank draws all and keeps its block
        x0 = source(args.num_samples, torch.Generator().manual_seed(args.seed))[mine.start:mine.stop]
    x = sample(flow, x0.to(device), method=args.solver, steps=args.steps, batch_size=args.batch_size).cpu()
    x = dist.all_gather(x)
    if not dist.is_main():
        return 0
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    out = atomic_write_bytes(Path(args.out), buf.getvalue())
    print(f"wrote {tuple(x.shape)} samples to {out} (checkpoint step {info['step']}, "
          f"{args.solver} x {args.steps} steps, ema={info['used_ema']})")
    if args.png:
        _write_png(x, args.png)
        print(f"wrote {args.png}")
    return 0
