"""``causal-delta sample``: draw samples from a trained checkpoint."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "CONFIG", "SampleConfig", "add_arguments", "outputs", "run"]

HELP = "generate samples from a checkpoint (.npy, optional PNG)"


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

    from .._validation import check_positive_int
    from ..report import atomic_write_bytes
    from ..solvers import sample
    from ..training import make_source, resolve_device
    from ._model import load_velocity

    c = from_namespace(CONFIG, args)
    check_positive_int("--n-samples", c.n_samples)
    check_positive_int("--steps", c.steps)
    check_positive_int("--batch-size", c.batch_size)
    device = resolve_device(c.device)
    flow, info = load_velocity(c, use_ema=c.ema, device=device)
    source = make_source(info["train_config"], info["event_shape"])
    x0 = source(c.n_samples, torch.Generator().manual_seed(c.seed)).to(device)
    x = sample(flow, x0, method=c.solver, steps=c.steps, batch_size=c.batch_size).cpu()
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
