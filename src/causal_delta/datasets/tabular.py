"""User data from files: tables (.npy / .csv) and images (tensor files or image folders).

* ``.npy`` with shape ``(N, d)`` or ``(N,)``, or ``.csv`` (comma separated): tabular data,
  event shape ``(d,)``. A first CSV row in which no cell is a number is a header: it is skipped
  and its cells become the feature names (``source.feature_names``), which the JVP and
  dependence reports use. A cell that is not a finite number is refused with its row (the
  file's line number, header included), column and content; an empty file is refused by name.
* ``.npy`` / ``.pt`` / ``.pth`` with shape ``(N, C, H, W)`` (a ``.pt`` file holds a tensor, or a
  dict with one of the keys ``data``, ``images``, ``x``): images, event shape ``(C, H, W)``.
* a directory of image files, flat or one sub-folder per class (Pillow needed): images, all of
  one size (or resized to ``size``), grayscale when every file is (``grayscale=`` overrides);
  read by :func:`causal_delta.datasets.folder.load_image_folder`, the one folder reader.

Integer images ``(N, C, H, W)`` (e.g. ``uint8`` pixels) are scaled to [-1, 1] by
``x / 127.5 - 1``; an integer *table* ``(N, d)`` keeps its values unless the user says it holds
pixels (``images=True``, e.g. ``--data-args '{"images": true}'``). Float data is kept as is, in
float32, the models' dtype: a float64 table is cast, and ``describe()`` (recorded in every
checkpoint and JVP report) says so (``"cast": "float64 -> float32"``). ``standardize=True``
rescales tabular columns to mean 0, variance 1 (the scale is recorded in ``source.shift`` /
``source.scale``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import TensorSource

__all__ = ["load_array", "read_csv", "load_path_source", "array_source", "image_folder_source"]

_TENSOR_KEYS = ("data", "images", "x")


def _to_float(data: Tensor, images: bool) -> Tensor:
    """float32; 8-bit pixels ``p`` become ``p / 127.5 - 1`` only when ``images`` is true."""
    if data.dtype == torch.bool:
        return data.to(torch.float32)
    if images and not data.is_floating_point():
        return data.to(torch.float32) / 127.5 - 1.0
    return data.to(torch.float32)


def load_array(path: str | Path) -> Tensor:
    """Read ``path`` (.npy, .csv, .pt, .pth) into a tensor, unscaled.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
        ValueError: naming ``path`` for an unknown suffix or unreadable content.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            return torch.from_numpy(np.ascontiguousarray(arr))
        if suffix == ".csv":
            return torch.from_numpy(read_csv(path)[0])
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                keys = [k for k in _TENSOR_KEYS if k in obj]
                if not keys:
                    raise ValueError(f"expected a tensor or a dict with one of the keys {_TENSOR_KEYS}, "
                                     f"got keys {sorted(obj)}")
                obj = obj[keys[0]]
            if not isinstance(obj, Tensor):
                raise ValueError(f"expected a tensor, got {type(obj).__name__}")
            return obj
    except ValueError as exc:
        raise ValueError(f"could not read data file {path}: {exc}") from exc
    except Exception as exc:  # corrupt pickle / zip / npy header
        raise ValueError(f"could not read data file {path}: {type(exc).__name__}: {exc}") from exc
    raise ValueError(f"data file {path} must end in .npy, .csv, .pt or .pth (or be an image folder)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a comma-separated table of numbers, ``(N, d)`` float64, and its header names.

    Blank lines are skipped. The first row is a header when none of its cells is a number.

    Returns:
        ``(table, names)``: ``names`` is ``None`` without a header.

    Raises:
        ValueError: naming the file, row (line number) and column (with its header name) of a
            cell that is not a finite number, a row of the wrong length, or an empty file.
    """
    import csv

    path = Path(path)
    rows: list[list[float]] = []
    names: list[str] | None = None
    width = None
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if width is None and not any(_is_number(c) for c in cells):
                names, width = cells, len(cells)
                continue
            if width is None:
                width = len(cells)
            line = reader.line_num
            if len(cells) != width:
                raise ValueError(f"data file {path}: row {line} has {len(cells)} columns, expected {width}")
            values = []
            for j, cell in enumerate(cells):
                label = f" ({names[j]!r})" if names else ""
                try:
                    v = float(cell)
                except ValueError:
                    raise ValueError(f"data file {path}: row {line}, column {j + 1}{label} could not be read "
                                     f"as a number: {cell!r}") from None
                if not np.isfinite(v):
                    raise ValueError(f"data file {path}: row {line}, column {j + 1}{label} is not a finite "
                                     f"number: {cell!r}")
                values.append(v)
            rows.append(values)
    if not rows:
        what = "has a header row but no data rows" if names else "is empty"
        raise ValueError(f"data file {path} {what}")
    return np.asarray(rows, dtype=np.float64), names


def array_source(data: Tensor | np.ndarray, name: str = "array", *, standardize: bool = False,
                 feature_names: list[str] | tuple[str, ...] | None = None,
                 images: bool | None = None) -> TensorSource:
    """A :class:`TensorSource` from an array ``(N,)``, ``(N, d)`` or ``(N, C, H, W)``.

    Args:
        standardize: rescale table columns to mean 0, variance 1.
        feature_names: one name per column of a table (e.g. a CSV header).
        images: whether integer values are 8-bit pixels, scaled to [-1, 1] by ``x / 127.5 - 1``.
            ``None`` (default): only a 4-D array ``(N, C, H, W)`` is; an integer table
            ``(N, d)`` keeps its values (counts, categories, years are not pixels). ``True``
            scales an integer table too (e.g. flattened images); ``False`` never scales.
    """
    if images is not None and not isinstance(images, bool):
        raise ValueError(f"images must be True, False or None (4-D integer arrays only), got {images!r}")
    data = torch.as_tensor(data)
    given_dtype = data.dtype
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    if data.ndim not in (2, 4):
        raise ValueError(f"data {name} must have shape (N, d) for tables or (N, C, H, W) for images, "
                         f"got {tuple(data.shape)}")
    if data.shape[0] < 1:
        raise ValueError(f"data {name} is empty (shape {tuple(data.shape)})")
    data = _to_float(data, data.ndim == 4 if images is None else images)
    shift = scale = None
    if standardize:
        if data.ndim != 2:
            raise ValueError(f"standardize applies to tabular data (N, d), got {tuple(data.shape)}")
        shift = data.mean(0)
        scale = data.std(0).clamp_min(1e-12) if data.shape[0] > 1 else torch.ones(data.shape[1])
        data = (data - shift) / scale
    if feature_names is not None:
        feature_names = tuple(str(n) for n in feature_names)
        if data.ndim != 2 or len(feature_names) != data.shape[1]:
            raise ValueError(f"data {name}: {len(feature_names)} feature names for data of shape "
                             f"{tuple(data.shape)}; expected one per column")
    source = TensorSource(data, name=name, feature_names=feature_names)
    source.shift, source.scale = shift, scale
    if given_dtype.is_floating_point and given_dtype != source.data.dtype:
        source.cast = f"{str(given_dtype).removeprefix('torch.')} -> {str(source.data.dtype).removeprefix('torch.')}"
    return source


def image_folder_source(path: str | Path, *, size: int | tuple[int, int] | None = None,
                        grayscale: bool | None = None) -> TensorSource:
    """Images from a folder, ``(N, C, H, W)`` in [-1, 1], through the library's one folder reader
    :func:`causal_delta.datasets.folder.load_image_folder` (flat or one sub-folder per class;
    one channel when every file is grayscale, else RGB; class labels are not used here).

    Args:
        size: resize every image to ``size`` (``int`` for square, or ``(H, W)``); without it
            all images must have the same size.
        grayscale: force 1 channel (``True``) or 3 (``False``); default: from the files.
    """
    from .folder import load_image_folder

    path = Path(path).expanduser()
    return TensorSource(load_image_folder(path, size=size, grayscale=grayscale).images, name=str(path))


def load_path_source(path: str | Path, **kwargs) -> TensorSource:
    """Data source from a file or an image folder (see the module docstring)."""
    from . import check_arguments

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        check_arguments(image_folder_source, kwargs, f"image folder {path}")
        return image_folder_source(path, **kwargs)
    check_arguments(array_source, kwargs, f"data file {path}", skip=("data", "name", "feature_names"))
    if path.suffix.lower() == ".csv":
        table, names = read_csv(path)
        return array_source(table, name=str(path), feature_names=names, **kwargs)
    return array_source(load_array(path), name=str(path), **kwargs)
