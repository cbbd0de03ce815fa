"""Writing results a person can open: JSON reports, markdown summaries, PNG figures.

All writers are atomic (write to a temporary file in the same directory, then rename), so
an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

__all__ = ["to_jsonable", "atomic_write_bytes", "write_json", "write_text", "new_figure", "save_figure"]


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy arrays/scalars, dataclasses, paths and tuples to JSON types.

    Non-finite floats become ``None`` (JSON has no NaN), so reports stay valid JSON.

    Example:
        >>> import torch
        >>> to_jsonable({"x": torch.tensor([1.5, 2.0]), "bad": float("nan"), "shape": (2, 3)})
        {'x': [1.5, 2.0], 'bad': None, 'shape': [2, 3]}
    """
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy array or numpy scalar
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        return to_jsonable(obj.tolist())
    return str(obj)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``).

    Raises:
        OSError: naming ``path`` when it cannot be written (disk full, permission, ...); the
            previous content of ``path``, if any, is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; reports are meant to be read by others too.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. ENOSPC from write(): say where
            raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (see :func:`to_jsonable`) as indented JSON, atomically.

    A report is one per run: under ``torchrun`` with several processes only rank 0 writes it, the
    other ranks (which compute the same report) return ``path`` without touching it. The same
    holds for :func:`write_text` and :func:`save_figure`; :func:`atomic_write_bytes` writes on
    every rank (e.g. per-rank shards).
    """
    from .distributed import is_main

    if not is_main():
        return Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (e.g. a markdown summary) atomically; rank 0 alone under ``torchrun``."""
    from .distributed import is_main

    if not is_main():
        return Path(path)
    return atomic_write_bytes(path, text.encode())


_FIGURE_KWARGS = ("figsize", "dpi", "facecolor", "edgecolor", "frameon", "layout", "constrained_layout",
                  "tight_layout")


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any):
    """``(fig, axes)`` like ``matplotlib.pyplot.subplots``, on a private Agg canvas.

    The figure is a :class:`matplotlib.figure.Figure` with a ``FigureCanvasAgg``: nothing is
    registered with pyplot and the user's backend is left as it is (no ``matplotlib.use``), so a
    notebook or GUI session is unaffected. Figure keywords (``figsize``, ``dpi``, ``layout``, ...)
    go to the figure, the rest (``squeeze``, ``sharex``, ``subplot_kw``, ...) to ``Figure.subplots``.

    Example:
        >>> fig, (a, b) = new_figure(1, 2, figsize=(4, 2))
        >>> type(fig).__name__, type(fig.canvas).__name__
        ('Figure', 'FigureCanvasAgg')
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("figures need matplotlib, which is not installed: pip install matplotlib "
                          "(or causal-delta[cli])") from exc
    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_KWARGS if k in kwargs})
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (a pyplot figure is closed afterwards).

    Rank 0 alone renders and writes under ``torchrun`` (see :func:`write_json`).
    """
    import io

    from .distributed import is_main

    if not is_main():
        return Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if fig.canvas.manager is not None:  # made by pyplot: release it from pyplot's registry
        import matplotlib.pyplot as plt

        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
