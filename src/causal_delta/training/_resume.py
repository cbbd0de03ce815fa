"""Exact resume: the RNG state a checkpoint keeps, finding the checkpoint, and what may change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import FIELD_DEFAULTS_BEFORE, RESUMABLE_CHANGES

__all__ = ["check_resumable", "find_resume", "restore_train_state", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """The global CPU (and CUDA) RNG state, for a checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA only on a machine with as many GPUs)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_train_state(ckpt, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator) -> tuple[list[float], int, Path]:
    """Load a checkpoint's weights, optimiser, data generator and global RNG states in place.

    The part of resuming that the flow and read-out trainers share (each then restores its own
    extras, e.g. the flow's EMA weights). Returns ``(losses, step, checkpoint path)``.
    """
    module.load_state_dict(ckpt.model_state)
    optimizer.load_state_dict(ckpt.train_state["optimizer"])
    generator.set_state(ckpt.train_state["generator"])
    set_rng_state(ckpt.train_state["rng"])
    return [float(x) for x in ckpt.train_state["losses"]], ckpt.step, ckpt.path


def find_resume(config, resume: bool | str | Path) -> Path | None:
    """The checkpoint ``resume`` names (``False``, ``True``, ``"auto"`` or a path; see ``train``)."""
    from ..checkpoint import latest_checkpoint, resolve_checkpoint

    if resume is False or resume is None:
        return None
    if resume is True or resume == "auto":
        found = latest_checkpoint(config.out_dir)
        if found is None and resume is True:
            raise FileNotFoundError(f"resume: no checkpoint found in {Path(config.out_dir) / 'checkpoints'}")
        return found
    return resolve_checkpoint(resume)


def check_resumable(config, saved: dict[str, Any], path: Path, step: int, extend: bool) -> None:
    """Refuse a resume whose config differs from the checkpoint's beyond the resumable fields."""
    current = config.to_dict()
    saved = {**FIELD_DEFAULTS_BEFORE, **saved}  # checkpoints from before these settings existed
    diff = sorted(k for k in current if k not in RESUMABLE_CHANGES and current[k] != saved.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff)
        raise ValueError(f"resume: config differs from checkpoint {path} in {detail}")
    if config.steps < step:
        raise ValueError(f"resume: steps {config.steps} is below the checkpoint's step {step} ({path}); "
                         f"give steps >= {step}")
    saved_total = saved.get("steps")
    if config.lr_schedule == "cosine" and saved_total != config.steps and not extend:
        raise ValueError(f"resume: steps {config.steps} differs from the run's total of {saved_total} steps "
                         f"(checkpoint {path}), and the cosine learning-rate schedule depends on the total; "
                         f"resume with steps {saved_total} to continue exactly, or pass extend=True (--extend) to "
                         f"recompute the schedule for {config.steps} steps (not bit-exact with any "
                         f"uninterrupted run)")
