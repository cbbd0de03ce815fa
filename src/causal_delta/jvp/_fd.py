r"""Finite-difference JVPs of the generator (Eq. 5 of arXiv 2602.02793), both passes as one batch.

Forward :math:`(f(x_0 + \varepsilon z) - f(x_0)) / \varepsilon` or central
:math:`(f(x_0 + \varepsilon z) - f(x_0 - \varepsilon z)) / 2\varepsilon`, on the solver's grid.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..solvers import Velocity, integrate
from ._common import (
    GeneratorJVP,
    _check_eps,
    _check_method,
    _check_x0,
    _probe_layout,
    _resolve_grid,
    _warn_training,
)

__all__ = ["default_eps", "jvp_fd"]


def default_eps(dtype: torch.dtype, mode: str = "central") -> float:
    r"""Finite-difference step for ``dtype``: :math:`\sqrt{u}` (forward) or :math:`u^{1/3}` (central).

    ``u`` is the unit round-off ``torch.finfo(dtype).eps``. These balance truncation error
    (``O(ε)`` resp. ``O(ε²)``) against round-off (``O(u / ε)``) for a map with O(1) entries
    and O(1) derivatives, probed along a direction with O(1) entries (or unit norm).

    ========  ===========  ===========
    dtype     forward      central
    ========  ===========  ===========
    float32   3.5e-4       4.9e-3
    float64   1.5e-8       6.1e-6
    ========  ===========  ===========
    """
    if mode not in ("fd", "central", "forward"):
        raise ValueError(f"mode must be 'fd' or 'central', got {mode!r}")
    u = torch.finfo(dtype).eps
    return u ** (1.0 / 3.0) if mode == "central" else u ** 0.5


def _warn_roundoff(eps: float, dtype: torch.dtype, mode: str) -> None:
    """Warn when round-off (``u / ε``) dominates the finite-difference error."""
    u = torch.finfo(dtype).eps
    if eps < 0.1 * default_eps(dtype, mode):
        warnings.warn(
            f"finite differences in {str(dtype).replace('torch.', '')} with eps={eps:g}: round-off "
            f"dominates (relative error of order u/eps = {u / eps:.1e}; the original code's float32 "
            f"eps=1e-6 gives ~20 % error). Use eps ~ {default_eps(dtype, mode):.1e}, float64, "
            "or mode='forward'.",
            RuntimeWarning,
            stacklevel=3,
        )


def _fd_endpoints(velocity, x0, z, P, eps, mode, method, grid):
    """Generated samples at the FD evaluation points, one batch. Returns (f0 or None, fp, fm or None)."""
    B = x0.shape[0]
    event = tuple(x0.shape[1:])
    zf = z.reshape(B * P, *event)
    xr = x0.repeat_interleave(P, dim=0) if P > 1 else x0
    if mode == "fd":
        batch = torch.cat([x0, xr + eps * zf])
    else:
        batch = torch.cat([xr + eps * zf, xr - eps * zf])
    with torch.no_grad():
        sol = integrate(velocity, batch, method=method, grid=grid)
    out = sol.x
    if mode == "fd":
        return out[:B], out[B:], None, sol.nfe
    return None, out[: B * P], out[B * P:], sol.nfe


def jvp_fd(
    velocity: Velocity,
    x0: Tensor,
    z: Tensor,
    *,
    eps: float | None = None,
    mode: str = "central",
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-6,
) -> GeneratorJVP:
    r"""Finite-difference JVP of the generator (Eq. 5), both passes as one batch.

    ``fd``: :math:`(f(x_0 + \varepsilon z) - f(x_0)) / \varepsilon`, error ``O(ε) + O(u/ε)``.
    ``central``: :math:`(f(x_0 + \varepsilon z) - f(x_0 - \varepsilon z)) / 2\varepsilon`,
    error ``O(ε²) + O(u/ε)``. Both return :math:`J z` (units of the probe, not of ``ε z``).

    Args:
        velocity: ``velocity(x: (B, *event), t: (B,))``.
        x0: source points ``(B, *event)``.
        z: probes ``(B, *event)`` or ``(B, P, *event)`` (``P`` probes per sample).
        eps: step; default :func:`default_eps` of ``x0.dtype``. A ``RuntimeWarning`` is raised
            when it is so small that round-off dominates (e.g. float32 with ``eps=1e-6``).
        mode: ``"fd"`` (forward differences) or ``"central"``.
        method, steps, grid: solver (see :func:`causal_delta.solvers.integrate`); every pass uses
            the same grid (for adaptive ``dopri5`` the grid is chosen on ``x0``).

    Returns:
        :class:`GeneratorJVP` (``x`` is ``None`` for central differences).
    """
    _check_x0(x0)
    if mode not in ("fd", "central"):
        raise ValueError(f"mode must be 'fd' or 'central' for finite differences, got {mode!r}")
    _check_method(method)
    P = _probe_layout(x0, z)
    eps = default_eps(x0.dtype, mode) if eps is None else _check_eps(eps)
    _warn_roundoff(eps, x0.dtype, mode)
    _warn_training(velocity, "velocity")
    z = z.to(dtype=x0.dtype, device=x0.device)
    grid, nfe0 = _resolve_grid(velocity, x0, method, steps, grid, atol, rtol)
    f0, fp, fm, nfe = _fd_endpoints(velocity, x0, z, P, eps, mode, method, grid)
    if mode == "fd":
        base = f0.repeat_interleave(P, dim=0) if P > 1 else f0
        d = (fp - base) / eps
    else:
        d = (fp - fm) / (2.0 * eps)
    return GeneratorJVP(x=f0, jvp=d.reshape(z.shape), grid=grid, nfe=nfe0 + nfe, mode=mode, eps=eps)
