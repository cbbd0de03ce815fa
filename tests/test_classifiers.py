"""Attribute classifiers: forward mode vs float64 central differences, ResNet weights from a file."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from causal_delta.jvp import attribute_jvp
from causal_delta.models import ResNetClassifier, build_classifier, model_from_config

KINDS = [("small-cnn", (3, 16, 16), {}), ("mlp", (3, 8, 8), {"hidden": 32}), ("resnet18", (3, 32, 32), {}),
         ("resnet50", (3, 32, 32), {})]


def _fd(f, x, dx, eps):
    return (f(x + eps * dx) - f(x - eps * dx)) / (2 * eps)


@pytest.mark.parametrize("arch,shape,kw", KINDS, ids=[k[0] for k in KINDS])
def test_forward_mode_matches_central_differences(arch, shape, kw):
    if arch.startswith("resnet"):
        pytest.importorskip("torchvision", reason="ResNet classifiers need torchvision (the vision extra)")
    torch.manual_seed(0)
    clf = build_classifier(arch, shape, 5, **kw).double().eval()
    if arch.startswith("resnet"):  # non-trivial BatchNorm statistics, as after training
        for m in clf.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    n = 1 if arch == "resnet50" else 3
    x = torch.rand(n, *shape, generator=g, dtype=torch.float64) * 2 - 1
    dx = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        # ReLU kinks: a step this small crosses one with probability ~1e-7 per unit
        ref = _fd(clf, x, dx, 1e-7 if arch.startswith("resnet") else 1e-5)
    with torch.no_grad():
        y, dy = torch.func.jvp(clf, (x,), (dx,))
    scale = ref.abs().max()
    assert float((dy - ref).abs().max() / scale) <= 1e-6
    assert torch.equal(y, clf(x))
    if hasattr(clf, "forward_jvp"):
        with torch.no_grad():
            y2, dy2 = clf.forward_jvp(x, dx)
        assert float((dy2 - ref).abs().max() / scale) <= 1e-6 and torch.allclose(y2, y, atol=1e-12)
    # the output does not depend on the rest of the batch (eval-mode BatchNorm)
    assert torch.allclose(clf(x[:1]), y[:1], atol=1e-12)


class _LinearFlow(nn.Module):
    """v(x, t) = W x + b t on flattened images: a smooth, cheap velocity field."""

    def __init__(self, shape):
        super().__init__()
        d = torch.Size(shape).numel()
        self.lin = nn.Linear(d, d)
        nn.init.normal_(self.lin.weight, std=0.3 / d ** 0.5)

    def forward(self, x, t):
        return (self.lin(x.flatten(1)) * (1 + t[:, None])).reshape(x.shape)


@pytest.mark.parametrize("arch,shape,kw", KINDS[:3], ids=[k[0] for k in KINDS[:3]])
def test_attribute_jvp_accepts_each_classifier(arch, shape, kw):
    if arch.startswith("resnet"):
        pytest.importorskip("torchvision", reason="ResNet classifiers need torchvision (the vision extra)")
    torch.manual_seed(0)
    clf = build_classifier(arch, shape, 4, **kw).double().eval()
    flow = _LinearFlow(shape).double().eval()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    z = torch.randn(2, 2, *shape, generator=g, dtype=torch.float64)
    fwd = attribute_jvp(flow, x0, z, classifier=clf, steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the round-off note on eps=1e-7 (~2e-9 here)
        ctr = attribute_jvp(flow, x0, z, classifier=clf, steps=4, mode="central",
                            eps=1e-7 if arch.startswith("resnet") else 1e-5)
    assert fwd.responses.shape == (4, 4)
    assert float((fwd.responses - ctr.responses).abs().max() / ctr.responses.abs().max()) <= 1e-6
    with pytest.raises(ValueError, match="eval mode"):
        attribute_jvp(flow, x0, z, classifier=clf.train(), steps=4)


def test_resnet_backbone_from_local_file(tmp_path):
    pytest.importorskip("torchvision", reason="ResNet classifiers need torchvision (the vision extra)")
    from torchvision.models import resnet18

    torch.manual_seed(3)
    imagenet_like = resnet18(weights=None)  # 1000-way fc, as torchvision's ImageNet files
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_like.state_dict(), path)
    clf = ResNetClassifier(3, 40, 64, depth=18)
    assert clf.load_backbone(path) == ["fc.weight", "fc.bias"]
    own, ref = clf.net.state_dict(), imagenet_like.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in ref if not k.startswith("fc."))
    assert own["fc.weight"].shape == (40, 512)
    # round trip through the model config (weights are not part of it)
    again = model_from_config({"kind": "resnet-classifier", "in_channels": 3, "n_classes": 40,
                               "image_size": [64, 64], "depth": 18})
    again.load_state_dict(clf.state_dict())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(again.eval()(x), clf.eval()(x))
    with pytest.raises(FileNotFoundError, match="weights file not found.*nothing is downloaded"):
        clf.load_backbone(tmp_path / "nope.pth")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit resnet18 .*missing .*wrong shape \\['conv1.weight'\\]"):
        clf.load_backbone(tmp_path / "bad.pth")


def test_build_classifier_errors():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_classifier("vgg", (3, 8, 8), 2)
    with pytest.raises(ValueError, match="needs images"):
        build_classifier("small-cnn", (8,), 2)
    with pytest.raises(ValueError, match="invalid override for arch 'small-cnn'"):
        build_classifier("small-cnn", (3, 8, 8), 2, hidden=3)
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetClassifier(3, 2, 8, depth=101)
