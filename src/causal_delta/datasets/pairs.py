r"""A fixed coupling: given pairs ``(x0_i, x1_i)``, drawn together so that each stays paired.

Flow matching with a fixed coupling (arXiv 2510.18118) regresses ``x1_i - x0_i`` along the line from
``x0_i`` to ``x1_i`` for a fixed set of ``N`` pairs, instead of pairing a fresh ``x0 ~ N(0, I)``
with a data point at every step (the *independent* coupling). The pairs come from

* one file holding both halves: ``.npz`` with arrays ``x0`` and ``x1`` (each ``(N, *event)``),
  ``.npy`` of shape ``(N, 2, *event)`` (``[:, 0]`` the sources, ``[:, 1]`` the targets), or a
  ``.pt`` dict with tensors ``x0`` and ``x1``; or
* two finite data sources of the same length (e.g. two ``.npy`` / ``.csv`` files): row ``i``
  of the source is paired with row ``i`` of the data.

:meth:`PairedSource.sample_pairs` draws ``n`` row indices uniformly with replacement from a
``torch.Generator`` and returns both halves at those rows, so the generator state is the whole
loader position (exact resume, as for every data source).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import DataSource, TensorSource

__all__ = ["PairedSource", "load_pairs", "paired_source", "save_pairs"]


class PairedSource(DataSource):
    """``N`` fixed pairs ``(x0_i, x1_i)``, each ``(N, *event)`` float32.

    As a :class:`~causal_delta.datasets.DataSource` it samples the targets ``x1`` (so code that
    only needs the data distribution can use it as one); :meth:`sample_pairs` keeps the pairing.

    Attributes:
        x0, x1: the sources and targets, ``(N, *event)``.
    """

    def __init__(self, x0: Tensor, x1: Tensor, name: str = "pairs") -> None:
        x0, x1 = torch.as_tensor(x0), torch.as_tensor(x1)
        if x0.shape != x1.shape:
            raise ValueError(f"pairs {name!r}: x0 and x1 must have the same shape (N, *event), got "
                             f"{tuple(x0.shape)} and {tuple(x1.shape)}")
        # TensorSource checks shape, dtype and finiteness with messages naming the data.
        self._x0 = TensorSource(x0, f"{name} (x0)")
        self._x1 = TensorSource(x1, f"{name} (x1)")
        self.x0, self.x1 = self._x0.data, self._x1.data
        self.name = name
        self.event_shape = tuple(self.x1.shape[1:])

    def __len__(self) -> int:
        return self.x1.shape[0]

    def sample_pairs(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` pairs drawn with replacement: ``(x0[idx], x1[idx])``, each ``(n, *event)``."""
        idx = torch.randint(0, len(self), (n,), generator=generator)
        return self.x0[idx], self.x1[idx]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_pairs(n, generator)[1]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": len(self), "dtype": "float32", "coupling": "fixed"}


def _from_array(arr: Tensor, path: Path) -> tuple[Tensor, Tensor]:
    if arr.ndim < 3 or arr.shape[1] != 2:
        raise ValueError(f"pairs file {path}: a single array must have shape (N, 2, *event) "
                         f"([:, 0] = x0, [:, 1] = x1), got {tuple(arr.shape)}")
    return arr[:, 0], arr[:, 1]


def load_pairs(path: str | Path) -> PairedSource:
    """Read pairs from one file (``.npz`` with ``x0``/``x1``, ``.npy`` ``(N, 2, *event)``, ``.pt``).

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: naming ``path`` and the expected form.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("x0", "x1") if k not in z.files]
                if missing:
                    raise ValueError(f"an .npz pairs file needs arrays 'x0' and 'x1', got {sorted(z.files)}")
                x0, x1 = torch.from_numpy(z["x0"]), torch.from_numpy(z["x1"])
        elif suffix == ".npy":
            x0, x1 = _from_array(torch.from_numpy(np.load(path, allow_pickle=False)), path)
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(obj, dict) and "x0" in obj and "x1" in obj):
                raise ValueError("a .pt pairs file must hold a dict with tensors 'x0' and 'x1'")
            x0, x1 = obj["x0"], obj["x1"]
        else:
            raise ValueError("expected .npz (x0, x1), .npy (N, 2, *event) or .pt (dict with x0, x1)")
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("pairs file") else f"pairs file {path}: {msg}") from exc
    except Exception as exc:  # corrupt archive / header
        raise ValueError(f"pairs file {path}: could not read it: {type(exc).__name__}: {exc}") from exc
    if not (x0.is_floating_point() and x1.is_floating_point()):
        raise ValueError(f"pairs file {path}: x0 and x1 must be floating point, got {x0.dtype} and {x1.dtype}")
    return PairedSource(x0, x1, name=str(path))


def paired_source(data: str, data_args: dict[str, Any] | None = None, source: str | None = None,
                  source_args: dict[str, Any] | None = None) -> PairedSource:
    """The pairs of a fixed-coupling run: one pairs file (``source`` is ``None``) or two sources.

    With ``source`` given, both ``data`` (targets) and ``source`` must be finite data sets of
    the same length and event shape; row ``i`` of each forms pair ``i``.
    """
    from . import load_data_source

    if source is None:
        if data_args:
            raise ValueError(f"data_args do not apply to a pairs file, got {data_args}")
        return load_pairs(data)
    x1 = _finite(load_data_source(data, **(data_args or {})), "data")
    x0 = _finite(load_data_source(source, **(source_args or {})), "source")
    if len(x0) != len(x1) or x0.event_shape != x1.event_shape:
        raise ValueError(f"coupling 'fixed': source {source!r} has {len(x0)} rows of shape {x0.event_shape}, "
                         f"data {data!r} has {len(x1)} of shape {x1.event_shape}; they must match row for row")
    return PairedSource(x0.data, x1.data, name=f"{source} -> {data}")


def _finite(src: DataSource, label: str) -> TensorSource:
    if not isinstance(src, TensorSource):
        raise ValueError(f"coupling 'fixed' needs a finite data set (a file) as {label}, got {src.name!r}")
    return src


def save_pairs(path: str | Path, x0: Tensor, x1: Tensor) -> Path:
    """Write pairs as an ``.npz`` with arrays ``x0`` and ``x1`` (atomically)."""
    import io

    from ..report import atomic_write_bytes

    if tuple(x0.shape) != tuple(x1.shape):
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    buf = io.BytesIO()
    np.savez(buf, x0=x0.detach().cpu().numpy(), x1=x1.detach().cpu().numpy())
    return atomic_write_bytes(path, buf.getvalue())
