"""Image data sets: digits, Fashion-MNIST / MNIST IDX files (gz or not), image folders, errors."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_delta.datasets import images as I

FASHION = Path(I.FASHION_MNIST_ROOT)


def _write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for train, n in ((True, 30), (False, 10)):
        img_name, lab_name = I.MNIST_FILES[train]
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        imgs[0] = 0
        imgs[1] = 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(tmp_path / img_name, imgs, gz=train)  # gzipped train, plain test
        _write_idx(tmp_path / lab_name, labels, gz=train)
    return tmp_path


def test_digits_class_filter_shape_and_range():
    pytest.importorskip("sklearn", reason="needs scikit-learn (the vision extra)")
    data = I.load_digits(classes=5)
    assert data.images.shape[1:] == (1, 8, 8) and data.images.dtype == torch.float32
    assert len(data) == int((data.labels == 5).sum()) > 150
    assert float(data.images.min()) == -1.0 and float(data.images.max()) == 1.0
    both = I.load_digits(classes=[3, "5"], limit=20, size=4)
    assert both.images.shape == (20, 1, 4, 4)
    assert set(both.labels.tolist()) <= {3, 5}
    assert torch.allclose(I.to_unit_range(data.images).min(), torch.tensor(0.0))


def test_idx_reader_gz_and_plain_and_layouts(fake_mnist, tmp_path):
    train = I.load_mnist(fake_mnist, classes=[0, 1])
    assert train.images.shape == (6, 1, 28, 28) and set(train.labels.tolist()) == {0, 1}
    assert float(train.images[0].max()) == -1.0 and float(train.images[1].min()) == 1.0  # 0 -> -1, 255 -> +1
    test = I.load_mnist(fake_mnist, train=False, size=(14, 7))
    assert test.images.shape == (10, 1, 14, 7)
    # torchvision's layout root/MNIST/raw is found too
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in fake_mnist.iterdir():
        if f.is_file():
            (raw / f.name).write_bytes(f.read_bytes())
    assert len(I.load_images("mnist", root=tmp_path / "tv")) == 30


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*not found in .*yann\.lecun"):
        I.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        I.load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        I.load_image_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no image files"):
        I.load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="needs root"):
        I.load_images("mnist")
    with pytest.raises(ValueError, match="source must be one of"):
        I.load_images("cifar")
    with pytest.raises(ValueError, match="unknown class 'Hat'"):
        I.load_digits(classes="Hat")
    with pytest.raises(ValueError, match="size must be"):
        I.load_digits(size=0)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        I.read_idx(bad)


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_gz_files():
    data = I.load_fashion_mnist(train=False, classes="sandal")
    assert data.images.shape == (1000, 1, 28, 28)
    assert set(data.labels.tolist()) == {5} and data.classes[5] == "Sandal"
    assert -1.0 <= float(data.images.min()) < float(data.images.max()) <= 1.0


def test_image_folder_flat_and_per_class(tmp_path):
    pytest.importorskip("PIL", reason="image files need pillow (the vision extra)")
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 5), 255 * (i % 2), dtype=np.uint8)).save(flat / f"{i}.png")
    (flat / "notes.txt").write_text("skip me")
    data = I.load_image_folder(flat)
    assert data.images.shape == (3, 1, 6, 5) and data.labels.tolist() == [0, 0, 0]
    assert data.images[0].max() == -1.0 and data.images[1].min() == 1.0

    per = tmp_path / "per"
    for c, size in (("cats", (8, 8)), ("dogs", (10, 12))):
        (per / c).mkdir(parents=True)
        Image.fromarray(np.zeros(size + (3,), dtype=np.uint8)).save(per / c / "a.png")
    with pytest.raises(ValueError, match="differ in size"):
        I.load_image_folder(per)
    data = I.load_images("folder", root=per, size=4, classes="dogs")
    assert data.classes == ("cats", "dogs") and data.labels.tolist() == [1]
    assert data.images.shape == (1, 3, 4, 4)  # RGB files: three channels (the mode comes from the files)
    rgb = I.load_image_folder(per, size=(4, 4), grayscale=False)
    assert rgb.images.shape == (2, 3, 4, 4)


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_rule_flat_or_classes_and_mode_from_files(tmp_path):
    """One rule for every folder: flat -> one class, else one class per sub-folder; "L" when
    every file is grayscale, else RGB; grayscale= overrides; `train --data DIR` reads the same."""
    from causal_delta.datasets import load_data_source

    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = np.stack([gray, 255 - gray, np.zeros_like(gray)], axis=-1)
    _png(tmp_path / "flat_l" / "a.png", gray)
    _png(tmp_path / "flat_l" / "b.png", gray[::-1].copy())
    _png(tmp_path / "mixed" / "a.png", gray)
    _png(tmp_path / "mixed" / "b.png", rgb)
    _png(tmp_path / "classes" / "one" / "a.png", rgb)
    _png(tmp_path / "classes" / "two" / "b.png", rgb)
    _png(tmp_path / "classes" / "two" / "c.png", rgb)

    flat = I.load_image_folder(tmp_path / "flat_l")
    assert flat.images.shape == (2, 1, 3, 4) and flat.classes == ("flat_l",) and flat.labels.tolist() == [0, 0]
    torch.testing.assert_close(flat.images[0, 0], torch.from_numpy(gray).float() / 127.5 - 1)
    assert I.folder_mode([tmp_path / "flat_l" / "a.png"]) == "L"
    assert I.load_image_folder(tmp_path / "mixed").images.shape == (2, 3, 3, 4)  # one colour file: RGB
    mixed_l = I.load_image_folder(tmp_path / "mixed", grayscale=True)
    assert mixed_l.images.shape == (2, 1, 3, 4)
    torch.testing.assert_close(mixed_l.images[0], flat.images[0])
    per = I.load_image_folder(tmp_path / "classes")
    assert per.classes == ("one", "two") and per.labels.tolist() == [0, 1, 1]
    assert per.images.shape == (3, 3, 3, 4)
    torch.testing.assert_close(per.images[0].permute(1, 2, 0), torch.from_numpy(rgb).float() / 127.5 - 1)
    assert I.load_image_folder(tmp_path / "classes", grayscale=True).images.shape == (3, 1, 3, 4)
    # the data-source path (causal-delta train --data DIR) is the same reader with the same rule
    for name in ("flat_l", "mixed", "classes"):
        torch.testing.assert_close(load_data_source(str(tmp_path / name)).data,
                                   I.load_image_folder(tmp_path / name).images)
    assert load_data_source(str(tmp_path / "mixed"), grayscale=True).event_shape == (1, 3, 4)
    with pytest.raises(ValueError, match="grayscale must be True, False or None"):
        I.load_image_folder(tmp_path / "flat_l", grayscale="yes")
