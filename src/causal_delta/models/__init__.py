"""Neural networks: velocity fields (MLP, UNet), classifiers, presets, fast forward mode.

Every velocity model is an ``nn.Module`` with ``forward(x, t)`` (x: (B, *event_shape),
t: (B,) in [0, 1], output shaped like x), a ``config`` dataclass (``kind``, ``event_shape``
and the hyper-parameters; JSON-serialisable through ``dataclasses.asdict``) and a hand-written
``forward_jvp(x, t, dx) -> (v, J_x v · dx)`` that agrees with ``torch.func.jvp`` (the
:class:`causal_delta.jvp.ForwardJVP` protocol: ``dx`` holds ``P`` tangents per sample, the
primal runs once).

Entry points:

* :func:`build_model` — a named preset (see :data:`PRESETS`) for a given ``event_shape``,
  with keyword overrides of any hyper-parameter;
* :func:`model_from_config` — rebuild a model from ``dataclasses.asdict(model.config)``
  (e.g. after a JSON round trip in a checkpoint);
* :func:`as_velocity` — wrap a network written for another flow library (``forward(t, x)``,
  float or 0-dim time, conditioning keywords) as ``velocity(x, t)``.

Example:
    >>> import torch
    >>> from causal_delta.models import build_model
    >>> net = build_model("mlp-small", event_shape=(2,))
    >>> net(torch.zeros(4, 2), torch.rand(4)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from torch import nn

from .adapter import VelocityAdapter, as_velocity
from .classifier import (
    CLASSIFIER_ARCHS,
    ImageClassifier,
    ImageClassifierConfig,
    MLPClassifier,
    MLPClassifierConfig,
    ResNetClassifier,
    ResNetClassifierConfig,
    build_classifier,
)
from .mlp import MLP, MLPConfig
from .readout import AttributeClassifier
from .unet import UNet, UNetConfig

__all__ = [
    "PRESETS",
    "build_model",
    "model_from_config",
    "as_velocity",
    "VelocityAdapter",
    "MLP",
    "MLPConfig",
    "UNet",
    "UNetConfig",
    "ImageClassifier",
    "ImageClassifierConfig",
    "MLPClassifier",
    "MLPClassifierConfig",
    "ResNetClassifier",
    "ResNetClassifierConfig",
    "CLASSIFIER_ARCHS",
    "build_classifier",
    "AttributeClassifier",
]

PRESETS: dict[str, dict[str, Any]] = {
    # Paper, 2-D Gaussian rho = 0.55: MLP 10 layers x 1024 (10 hidden layers of width 1024).
    "mlp-2d": {"kind": "mlp", "hidden": 1024, "depth": 10, "time_embed": 0},
    # 3 x 128: the paper's 1-D neural flow (arXiv 2602.02793 §6, hidden 128); also the CPU quick preset,
    # trains a 2-D Gaussian in a few hundred steps.
    "mlp-small": {"kind": "mlp", "hidden": 128, "depth": 3, "time_embed": 0},
    # Paper Table 2: base 64 channels, mult (1, 2, 4, 8, 16), time embedding 256, 28 x 28.
    "unet-28": {
        "kind": "unet",
        "base_channels": 64,
        "channel_mult": (1, 2, 4, 8, 16),
        # residual blocks at 64-256 channels only: 3x3 blocks at 512-1024 channels would cost
        # >= 5-19 M parameters each; the paper's FlowUNet has ~14 M in all.
        "num_res_blocks": (1, 1, 1, 0, 0),
        "mid_res_blocks": 0,
        "time_embed_dim": 256,
        "attention_resolutions": (),
        "mid_attention": False,
        "num_heads": 1,
        "norm_groups": 32,
    },
    # 64 x 64 images (CelebA): mult (1, 1, 2, 2, 4), attention at resolutions 32, 16, 8.
    "unet-64": {
        "kind": "unet",
        "base_channels": 64,
        "channel_mult": (1, 1, 2, 2, 4),
        "num_res_blocks": 2,
        "time_embed_dim": 256,
        "attention_resolutions": (32, 16, 8),
        "mid_attention": True,
        "num_heads": 4,
        "norm_groups": 32,
    },
    # CPU preset: trains on 8 x 8 digits and 28 x 28 images in minutes.
    "unet-small": {
        "kind": "unet",
        "base_channels": 32,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "time_embed_dim": 128,
        "attention_resolutions": (),
        "mid_attention": True,
        "num_heads": 1,
        "norm_groups": 8,
    },
}
"""Named architectures. Each value holds ``kind`` and the hyper-parameters of that kind's config
dataclass (everything but ``event_shape``, which :func:`build_model` takes as an argument)."""

_CONFIGS = {
    "mlp": (MLPConfig, MLP),
    "unet": (UNetConfig, UNet),
    "image-classifier": (ImageClassifierConfig, ImageClassifier.from_config),
    "mlp-classifier": (MLPClassifierConfig, MLPClassifier.from_config),
    "resnet-classifier": (ResNetClassifierConfig, ResNetClassifier.from_config),
}


def build_model(preset: str, *, event_shape: Sequence[int], **overrides: Any) -> nn.Module:
    """Build the velocity model named ``preset`` for samples of shape ``event_shape``.

    Arguments:
        preset: a key of :data:`PRESETS` ("mlp-2d", "mlp-small", "unet-28",
            "unet-64", "unet-small").
        event_shape: shape of one sample: ``(D,)`` (or any shape, flattened) for an MLP,
            ``(C, H, W)`` for a UNet.
        overrides: hyper-parameters replacing the preset's (fields of the preset kind's config,
            e.g. ``hidden=64`` for an MLP, ``base_channels=16`` for a UNet).

    Returns:
        An ``nn.Module`` in float32 with ``forward(x, t)``, ``forward_jvp(x, t, dx)`` and ``config``.

    Raises:
        ValueError: unknown preset (the message lists the known ones), an ``event_shape``
            that does not fit the preset, an unknown or invalid override (the message names it).
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    params = dict(PRESETS[preset])
    kind = params.pop("kind")
    config_cls, _ = _CONFIGS[kind]
    allowed = {f.name for f in fields(config_cls)} - {"kind", "event_shape"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for preset {preset!r} (kind {kind!r}); "
            f"valid overrides: {sorted(allowed)}"
        )
    params.update(overrides)
    return model_from_config({"kind": kind, "event_shape": event_shape, **params})


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from ``dataclasses.asdict(model.config)`` (lists accepted for tuples).

    The architecture is identical, so ``load_state_dict(strict=True)`` of the original model's
    weights succeeds. Weights themselves are freshly initialised.

    Raises:
        ValueError: ``config`` lacks ``kind`` or names an unknown one, or a field is invalid.
    """
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ValueError(f"config must be a mapping with a 'kind' entry (one of {sorted(_CONFIGS)}), got {config!r}")
    kind = config["kind"]
    if kind not in _CONFIGS:
        raise ValueError(f"config['kind'] must be one of {sorted(_CONFIGS)}, got {kind!r}")
    config_cls, factory = _CONFIGS[kind]
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ValueError(f"config has unknown field(s) {unknown} for kind {kind!r}; valid: {sorted(names)}")
    return factory(config_cls(**dict(config)))
