r"""ODE solvers for the flow :math:`\dot x = v(x, t)` from ``t0`` to ``t1``.

Fixed-step Euler, midpoint and classical RK4 on an explicit time grid, and an adaptive
Dormand–Prince 5(4) whose accepted grid is returned, so that a tangent can later be pushed
through exactly the same steps (see :mod:`causal_delta.jvp`).

Every step is plain tensor code: no custom autograd ``Function``, no ``.item()``, no in-place
writes. ``torch.func.jvp``, ``vmap`` and ``jacfwd`` therefore work through :func:`integrate`
with a fixed grid. Only the step-size *controller* of :func:`dopri5_grid` reads numbers
back to Python; it chooses the grid, it is not differentiated.

Velocity convention (used throughout causal-delta): ``velocity(x, t)`` with ``x`` of shape
``(B, *event)`` and ``t`` of shape ``(B,)``, returning a tensor shaped like ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validation import check_positive_int

__all__ = [
    "Velocity",
    "Solution",
    "METHODS",
    "NFE_PER_STEP",
    "time_grid",
    "step",
    "integrate",
    "dopri5_grid",
    "sample",
]

Velocity = Callable[[Tensor, Tensor], Tensor]
"""``velocity(x: (B, *event), t: (B,)) -> (B, *event)``."""

# Field with a scalar time, as the step functions call it.
_Field = Callable[[Tensor, Tensor], Tensor]

METHODS = ("euler", "midpoint", "rk4", "dopri5")
NFE_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4, "dopri5": 6}
"""Velocity evaluations per fixed step (dopri5 on a given grid uses its 6 stages)."""


@dataclass
class Solution:
    """Result of :func:`integrate`.

    Attributes:
        x: state at the last grid point, shape of ``x0``.
        grid: the time points used, shape ``(N + 1,)`` for ``N`` steps.
        nfe: number of velocity evaluations (each on the whole batch).
        trajectory: states at every grid point, ``(N + 1, *x0.shape)``, when requested.
    """

    x: Tensor
    grid: Tensor
    nfe: int
    trajectory: Tensor | None = None


def time_grid(
    steps: int,
    t0: float = 0.0,
    t1: float = 1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform grid of ``steps + 1`` points from ``t0`` to ``t1`` (``steps`` intervals).

    Example:
        >>> time_grid(4).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> time_grid(2, 1.0, 0.0).tolist()  # backwards, from data to noise
        [1.0, 0.5, 0.0]
    """
    check_positive_int("steps", steps)
    return torch.linspace(t0, t1, steps + 1, dtype=dtype, device=device)


def _batched(velocity: Velocity) -> _Field:
    """Wrap ``velocity(x, t_batch)`` as ``f(x, t_scalar)``."""

    def field(x: Tensor, t: Tensor) -> Tensor:
        return velocity(x, t.to(x.dtype).expand(x.shape[0]))

    return field


def _euler(f: _Field, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    return x + h * f(x, t)


def _midpoint(f: _Field, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    k1 = f(x, t)
    return x + h * f(x + 0.5 * h * k1, t + 0.5 * h)


def _rk4(f: _Field, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


# Dormand–Prince 5(4) tableau (Hairer, Nørsett & Wanner, Table II.5.2).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def _dopri5_stages(f: _Field, x: Tensor, t: Tensor, h: Tensor, k1: Tensor | None = None):
    ks = [f(x, t) if k1 is None else k1]
    for i in range(1, 6):
        xi = x
        for a, k in zip(_DP_A[i], ks):
            if a != 0.0:
                xi = xi + (h * a) * k
        ks.append(f(xi, t + _DP_C[i] * h))
    x5 = x
    for b, k in zip(_DP_B5, ks):
        if b != 0.0:
            x5 = x5 + (h * b) * k
    return x5, ks


def _dopri5(f: _Field, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    return _dopri5_stages(f, x, t, h)[0]


_STEPS = {"euler": _euler, "midpoint": _midpoint, "rk4": _rk4, "dopri5": _dopri5}


def _check_method(method: str) -> None:
    if method not in _STEPS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def step(method: str, f: _Field, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """One step of ``method`` for ``f(x, t_scalar)`` from ``t`` to ``t + h``."""
    _check_method(method)
    return _STEPS[method](f, x, t, h)


def _check_grid(grid: Tensor) -> Tensor:
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be a 1-D tensor of at least 2 time points, got shape {tuple(grid.shape)}")
    d = grid[1:] - grid[:-1]
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError("grid must be strictly monotonic")
    return grid


def integrate(
    velocity: Velocity,
    x0: Tensor,
    *,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    return_trajectory: bool = False,
) -> Solution:
    r"""Integrate :math:`\dot x = v(x, t)` from ``x0`` over a time grid.

    Args:
        velocity: ``velocity(x: (B, *event), t: (B,)) -> (B, *event)``.
        x0: initial state ``(B, *event)``.
        method: ``"euler"`` (order 1), ``"midpoint"`` (2), ``"rk4"`` (4) or ``"dopri5"``.
            With ``dopri5`` and no ``grid`` the step size is chosen adaptively to
            ``atol``/``rtol`` (see :func:`dopri5_grid`); with a ``grid`` every method takes
            exactly the given steps.
        steps: number of steps ``N`` of the uniform grid; the grid has ``N + 1`` points
            ``t0, t0 + h, ..., t1``. Ignored when ``grid`` is given.
        grid: explicit time points, shape ``(N + 1,)``, strictly monotonic.
        return_trajectory: also return the state at every grid point.

    Returns:
        :class:`Solution` with the final state, the grid used and the number of velocity
        evaluations. Differentiable (forward or reverse mode) for a fixed grid.

    Example:
        ``dx/dt = -x`` from ``x(0) = 1``: ``x(1) = e^{-1}``; RK4's error falls as ``h^4``.

        >>> import math
        >>> decay = lambda x, t: -x
        >>> x0 = torch.ones(1, 1, dtype=torch.float64)
        >>> sol = integrate(decay, x0, method="rk4", steps=20)
        >>> sol.nfe, abs(float(sol.x) - math.exp(-1)) < 1e-7
        (80, True)
        >>> sol = integrate(decay, x0, method="dopri5", atol=1e-10, rtol=1e-10)
        >>> abs(float(sol.x) - math.exp(-1)) < 1e-9
        True
    """
    _check_method(method)
    f = _batched(velocity)
    nfe = 0
    if grid is None:
        if method == "dopri5":
            grid, nfe = dopri5_grid(velocity, x0, t0=t0, t1=t1, atol=atol, rtol=rtol)
        else:
            grid = time_grid(steps, t0, t1, dtype=x0.dtype if x0.is_floating_point() else torch.float64,
                             device=x0.device)
    grid = _check_grid(grid).to(device=x0.device)
    if grid.dtype != x0.dtype and x0.is_floating_point():
        grid = grid.to(x0.dtype)
    step_fn = _STEPS[method]
    x = x0
    traj = [x0] if return_trajectory else None
    for i in range(grid.numel() - 1):
        t, h = grid[i], grid[i + 1] - grid[i]
        x = step_fn(f, x, t, h)
        if traj is not None:
            traj.append(x)
    nfe += NFE_PER_STEP[method] * (grid.numel() - 1)
    return Solution(x=x, grid=grid, nfe=nfe, trajectory=torch.stack(traj) if traj is not None else None)


@torch.no_grad()
def dopri5_grid(
    velocity: Velocity,
    x0: Tensor,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    max_steps: int = 100_000,
) -> tuple[Tensor, int]:
    """Choose an adaptive Dormand–Prince 5(4) time grid for ``x0``.

    Error control uses the RMS over all entries of the batch of
    ``err / (atol + rtol * max(|x_n|, |x_{n+1}|))``; a step is accepted when it is <= 1, and
    the next step is ``h * clip(0.9 * err^{-1/5}, 0.2, 5)``. One grid serves the whole batch,
    so a tangent can be pushed through the same steps afterwards.

    Returns:
        ``(grid, nfe)``: the accepted time points ``(N + 1,)`` (dtype of ``x0``) and the
        number of velocity evaluations spent, rejected steps included.
    """
    if not (atol > 0 and rtol >= 0):
        raise ValueError(f"atol must be > 0 and rtol >= 0, got atol={atol}, rtol={rtol}")
    f = _batched(velocity)
    dtype = x0.dtype
    t = torch.tensor(t0, dtype=dtype, device=x0.device)
    t_end = torch.tensor(t1, dtype=dtype, device=x0.device)
    direction = 1.0 if t1 > t0 else -1.0
    x = x0
    k1 = f(x, t)
    nfe = 1
    scale0 = atol + rtol * x.abs()
    d0 = float((x / scale0).pow(2).mean().sqrt())
    d1 = float((k1 / scale0).pow(2).mean().sqrt())
    h_abs = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-3
    h_abs = min(h_abs, abs(t1 - t0))
    grid = [t0]
    for _ in range(max_steps):
        remaining = abs(float(t_end - t))
        if remaining <= 1e-12 * max(1.0, abs(t1)):
            break
        h_abs = min(h_abs, remaining)
        h = torch.tensor(direction * h_abs, dtype=dtype, device=x0.device)
        x5, ks = _dopri5_stages(f, x, t, h, k1=k1)
        k7 = f(x5, t + h)
        nfe += 6
        err = x - x  # zeros like x
        for (b5, b4), k in zip(zip(_DP_B5 + (0.0,), _DP_B4), ks + [k7]):
            if b5 != b4:
                err = err + (h * (b5 - b4)) * k
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        err_norm = float((err / scale).pow(2).mean().sqrt())
        if err_norm <= 1.0:
            t = t + h if h_abs < remaining else t_end
            x, k1 = x5, k7
            grid.append(float(t))
        factor = 5.0 if err_norm == 0.0 else min(5.0, max(0.2, 0.9 * err_norm ** (-0.2)))
        h_abs = h_abs * factor
    else:
        raise RuntimeError(f"dopri5 did not reach t1={t1} within max_steps={max_steps}")
    return torch.tensor(grid, dtype=dtype, device=x0.device), nfe


@torch.no_grad()
def sample(
    velocity: Velocity,
    x0: Tensor,
    *,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Tensor:
    """Push a set of source points ``x0`` (n, *event) through the flow, in batches.

    Runs under ``torch.no_grad`` and keeps no trajectory, so memory depends on the batch
    size, not on the number of steps. Each batch goes to the velocity's device as given.

    Returns:
        ``(n, *event)`` generated samples ``f(x0)``.

    Example:
        >>> x = sample(lambda x, t: torch.ones_like(x), torch.zeros(5, 2), steps=4, batch_size=2)
        >>> x.shape, x[0].tolist()  # dx/dt = 1 for a unit of time
        (torch.Size([5, 2]), [1.0, 1.0])
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("steps", steps)
    out = []
    chunks = torch.split(x0, batch_size)
    iterator = chunks
    if progress:
        from ._progress import progress_bar as tqdm  # tqdm is optional

        iterator = tqdm(chunks, desc=f"sampling ({method}, {steps} steps)", unit="batch")
    for chunk in iterator:
        out.append(integrate(velocity, chunk, method=method, steps=steps, grid=grid).x)
    return torch.cat(out) if out else x0.clone()
