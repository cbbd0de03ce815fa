"""CelebA from a local folder: layout, splits, attribute selection, crop / resize, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from causal_delta.datasets import celeba as C
from causal_delta.datasets import load_data_source
from causal_delta.datasets.images import read_image

from _celeba_fixture import make_mini_celeba


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_mini_celeba(tmp_path_factory.mktemp("celeba"), n=20)


def _attr_rows(root):
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    return {ln.split()[0]: [int(v) for v in ln.split()[1:]] for ln in lines[2:]}


def test_official_partition_labels_and_shapes(mini):
    train = C.load_celeba(mini, split="train")
    assert train.partition == "official" and len(train) == 14 and train.images.shape == (14, 3, 64, 64)
    assert train.images.dtype == torch.float32 and -1.0 <= float(train.images.min()) <= float(train.images.max()) <= 1.0
    assert train.attributes == C.CELEBA_ATTRIBUTES and train.labels.shape == (14, 40)
    rows = _attr_rows(mini)
    want = torch.tensor([[(v + 1) / 2 for v in rows[f]] for f in train.files])
    assert torch.equal(train.labels, want)
    sizes = {s: len(C.load_celeba(mini, split=s, size=8)) for s in C.CELEBA_SPLITS}
    assert sizes == {"train": 14, "valid": 3, "test": 3, "all": 20}


def test_attribute_selection_order_and_limit(mini):
    data = C.load_celeba(mini, split="all", attributes=["Rosy_Cheeks", "Heavy_Makeup"], limit=5, size=16)
    assert data.attributes == ("Rosy_Cheeks", "Heavy_Makeup") and data.labels.shape == (5, 2)
    rows = _attr_rows(mini)
    for f, lab in zip(data.files, data.labels):
        assert lab.tolist() == [(rows[f][29] + 1) / 2, (rows[f][18] + 1) / 2]
    assert data.files == tuple(f"{i:06d}.jpg" for i in range(1, 6))
    assert C.celeba_attribute_indices("Pointy_Nose, Rosy_Cheeks") == [27, 29]


def test_crop_and_resize_match_an_independent_pil_route(mini):
    pytest.importorskip("PIL", reason="image files need pillow (the vision extra)")
    from PIL import Image

    data = C.load_celeba(mini, split="all", limit=1, size=None)
    assert data.images.shape == (1, 3, 178, 178)
    with Image.open(mini / "img_align_celeba" / "000001.jpg") as im:
        ref = np.asarray(im.convert("RGB").crop((0, 20, 178, 198)), dtype=np.float32) / 127.5 - 1.0
    assert np.allclose(data.images[0].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    # the green margin bands (rows < 16 and >= 202) are gone after the crop
    assert float(data.images[0, 1].max()) < 0.9
    small = C.load_celeba(mini, split="all", limit=1)
    with Image.open(mini / "img_align_celeba" / "000001.jpg") as im:
        pil64 = np.asarray(im.convert("RGB").crop((0, 20, 178, 198)).resize((64, 64), Image.BILINEAR),
                           dtype=np.float32) / 127.5 - 1.0
    # torch's antialiased bilinear resize vs Pillow's: same filter, rounding to uint8 aside
    assert np.abs(small.images[0].permute(1, 2, 0).numpy() - pil64).mean() < 0.01
    assert torch.allclose(read_image(mini / "img_align_celeba" / "000001.jpg", crop=178, size=64) * 2 - 1,
                          small.images[0], atol=1e-6)


def test_without_partition_file_seeded_split(tmp_path, mini):
    root = tmp_path / "nopart"
    shutil.copytree(mini, root)
    (root / "list_eval_partition.txt").unlink()
    for name in ("list_bbox_celeba.txt", "list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
        assert not (root / name).exists()  # never required
    parts = {s: C.load_celeba(root, split=s, size=4) for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 16, "valid": 2, "test": 2}
    assert parts["train"].partition == "seeded"
    files = [f for d in parts.values() for f in d.files]
    assert sorted(files) == sorted(C.load_celeba(root, split="all", size=4).files)
    again = C.load_celeba(root, split="train", size=4)
    assert again.files == parts["train"].files
    assert C.load_celeba(root, split="train", size=4, split_seed=1).files != parts["train"].files


def test_data_source_registry(mini):
    src = load_data_source("celeba", root=str(mini), size=16, limit=6)
    assert src.event_shape == (3, 16, 16) and len(src) == 6
    assert src.sample(4, torch.Generator().manual_seed(0)).shape == (4, 3, 16, 16)


def test_errors(tmp_path, mini):
    with pytest.raises(FileNotFoundError, match="root folder not found.*img_align_celeba"):
        C.load_celeba(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="image folder img_align_celeba/ not found.*list_attr_celeba.txt"):
        C.load_celeba(tmp_path / "empty")
    (tmp_path / "empty" / "img_align_celeba").mkdir()
    with pytest.raises(FileNotFoundError, match="attribute file list_attr_celeba.txt not found"):
        C.load_celeba(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"unknown attribute 'Pointy_Noze'; did you mean \['Pointy_Nose'\]"):
        C.load_celeba(mini, attributes=["Pointy_Noze"])
    with pytest.raises(ValueError, match="unknown attribute 'zzz'; valid names: .*5_o_Clock_Shadow"):
        C.celeba_attribute_indices(["zzz"])
    with pytest.raises(ValueError, match=r"did you mean \['Heavy_Makeup'\]"):
        C.celeba_attribute_indices(["heavy_makeup"])
    with pytest.raises(ValueError, match="split must be one of"):
        C.load_celeba(mini, split="val")
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        C.load_celeba(mini, limit=0)
    broken = tmp_path / "broken"
    shutil.copytree(mini, broken)
    (broken / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="image .*000003.jpg listed in list_attr_celeba.txt not found"):
        C.load_celeba(broken, split="all")
    lines = (broken / "list_attr_celeba.txt").read_text().splitlines()
    (broken / "list_attr_celeba.txt").write_text("\n".join(lines[:2] + [lines[2] + " 1"] + lines[3:]))
    with pytest.raises(ValueError, match="line 3 .* has 41 values, expected 40"):
        C.load_celeba(broken)


def test_labels_without_decoding(mini):
    labels, names = C.load_celeba_labels(mini, split="valid", attributes=["Smiling", "Young"])
    data = C.load_celeba(mini, split="valid", attributes=["Smiling", "Young"], size=4)
    assert names == data.attributes and torch.equal(labels, data.labels)
