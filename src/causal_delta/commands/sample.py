"""``causal-delta sample``: draw samples from a trained checkpoint."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "CONFIG", "SampleConfig", "DISTRIBUTED", "add_arguments", "outputs", "run"]

HELP = "generate samples from a checkpoint (.npy, optional PNG)"
DISTRIBUTED = True
"""Runs under ``torchrun`` (ranks share the work; rank 0 writes and prints)."""


@dataclass(kw_only=True)
class SampleConfig(FlowSource):
    """The options of ``causal-delta sample``."""

    n_samples: int = option(1000, short="-n", deprecated=("--num-samples",), help="samples to draw")
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = option("rk4", help="ODE solver")
    steps: int = option(50, help="solver steps (fixed grid)")
    batch_size: int = option(256, help="samples per batch")
    seed: int = option(0, help="seed of the source samples x0")
    out: str = option("samples.npy", help="output .npy file")
    png: str | None = option(None, deprecated=("--grid-png",), help="also write a PNG: image grid or 2-D scatter")
    ema: bool = option(True, help="use the EMA weights (--no-ema: the raw weights)")
    device: str = option("auto", help="auto, cpu or cuda")


CONFIG = SampleConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


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
    from ..paths import GaussianSource
    from ..report import atomic_write_bytes
    from ..solvers import sample
    from ..training import make_source
    from ._model import load_velocity

    c = from_namespace(CONFIG, args)
    check_positive_int("--n-samples", c.n_samples)
    check_positive_int("--steps", c.steps)
    check_positive_int("--batch-size", c.batch_size)
    device = dist.device(c.device)
    flow, info = load_velocity(c, use_ema=c.ema, device=device)
    source = make_source(info["train_config"], info["event_shape"])
    # Sample i's x0 depends on (--seed, i) only (the same x0 as `jvp` sample i), so under torchrun
    # each rank integrates its block of samples; rank 0 gathers and writes them.
    if c.n_samples < dist.world_size():
        raise ValueError(f"-n ({c.n_samples}) must be at least the number of processes ({dist.world_size()})")
    mine = dist.shard(c.n_samples)
    if isinstance(source, GaussianSource):
        x0 = _rng.normal(c.seed, "x0", mine, info["event_shape"]).to(torch.float32)
    else:  # a data source draws sequentially: every rank draws all and keeps its block
        x0 = source(c.n_samples, torch.Generator().manual_seed(c.seed))[mine.start:mine.stop]
    x = sample(flow, x0.to(device), method=c.solver, steps=c.steps, batch_size=c.batch_size).cpu()
    x = dist.all_gather(x)
    if not dist.is_main():
        return 0
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    out = atomic_write_bytes(Path(c.out), buf.getvalue())
    origin = f"checkpoint step {info['step']}" if info["step"] is not None else f"--model {c.model}"
    print(f"wrote {tuple(x.shape)} samples to {out} ({origin}, "
          f"{c.solver} x {c.steps} steps, ema={info['used_ema']})")
    if c.png:
        _write_png(x, c.png)
        print(f"wrote {c.png}")
    return 0
