r"""CelebA read from a local folder (never downloaded).

Expected layout of ``root`` (the files of the official release, unzipped)::

    root/
      img_align_celeba/000001.jpg ...   aligned-and-cropped JPEGs (178 x 218)
      list_attr_celeba.txt              line 1: image count; line 2: the 40 attribute names;
                                        then "000001.jpg  -1  1 ... " (40 values in {-1, 1})
      list_eval_partition.txt           optional: "000001.jpg 0" (0 train, 1 valid, 2 test)

The bounding-box, landmark and identity files are not needed. Without
``list_eval_partition.txt`` the split is a seeded permutation of the attribute file's rows
(``torch.Generator().manual_seed(split_seed)``): the first 80 % ``"train"``, the next 10 %
``"valid"``, the rest ``"test"``; ``"all"`` always means every row.

Preprocessing, as the paper's code (``CenterCrop(178)`` then ``Resize(64)`` of torchvision):
a centre crop of ``crop`` = 178 x 178 pixels (rows 20..197 of the 218-pixel-high image), then a
bilinear antialiased resize to ``size`` = 64 x 64, then the project's image scaling
``2 p - 1`` so that pixels lie in ``[-1, 1]`` (:mod:`causal_delta.datasets.images`). Labels are
``(v + 1) / 2``: 0/1 floats.

Memory: the images are held as float32, 48 KiB per 64 x 64 RGB image, so all 202,599 images
take 9.3 GiB; ``limit`` caps the count.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .._validation import check_positive_int
from .folder import read_image
from .images import _parse_size

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CELEBA_SPLITS",
    "CelebAData",
    "celeba_attribute_indices",
    "load_celeba",
    "load_celeba_labels",
    "celeba_source",
]

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
"""The 40 attribute names of ``list_attr_celeba.txt``, in file order (index 0..39)."""

CELEBA_SPLITS = ("train", "valid", "test", "all")
_PARTITION_CODES = {"train": 0, "valid": 1, "test": 2}
_IMAGES, _ATTR, _PARTITION = "img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"
_LAYOUT = (f"expected layout: ROOT/{_IMAGES}/000001.jpg ..., ROOT/{_ATTR} and optionally "
           f"ROOT/{_PARTITION} (the files of the official CelebA release; nothing is downloaded)")


@dataclass
class CelebAData:
    """CelebA images with binary attribute labels.

    Attributes:
        images: float32 ``(N, 3, H, W)`` in ``[-1, 1]``.
        labels: float32 ``(N, k)`` in {0, 1}, one column per name in ``attributes``.
        attributes: the selected attribute names (``k``).
        files: the image file names (``N``), in attribute-file order.
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"``.
        partition: ``"official"`` (from ``list_eval_partition.txt``) or ``"seeded"``.
        source: the root folder.
    """

    images: Tensor
    labels: Tensor
    attributes: tuple[str, ...]
    files: tuple[str, ...]
    split: str
    partition: str
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def event_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def celeba_attribute_indices(names: str | Sequence[str] | None,
                             valid: Sequence[str] = CELEBA_ATTRIBUTES) -> list[int]:
    """Column indices of attribute ``names`` in ``valid`` (``None``: all of them).

    Raises:
        ValueError: an unknown name; the message lists close matches, or the valid names.
    """
    valid = tuple(valid)
    if names is None:
        return list(range(len(valid)))
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    names = list(names)
    if not names:
        raise ValueError("attributes must name at least one attribute")
    out = []
    for name in names:
        if not isinstance(name, str) or name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
            lower = [v for v in valid if v.lower() == str(name).lower()]
            hint = (f"did you mean {(lower or close)}?" if (lower or close)
                    else f"valid names: {list(valid)}")
            raise ValueError(f"attributes: unknown attribute {name!r}; {hint}")
        out.append(valid.index(name))
    if len(set(out)) != len(out):
        raise ValueError(f"attributes: each name at most once, got {names}")
    return out


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"CelebA: {what} not found: {path}; {_LAYOUT}")
    return path


def _read_attribute_file(path: Path) -> tuple[tuple[str, ...], list[str], Tensor]:
    """Parse ``list_attr_celeba.txt`` -> (names, files, values (N, 40) int8 in {-1, 1})."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"CelebA: {path} must start with the image count and the attribute names")
    try:
        count = int(lines[0].split()[0])
    except ValueError as exc:
        raise ValueError(f"CelebA: the first line of {path} must be the image count, got {lines[0]!r}") from exc
    names = tuple(lines[1].split())
    files, values = [], []
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if len(parts) != len(names) + 1:
            raise ValueError(f"CelebA: line {i} of {path} has {len(parts) - 1} values, expected {len(names)}")
        try:
            row = [int(v) for v in parts[1:]]
        except ValueError as exc:
            raise ValueError(f"CelebA: line {i} of {path} holds a non-integer value: {line!r}") from exc
        if any(v not in (-1, 1) for v in row):
            raise ValueError(f"CelebA: line {i} of {path}: attribute values must be -1 or 1, got {line!r}")
        files.append(parts[0])
        values.append(row)
    if len(files) != count:
        raise ValueError(f"CelebA: {path} announces {count} images but lists {len(files)}")
    return names, files, torch.tensor(values, dtype=torch.int8).reshape(len(files), len(names))


def _read_partition_file(path: Path, files: Sequence[str]) -> Tensor:
    """Parse ``list_eval_partition.txt`` -> (N,) codes 0/1/2 aligned with ``files``."""
    codes: dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"CelebA: line {i} of {path} must be 'FILE 0|1|2', got {line!r}")
        codes[parts[0]] = int(parts[1])
    missing = [f for f in files if f not in codes]
    if missing:
        raise ValueError(f"CelebA: {path} has no partition for {len(missing)} image(s), e.g. {missing[0]}")
    return torch.tensor([codes[f] for f in files], dtype=torch.int64)


def _seeded_partition(n: int, seed: int) -> Tensor:
    """(n,) codes 0/1/2: a seeded permutation split 80 / 10 / 10 %."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_valid = int(0.8 * n), int(0.1 * n)
    codes = torch.full((n,), 2, dtype=torch.int64)
    codes[perm[:n_train]] = 0
    codes[perm[n_train: n_train + n_valid]] = 1
    return codes


def _select_rows(root: str | os.PathLike, split: str, attributes: str | Sequence[str] | None, limit: int | None,
                 split_seed: int) -> tuple[Path, tuple[str, ...], list[str], Tensor, Tensor, list[int], str]:
    """Validate the layout, parse the annotation files; -> (root, names, files, values, rows, cols, partition)."""
    if split not in CELEBA_SPLITS:
        raise ValueError(f"split must be one of {CELEBA_SPLITS}, got {split!r}")
    if limit is not None:
        check_positive_int("limit", limit)
    root = _require(Path(root).expanduser(), "root folder")
    _require(root / _IMAGES, f"image folder {_IMAGES}/")
    names, files, values = _read_attribute_file(_require(root / _ATTR, f"attribute file {_ATTR}"))
    if names != CELEBA_ATTRIBUTES:
        # tolerate a reordered file, but not other names: the analysis refers to them by name
        unknown = sorted(set(names) - set(CELEBA_ATTRIBUTES))
        if unknown or len(names) != len(CELEBA_ATTRIBUTES):
            raise ValueError(f"CelebA: {root / _ATTR} names {unknown or names} are not the 40 official "
                             f"attributes {list(CELEBA_ATTRIBUTES)}")
    cols = [names.index(CELEBA_ATTRIBUTES[i]) for i in celeba_attribute_indices(attributes)]
    partition_path = root / _PARTITION
    if partition_path.exists():
        codes, partition = _read_partition_file(partition_path, files), "official"
    else:
        codes, partition = _seeded_partition(len(files), split_seed), "seeded"
    rows = (torch.arange(len(files)) if split == "all"
            else torch.nonzero(codes == _PARTITION_CODES[split]).flatten())
    if limit is not None:
        rows = rows[:limit]
    if rows.numel() == 0:
        raise ValueError(f"CelebA: split {split!r} of {root} holds no images")
    return root, names, files, values, rows, cols, partition


def load_celeba_labels(
    root: str | os.PathLike,
    *,
    split: str = "train",
    attributes: str | Sequence[str] | None = None,
    limit: int | None = None,
    split_seed: int = 0,
) -> tuple[Tensor, tuple[str, ...]]:
    """The 0/1 labels ``(N, k)`` and the attribute names of a split, without decoding any image.

    Same arguments and errors as :func:`load_celeba` (except that the images are not checked).
    """
    _, names, _, values, rows, cols, _ = _select_rows(root, split, attributes, limit, split_seed)
    return (values[rows][:, cols].to(torch.float32) + 1.0) / 2.0, tuple(names[c] for c in cols)


def load_celeba(
    root: str | os.PathLike,
    *,
    split: str = "train",
    attributes: str | Sequence[str] | None = None,
    size: int | Sequence[int] | None = 64,
    crop: int | Sequence[int] | None = 178,
    limit: int | None = None,
    split_seed: int = 0,
    progress: bool | None = None,
) -> CelebAData:
    """Read CelebA from ``root`` (see the module docstring for the layout and preprocessing).

    Args:
        root: folder holding ``img_align_celeba/`` and ``list_attr_celeba.txt``.
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"``.
        attributes: names from :data:`CELEBA_ATTRIBUTES` (a list or a comma/space-separated
            string); ``None`` keeps all 40.
        size: output ``(H, W)`` (an int means square); ``None`` keeps the cropped size.
        crop: centre crop before resizing (``None``: no crop).
        limit: read at most this many images of the split (in file order).
        split_seed: seed of the 80/10/10 split used when there is no partition file.
        progress: show a tqdm bar while decoding the JPEGs (``None``: when there are 2,000 or more).

    Returns:
        :class:`CelebAData`.

    Raises:
        FileNotFoundError: ``root``, ``img_align_celeba/``, ``list_attr_celeba.txt`` or a listed
            image is missing (the message gives the expected layout).
        ValueError: unknown split or attribute name, malformed annotation files.
    """
    _parse_size(size), _parse_size(crop)  # validate before the slow part
    root, names, files, values, rows, cols, partition = _select_rows(root, split, attributes, limit, split_seed)
    image_dir = root / _IMAGES
    chosen = [files[i] for i in rows.tolist()]
    iterator = chosen
    if progress or (progress is None and len(chosen) >= 2000):
        from .._progress import progress_bar as tqdm  # tqdm is optional

        iterator = tqdm(chosen, desc=f"CelebA {split}", unit="img", dynamic_ncols=True, leave=False)
    images: Tensor | None = None  # filled in place: one copy of the data set in memory, not two
    for n, name in enumerate(iterator):
        path = image_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"CelebA: image {path} listed in {_ATTR} not found; {_LAYOUT}")
        img = read_image(path, mode="RGB", crop=crop, size=size)
        if images is None:
            images = torch.empty(len(chosen), *img.shape)
        elif img.shape != images.shape[1:]:
            raise ValueError(f"CelebA: {path} is {tuple(img.shape[1:])} after cropping, the first image "
                             f"{tuple(images.shape[2:])}; pass size (e.g. 64)")
        images[n] = img.mul_(2.0).sub_(1.0)
    assert images is not None  # _select_rows rejects a split without images
    labels = (values[rows][:, cols].to(torch.float32) + 1.0) / 2.0
    return CelebAData(
        images=images,
        labels=labels.contiguous(),
        attributes=tuple(names[c] for c in cols),
        files=tuple(chosen),
        split=split,
        partition=partition,
        source=str(root),
    )


def celeba_source(root: str | os.PathLike, *, split: str = "train", size: int | Sequence[int] | None = 64,
                  crop: int | Sequence[int] | None = 178, limit: int | None = None, split_seed: int = 0):
    """CelebA images as a training data source (``causal-delta train --data celeba``).

    Returns:
        a :class:`~causal_delta.datasets.TensorSource` of the images ``(N, 3, H, W)``, named
        ``"celeba:<root>:<split>"``, sampled uniformly with replacement.
    """
    from . import TensorSource

    data = load_celeba(root, split=split, size=size, crop=crop, limit=limit, split_seed=split_seed)
    return TensorSource(data.images, name=f"celeba:{data.source}:{split}")
