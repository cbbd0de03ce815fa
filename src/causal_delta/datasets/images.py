"""Image data sets, all read offline: scikit-learn digits, MNIST / Fashion-MNIST IDX files,
and a folder of image files.

Every loader returns an :class:`ImageData` whose ``images`` are a float32 tensor of shape
``(N, C, H, W)`` scaled to ``[-1, 1]``: a raw pixel ``p`` in ``[0, p_max]`` becomes
``2 p / p_max - 1`` (``p_max = 255`` for 8-bit images, ``16`` for scikit-learn's digits), so
that black is ``-1`` and white is ``+1``. :func:`to_unit_range` undoes it.

Sources:

- ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16);
  no download, so it is what the quick experiments and the tests use.
- ``"mnist"`` / ``"fashion-mnist"``: the four IDX files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``), gzipped (``.gz``) or not, in ``root`` itself or in
  ``root/<MNIST|FashionMNIST>/raw`` (torchvision's layout). They are read directly with
  ``gzip`` + numpy, so Debian's ``.gz`` files need no decompressing and nothing is written.
  Fashion-MNIST defaults to ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
  ``dataset-fashion-mnist``).
- ``"folder"``: image files (PNG, JPEG, BMP, ...) read with Pillow; files directly in ``root``
  are class 0, or each sub-folder of ``root`` is a class (sorted names, like torchvision's
  ``ImageFolder``); one channel when every file is grayscale, else RGB (overridable). This is
  the one folder reader: ``causal-delta train --data DIR`` goes through it too.

Class filtering (``classes=``) keeps the images whose label is in the given set (integers,
or class names for Fashion-MNIST and folders); resizing (``size=``) uses bilinear
interpolation with antialiasing on the ``[0, 1]`` values before scaling to ``[-1, 1]``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import DTypeLike
from torch import Tensor

from .folder import folder_files, folder_mode, load_image_folder, read_image

__all__ = [
    "ImageData",
    "IMAGE_SOURCES",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "MNIST_FILES",
    "read_idx",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_image_folder",
    "folder_files",
    "folder_mode",
    "load_images",
    "read_image",
    "to_unit_range",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the gzipped IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""IDX file names (without ``.gz``) of the training (``True``) and test (``False``) split."""

IMAGE_SOURCES = ("digits", "mnist", "fashion-mnist", "folder")

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageData:
    """A set of images with labels.

    Attributes:
        images: float32 ``(N, C, H, W)`` scaled to ``[-1, 1]`` (see the module docstring).
        labels: int64 ``(N,)`` class indices into ``classes``.
        classes: the class names of the source (all of them, not only those kept).
        source: where the images came from, for reports (e.g. ``"digits"``, a path).
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def event_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def to_unit_range(images: Tensor) -> Tensor:
    """Map images from ``[-1, 1]`` back to ``[0, 1]`` (clamped), e.g. for display."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def _parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"size must be an integer >= 1 or a pair (height, width), got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"size must be an integer >= 1 or a pair (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def _finish(unit: Tensor, size: tuple[int, int] | None) -> Tensor:
    """``unit``: float (N, C, H, W) in [0, 1] -> resized, scaled to [-1, 1], float32."""
    unit = unit.to(torch.float32)
    if size is not None and tuple(unit.shape[-2:]) != size:
        if unit.shape[0] == 0:
            unit = unit.new_zeros(0, unit.shape[1], *size)
        else:
            unit = torch.nn.functional.interpolate(
                unit, size=size, mode="bilinear", align_corners=False, antialias=True
            ).clamp(0.0, 1.0)
    return (2.0 * unit - 1.0).contiguous()


def _class_indices(classes: int | str | Iterable[int | str] | None, names: Sequence[str]) -> list[int] | None:
    """Turn a class filter (indices and/or names) into sorted indices; ``None`` keeps all."""
    if classes is None:
        return None
    if isinstance(classes, (int, str)):
        classes = [classes]
    lower = {n.lower(): i for i, n in enumerate(names)}
    out = []
    for c in classes:
        if isinstance(c, bool):
            raise ValueError(f"classes must be class indices or names, got {c!r}")
        if isinstance(c, str) and c.strip().lstrip("-").isdigit():
            c = int(c)
        if isinstance(c, int):
            if not 0 <= c < len(names):
                raise ValueError(f"classes: index {c} is out of range 0..{len(names) - 1}")
            out.append(c)
        elif isinstance(c, str) and c.lower() in lower:
            out.append(lower[c.lower()])
        else:
            raise ValueError(f"classes: unknown class {c!r}; known classes are {list(names)}")
    if not out:
        raise ValueError("classes must name at least one class")
    return sorted(set(out))


def _filter(images: Tensor, labels: Tensor, keep: list[int] | None, limit: int | None):
    if keep is not None:
        mask = torch.isin(labels, torch.tensor(keep, dtype=labels.dtype))
        images, labels = images[mask], labels[mask]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
        images, labels = images[:limit], labels[:limit]
    return images, labels


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped if the name ends in ``.gz``) into a numpy array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a valid IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(data) < header + count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: header says {dims}, file has {len(data)} bytes")
    # copy: frombuffer views the (read-only) bytes; callers get a writable array
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).copy()


def _find_idx(root: Path, name: str, folder: str) -> Path | None:
    for d in (root, root / folder / "raw", root / "raw"):
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_pair(root, *, train: bool, folder: str, title: str, how_to_get: str):
    root = Path(root).expanduser()
    found = []
    for name in MNIST_FILES[bool(train)]:
        path = _find_idx(root, name, folder)
        if path is None:
            raise FileNotFoundError(
                f"{title}: {name} (or {name}.gz) not found in {root} nor in {root / folder / 'raw'}. "
                f"{how_to_get}"
            )
        found.append(path)
    images, labels = (read_idx(p) for p in found)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{title}: {found[0]} and {found[1]} do not match (images {images.shape}, labels {labels.shape})"
        )
    x = torch.from_numpy(images).unsqueeze(1)  # uint8 (N, 1, H, W)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y, str(root)


def load_mnist(
    root: str | os.PathLike,
    *,
    train: bool = True,
    classes: int | str | Iterable[int | str] | None = None,
    size: int | Sequence[int] | None = None,
    limit: int | None = None,
) -> ImageData:
    """MNIST from its IDX files in ``root`` (``.gz`` or not; see the module docstring).

    Args:
        root: folder with the four MNIST files (or ``root/MNIST/raw``).
        train: training split (60,000 images) or test split (10,000).
        classes: digits to keep, e.g. ``5`` or ``[3, 5]``; ``None`` keeps all.
        size: output ``(H, W)`` (or one int); ``None`` keeps 28x28.
        limit: keep at most this many images (after filtering), in file order.

    Returns:
        :class:`ImageData` with images ``(N, 1, H, W)`` in ``[-1, 1]``.
    """
    names = tuple(str(i) for i in range(10))
    keep = _class_indices(classes, names)
    how = ("Get the files from http://yann.lecun.com/exdb/mnist/ (train-images-idx3-ubyte.gz, "
           "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
           "and pass their folder as the root (--data-root).")
    x, y, src = _load_idx_pair(root, train=train, folder="MNIST", title="MNIST", how_to_get=how)
    x, y = _filter(x, y, keep, limit)
    return ImageData(_finish(x.float() / 255.0, _parse_size(size)), y, names, f"mnist:{src}")


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    train: bool = True,
    classes: int | str | Iterable[int | str] | None = None,
    size: int | Sequence[int] | None = None,
    limit: int | None = None,
) -> ImageData:
    """Fashion-MNIST from its IDX files (default root :data:`FASHION_MNIST_ROOT`).

    Args:
        root: folder with the four files (``.gz`` or not), or ``root/FashionMNIST/raw``;
            ``None`` means ``/usr/share/datasets/fashion-mnist``.
        classes: class indices 0..9 or names from :data:`FASHION_MNIST_CLASSES`
            (case-insensitive), e.g. ``"Sandal"`` or ``[5, 7]``.
        train, size, limit: as in :func:`load_mnist`.
    """
    keep = _class_indices(classes, FASHION_MNIST_CLASSES)
    root = FASHION_MNIST_ROOT if root is None else root
    how = ("Install them with `apt-get install dataset-fashion-mnist` (files go to "
           f"{FASHION_MNIST_ROOT}) or download the four IDX .gz files from "
           "https://github.com/zalandoresearch/fashion-mnist and pass their folder as the root (--data-root).")
    x, y, src = _load_idx_pair(root, train=train, folder="FashionMNIST", title="Fashion-MNIST", how_to_get=how)
    x, y = _filter(x, y, keep, limit)
    return ImageData(_finish(x.float() / 255.0, _parse_size(size)), y, FASHION_MNIST_CLASSES,
                     f"fashion-mnist:{src}")


def load_digits(
    *,
    classes: int | str | Iterable[int | str] | None = None,
    size: int | Sequence[int] | None = None,
    limit: int | None = None,
) -> ImageData:
    """scikit-learn's bundled 8x8 digits (offline), values 0..16 scaled to ``[-1, 1]``.

    Args:
        classes: digits to keep, e.g. ``5``; ``None`` keeps all 1,797 images.
        size: output ``(H, W)`` (or one int); ``None`` keeps 8x8.
        limit: keep at most this many images (after filtering).

    Returns:
        :class:`ImageData` with images ``(N, 1, H, W)``.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    names = tuple(str(i) for i in range(10))
    keep = _class_indices(classes, names)
    bunch = _sk_load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 16.0
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    x, y = _filter(x, y, keep, limit)
    return ImageData(_finish(x, _parse_size(size)), y, names, "digits:sklearn")


def load_images(
    source: str,
    *,
    root: str | os.PathLike | None = None,
    classes: int | str | Iterable[int | str] | None = None,
    size: int | Sequence[int] | None = None,
    train: bool = True,
    limit: int | None = None,
    grayscale: bool | None = None,
) -> ImageData:
    """Load an image source by name: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"folder"``.

    ``root`` is required for ``"mnist"`` and ``"folder"``, optional for ``"fashion-mnist"``
    and ignored for ``"digits"``; ``grayscale`` (``None``: from the files) applies to ``"folder"``.
    See the individual loaders for the other arguments.
    """
    if source == "digits":
        return load_digits(classes=classes, size=size, limit=limit)
    if source == "fashion-mnist":
        return load_fashion_mnist(root, train=train, classes=classes, size=size, limit=limit)
    if source in ("mnist", "folder"):
        if root is None:
            what = "the folder with the MNIST IDX files" if source == "mnist" else "the image folder"
            raise ValueError(f"source {source!r} needs root (--data-root): {what}")
        if source == "mnist":
            return load_mnist(root, train=train, classes=classes, size=size, limit=limit)
        return load_image_folder(root, classes=classes, size=size, limit=limit, grayscale=grayscale)
    raise ValueError(f"source must be one of {IMAGE_SOURCES}, got {source!r}")
