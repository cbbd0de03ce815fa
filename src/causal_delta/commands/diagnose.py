"""``causal-delta diagnose memorisation``: does a trained flow reproduce its training pairs?

Writes ``report.json``, ``gradient_variance.png``, ``jacobian_spectrum.png`` and ``summary.md``
into ``--out`` (see :mod:`causal_delta.diagnostics.memorisation` for every statistic).

The training set is ``--train-data`` or, when omitted, the one recorded in the checkpoint:

* a pairs file (``.npz`` with ``x0``/``x1``, or ``.npy`` of shape ``(N, 2, *event)`` whose
  event shape is the checkpoint's): sources and targets, so the own-pair statistics are computed;
* any other data file or finite data source: targets only (no own-pair statistics; the
  gradient variance pairs fresh sources with the targets at random).

Fresh sources are drawn from the run's source (``N(0, I)`` unless it was trained from another
source with the independent coupling; for a fixed coupling ``N(0, I)``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "DiagnoseConfig", "add_arguments", "outputs", "run", "load_training_set"]

HELP = "diagnose a trained flow (memorisation: own-pair fraction, copy ratio, MMD, gradient variance)"
DESCRIPTION = ("Diagnose whether a trained flow memorised its training pairs: own-pair fraction, nearest-copy "
               "ratio, memorisation / generalisation MMD, gradient variance over t and Jacobian spectra "
               "(report.json, PNGs, summary.md in --out).")


@dataclass(kw_only=True)
class DiagnoseConfig(FlowSource):
    """The options of ``causal-delta diagnose``."""

    what: Literal["memorisation"] = option(positional=True, help="which diagnostic")
    train_data: str | None = option(None, metavar="FILE",
                                    help="training pairs (.npz x0/x1 or .npy (N, 2, *event)) or targets; default: "
                                         "the data recorded in the checkpoint")
    heldout: str | None = option(None, metavar="FILE", help="held-out targets for the generalisation MMD")
    out: str = option("runs/diagnose", help="output folder")
    solver: Literal["euler", "midpoint", "rk4"] = option("rk4", help="ODE solver")
    steps: int = option(50, help="solver steps")
    n_fresh: int = option(0, help="fresh sources (0: as many as training rows, <= 2048)")
    t_grid: tuple[float, ...] | None = option(None, help="comma-separated times of the gradient-variance curve")
    grad_samples: int = option(0, help="pairs per t (0: all, <= 1024)")
    sigma: float | None = option(None, help="interpolant noise for the gradient variance (default: the run's)")
    jacobian_points: int = option(8, help="points per group for J_f spectra (0 skips)")
    jacobian_k: int = option(5, help="singular values per point")
    bandwidth: float | None = option(None, help="MMD kernel width (default: median heuristic)")
    seed: int = option(0, help="seed of the fresh sources and subsamples")
    ema: bool = option(True, help="use the EMA weights (--no-ema: the raw weights)")
    progress: bool = option(True, help="show progress bars")


CONFIG = DiagnoseConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def load_training_set(path: str | None, info: dict):
    """``(sources or None, targets)`` for ``--train-data`` ``path`` or the checkpoint's data."""
    from pathlib import Path

    import numpy as np

    from ..datasets import TensorSource, load_data_source
    from ..datasets.pairs import load_pairs, paired_source

    event = tuple(info["event_shape"])
    if path is not None:
        p = Path(path).expanduser()
        is_pairs = p.suffix.lower() == ".npz"
        if p.suffix.lower() == ".npy" and p.exists():
            shape = np.load(p, mmap_mode="r", allow_pickle=False).shape
            is_pairs = len(shape) >= 3 and shape[1] == 2 and tuple(shape[2:]) == event
        if is_pairs:
            pairs = load_pairs(p)
            return pairs.x0, pairs.x1
        src = load_data_source(str(p))
        if not isinstance(src, TensorSource):  # a registered name such as "gaussian" is no data set
            raise ValueError(f"--train-data must be a file of training data (.npy, .csv, .pt, .npz or an "
                             f"image folder), got {path!r}, which is not a finite data set")
    else:
        cfg = info["train_config"]
        if "data" not in cfg:
            raise ValueError("give the training set with --train-data FILE (the flow records no training data)")
        if cfg.get("coupling") == "fixed":
            pairs = paired_source(cfg["data"], cfg.get("data_args"), cfg.get("source"), cfg.get("source_args"))
            return pairs.x0, pairs.x1
        src = load_data_source(cfg["data"], **cfg.get("data_args", {}))
        if not isinstance(src, TensorSource):
            raise ValueError(f"the checkpoint was trained on {cfg['data']!r}, which is not a finite data set; "
                             f"give the training set with --train-data FILE")
    if tuple(src.event_shape) != event:
        raise ValueError(f"--train-data has event shape {tuple(src.event_shape)}, the checkpoint {event}")
    return None, src.data


def run(args: argparse.Namespace) -> int:
    from .._validation import check_positive_int
    from ..datasets import TensorSource, load_data_source
    from ..diagnostics import MemorisationConfig, diagnose_memorisation, one_line_summary, write_memorisation_report
    from ..paths import GaussianSource
    from ..training import make_source
    from ._model import load_velocity

    c = from_namespace(CONFIG, args)
    check_positive_int("--steps", c.steps)
    for name in ("n_fresh", "grad_samples", "jacobian_points"):
        if getattr(c, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {getattr(c, name)}")
    check_positive_int("--jacobian-k", c.jacobian_k)
    t_grid = MemorisationConfig.t_grid if c.t_grid is None else c.t_grid
    flow, info = load_velocity(c, use_ema=c.ema)
    sources, targets = load_training_set(c.train_data, info)
    heldout = None
    if c.heldout is not None:
        held = load_data_source(c.heldout)
        if not isinstance(held, TensorSource):
            raise ValueError(f"--heldout must be a data file, got {c.heldout!r}")
        heldout = held.data
    cfg = info["train_config"]
    fresh = (GaussianSource(info["event_shape"]) if cfg.get("coupling") == "fixed"
             else make_source(cfg, info["event_shape"]))
    config = MemorisationConfig(method=c.solver, steps=c.steps, n_fresh=c.n_fresh, t_grid=t_grid,
                                grad_samples=c.grad_samples, sigma=c.sigma,
                                jacobian_points=c.jacobian_points, jacobian_k=c.jacobian_k,
                                bandwidth=c.bandwidth, seed=c.seed)
    report = diagnose_memorisation(flow, targets, sources=sources, heldout=heldout, fresh_source=fresh,
                                   config=config, train_sigma=float(cfg.get("sigma", 0.0)),
                                   progress=c.progress)
    report["checkpoint"] = {k: info[k] for k in ("path", "step", "preset", "used_ema")}
    report["checkpoint"]["coupling"] = cfg.get("coupling", "independent")
    report["checkpoint"]["sigma"] = cfg.get("sigma", 0.0)
    report["memorisation_config"] = report.pop("config")  # the library's settings, derived from these
    report["config"] = config_to_dict(c)
    write_memorisation_report(report, c.out)
    print(one_line_summary(report))
    print(f"wrote {c.out}/report.json, summary.md and figures")
    return 0
