"""Image files: the library's one reader of a file (:func:`read_image`) and of a folder.

The folder rule (:func:`folder_files`, :func:`folder_mode`): files directly in the folder form
one class, otherwise each sub-folder is a class (sorted names, like torchvision's
``ImageFolder``); one channel when every file is grayscale, else RGB, unless the caller says
otherwise. :func:`load_image_folder` (also reachable as ``causal_delta.datasets.images``'
``"folder"`` source and as ``causal-delta train --data DIR``) applies it. Pixels ``p`` in
``[0, 255]`` become ``2 p / 255 - 1`` in ``[-1, 1]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .images import ImageData

__all__ = ["read_image", "folder_files", "folder_mode", "load_image_folder"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def read_image(
    path: str | os.PathLike,
    *,
    mode: str = "RGB",
    crop: int | Sequence[int] | None = None,
    size: int | Sequence[int] | None = None,
) -> Tensor:
    """Read one image file with Pillow: float32 ``(C, H, W)`` in ``[0, 1]`` (the one image reader).

    Args:
        path: the file (PNG, JPEG, ...).
        mode: Pillow mode, ``"L"`` (one channel) or ``"RGB"`` (three).
        crop: centre crop ``(h, w)`` (an int means square) before resizing; the box starts at
            ``round((H - h) / 2), round((W - w) / 2)``, as torchvision's ``CenterCrop``.
        size: output ``(H, W)`` after the crop: bilinear with antialiasing (as
            torchvision's ``Resize`` of a PIL image, up to rounding); ``None`` keeps the size.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the crop is larger than the image.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImportError("reading image files needs Pillow: pip install pillow") from exc
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    from .images import _finish, _parse_size

    box = _parse_size(crop)
    if box is not None:
        h, w = t.shape[-2:]
        if box[0] > h or box[1] > w:
            raise ValueError(f"crop {box} is larger than the image {path} ({h}x{w})")
        top, left = int(round((h - box[0]) / 2.0)), int(round((w - box[1]) / 2.0))
        t = t[:, top: top + box[0], left: left + box[1]]
    target = _parse_size(size)
    if target is not None:
        t = _finish(t.unsqueeze(0), target)[0] * 0.5 + 0.5
    return t.contiguous()


def folder_files(root: str | os.PathLike) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The one rule for an image folder: ``(class names, [(file, class index), ...])``.

    Files directly in ``root`` form one class named after the folder (sub-folders are then
    ignored); otherwise each sub-folder of ``root`` is a class (sorted by name, like
    torchvision's ``ImageFolder``) holding its images. Hidden files and files with other
    extensions are skipped; files are in sorted order.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or neither it nor its sub-folders hold images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected a folder of image files "
                                f"or of one sub-folder per class)")

    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_EXTENSIONS)

    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top = images_in(root)
    names: tuple[str, ...]
    if top or not subdirs:
        names, files = (root.name or "images",), [(p, 0) for p in top]
    else:
        names = tuple(d.name for d in subdirs)
        files = [(p, i) for i, d in enumerate(subdirs) for p in images_in(d)]
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(_IMAGE_EXTENSIONS)}) found in {root} "
                                f"or its sub-folders")
    return names, files


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def folder_mode(files: Iterable[str | os.PathLike]) -> str:
    """Colour mode read from the files: ``"L"`` when every file is grayscale, else ``"RGB"``.

    Only the headers are read (Pillow opens lazily). A palette image (``"P"``) counts as colour.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImportError("reading image files needs Pillow: pip install pillow") from exc
    for f in files:
        try:
            with Image.open(f) as im:
                mode = im.mode
        except Exception as exc:
            raise ValueError(f"could not read image {f}: {exc}") from exc
        if mode not in _GRAY_MODES:
            return "RGB"
    return "L"


def load_image_folder(
    root: str | os.PathLike,
    *,
    classes: int | str | Iterable[int | str] | None = None,
    size: int | Sequence[int] | None = None,
    grayscale: bool | None = None,
    limit: int | None = None,
) -> ImageData:
    """Image files in a folder, read with :func:`read_image` (the library's one folder reader).

    The folder layout follows :func:`folder_files` (flat: one class; or one sub-folder per
    class) and the colour mode :func:`folder_mode` (one channel when every file is grayscale,
    else three), unless ``grayscale`` says otherwise.

    Args:
        root: the folder.
        classes: class indices or sub-folder names to keep.
        size: output ``(H, W)``; required when the images differ in size.
        grayscale: ``True`` forces one channel (``"L"``), ``False`` three (``"RGB"``);
            ``None`` (default) takes the mode from the files.
        limit: keep at most this many images (after filtering), in sorted file order.

    Raises:
        FileNotFoundError: if ``root`` does not exist or holds no image files.
        ValueError: if the images differ in size and ``size`` is not given.
    """
    from .images import ImageData, _class_indices, _filter, _finish, _parse_size

    root = Path(root).expanduser()
    names, files = folder_files(root)
    keep = _class_indices(classes, names)
    if keep is not None:
        files = [(p, c) for p, c in files if c in keep]
    if limit is not None:
        _filter(torch.zeros(0), torch.zeros(0, dtype=torch.long), None, limit)  # validates limit
        files = files[:limit]
    if grayscale is not None and not isinstance(grayscale, bool):
        raise ValueError(f"grayscale must be True, False or None (from the files), got {grayscale!r}")
    mode = folder_mode(p for p, _ in files) if grayscale is None else ("L" if grayscale else "RGB")
    target = _parse_size(size)
    arrays = [read_image(p, mode=mode, size=target).unsqueeze(0) for p, _ in files]
    shapes = {tuple(a.shape[-2:]) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {root} differ in size ({sorted(shapes)[:3]}...); pass size=(H, W)")
    unit = torch.cat(arrays) if arrays else torch.zeros(0, 1 if mode == "L" else 3, *(target or (1, 1)))
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return ImageData(_finish(unit, None), labels, names, f"folder:{root}")
