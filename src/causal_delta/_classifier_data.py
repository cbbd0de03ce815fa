"""Data of a read-out training run: CelebA, an ``.npz`` file or in-memory tensors, and the held-out split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_npz"]


@dataclass
class _Data:
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    attributes: tuple[str, ...]
    source: str
    eval_index: list[int] | None = None  # rows of the given data held out (npz / tensors)


def _as_images(x: Any, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (N, d) with N >= 2, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0  # 8-bit images -> [-1, 1], as the image loaders
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point or uint8, got dtype {x.dtype}")
    return x.to(torch.float32).contiguous()


def _as_targets(y: Any, n: int, name: str = "targets") -> Tensor:
    y = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y
    y = y.reshape(-1, 1) if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, m) to match the images, got {tuple(y.shape)}")
    y = y.to(torch.float32).contiguous()
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return y


def read_npz(path: str | Path) -> tuple[Tensor, Tensor, list[str] | None]:
    """Read a read-out data file: ``images`` (N, C, H, W) (float in [-1, 1], or uint8 scaled to it),
    ``targets`` (N, m) (a vector means m = 1) and optionally ``attributes`` (m names).

    Returns:
        ``(images float32, targets float32, names or None)``.

    Raises:
        FileNotFoundError: no such file. ValueError: not a ``.npz``, arrays missing or mismatched.
    """
    path = Path(path).expanduser()
    if path.suffix != ".npz":
        raise ValueError(f"data must be 'celeba', 'tensors' or a path to a .npz file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (a .npz with arrays 'images' (N, C, H, W) "
                                f"and 'targets' (N, m))")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("images", "targets") if k not in npz.files]
        if missing:
            raise ValueError(f"{path} lacks array(s) {missing}; it has {npz.files}")
        images, targets = npz["images"], npz["targets"]
        names = [str(a) for a in npz["attributes"]] if "attributes" in npz.files else None
    x = _as_images(images, "images")
    y = _as_targets(targets, x.shape[0])
    if names is not None and len(names) != y.shape[1]:
        raise ValueError(f"{path}: 'attributes' names {len(names)} columns but 'targets' has {y.shape[1]}")
    return x, y, names


def _load_data(cfg: Any, images: Any, targets: Any, *, progress: bool | None = None) -> _Data:
    """The run's training and held-out data (``cfg``: a ``ClassifierTrainConfig``)."""
    if cfg.data == "celeba":
        from .datasets.celeba import load_celeba

        kw = {"attributes": cfg.attributes, "size": cfg.image_size, "progress": progress}
        train = load_celeba(cfg.celeba_root, split="train", limit=cfg.limit, **kw)
        valid = load_celeba(cfg.celeba_root, split="valid", limit=cfg.eval_limit, **kw)
        return _Data(train.images, train.labels, valid.images, valid.labels, train.attributes,
                     f"celeba:{train.source}")
    names = None
    if cfg.data == "tensors":
        if images is None or targets is None:
            raise ValueError("data 'tensors' needs images and targets passed to train_classifier")
        source = "tensors"
    else:
        if images is not None or targets is not None:
            raise ValueError(f"images/targets are only used with data='tensors', not data={cfg.data!r}")
        images, targets, names = read_npz(cfg.data)
        source = str(Path(cfg.data).expanduser())
    x = _as_images(images, "images")
    y = _as_targets(targets, x.shape[0])
    m = y.shape[1]
    if cfg.attributes is not None and names is not None and list(cfg.attributes) != names:
        raise ValueError(f"attributes {cfg.attributes} differ from the names stored in {cfg.data}: {names}")
    names = list(cfg.attributes) if cfg.attributes is not None else (names or [f"attr_{k}" for k in range(m)])
    if len(names) != m:
        raise ValueError(f"attributes name {len(names)} outputs but the targets have {m} columns")
    if cfg.head == "binary" and not ((y == 0) | (y == 1)).all():
        raise ValueError("head 'binary' needs targets in {0, 1}; use head='regression' for continuous ones")
    n = x.shape[0]
    n_eval = min(max(1, round(cfg.holdout_fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    ev, tr = perm[:n_eval].sort().values, perm[n_eval:].sort().values
    return _Data(x[tr], y[tr], x[ev], y[ev], tuple(names), source, ev.tolist())


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
