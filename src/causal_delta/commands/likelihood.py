"""``causal-delta likelihood``: log-likelihood of data under a trained flow (nats, bits/dim, CI).

See :mod:`causal_delta.likelihood` for the change of variables, the divergence estimators and
the dequantisation note. Writes ``report.json``, ``summary.md`` and ``log_prob.npy`` (``log p_1(x)``
in nats per data point, float64) into ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "LikelihoodConfig", "add_arguments", "outputs", "run", "AUTO_EXACT_MAX_DIM"]

HELP = "log-likelihood of data under a trained flow (nats and bits/dim with a CI)"
DESCRIPTION = ("Log-likelihood of data under a trained flow by the instantaneous change of variables, "
               "log p1(x) = log p0(x(0)) - ∫ div v dt, integrated from the data (t=1) back to the noise "
               "(t=0); exact divergence for small dimensions, Hutchinson (Rademacher, forward mode) for "
               "images. report.json, summary.md and log_prob.npy (per point) in --out.")

AUTO_EXACT_MAX_DIM = 64
"""``--divergence auto`` uses the exact trace up to this many dimensions, Hutchinson above."""


@dataclass(kw_only=True)
class LikelihoodConfig(FlowSource):
    """The options of ``causal-delta likelihood``."""

    data: str | None = option(None, help="data source name or file (.npy/.csv/.pt/image folder); default: the "
                                         "checkpoint's training data")
    data_args: dict[str, Any] = option(default_factory=dict, help="JSON keyword arguments of the data source")
    n_samples: int = option(1000, short="-n", deprecated=("--num-samples",),
                            help="data points (a random subset of a finite data set; 0: all of it)")
    divergence: Literal["auto", "exact", "hutchinson"] = option(
        "auto", help=f"auto: exact up to {AUTO_EXACT_MAX_DIM} dimensions, else hutchinson")
    probes: int = option(1, help="Rademacher probes per sample (hutchinson)")
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = option("rk4", help="ODE solver")
    steps: int = option(100, help="solver steps (fixed grid; dopri5 adapts)")
    atol: float = option(1e-5, help="dopri5 absolute tolerance")
    rtol: float = option(1e-5, help="dopri5 relative tolerance")
    batch_size: int = option(64, help="samples per batch")
    pixel_levels: int | None = option(None, metavar="K",
                                      help="the data are images of K levels scaled to [-1, 1]: dequantise them "
                                           "uniformly (bin 2/(K-1)) and report discrete bits/dim (an upper bound)")
    level: float = option(0.95, help="confidence level")
    seed: int = option(0, help="seed of the data subset, dequantisation and probes")
    out: str = option("runs/likelihood", help="output folder")
    ema: bool = option(True, help="use the EMA weights (--no-ema: the raw weights)")
    device: str = option("auto", help="auto, cpu or cuda")
    progress: bool = option(True, help="show the progress bar")


CONFIG = LikelihoodConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def _load_data(args: argparse.Namespace, info: dict, generator):
    """``(x (n, *event), name)``: a seeded subset of a finite data set, or ``n`` fresh draws."""
    import torch

    from ..datasets import TensorSource, load_data_source
    if args.data is None:
        cfg = info["train_config"]
        if cfg.get("coupling") == "fixed":
            raise ValueError("the checkpoint was trained on fixed pairs; give the data with --data FILE")
        name, kwargs = cfg["data"], dict(cfg.get("data_args") or {})
    else:
        name, kwargs = args.data, dict(args.data_args)
    src = load_data_source(name, **kwargs)
    if tuple(src.event_shape) != tuple(info["event_shape"]):
        raise ValueError(f"--data {name!r} has event shape {tuple(src.event_shape)}, the checkpoint "
                         f"{tuple(info['event_shape'])}")
    if isinstance(src, TensorSource):
        data = src.data
        if 0 < args.n_samples < data.shape[0]:
            data = data[torch.randperm(data.shape[0], generator=generator)[: args.n_samples]]
        return data, name
    if args.n_samples == 0:
        raise ValueError(f"--n-samples 0 means all of a finite data set; {name!r} is a sampler: give -n N")
    return src.sample(args.n_samples, generator), name


def _summary_md(report: dict) -> str:
    s = report["summary"]
    ll, bpd = s["log_likelihood"], s["bits_per_dim"]
    lines = [
        "# Log-likelihood",
        "",
        f"Checkpoint `{report['checkpoint']}` (step {report['step']}), data `{report['data']}`: "
        f"{s['n']} points of dimension {s['dim']}; divergence {s['divergence']}"
        + (f" ({s['probes']} Rademacher probes)" if s["probes"] else "")
        + f"; {report['solver']} from t=1 to t=0, {report['nfe']} evaluations per batch.",
        "",
        f"| quantity | mean | SE | {100 * s['level']:g} % CI |",
        "|---|---|---|---|",
        f"| log-likelihood (nats/sample) | {ll['mean']:.4f} | {ll['se']:.4f} | "
        f"[{ll['ci'][0]:.4f}, {ll['ci'][1]:.4f}] |",
        f"| NLL (bits/dim) | {bpd['mean']:.4f} | {bpd['se']:.4f} | [{bpd['ci'][0]:.4f}, {bpd['ci'][1]:.4f}] |",
    ]
    if "bits_per_dim_discrete" in s:
        d = s["bits_per_dim_discrete"]
        lines.append(f"| NLL, discrete (bits/dim, upper bound) | {d['mean']:.4f} | {d['se']:.4f} | "
                     f"[{d['ci'][0]:.4f}, {d['ci'][1]:.4f}] |")
        lines += ["", f"Discrete bits/dim: data dequantised uniformly within bins of width {s['bin_width']:.6g} "
                      "(Theis et al. 2016, arXiv 1511.01844); -log p - D ln(bin) bounds the discrete NLL."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import io
    import math
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .._validation import check_positive_int
    from ..likelihood import dequantize, log_likelihood
    from ..paths import GaussianSource
    from ..report import atomic_write_bytes, write_json, write_text
    from ..training import make_source, resolve_device
    from ._model import load_velocity

    c = from_namespace(CONFIG, args)
    check_positive_int("--steps", c.steps)
    check_positive_int("--batch-size", c.batch_size)
    check_positive_int("--probes", c.probes)
    if c.n_samples < 0:
        raise ValueError(f"--n-samples must be an integer >= 0, got {c.n_samples}")
    if not 0.0 < c.level < 1.0:
        raise ValueError(f"--level must be in (0, 1), got {c.level}")
    if c.pixel_levels is not None and c.pixel_levels < 2:
        raise ValueError(f"--pixel-levels must be an integer >= 2 (e.g. 256), got {c.pixel_levels}")
    device = resolve_device(c.device)
    flow, info = load_velocity(c, use_ema=c.ema, device=device)
    if not isinstance(make_source(info["train_config"], info["event_shape"]), GaussianSource):
        raise ValueError(f"the likelihood needs the density of the source; this run's source is "
                         f"{info['train_config'].get('source')!r}, only N(0, I) is supported")
    generator = torch.Generator().manual_seed(c.seed)
    x, name = _load_data(args, info, generator)
    dim = math.prod(x.shape[1:])
    method = c.divergence
    if method == "auto":
        method = "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    bin_width = None if c.pixel_levels is None else 2.0 / (c.pixel_levels - 1)
    if bin_width is not None:
        x = dequantize(x, bin_width, generator)
    start = time.perf_counter()
    res = log_likelihood(flow, x.to(device), divergence=method, probes=c.probes, method=c.solver,
                         steps=c.steps, atol=c.atol, rtol=c.rtol, batch_size=c.batch_size,
                         generator=generator, progress=c.progress)
    seconds = time.perf_counter() - start
    summary = res.summary(level=c.level, bin_width=bin_width)
    report = {
        "checkpoint": info["path"], "step": info["step"], "used_ema": info["used_ema"], "data": name,
        "solver": c.solver, "steps": c.steps if c.solver != "dopri5" else None, "nfe": res.nfe,
        "seconds": seconds, "seed": c.seed, "dequantized": bin_width is not None, "summary": summary,
        "config": config_to_dict(c),
    }
    out = Path(c.out)
    buf = io.BytesIO()
    np.save(buf, res.log_prob.double().cpu().numpy())  # per point, for paired comparisons
    atomic_write_bytes(out / "log_prob.npy", buf.getvalue())
    write_json(out / "report.json", report)
    write_text(out / "summary.md", _summary_md(report))
    ll, bpd = summary["log_likelihood"], summary["bits_per_dim"]
    print(f"log-likelihood {ll['mean']:.4f} ± {ll['se']:.4f} nats/sample, {bpd['mean']:.4f} bits/dim "
          f"({100 * c.level:g} % CI [{bpd['ci'][0]:.4f}, {bpd['ci'][1]:.4f}]) over {summary['n']} points; "
          f"{method} divergence; wrote {out / 'report.json'}")
    return 0
