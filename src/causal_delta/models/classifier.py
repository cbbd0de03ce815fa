r"""Time-free classifiers producing logits, for attribute-level JVPs ``Δy = J_{C∘f} z``.

* :class:`ImageClassifier` — a small CNN for images (B, C, H, W):
  ``[conv3×3 → GN → SiLU] → [conv3×3 stride 2 → GN → SiLU] × n_down → mean over pixels → linear``.
* :class:`MLPClassifier` — a SiLU MLP for vectors (B, *event) (flattened).
* :class:`ResNetClassifier` — torchvision's ResNet-18/34/50 with its ``fc`` replaced by
  ``n_classes`` outputs (the paper's CelebA classifier is a ResNet-50 with 40 logits).

The two small networks use GroupNorm, never BatchNorm (per-sample outputs, so ``vmap`` /
``torch.func.jvp`` behave), no in-place writes, and have ``forward_jvp(x, dx) -> (logits,
J_x logits · dx)``. The ResNet has BatchNorm: in eval mode it is a fixed affine map, so
``torch.func.jvp`` goes through it (``causal_delta.jvp`` refuses a classifier in training mode).

:func:`build_classifier` builds one by architecture name (:data:`CLASSIFIER_ARCHS`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_event_shape, check_nonneg_int, check_positive_int
from ._dual import dual_conv2d, dual_group_norm, dual_linear, dual_silu

__all__ = [
    "ImageClassifierConfig",
    "ImageClassifier",
    "MLPClassifierConfig",
    "MLPClassifier",
    "ResNetClassifierConfig",
    "ResNetClassifier",
    "CLASSIFIER_ARCHS",
    "build_classifier",
]


@dataclass
class ImageClassifierConfig:
    """Architecture of :class:`ImageClassifier` (JSON-serialisable through ``asdict``).

    Arguments:
        in_channels: image channels C.
        n_classes: number of logits.
        image_size: ``(H, W)`` (an int means square).
        width: channels of the first convolution; doubled at every downsampling.
        n_down: number of stride-2 stages.
        norm_groups: GroupNorm groups (must divide ``width``).
        kind: always ``"image-classifier"``.
    """

    in_channels: int
    n_classes: int
    image_size: tuple[int, int] | int
    width: int = 32
    n_down: int = 2
    norm_groups: int = 8
    kind: str = "image-classifier"

    def __post_init__(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("n_classes", self.n_classes)
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        size = check_event_shape(size, "(H, W) or an int >= 1") if not isinstance(size, int) else size
        if not isinstance(size, tuple) or len(size) != 2:
            raise ValueError(f"image_size must be (H, W) or an int >= 1, got {self.image_size!r}")
        self.image_size = size
        check_positive_int("width", self.width)
        check_nonneg_int("n_down", self.n_down)
        check_positive_int("norm_groups", self.norm_groups)
        if self.width % self.norm_groups:
            raise ValueError(f"norm_groups must divide width {self.width}, got {self.norm_groups}")
        if self.kind != "image-classifier":
            raise ValueError(f"kind must be 'image-classifier', got {self.kind!r}")

    @property
    def event_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return (self.in_channels, *self.image_size)


class ImageClassifier(nn.Module):
    """Small time-free CNN: ``forward(x)`` maps (B, C, H, W) to logits (B, n_classes).

    Example:
        >>> import torch
        >>> clf = ImageClassifier(1, 10, 28)
        >>> clf(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        image_size: int | Sequence[int],
        *,
        width: int = 32,
        n_down: int = 2,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        cfg = ImageClassifierConfig(in_channels, n_classes, image_size, width, n_down, norm_groups)
        self.config = cfg
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, width, 3, padding=1)])
        self.norms = nn.ModuleList([nn.GroupNorm(norm_groups, width)])
        ch = width
        for _ in range(n_down):
            self.convs.append(nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1))
            self.norms.append(nn.GroupNorm(norm_groups, 2 * ch))
            ch *= 2
        self.head = nn.Linear(ch, n_classes)

    @classmethod
    def from_config(cls, config: ImageClassifierConfig) -> ImageClassifier:
        """Build from an :class:`ImageClassifierConfig`."""
        return cls(
            config.in_channels,
            config.n_classes,
            config.image_size,
            width=config.width,
            n_down=config.n_down,
            norm_groups=config.norm_groups,
        )

    def _check(self, x: Tensor) -> None:
        want = self.config.event_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, n_classes) of images x (B, C, H, W)."""
        self._check(x)
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = F.silu(norm(conv(h)))
        return self.head(h.mean(dim=(-2, -1)))

    def forward_jvp(self, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and their directional derivative ``J_x logits · dx``; both (B, n_classes)."""
        self._check(x)
        h, dh = x, dx
        for conv, norm in zip(self.convs, self.norms):
            h, dh = dual_silu(*dual_group_norm(norm, *dual_conv2d(conv, h, dh)))
        return dual_linear(self.head, h.mean(dim=(-2, -1)), dh.mean(dim=(-2, -1)))


@dataclass
class MLPClassifierConfig:
    """Architecture of :class:`MLPClassifier` (JSON-serialisable through ``asdict``).

    Arguments:
        event_shape: shape of one input (flattened inside), e.g. ``(2,)``.
        n_classes: number of logits.
        hidden: hidden width.
        depth: number of hidden layers.
        kind: always ``"mlp-classifier"``.
    """

    event_shape: tuple[int, ...]
    n_classes: int
    hidden: int = 128
    depth: int = 2
    kind: str = "mlp-classifier"

    def __post_init__(self) -> None:
        if isinstance(self.event_shape, int) and not isinstance(self.event_shape, bool):
            self.event_shape = (self.event_shape,)
        self.event_shape = check_event_shape(self.event_shape, "a non-empty tuple of positive ints, e.g. (2,)")
        check_positive_int("n_classes", self.n_classes)
        check_positive_int("hidden", self.hidden)
        check_positive_int("depth", self.depth)
        if self.kind != "mlp-classifier":
            raise ValueError(f"kind must be 'mlp-classifier', got {self.kind!r}")


class MLPClassifier(nn.Module):
    """SiLU MLP classifier: ``forward(x)`` maps (B, *event_shape) to logits (B, n_classes).

    Arguments:
        event_shape: shape of one input (an int means a vector of that length).
        n_classes: number of logits.
        hidden: hidden width.
        depth: number of hidden layers.
    """

    def __init__(self, event_shape: int | Sequence[int], n_classes: int, *, hidden: int = 128, depth: int = 2) -> None:
        super().__init__()
        cfg = MLPClassifierConfig(event_shape, n_classes, hidden, depth)
        self.config = cfg
        widths = [math.prod(cfg.event_shape)] + [hidden] * depth + [n_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    @classmethod
    def from_config(cls, config: MLPClassifierConfig) -> MLPClassifier:
        """Build from an :class:`MLPClassifierConfig`."""
        return cls(config.event_shape, config.n_classes, hidden=config.hidden, depth=config.depth)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, n_classes) of inputs x (B, *event_shape)."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))
        return self.layers[-1](h)

    def forward_jvp(self, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and their directional derivative ``J_x logits · dx``; both (B, n_classes)."""
        b = x.shape[0]
        h, dh = x.reshape(b, -1), dx.reshape(b, -1)
        for layer in self.layers[:-1]:
            h, dh = dual_silu(*dual_linear(layer, h, dh))
        return dual_linear(self.layers[-1], h, dh)


# ImageNet statistics of torchvision's pretrained weights (inputs in [0, 1], per RGB channel).
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_RESNET_DEPTHS = (18, 34, 50)


@dataclass
class ResNetClassifierConfig:
    """Architecture of :class:`ResNetClassifier` (JSON-serialisable through ``asdict``).

    Arguments:
        in_channels: image channels C (3 keeps torchvision's first convolution).
        n_classes: number of outputs (replaces the 1000-way ``fc``).
        image_size: ``(H, W)`` (an int means square); 64 x 64 ends at 2 x 2 before pooling.
        depth: 18, 34 or 50.
        kind: always ``"resnet-classifier"``.
    """

    in_channels: int
    n_classes: int
    image_size: tuple[int, int] | int
    depth: int = 50
    kind: str = "resnet-classifier"

    def __post_init__(self) -> None:
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("n_classes", self.n_classes)
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        size = check_event_shape(size, "(H, W) or an int >= 1")
        if len(size) != 2:
            raise ValueError(f"image_size must be (H, W) or an int >= 1, got {self.image_size!r}")
        self.image_size = size
        if self.depth not in _RESNET_DEPTHS:
            raise ValueError(f"depth must be one of {_RESNET_DEPTHS}, got {self.depth!r}")
        if self.kind != "resnet-classifier":
            raise ValueError(f"kind must be 'resnet-classifier', got {self.kind!r}")

    @property
    def event_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return (self.in_channels, *self.image_size)


class ResNetClassifier(nn.Module):
    r"""torchvision ResNet with ``n_classes`` outputs: ``forward(x)`` maps (B, C, H, W) to (B, n_classes).

    Inputs are images in ``[-1, 1]`` (the project's scaling); they are mapped to
    ``((x + 1) / 2 - mean) / std`` with ImageNet's per-channel statistics for 3 channels (what
    ImageNet weights expect), ``x`` itself otherwise. No weights are ever downloaded: the
    network starts from torchvision's random initialisation (``weights=None``), and
    :meth:`load_backbone` reads ImageNet (or any) weights from a local file.

    BatchNorm makes the output depend on the batch in training mode; use ``.eval()`` for
    JVPs (no ``forward_jvp``: :func:`torch.func.jvp` is used, exact in eval mode).
    """

    def __init__(self, in_channels: int, n_classes: int, image_size: int | Sequence[int], *, depth: int = 50) -> None:
        super().__init__()
        cfg = ResNetClassifierConfig(in_channels, n_classes, image_size, depth)
        self.config = cfg
        try:
            from torchvision import models as tvm
        except ImportError as exc:  # pragma: no cover
            raise ImportError("the ResNet classifier needs torchvision: pip install torchvision") from exc
        net = getattr(tvm, f"resnet{depth}")(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Linear(net.fc.in_features, n_classes)
        self.net = net
        mean = _IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels
        std = _IMAGENET_STD if in_channels == 3 else (0.5,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config: ResNetClassifierConfig) -> ResNetClassifier:
        """Build from a :class:`ResNetClassifierConfig`."""
        return cls(config.in_channels, config.n_classes, config.image_size, depth=config.depth)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs (B, n_classes) of images x (B, C, H, W) in ``[-1, 1]``."""
        want = self.config.event_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        return self.net(((x + 1.0) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def load_backbone(self, path: str | os.PathLike) -> list[str]:
        """Load weights (e.g. torchvision's ImageNet ``resnet50-*.pth``) from a local file.

        ``path`` holds a state dict of the torchvision ResNet of the same depth (``.pth`` /
        ``.pt`` read with ``torch.load(weights_only=True)``, possibly under a ``"state_dict"``
        or ``"model"`` key, or ``.safetensors``). ``fc`` weights whose shape differs from this
        head (ImageNet's 1000 classes) are skipped; every other tensor must be present and fit.

        Returns:
            the names of the tensors that were skipped.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a state dict of this architecture (names the keys).
        """
        from pathlib import Path

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path} (a local state dict of torchvision's "
                                    f"resnet{self.config.depth}; nothing is downloaded)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"weights {path} must hold a state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = self.net.state_dict()
        skipped = [k for k in ("fc.weight", "fc.bias") if k in state and state[k].shape != own[k].shape]
        state = {k: v for k, v in state.items() if k not in skipped}
        missing = sorted(set(own) - set(state) - {"fc.weight", "fc.bias"})
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"weights {path} do not fit resnet{self.config.depth} with {self.config.in_channels} input "
                f"channel(s): missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
            )
        self.net.load_state_dict(state, strict=False)
        return skipped


CLASSIFIER_ARCHS = ("small-cnn", "resnet18", "resnet34", "resnet50", "mlp")
"""Architecture names of :func:`build_classifier`."""


def build_classifier(arch: str, event_shape: Sequence[int], n_outputs: int, **overrides) -> nn.Module:
    """Build a classifier (or regressor: the outputs are simply ``n_outputs`` numbers).

    Arguments:
        arch: ``"small-cnn"`` (:class:`ImageClassifier`; width 32, one stride-2 stage per factor
            of 2 down to 8 x 8 pixels, at most 4), ``"resnet18"`` / ``"resnet34"`` /
            ``"resnet50"`` (:class:`ResNetClassifier`) or ``"mlp"`` (:class:`MLPClassifier`).
        event_shape: ``(C, H, W)`` for images, any shape for ``"mlp"``.
        n_outputs: number of outputs (attributes).
        overrides: fields of the architecture's config (``width``, ``n_down``, ``hidden``, ...).

    Raises:
        ValueError: unknown architecture (lists the valid ones), an event shape that does not
            fit, an unknown override.
    """
    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"arch must be one of {CLASSIFIER_ARCHS}, got {arch!r}")
    shape = tuple(event_shape)
    if arch != "mlp" and len(shape) != 3:
        raise ValueError(f"arch {arch!r} needs images, event_shape (C, H, W), got {shape}")
    try:
        if arch == "mlp":
            return MLPClassifier(shape, n_outputs, **overrides)
        if arch == "small-cnn":
            params = {"n_down": min(4, max(0, int(math.log2(max(min(shape[1:]) // 8, 1)))))}
            params.update(overrides)
            return ImageClassifier(shape[0], n_outputs, shape[1:], **params)
        return ResNetClassifier(shape[0], n_outputs, shape[1:], depth=int(arch.removeprefix("resnet")), **overrides)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"invalid override for arch {arch!r}: {exc}") from exc
