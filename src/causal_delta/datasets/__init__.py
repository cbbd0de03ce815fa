"""Data sources for training and evaluation (all offline).

A *data source* draws minibatches: ``source.sample(n, generator=None) -> (n, *event_shape)``
float32 tensor on the CPU, using only ``generator`` for randomness (so a training run that
checkpoints its generator resumes bit-exactly). Finite data sets are sampled uniformly *with
replacement*, so the generator state is the whole loader position.

Sources are looked up by name with :func:`load_data_source`. The registry maps a name to
``"module:factory"`` and imports the module only when that name is used; another module can
add names with :func:`register_data_source`. A name that is not registered is read as a path:

* ``.npy`` / ``.csv`` of shape ``(N, d)`` (or ``(N,)``): tabular data, event shape ``(d,)``;
* ``.npy`` / ``.pt`` of shape ``(N, C, H, W)``: images;
* a directory of image files (flat, or one sub-folder per class): images, one channel when
  every file is grayscale, else RGB (:func:`causal_delta.datasets.folder.load_image_folder`).

Integer images ``(N, C, H, W)`` (e.g. ``uint8``) are scaled to [-1, 1]; an integer table
``(N, d)`` is not, unless the data arguments say ``images=True``; float data is used as is.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DataSource",
    "TensorSource",
    "SamplerSource",
    "DATA_SOURCES",
    "register_data_source",
    "available_data_sources",
    "load_data_source",
    "check_arguments",
]


class DataSource:
    """Base class: a named distribution to draw minibatches from.

    Attributes:
        name: registry name or path it was loaded from.
        event_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 28, 28)``.
    """

    name: str = "data"
    event_shape: tuple[int, ...] = ()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples, ``(n, *event_shape)`` float32 on the CPU."""
        raise NotImplementedError

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample(n, generator)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (name, event shape, size when finite)."""
        return {"name": self.name, "event_shape": list(self.event_shape)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, event_shape={self.event_shape})"


class TensorSource(DataSource):
    """A finite data set held in memory, ``data`` of shape ``(N, *event)``, kept as float32.

    :meth:`sample` draws indices uniformly with replacement from ``generator``.
    ``feature_names`` (one per coordinate of a table, or ``None``) label the features in reports.
    """

    cast: str | None = None
    """``"float64 -> float32"`` when the data was cast to the models' dtype, else ``None``."""
    shift: Tensor | None = None
    scale: Tensor | None = None
    """Column mean and standard deviation ``(d,)`` removed by ``standardize=True``, else ``None``."""

    def __init__(self, data: Tensor, name: str = "tensor", *,
                 feature_names: tuple[str, ...] | None = None) -> None:
        if not isinstance(data, Tensor):
            data = torch.as_tensor(data)
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (N, *event) with N >= 1, got {tuple(data.shape)}")
        if not data.is_floating_point():
            raise ValueError(f"data must be floating point, got dtype {data.dtype}")
        if not torch.isfinite(data).all():
            raise ValueError(f"data {name!r} contains NaN or inf entries")
        self.data = data.to(torch.float32).contiguous()
        self.name = name
        self.event_shape = tuple(self.data.shape[1:])
        self.feature_names = None if feature_names is None else tuple(feature_names)

    def __len__(self) -> int:
        return self.data.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(0, self.data.shape[0], (n,), generator=generator)
        return self.data[idx]

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "size": len(self), "dtype": "float32"}
        if self.cast:
            out["cast"] = f"{self.cast} (the models' dtype)"
        if self.feature_names is not None:
            out["feature_names"] = list(self.feature_names)
        return out


class SamplerSource(DataSource):
    """A distribution given by a function ``sampler(n, generator) -> (n, *event)``."""

    def __init__(self, sampler: Callable[[int, torch.Generator | None], Tensor],
                 event_shape: tuple[int, ...], name: str = "sampler", **attributes: Any) -> None:
        self._sampler = sampler
        self.event_shape = tuple(int(s) for s in event_shape)
        self.name = name
        for key, value in attributes.items():  # e.g. the ground-truth covariance or mixture
            setattr(self, key, value)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._sampler(n, generator).to(torch.float32)

    def describe(self) -> dict[str, Any]:
        """Name and event shape, plus the known ``mean``, ``cov`` and ``corr`` of a Gaussian source.

        For Gaussian data the JVP correlation of a perfectly trained flow equals ``corr``
        (arXiv 2602.02793 §4.1, App. B), so ``causal-delta jvp`` / ``dependence`` print it as the truth.
        """
        out = super().describe()
        mean, cov = getattr(self, "mean", None), getattr(self, "cov", None)
        if isinstance(cov, Tensor) and cov.ndim == 2:
            if isinstance(mean, Tensor):  # a source given cov= but no mean= reports no mean
                out["mean"] = mean.tolist()
            sd = cov.diagonal().sqrt()
            out.update(cov=cov.tolist(), corr=(cov / sd[:, None] / sd[None, :]).tolist())
        return out


# name -> "module:factory" (imported on first use) or a callable factory(**kwargs) -> DataSource.
DATA_SOURCES: dict[str, str | Callable[..., DataSource]] = {
    "gaussian": "causal_delta.datasets.synthetic:gaussian_source",
    "gaussian-1d": "causal_delta.datasets.synthetic:gaussian_1d_source",
    "mixture": "causal_delta.datasets.synthetic:mixture_source",
    "celeba": "causal_delta.datasets.celeba:celeba_source",  # data_args: {"root": DIR, ...}
    "scm": "causal_delta.datasets.scm:scm_source",
    "scenes": "causal_delta.datasets.scenes:scene_source",
}


def register_data_source(name: str, factory: str | Callable[..., DataSource]) -> None:
    """Register ``name`` -> factory (a callable or a ``"module:function"`` string)."""
    DATA_SOURCES[name] = factory


def available_data_sources() -> list[str]:
    """Registered names (paths to .npy / .csv / .pt files or image folders also work)."""
    return sorted(DATA_SOURCES)


def _resolve(factory: str | Callable[..., DataSource]) -> Callable[..., DataSource]:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def check_arguments(factory: Callable[..., Any], kwargs: dict[str, Any], what: str,
                    skip: tuple[str, ...] = ()) -> None:
    """Refuse keyword arguments that ``factory`` does not take, listing the ones it does.

    A factory that takes ``**kwargs`` accepts everything (it checks its own); parameters in
    ``skip`` are filled by the caller and not the user's to give.

    Raises:
        ValueError: ``"unknown data argument 'rhoo' for data source 'gaussian'; valid: cov, mean, rho, dim"``.
    """
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.name not in skip
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in valid:
            raise ValueError(f"unknown data argument {key!r} for {what}; valid: "
                             f"{', '.join(valid) if valid else '(none)'}")


def load_data_source(name: str, **kwargs: Any) -> DataSource:
    """Build the data source ``name`` (a registered name or a path) with its ``kwargs``.

    Raises:
        FileNotFoundError: ``name`` looks like a path and does not exist (the message names it).
        ValueError: unknown name, an argument the source does not take (the message lists the
            valid ones) or of the wrong type, or data of an unusable shape.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"data must be a data-source name or a path, got {name!r}")
    if name in DATA_SOURCES:
        factory = _resolve(DATA_SOURCES[name])
        check_arguments(factory, kwargs, f"data source {name!r}")
        try:
            return factory(**kwargs)
        except TypeError as exc:  # e.g. {"rho": "high"}: a value of the wrong type
            raise ValueError(f"data source {name!r} with arguments {kwargs}: {exc}") from exc
    path = Path(name).expanduser()
    looks_like_path = path.suffix != "" or "/" in name or "\\" in name or path.exists()
    if not looks_like_path:
        raise ValueError(f"data must be one of {available_data_sources()} or a path to a "
                         f".npy/.csv/.pt file or an image folder, got {name!r}")
    from .tabular import load_path_source

    return load_path_source(path, **kwargs)
