"""Plumbing shared by the paper experiments: output folders, seeding, timing, progress bars,
bootstrap intervals and the ``report.json`` / ``summary.md`` every experiment writes.

Every experiment writes into its own output folder:

- ``report.json``: ``{"experiment", "paper", "version", "quick", "seed", "config",
  "results", "published", "timings_s", "figures", "environment"}``; ``results`` holds the
  experiment's numbers (see each module), ``timings_s`` seconds per stage and ``"total"``.
- ``summary.md``: a short human-readable table of the key numbers.
- PNG figures, listed in ``report["figures"]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import distributed as _dist
from .. import report as _report
from .._version import __version__
from ..distributed import on_main  # steps one process does alone (a classifier, a data file), result shared

__all__ = [
    "SizedConfig",
    "prepare_output",
    "seeded",
    "Timer",
    "progress",
    "bootstrap_ci",
    "pearson",
    "config_dict",
    "write_report",
    "markdown_table",
    "fmt",
    "train_model",
    "split_rows",
    "on_main",
]



class SizedConfig:
    """Mixin for experiment config dataclasses: two named sizes.

    The dataclass defaults are the full size (the paper's settings); ``QUICK`` holds the
    fields that differ at the CI size. Keyword overrides win over both.
    """

    QUICK: ClassVar[dict[str, Any]] = {}

    @classmethod
    def full(cls, **overrides: Any):
        """The full size: the dataclass defaults, with ``overrides`` applied."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides: Any):
        """The CI size: ``QUICK`` on top of the defaults, then ``overrides``."""
        return cls(**{**cls.QUICK, **overrides})


def prepare_output(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` (and parents) if needed and return it as a :class:`Path`."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"out must be a folder, but {path} is a file")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Seed torch's global generator for the block and restore it afterwards.

    Model initialisation draws from the global generator; ``fork_rng`` keeps the caller's
    state untouched, so experiments leave no global trace. Yields a fresh
    ``torch.Generator`` seeded with ``seed`` for explicit draws.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


class Timer:
    """Wall-clock seconds per named stage: ``with timer("train"): ...``; ``timer.seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def total(self) -> float:
        """Seconds since the timer was created."""
        return time.perf_counter() - self._start


def progress(iterable, *, desc: str, enabled: bool = True, total: int | None = None):
    """Wrap ``iterable`` in a tqdm bar when ``enabled`` (and tqdm is installed)."""
    if not enabled:
        return iterable
    try:
        from .._progress import progress_bar as tqdm  # tqdm is optional
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of two 1-D arrays (``nan`` if either is constant or shorter than 2).

    A thin call into :func:`causal_delta.dependence.correlation` (``centered=True``), so the
    experiments' numbers come from the estimator users call.
    """
    from ..dependence import correlation

    a = torch.as_tensor(np.asarray(a, dtype=np.float64).ravel())
    b = torch.as_tensor(np.asarray(b, dtype=np.float64).ravel())
    if a.shape != b.shape:
        raise ValueError(f"pearson needs two arrays of the same length, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() < 2:
        return float("nan")
    return float(correlation(torch.stack([a, b], 1), centered=True)[0, 1])


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    n: int,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    interval: str = "bca",
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap interval of ``statistic(indices)`` over resampled rows.

    A thin wrapper of :func:`causal_delta.dependence.bootstrap_statistic` (one bootstrap for
    the library and the experiments); reports should record ``interval`` beside the bounds.

    Args:
        statistic: maps an index array (rows drawn with replacement from ``range(n)``) to a
            number or an array of numbers.
        n: number of rows (samples) to resample.
        n_boot: number of bootstrap replicates.
        level: coverage of the two-sided interval.
        interval: ``"bca"`` (bias-corrected and accelerated, default) or ``"percentile"``.

    Returns:
        ``(low, high)`` arrays shaped like the statistic (non-finite replicates ignored).
    """
    from ..dependence import bootstrap_statistic

    with np.errstate(all="ignore"), _quiet_nan_warnings():
        _, low, high = bootstrap_statistic(statistic, n, n_boot=n_boot, level=level, seed=seed, interval=interval)
    return low, high


@contextlib.contextmanager
def _quiet_nan_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    if is_dataclass(config):
        from ..config import config_to_dict

        return config_to_dict(config)
    if isinstance(config, Mapping):
        return _report.to_jsonable(dict(config))
    raise ValueError(f"config must be a dataclass or a mapping, got {type(config).__name__}")


def fmt(x: Any, digits: int = 4) -> str:
    """Format a number for a markdown table (``n/a`` for None / NaN)."""
    if x is None:
        return "n/a"
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return f"[{fmt(x[0], digits)}, {fmt(x[1], digits)}]"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) < 10 ** (-digits) or abs(v) >= 1e6):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers formatted with :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    *,
    experiment: str,
    paper: str,
    config: Any,
    quick: bool,
    results: Mapping[str, Any],
    published: Mapping[str, Any] | None,
    timer: Timer,
    figures: Sequence[str],
    summary: str,
) -> dict[str, Any]:
    """Write ``report.json`` and ``summary.md`` into ``out_dir``; return the report dict.

    ``summary`` is the markdown body; a title, the run's settings and timings are added.
    """
    timings = {k: round(v, 3) for k, v in timer.seconds.items()}
    timings["total"] = round(timer.total(), 3)
    cfg = config_dict(config)
    report = {
        "experiment": experiment,
        "paper": paper,
        "version": __version__,
        "quick": bool(quick),
        "seed": cfg.get("seed"),
        "config": cfg,
        "results": _report.to_jsonable(dict(results)),
        "published": _report.to_jsonable(dict(published or {})),
        "timings_s": timings,
        "figures": list(figures),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processes": _dist.world_size(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,  # reads the timings
        },
    }
    _report.write_json(out_dir / "report.json", report)
    head = [
        f"# {experiment} ({paper})",
        "",
        f"causal-delta {__version__}, {'quick' if quick else 'full'} size, seed {cfg.get('seed')}, "
        f"{timings['total']:.1f} s on {torch.get_num_threads()} CPU thread(s)"
        + (f" in each of {_dist.world_size()} processes (torchrun)." if _dist.world_size() > 1 else "."),
        "",
    ]
    figs = ["", "Figures: " + ", ".join(f"`{f}`" for f in figures)] if figures else []
    text = "\n".join(head) + "\n" + summary.rstrip() + "\n" + "\n".join(figs) + "\n"
    _report.write_text(out_dir / "summary.md", text)
    return report



def train_model(
    out_dir: Path,
    *,
    data: str,
    data_args: Mapping[str, Any] | None = None,
    preset: str,
    model_args: Mapping[str, Any] | None = None,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = True,
    ema_decay: float | None = None,
    lr_schedule: str = "constant",
    device: str = "cpu",
):
    """Train a flow with :func:`causal_delta.training.train`; checkpoints go to ``out_dir/train``.

    Returns:
        ``(flow, losses, checkpoint)``: the trained velocity field (eval mode, on ``device``),
        the loss per step and the last checkpoint's path (usable with ``causal-delta jvp``).
    """
    from ..training import TrainConfig, train

    config = TrainConfig(data=data, data_args=dict(data_args or {}), preset=preset,
                         model_args=dict(model_args or {}), steps=steps, batch_size=batch_size, lr=lr,
                         ema_decay=ema_decay, lr_schedule=lr_schedule,  # type: ignore[arg-type]
                         seed=seed, out_dir=str(Path(out_dir) / "train"), device=device)
    result = train(config, progress=progress)
    return result.flow.eval(), result.losses, result.checkpoint


def split_rows(fn: Callable[..., Any], *tensors: torch.Tensor) -> Any:
    """``fn(*rows)`` on this rank's rows of ``tensors``, gathered in row order on every rank.

    The experiments' per-sample loops (JVPs, sampling) go through this, so that under
    ``torchrun`` each rank integrates its contiguous block of the samples
    (:func:`causal_delta.distributed.map_rows`) while the draws stay those of one process: every
    rank draws all of ``tensors`` from the seed and slices its block, so the report does not
    depend on the number of processes. In one process, or with fewer rows than processes, this is
    ``fn(*tensors)`` (on every rank).

    Args:
        fn: maps slices of ``tensors`` (the same rows of each) to a tensor or a tuple of tensors
            with one row per input row; results are gathered on the CPU.
        tensors: inputs with the same number of rows (dim 0).
    """
    from .. import distributed as dist

    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"split_rows needs tensors with the same number of rows, got {[len(t) for t in tensors]}")

    def block(rows: range):
        out = fn(*(t[rows.start:rows.stop] for t in tensors))
        return tuple(o.detach().cpu() for o in out) if isinstance(out, (tuple, list)) else out.detach().cpu()

    return dist.map_rows(block, n)
