"""Private helpers shared by the closed-form modules: tensor conversion, time handling,
symmetric matrix functions.

Nothing here is public API; see :mod:`causal_delta.closed_form`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_time

__all__ = ["as_float_tensor", "is_transformed", "prepare_time", "check_points", "sym_fn", "Time"]

Time = float | Tensor
"""A time: Python float, 0-dim tensor, or a tensor broadcastable to the batch shape."""


def as_float_tensor(value, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """``value`` (tensor, array, nested list or number) as a tensor of ``dtype`` on ``device``."""
    if isinstance(value, Tensor):
        return value.to(dtype=dtype, device=device if device is not None else value.device)
    return torch.as_tensor(value, dtype=dtype, device=device)


def is_transformed(tensor: Tensor) -> bool:
    """True when ``tensor`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp).

    Such tensors cannot be read back to Python (``vmap`` forbids data-dependent control
    flow), so value checks and the constant-time shortcut are skipped for them.
    """
    probe = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(probe(tensor)) if probe is not None else False


def check_points(x: Tensor, d: int, name: str = "x") -> Tensor:
    """Check that ``x`` has shape ``(..., d)`` and finite entries; return it."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., {d}), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(f"{name} must have shape (..., {d}), got {tuple(x.shape)}")
    if x.is_floating_point() and not is_transformed(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return x


def prepare_time(t: Time, batch_shape: tuple[int, ...] | torch.Size | None, dtype: torch.dtype,
                 device: torch.device) -> tuple[Tensor, bool]:
    """Normalise a time argument.

    Args:
        t: Python float, 0-dim tensor, or tensor broadcastable to ``batch_shape``
            (e.g. ``(B,)`` as the solvers pass it). Every entry must lie in [0, 1].
        batch_shape: the batch shape of the points (``x.shape[:-1]``), or ``None`` when the
            caller has no points (then ``t`` keeps its own shape).

    Returns:
        ``(tt, scalar)``: when ``scalar`` is True, ``tt`` is a 0-dim tensor shared by every
        point (with points, a per-point ``t`` whose entries are all equal is collapsed to one
        value unless it requires grad or is under a ``torch.func`` transform; the result's
        shape is the points' either way); otherwise ``tt`` has shape ``batch_shape`` (or its
        own shape when ``batch_shape`` is ``None``).

    Raises:
        ValueError: ``t`` outside [0, 1] or not broadcastable to ``batch_shape``.
    """
    tt = t.to(dtype=dtype, device=device) if isinstance(t, Tensor) else torch.as_tensor(t, dtype=dtype, device=device)
    plain = not is_transformed(tt)
    if plain:
        check_time("t", tt)
    if tt.ndim == 0:
        return tt, True
    if batch_shape is None:
        return tt, False
    try:
        tt = torch.broadcast_to(tt, tuple(batch_shape))
    except RuntimeError:
        raise ValueError(
            f"t must be a float or a tensor broadcastable to the batch shape {tuple(batch_shape)}, "
            f"got shape {tuple(tt.shape)}"
        ) from None
    if plain and not tt.requires_grad and tt.numel() > 0:
        flat = tt.reshape(-1)
        if bool((flat == flat[0]).all()):
            return flat[0], True  # same time everywhere: one factorisation serves every point
    return tt, False


def sym_fn(matrix: Tensor, fn) -> Tensor:
    """``U diag(fn(λ)) Uᵀ`` for a symmetric ``matrix = U diag(λ) Uᵀ`` (..., d, d)."""
    sym = 0.5 * (matrix + matrix.mT)
    lam, vec = torch.linalg.eigh(sym)
    return (vec * fn(lam).unsqueeze(-2)) @ vec.mT
