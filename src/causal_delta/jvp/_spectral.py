r"""Top singular directions of the generator Jacobian at one point (randomised subspace iteration)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_positive_int
from ..solvers import Velocity, integrate
from ._common import _check_method, _resolve_grid
from ._forward import jvp_forward

__all__ = ["SingularDirections", "top_singular_directions"]


@dataclass
class SingularDirections:
    r"""Top singular triplets of the generator Jacobian at one point, :math:`J \approx U\,\mathrm{diag}(s)\,V^T`.

    Attributes:
        values: ``(k,)`` singular values, descending.
        left: ``(k, *event)`` output directions ``u_i`` (unit norm).
        right: ``(k, *event)`` input (latent) directions ``v_i`` with ``J v_i = s_i u_i``.
        matvecs: number of JVPs + VJPs spent.
    """

    values: Tensor
    left: Tensor
    right: Tensor
    matvecs: int


def top_singular_directions(
    velocity: Velocity,
    x0: Tensor,
    k: int = 5,
    *,
    oversample: int = 5,
    iters: int = 2,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    generator: torch.Generator | None = None,
    event_shape: Sequence[int] | None = None,
) -> SingularDirections:
    r"""Top-``k`` singular directions of :math:`J_f(x_0)` by randomised subspace iteration.

    Halko, Martinsson & Tropp (2011), Alg. 4.4, with :math:`J` applied by forward mode
    (:func:`jvp_forward`, ``width = k + oversample`` probes at once) and :math:`J^T` by reverse mode
    through the solver (one backward pass of a batch of ``width`` copies; memory grows with the number
    of steps). ``iters`` power iterations sharpen the spectrum gap; the cost is
    ``(iters + 1)·width`` JVPs plus ``(iters + 1)·width`` VJPs.

    Args:
        x0: one source point. Without ``event_shape`` its shape *is* the event: a single image
            ``(1, H, W)`` is one point with one channel, never a batch of one. With
            ``event_shape``, ``x0`` may also be a batch of one, ``(1, *event_shape)`` (e.g.
            ``x[i:i + 1]``).
        event_shape: the shape of one sample, to accept a batch of one unambiguously.
        generator: draws the random test matrix (reproducible from a seed).
    """
    check_positive_int("k", k)
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 0:
        raise ValueError(f"oversample must be an integer >= 0, got {oversample!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 1:
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be one floating-point source point of shape event, got {shape}")
    if event_shape is not None:
        want = tuple(int(s) for s in event_shape)
        if tuple(x0.shape) == (1, *want):
            x0 = x0[0]
        elif tuple(x0.shape) != want:
            raise ValueError(f"x0 must have shape event_shape = {want} or (1, *event_shape) = {(1, *want)}, "
                             f"got {tuple(x0.shape)}")
    event = tuple(x0.shape)
    d = math.prod(event)
    if k > d:
        raise ValueError(f"k must be <= d = {d}, got {k}")
    _check_method(method)
    width = min(d, k + oversample)
    xb = x0.unsqueeze(0)
    grid_, _ = _resolve_grid(velocity, xb, method, steps, grid, 1e-6, 1e-6)

    def J(V: Tensor) -> Tensor:  # (d, width) -> (d, width)
        z = V.T.reshape(1, V.shape[1], *event)
        return jvp_forward(velocity, xb, z, method=method, grid=grid_).jvp.reshape(V.shape[1], d).T

    def Jt(U: Tensor) -> Tensor:  # (d, width) -> (d, width)
        cols = U.shape[1]
        with torch.enable_grad():
            xr = xb.detach().expand(cols, *event).clone().requires_grad_(True)
            y = integrate(velocity, xr, method=method, grid=grid_).x
            (g,) = torch.autograd.grad(y, xr, grad_outputs=U.T.reshape(cols, *event).to(y.dtype))
        return g.detach().reshape(cols, d).T

    omega = torch.randn(d, width, generator=generator, dtype=x0.dtype).to(x0.device)
    Q, _ = torch.linalg.qr(J(omega))
    matvecs = width
    for _ in range(iters):
        W, _ = torch.linalg.qr(Jt(Q))
        Q, _ = torch.linalg.qr(J(W))
        matvecs += 2 * width
    Bt = Jt(Q)  # (d, width) = J^T Q = (Q^T J)^T
    matvecs += width
    Ub, s, Vt = torch.linalg.svd(Bt.T, full_matrices=False)
    U = Q @ Ub
    return SingularDirections(
        values=s[:k],
        left=U[:, :k].T.reshape(k, *event),
        right=Vt[:k].reshape(k, *event),
        matvecs=matvecs,
    )
