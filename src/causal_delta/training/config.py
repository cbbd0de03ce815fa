"""The configuration of a flow-matching training run (:class:`TrainConfig`, defined torch-free in
:mod:`causal_delta.train_config`) and the pure functions of it (schedule, device)."""

from __future__ import annotations

import math

from ..train_config import COUPLINGS, LR_SCHEDULES, PRECISIONS, T_SAMPLINGS, ClassifierTrainConfig, TrainConfig

__all__ = [
    "COUPLINGS",
    "LR_SCHEDULES",
    "PRECISIONS",
    "T_SAMPLINGS",
    "TrainConfig",
    "learning_rate",
    "resolve_device",
]

# Fields that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "out_dir", "device"}
# Values of fields added after the first checkpoints were written (what those runs used).
FIELD_DEFAULTS_BEFORE = {"coupling": "independent", "precision": "float32"}


def resolve_device(device):
    """``"auto"`` -> CUDA when available else CPU; checks that a requested CUDA device exists.

    Returns a :class:`torch.device`; raises ``ValueError`` naming ``device`` otherwise.
    """
    import torch

    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def learning_rate(config: TrainConfig | ClassifierTrainConfig, step: int) -> float:
    """Learning rate of step ``step + 1`` (``step`` steps done): warm-up, then the schedule."""
    lr = config.lr
    if config.warmup_steps and step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(config.steps - config.warmup_steps, 1)
        frac = min(max(step - config.warmup_steps, 0) / span, 1.0)
        lr = lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr
