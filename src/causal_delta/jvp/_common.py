"""Shared pieces of :mod:`causal_delta.jvp`: argument checks, probe layout, probes, the result type, the grid."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..solvers import METHODS, Velocity, dopri5_grid, time_grid

__all__ = ["MODES", "PROBE_KINDS", "Readout", "make_probes", "GeneratorJVP"]

MODES = ("forward", "fd", "central")
"""``forward``: forward-mode AD; ``fd``: forward differences; ``central``: central differences."""

PROBE_KINDS = ("gaussian", "rademacher")

# A read-out maps generated samples (B, *event) to features (B, m).
Readout = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- checks


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _check_x0(x0: Tensor) -> Tensor:
    if not isinstance(x0, Tensor) or x0.ndim < 2 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating-point tensor of shape (B, *event), got {shape}")
    return x0


def _probe_layout(x0: Tensor, z: Tensor) -> int:
    """Number of probes per sample ``P``: ``z`` is ``(B, *event)`` (P = 1) or ``(B, P, *event)``."""
    if not isinstance(z, Tensor):
        raise ValueError(f"probes must be a tensor of shape (B, *event) or (B, P, *event), got {type(z).__name__}")
    event = tuple(x0.shape[1:])
    shape = tuple(z.shape)
    if shape == tuple(x0.shape):
        return 1
    if len(shape) == x0.ndim + 1 and shape[0] == x0.shape[0] and shape[2:] == event and shape[1] >= 1:
        return shape[1]
    want_b = (x0.shape[0], *event)
    raise ValueError(
        f"probes must have shape (B, *event) = {want_b} or (B, P, *event) = "
        f"({x0.shape[0]}, P, {', '.join(map(str, event))}) to match x0, got {shape}"
    )


def _check_eps(eps: float) -> float:
    e = float(eps)
    if not (e > 0.0) or not math.isfinite(e):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return e


# --------------------------------------------------------------------------- probes


def make_probes(
    n: int,
    event_shape: Sequence[int],
    *,
    probes: int = 1,
    kind: str = "gaussian",
    normalize: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Random probe directions ``z``, shape ``(n, probes, *event_shape)``.

    Args:
        kind: ``"gaussian"`` (:math:`z \sim N(0, I)`) or ``"rademacher"`` (entries ±1).
        normalize: rescale each probe to unit Euclidean norm. The paper's CelebA script used one
            random direction per sample of norm ``ε = 1e-2``, i.e. normalised probes
            (``probes=1, normalize=True``; our responses are in units of ``J z``, i.e. divided
            by ``ε``). Unnormalised Gaussian probes give :math:`E[(Jz)(Jz)^T] = J J^T` exactly;
            normalised ones give :math:`J J^T / d` — the same correlation.
    """
    check_positive_int("n", n)
    check_positive_int("probes", probes)
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    event = tuple(int(s) for s in event_shape)
    shape = (n, probes, *event)
    if kind == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    else:
        z = torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    if normalize:
        norms = z.flatten(2).norm(dim=2).clamp_min(torch.finfo(dtype).tiny)
        z = z / norms.reshape(n, probes, *([1] * len(event)))
    return z


# --------------------------------------------------------------------------- generator JVPs


@dataclass
class GeneratorJVP:
    """Result of :func:`jvp_fd` / :func:`jvp_forward`.

    Attributes:
        x: generated samples ``f(x0)``, shape ``(B, *event)``; ``None`` for central differences
            (which never evaluate ``f`` at ``x0``).
        jvp: ``J_f(x0) z``, shape of the probes — ``(B, *event)`` or ``(B, P, *event)``.
            Units: derivative along ``z`` (not multiplied by ε).
        grid: time points used, ``(N + 1,)``.
        nfe: velocity evaluations of one solve (one batch through the grid, plus the dopri5
            grid search when there was one); forward mode counts a primal + tangent call as one.
        mode: ``"forward"``, ``"fd"`` or ``"central"``.
        eps: finite-difference step (``None`` for forward mode).
        nfe_total: velocity calls of all chunks together (``nfe`` when there is one chunk).
    """

    x: Tensor | None
    jvp: Tensor
    grid: Tensor
    nfe: int
    mode: str
    eps: float | None = None
    nfe_total: int | None = None

    def __post_init__(self) -> None:
        if self.nfe_total is None:
            self.nfe_total = self.nfe


def _resolve_grid(velocity: Velocity, x0: Tensor, method: str, steps: int, grid: Tensor | None,
                  atol: float, rtol: float) -> tuple[Tensor, int]:
    """The grid shared by every pass: given, uniform, or chosen by dopri5 on the primal ``x0``."""
    if grid is not None:
        return grid.to(device=x0.device, dtype=x0.dtype), 0
    if method == "dopri5":
        with torch.no_grad():
            return dopri5_grid(velocity, x0, atol=atol, rtol=rtol)
    return time_grid(steps, dtype=x0.dtype, device=x0.device), 0


def _warn_training(module: Any, name: str) -> None:
    if isinstance(module, nn.Module) and module.training:
        warnings.warn(f"{name} is in training mode (dropout / batch-norm make the map random or "
                      f"batch-dependent); call {name}.eval()", RuntimeWarning, stacklevel=3)
