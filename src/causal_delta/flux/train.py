r"""A small training loop for stationary fields: Flux Matching or denoising score matching.

Each step draws a minibatch (with replacement) from a fixed data tensor with a dedicated
``torch.Generator``, evaluates :func:`~causal_delta.flux.objective.flux_matching_loss` or
:func:`~causal_delta.flux.objective.dsm_loss` and takes one AdamW step, optionally clipping the
gradient norm. The flow-matching loop of :mod:`causal_delta.training` (checkpoints, exact
resume) is for time-dependent velocity models and a path; these fields have neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .objective import dsm_loss, flux_matching_loss

__all__ = ["OBJECTIVES", "FitResult", "fit_field"]

OBJECTIVES = ("flux", "dsm")


@dataclass
class FitResult:
    """Loss per step and wall-clock seconds of :func:`fit_field`."""

    losses: list[float] = dc_field(default_factory=list)
    seconds: float = 0.0


def fit_field(field: nn.Module, data: Tensor, *, objective: str = "flux", sigma: float = 0.3, steps: int = 1000,
              batch_size: int = 512, lr: float = 1e-3, lr_schedule: str = "constant",
              grad_clip: float | None = 1.0, seed: int = 0,
              progress: bool = False, penalty: Callable[[nn.Module, Tensor], Tensor] | None = None,
              **loss_kwargs: Any) -> FitResult:
    """Train ``field`` in place on ``data`` (n, d).

    Args:
        objective: ``"flux"`` or ``"dsm"``.
        sigma: KDE bandwidth / DSM noise level.
        lr_schedule: ``"constant"`` or ``"cosine"`` (``lr · (1 + cos(π k / steps)) / 2`` at step k).
        penalty: optional extra term ``penalty(field, batch)`` added to the loss (e.g. a curl
            reward for Flux Matching, which leaves the stationary law free to keep).
        loss_kwargs: passed to the loss (``method``, ``pairing``, ``horizon``, ``target`` ...).

    Raises:
        ValueError: bad arguments. FloatingPointError: a non-finite loss (step named).
    """
    import time

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"data must have shape (n, d) with n >= 2, got {tuple(data.shape)}")
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    gen = torch.Generator(device=data.device).manual_seed(seed)
    opt = torch.optim.AdamW(field.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = flux_matching_loss if objective == "flux" else dsm_loss
    result = FitResult()
    bar = range(steps)
    if progress:
        try:
            from .._progress import progress_bar as tqdm  # tqdm is optional

            bar = tqdm(bar, desc=f"train {objective}", leave=False, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass
    t0 = time.perf_counter()
    field.train()
    for step in bar:
        if lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen, device=data.device)
        batch = data[idx]
        loss = loss_fn(field, batch, sigma, generator=gen, **loss_kwargs)
        if penalty is not None:
            loss = loss + penalty(field, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{objective} loss became {value} at step {step + 1}; "
                                     f"try a lower learning rate (lr, now {lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(field.parameters(), grad_clip)
        opt.step()
        result.losses.append(value)
    field.eval()
    result.seconds = time.perf_counter() - t0
    return result
