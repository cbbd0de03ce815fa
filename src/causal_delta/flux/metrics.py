r"""Read-outs of learned stationary fields: curl on a grid, MMD, radius statistics.

* ``curl`` of a 2-D field ``f = (f_1, f_2)``: ``∂f_2/∂x_1 - ∂f_1/∂x_2`` (from
  :func:`~causal_delta.flux.objective.field_jacobian`); a score field has curl 0.
* MMD² with a Gaussian kernel ``k(a, b) = exp(-‖a - b‖² / 2ℓ²)`` summed over bandwidths ``ℓ``,
  unbiased U-statistic (diagonal terms left out), so it can be slightly negative when the two
  samples come from one law.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .objective import field_jacobian

__all__ = ["curl_2d", "mean_abs_curl", "mmd2", "radius_stats"]


def curl_2d(field: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Scalar curl ``∂f_2/∂x_1 - ∂f_1/∂x_2`` at points x (B, 2), shape ``(B,)``."""
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (B, 2) for a 2-D curl, got {tuple(x.shape)}")
    J = field_jacobian(field, x)
    return J[:, 1, 0] - J[:, 0, 1]


def mean_abs_curl(field: Callable[[Tensor], Tensor], *, lim: float = 4.5, n: int = 80,
                  dtype: torch.dtype = torch.float32) -> float:
    """Mean ``|curl f|`` over an ``n × n`` grid on ``[-lim, lim]²`` (the paper's 80 × 80, 4.5)."""
    g = torch.linspace(-lim, lim, n, dtype=dtype)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    with torch.no_grad():
        return float(curl_2d(field, pts).abs().mean())


def mmd2(x: Tensor, y: Tensor, *, bandwidths: Sequence[float] = (0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD² between samples x (n, d) and y (m, d), n, m >= 2 (module docstring)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"x and y must have shapes (n, d) and (m, d) with n, m >= 2, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    from ..diagnostics.mmd import mmd2_unbiased

    # The unbiased estimator is linear in the kernel: the summed kernel's MMD² is the sum of each
    # bandwidth's (one MMD implementation in the library).
    return float(sum(mmd2_unbiased(x, y, bandwidth=float(l))[0] for l in bandwidths))


def radius_stats(x: Tensor) -> tuple[float, float]:
    """Mean and standard deviation of ``‖x‖`` over the rows of x (n, d)."""
    r = x.double().norm(dim=-1)
    return float(r.mean()), float(r.std())
