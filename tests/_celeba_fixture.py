"""A fabricated mini-CelebA folder for tests (``img_align_celeba/`` JPEGs + annotation files).

The images are 178 x 218 like the aligned CelebA release; their content depends on three
attributes so that a classifier and a flow have something to learn:

* ``Heavy_Makeup`` (the common cause, Bernoulli 1/2) tints the whole image red;
* ``Pointy_Nose`` (more likely with makeup) draws a bright vertical bar in the centre;
* ``Rosy_Cheeks`` (more likely with makeup) draws two pink discs left and right.

Every other attribute is an independent coin flip. A 16-pixel margin band at the top and the
bottom (outside the 178 x 178 centre crop) is filled with a colour that encodes nothing, so a
test can check that the crop removes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from causal_delta.datasets.celeba import CELEBA_ATTRIBUTES

__all__ = ["make_mini_celeba"]

H, W = 218, 178


def make_mini_celeba(root: Path, n: int = 48, *, seed: int = 0, partition: bool = True,
                     jpeg_quality: int = 95) -> Path:
    """Write ``n`` JPEGs and ``list_attr_celeba.txt`` (+ ``list_eval_partition.txt``) to ``root``.

    The partition (when written) puts 70 % of the rows in train, 15 % in valid, the rest in test.
    Returns ``root``.
    """
    import pytest

    pytest.importorskip("PIL", reason="image files need pillow (the vision extra)")
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    idx = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
    labels = rng.integers(0, 2, size=(n, len(CELEBA_ATTRIBUTES)))
    makeup = rng.random(n) < 0.5
    labels[:, idx["Heavy_Makeup"]] = makeup
    labels[:, idx["Pointy_Nose"]] = rng.random(n) < np.where(makeup, 0.8, 0.2)
    labels[:, idx["Rosy_Cheeks"]] = rng.random(n) < np.where(makeup, 0.8, 0.2)
    yy, xx = np.mgrid[0:H, 0:W]
    files = []
    for i in range(n):
        img = np.full((H, W, 3), 90.0) + rng.normal(0.0, 6.0, size=(H, W, 3))
        if labels[i, idx["Heavy_Makeup"]]:
            img[..., 0] += 70.0
        if labels[i, idx["Pointy_Nose"]]:
            img[70:150, 80:98] = 235.0
        if labels[i, idx["Rosy_Cheeks"]]:
            for cx in (40, 138):
                disc = (yy - 125) ** 2 + (xx - cx) ** 2 < 18 ** 2
                img[disc] = (240.0, 130.0, 170.0)
        img[:16] = (0.0, 255.0, 0.0)  # outside the centre crop (rows 20..197)
        img[-16:] = (0.0, 255.0, 0.0)
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "img_align_celeba" / name, quality=jpeg_quality)
        files.append(name)
    rows = [f"{f} " + " ".join("1" if v else "-1" for v in labels[i]) for i, f in enumerate(files)]
    (root / "list_attr_celeba.txt").write_text(
        f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    if partition:
        n_train, n_valid = int(0.7 * n), int(0.15 * n)
        codes = [0] * n_train + [1] * n_valid + [2] * (n - n_train - n_valid)
        (root / "list_eval_partition.txt").write_text("".join(f"{f} {c}\n" for f, c in zip(files, codes)))
    return root
