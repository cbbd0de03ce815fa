r"""Forward-mode JVPs of the generator: the tangent carried through every solver step.

Runge–Kutta discretisation commutes with linearisation, so integrating the augmented system
:math:`\tfrac{d}{dt}(x, \dot x) = (v(x, t), J_v(x, t)\,\dot x)` with the same method and grid
gives *exactly* the JVP of the discretised map. Each stage uses the model's ``forward_jvp``
(the :class:`ForwardJVP` protocol) when it has one, else :func:`torch.func.jvp`; everything runs
under ``torch.no_grad``, so memory does not grow with the number of steps.

With ``P`` probes per sample the augmented state is ``cat([x (B), ẋ (B·P)])`` (sample-major
tangent rows): the primal runs once per stage and serves its ``P`` tangents.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .._compat import load_forward_ad
from .._validation import check_positive_int
from ..solvers import Velocity, integrate
from ._common import (
    GeneratorJVP,
    _check_eps,
    _check_method,
    _check_mode,
    _check_x0,
    _probe_layout,
    _resolve_grid,
    _warn_training,
)
from ._fd import jvp_fd

__all__ = ["ForwardJVP", "jvp_forward", "generator_jvp", "jacobian"]

StageJVP = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@runtime_checkable
class ForwardJVP(Protocol):
    r"""A velocity with a hand-written forward mode: ``forward_jvp(x, t, dx) -> (v, dv)``.

    Shapes: ``x`` ``(B, *event)``, ``t`` ``(B,)``, ``dx`` ``(B·P, *event)`` with ``P >= 1``
    tangents per sample, sample-major (row ``i·P + p`` is probe ``p`` of sample ``i``). Returns
    ``v = v(x, t)`` ``(B, *event)`` and ``dv = J_x v(x, t) · dx`` ``(B·P, *event)`` (``t`` held
    fixed): the primal is computed once and serves all ``P`` tangents.

    A model opts in by defining this method (structural typing: no base class to inherit);
    :func:`jvp_forward` then uses it for the model itself, for its bound ``forward`` and for
    its bound ``velocity`` (the method closed-form fields expose). It must agree with
    :func:`torch.func.jvp` of the velocity — test it — and may assume it runs under
    ``torch.no_grad``. Models without it get :func:`torch.func.jvp` (``vmap`` over the probes).
    The library's MLP and UNet write it with the stacked-tangent layers of
    :mod:`causal_delta.models._dual`.

    Example:
        >>> import torch
        >>> class Linear(torch.nn.Module):  # v(x, t) = -x
        ...     def forward(self, x, t):
        ...         return -x
        ...     def forward_jvp(self, x, t, dx):
        ...         return -x, -dx
        >>> isinstance(Linear(), ForwardJVP)
        True
        >>> jvp_forward(Linear().eval(), torch.ones(2, 3), torch.ones(2, 4, 3), steps=10).jvp.shape
        torch.Size([2, 4, 3])
    """

    def forward_jvp(self, x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]: ...


def hand_written_jvp(velocity: Velocity) -> StageJVP | None:
    """The ``forward_jvp`` that differentiates ``velocity``, or ``None``.

    ``velocity.forward_jvp`` if ``velocity`` is a :class:`ForwardJVP`; for a bound method
    ``obj.forward`` or ``obj.velocity`` of a :class:`ForwardJVP` ``obj`` (the same function, not
    just the same name), ``obj.forward_jvp``.
    """
    fj = _own_forward_jvp(velocity)
    if fj is None and inspect.ismethod(velocity):
        owner = velocity.__self__
        if any(velocity.__func__ is getattr(type(owner), attr, None) for attr in ("forward", "velocity")):
            fj = _own_forward_jvp(owner)
    return fj


def _own_forward_jvp(obj: object) -> StageJVP | None:
    if not isinstance(obj, ForwardJVP):
        return None
    # isinstance looks the attribute up statically; a property may still decline with AttributeError
    # (a VelocityField whose network has no forward_jvp).
    fj = getattr(obj, "forward_jvp", None)
    return fj if callable(fj) else None


def _stage_jvp(velocity: Velocity, use_forward_jvp: bool | None) -> tuple[StageJVP, bool]:
    """``(x (B), t (B,), dx (B·P)) -> (v (B), J_v dx (B·P))`` and whether it is hand-written."""
    fj = hand_written_jvp(velocity)
    if use_forward_jvp and fj is None:
        raise ValueError("use_forward_jvp=True but the velocity has no forward_jvp(x, t, dx) method "
                         "(see causal_delta.jvp.ForwardJVP)")
    if fj is not None and use_forward_jvp is not False:
        return _checked(fj), True

    def fn(x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        B = x.shape[0]
        P = dx.shape[0] // B
        try:
            if P == 1:
                return torch.func.jvp(lambda y: velocity(y, t), (x,), (dx,))
            # vmap over the probe axis: the primal runs once, the tangent P times batched.
            dxp = dx.reshape(B, P, *dx.shape[1:]).transpose(0, 1)
            v, dvp = torch.func.vmap(lambda d: torch.func.jvp(lambda y: velocity(y, t), (x,), (d,)),
                                     in_dims=0, out_dims=(None, 0))(dxp)
            return v, dvp.transpose(0, 1).reshape(dx.shape)
        except RuntimeError as exc:  # pragma: no cover - depends on the model
            raise RuntimeError(
                "forward-mode JVP failed inside the velocity (a custom autograd Function without "
                "forward-mode support, or an in-place op?); give the model a forward_jvp(x, t, dx) "
                f"or use mode='central'. Original error: {exc}"
            ) from exc

    return fn, False


def _checked(fj: StageJVP) -> StageJVP:
    """``fj`` with its output shapes checked against the :class:`ForwardJVP` contract."""

    def fn(x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        v, dv = fj(x, t, dx)
        if v.shape != x.shape or dv.shape != dx.shape:
            raise ValueError(
                f"forward_jvp(x, t, dx) must return (v, dv) shaped like x {tuple(x.shape)} and dx "
                f"{tuple(dx.shape)} (a tangent batch of B·P rows for P probes per sample, see "
                f"causal_delta.jvp.ForwardJVP), got {tuple(v.shape)} and {tuple(dv.shape)}; "
                "pass use_forward_jvp=False to use torch.func.jvp"
            )
        return v, dv

    return fn


def _augmented_velocity(velocity: Velocity, B: int, use_forward_jvp: bool | None) -> Velocity:
    r"""Velocity of the augmented state ``cat([x (B), ẋ (B·P)])``: ``(v(x, t), J_v(x, t) ẋ)``.

    The ``B`` primal rows are evaluated once per stage, whatever the number ``P`` of tangents.
    """
    stage, _ = _stage_jvp(velocity, use_forward_jvp)

    def aug(state: Tensor, t: Tensor) -> Tensor:
        v, dv = stage(state[:B], t[:B], state[B:])
        return torch.cat([v, dv])

    return aug


def jvp_forward(
    velocity: Velocity,
    x0: Tensor,
    z: Tensor,
    *,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int | None = None,
    use_forward_jvp: bool | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    chunk_size: int | None = None,
) -> GeneratorJVP:
    r"""Exact JVP :math:`J_f(x_0) z` of the *discretised* generator by forward mode.

    Integrates the augmented system :math:`\tfrac{d}{dt}(x, \dot x) = (v(x,t), J_v(x,t)\dot x)`,
    :math:`\dot x(0) = z`, with the same method and grid as the primal; since Runge–Kutta
    methods commute with linearisation this equals the derivative of the solver's map, to
    round-off. Per stage the velocity's ``forward_jvp`` (:class:`ForwardJVP`) is used when it
    exists, else :func:`torch.func.jvp` (``vmap`` over the probes); either way, with ``P``
    probes per sample the primal runs once per stage for all ``P`` tangents. Runs under
    ``torch.no_grad``: memory is that of one step, whatever the number of steps.

    Args:
        x0: ``(B, *event)``.
        z: probes ``(B, *event)`` or ``(B, P, *event)``.
        method, steps, grid: solver; ``dopri5`` without grid chooses its grid on the primal ``x0``
            (all chunks share it).
        batch_size: samples per integration call (each with its ``P`` probes); default all.
            (``chunk_size``, its former name, still works and warns.)
        use_forward_jvp: ``None`` (use the model's ``forward_jvp`` if present), ``True``
            (require it), ``False`` (always ``torch.func.jvp``).

    Returns:
        :class:`GeneratorJVP` with ``x = f(x0)`` and ``jvp`` shaped like ``z``. ``nfe`` counts
        augmented velocity calls (one primal + tangent evaluation each).
    """
    _check_x0(x0)
    _check_method(method)
    P = _probe_layout(x0, z)
    if chunk_size is not None:
        import warnings

        warnings.warn("jvp_forward(chunk_size=) is deprecated; use batch_size=", FutureWarning, stacklevel=2)
        batch_size = chunk_size if batch_size is None else batch_size
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    _warn_training(velocity, "velocity")
    z = z.to(dtype=x0.dtype, device=x0.device)
    B = x0.shape[0]
    event = tuple(x0.shape[1:])
    grid, nfe_grid = _resolve_grid(velocity, x0, method, steps, grid, atol, rtol)
    zf = z.reshape(B, P, *event)
    chunk = B if batch_size is None else batch_size
    xs, dxs = [], []
    nfe = nfe_total = nfe_grid
    load_forward_ad()
    with torch.no_grad():
        for s in range(0, B, chunk):
            xc = x0[s: s + chunk]
            b = xc.shape[0]
            dxc = zf[s: s + chunk].reshape(b * P, *event)
            aug = _augmented_velocity(velocity, b, use_forward_jvp)
            sol = integrate(aug, torch.cat([xc, dxc]), method=method, grid=grid)
            xs.append(sol.x[:b])
            dxs.append(sol.x[b:])
            nfe = nfe_grid + sol.nfe  # the same grid for every chunk: one solve's count
            nfe_total += sol.nfe
    return GeneratorJVP(x=torch.cat(xs), jvp=torch.cat(dxs).reshape(z.shape), grid=grid, nfe=nfe,
                        mode="forward", eps=None, nfe_total=nfe_total)


def generator_jvp(
    velocity: Velocity,
    x0: Tensor,
    z: Tensor,
    *,
    mode: str = "forward",
    eps: float | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int | None = None,
) -> GeneratorJVP:
    """:func:`jvp_forward` (``mode="forward"``) or :func:`jvp_fd` (``"fd"``, ``"central"``)."""
    _check_mode(mode)
    if mode == "forward":
        if eps is not None:
            _check_eps(eps)
        return jvp_forward(velocity, x0, z, method=method, steps=steps, grid=grid, batch_size=batch_size)
    return jvp_fd(velocity, x0, z, eps=eps, mode=mode, method=method, steps=steps, grid=grid)


def jacobian(
    velocity: Velocity,
    x0: Tensor,
    *,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Full Jacobian of the discretised generator, ``(B, d, d)`` with ``d = prod(event)``.

    ``J[b, i, j] = ∂f_i / ∂x0_j`` (flattened event indices), computed by forward mode on the
    ``d`` identity directions (``d`` probes per sample). Cost ``≈ d`` JVPs per sample: meant for
    small ``d`` (tests, low-dimensional closed forms), not for images.
    """
    _check_x0(x0)
    B = x0.shape[0]
    event = tuple(x0.shape[1:])
    d = math.prod(event)
    eye = torch.eye(d, dtype=x0.dtype, device=x0.device).reshape(d, *event)
    z = eye.unsqueeze(0).expand(B, d, *event)
    res = jvp_forward(velocity, x0, z, method=method, steps=steps, grid=grid, batch_size=batch_size)
    # res.jvp[b, j] = J[b] e_j  ->  column j
    return res.jvp.reshape(B, d, d).transpose(1, 2)
