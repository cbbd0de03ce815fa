"""Rendered scenes with SCM-driven attributes (causal_delta.datasets.scenes)."""

from __future__ import annotations

import math

import pytest
import torch

from causal_delta.datasets import load_data_source
from causal_delta.datasets.scenes import ATTRIBUTES, SceneSource, render


def _one(**u):
    return render({k: torch.tensor([v], dtype=torch.float64) for k, v in u.items()}, n=1, dtype=torch.float64)[0]


def test_shape_range_and_determinism():
    src = load_data_source("scenes", graph="fork", seed=0, nuisance=["background"])
    assert src.event_shape == (3, 32, 32)
    x, u = src.sample_labelled(64, torch.Generator().manual_seed(1))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and u.shape == (64, 3)
    assert x.min() >= -1 and x.max() <= 1 and (u > 0).all() and (u < 1).all()
    y, v = src.sample_labelled(64, torch.Generator().manual_seed(1))
    assert torch.equal(x, y) and torch.equal(u, v)
    assert not torch.equal(x, src.sample(64, torch.Generator().manual_seed(2)))


def test_each_attribute_changes_the_image_as_intended():
    lo, hi = 0.2, 0.8
    centre = (slice(None), 15, 15)

    def disc_area(img):  # pixels clearly away from the background colour
        return float(((img - img[:, 0:1, 0:1]).abs().sum(0) > 0.2).sum())

    assert disc_area(_one(size=hi)) > 2 * disc_area(_one(size=lo))
    a, b = _one(brightness=lo)[centre], _one(brightness=hi)[centre]
    assert float((b + 1).sum()) > 1.5 * float((a + 1).sum())  # brighter disc
    a, b = _one(hue=lo), _one(hue=hi)
    # the palette keeps R+G+B fixed: hue changes the colour, not the intensity
    assert float((a[centre] + 1).sum()) == pytest.approx(float((b[centre] + 1).sum()), abs=1e-9)
    assert float((a[centre] - b[centre]).abs().max()) > 0.3
    assert float(_one(background=hi)[0, 0, 0]) > float(_one(background=lo)[0, 0, 0]) + 0.3
    for name in ("x", "y"):
        def com(img):
            w = (img - img[:, 0:1, 0:1]).abs().sum(0)
            idx = torch.arange(32, dtype=img.dtype)
            return float((w.sum(0 if name == "x" else 1) * idx).sum() / w.sum())
        assert com(_one(**{name: hi})) > com(_one(**{name: lo})) + 5  # the disc moves right / down


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_images_vary_smoothly(name):
    # differentiable in every parameter: the finite-difference slope converges (first order)
    def f(v):
        return _one(**{name: v})

    d1 = (f(0.5 + 1e-3) - f(0.5)) / 1e-3
    d2 = (f(0.5 + 5e-4) - f(0.5)) / 5e-4
    assert float(d1.abs().max()) > 0.01
    assert float((d1 - d2).abs().max()) < 0.05 * float(d1.abs().max()) + 1e-6


def test_attributes_follow_the_scm_or_are_independent():
    n = 20_000
    se = 1 / math.sqrt(n)
    src = SceneSource("collider", ("size", "hue", "brightness"), seed=0, image_size=8)
    _, u = src.sample_labelled(n, torch.Generator().manual_seed(0))
    c = torch.corrcoef(u.T.double())
    assert abs(float(c[0, 1])) < 4 * se  # collider: the causes are independent
    assert abs(float(c[0, 2])) > 0.2 and abs(float(c[1, 2])) > 0.2
    ind = SceneSource("fork", ("size", "hue", "brightness"), independent=True, image_size=8)
    _, u = ind.sample_labelled(n, torch.Generator().manual_seed(0))
    off = torch.corrcoef(u.T.double()) - torch.eye(3, dtype=torch.float64)
    assert float(off.abs().max()) < 4 * se
    assert float(u.mean()) == pytest.approx(0.5, abs=4 * math.sqrt(1 / 12 / (3 * n)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"attributes": ("size", "hue")}, "one per graph node"), ({"attributes": ("size", "hue", "mood")}, "among"),
     ({"nuisance": ("size",)}, "nuisance must not repeat"), ({"gain": 0}, "gain")],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SceneSource("fork", **{"attributes": ("size", "hue", "brightness"), **kwargs})
    with pytest.raises(ValueError, match="attribute names must be among"):
        render({"colour": torch.zeros(2)})
