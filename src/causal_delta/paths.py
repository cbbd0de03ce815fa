r"""Probability paths for flow matching: interpolants, regression targets, parametrisations.

Linear interpolant (Lipman et al. 2023, arXiv 2210.02747), with ``x0 ~ p_init``, ``x1 ~ p_data``, ``t ~ U(0, 1)``:

.. math::  x_t = (1 - t)\, x_0 + t\, x_1 \;(+\; \sigma \varepsilon), \qquad \varepsilon \sim N(0, I).

``sigma = 0`` is the deterministic interpolant; ``sigma > 0`` the stochastic interpolant with
constant noise level (σ-CFM; 0.05 is the value reported to stop memorisation of fixed pairs,
see arXiv 2510.18118). Because σ is constant in ``t`` the conditional velocity is still
``x1 - x0``.

Two parametrisations of the network output ``g = model(x_t, t)``:

* ``"velocity"``: the network regresses ``x1 - x0``; the velocity is ``g``.
* ``"x1"``: the network regresses ``x1`` (it learns ``E[x1 | x_t]``); the velocity is
  ``(g - x_t) / (1 - t)``. Near ``t = 1`` the division is guarded by clamping
  ``1 - t >= t_eps`` (default ``1e-3``), so the field stays finite at ``t = 1`` where an RK4
  stage evaluates it. For ``sigma > 0`` this conversion is the σ = 0 identity and is
  approximate (it ignores ``E[ε | x_t]``); with small σ the bias is O(σ).

:class:`VelocityField` wraps any network into the velocity protocol
``velocity(x: (B, *event), t: (B,)) -> (B, *event)`` used by the solvers and the JVP code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from ._validation import check_nonnegative

if TYPE_CHECKING:
    from .jvp import ForwardJVP

__all__ = [
    "PARAMETRIZATIONS",
    "Sampler",
    "PathSample",
    "LinearPath",
    "GaussianSource",
    "regression_target",
    "to_velocity",
    "VelocityField",
]

PARAMETRIZATIONS = ("velocity", "x1")

Sampler = Callable[..., Tensor]
"""``sampler(n, generator=None) -> (n, *event)``: draws ``n`` points of a distribution."""


def _check_parametrization(parametrization: str) -> str:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
    return parametrization


def _expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape ``t`` of shape ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x``."""
    return t.to(x.dtype).reshape(t.shape[0], *([1] * (x.ndim - 1)))


@dataclass
class PathSample:
    """One minibatch drawn along the path.

    Attributes:
        x0: source points, ``(B, *event)``.
        x1: data points, ``(B, *event)``.
        t: times, ``(B,)``, in [0, 1].
        x_t: points on the path, ``(B, *event)``: ``(1 - t) x0 + t x1 (+ sigma * eps)``.
        target: what the network regresses, ``(B, *event)``: ``x1 - x0`` for the velocity
            parametrisation, ``x1`` for x1-prediction.
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    target: Tensor


def regression_target(x0: Tensor, x1: Tensor, parametrization: str = "velocity") -> Tensor:
    """Regression target: ``x1 - x0`` (``"velocity"``) or ``x1`` (``"x1"``), shaped like ``x1``.

    Example:
        >>> x0, x1 = torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])
        >>> regression_target(x0, x1).tolist(), regression_target(x0, x1, "x1").tolist()
        ([[1.0, 3.0]], [[1.0, 3.0]])
        >>> regression_target(torch.ones(1, 2), x1).tolist()
        [[0.0, 2.0]]
    """
    _check_parametrization(parametrization)
    return x1 - x0 if parametrization == "velocity" else x1


def to_velocity(g: Tensor, x_t: Tensor, t: Tensor, parametrization: str = "velocity", *,
                t_eps: float = 1e-3) -> Tensor:
    """Convert a network output ``g`` to a velocity.

    Args:
        g: network output ``(B, *event)``.
        x_t: the input point ``(B, *event)``.
        t: times ``(B,)``.
        parametrization: ``"velocity"`` (returns ``g``) or ``"x1"``
            (returns ``(g - x_t) / max(1 - t, t_eps)``).
        t_eps: lower bound on ``1 - t`` in the x1 conversion.

    Example:
        An x1-prediction ``g = E[x1 | x_t]`` at ``t = 0.5`` is the velocity ``(g - x_t) / 0.5``:

        >>> to_velocity(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([0.5]), "x1").tolist()
        [[2.0]]
    """
    _check_parametrization(parametrization)
    if parametrization == "velocity":
        return g
    return (g - x_t) / _expand_time(1.0 - t, x_t).clamp_min(t_eps)


class GaussianSource:
    """Standard normal source ``N(0, I)`` on a fixed event shape.

    Calling it, ``source(n, generator=None)``, returns ``(n, *event_shape)`` draws.

    Example:
        >>> source = GaussianSource((1, 4, 4))
        >>> source(3, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 4, 4])
    """

    def __init__(self, event_shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        self.event_shape = tuple(int(s) for s in event_shape)
        self.dtype = dtype
        self.device = device

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((n, *self.event_shape), generator=generator, dtype=self.dtype,
                           device=self.device)

    sample = __call__

    def __repr__(self) -> str:
        return f"GaussianSource(event_shape={self.event_shape})"


class LinearPath:
    r"""Linear interpolant, deterministic (``sigma = 0``) or stochastic (``sigma > 0``).

    Args:
        sigma: constant noise level σ >= 0 added to ``x_t``.
        parametrization: ``"velocity"`` (target ``x1 - x0``) or ``"x1"`` (target ``x1``).

    Example:
        >>> path = LinearPath(sigma=0.05)
        >>> x0, x1, t = torch.zeros(4, 2), torch.ones(4, 2), torch.full((4,), 0.5)
        >>> s = path.sample(x0, x1, t, noise=torch.zeros(4, 2))
        >>> s.x_t[0].tolist(), s.target[0].tolist()
        ([0.5, 0.5], [1.0, 1.0])
    """

    def __init__(self, sigma: float = 0.0, parametrization: str = "velocity") -> None:
        self.sigma = check_nonnegative("sigma", sigma)
        self.parametrization = _check_parametrization(parametrization)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Mean of the path, ``(1 - t) x0 + t x1`` for ``t`` of shape ``(B,)``."""
        tt = _expand_time(t, x0)
        return (1.0 - tt) * x0 + tt * x1

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, *, noise: Tensor | None = None,
               generator: torch.Generator | None = None) -> PathSample:
        """Draw ``x_t`` for given end points and times.

        Args:
            x0, x1: ``(B, *event)``.
            t: ``(B,)``.
            noise: ``ε`` of shape ``(B, *event)``; drawn from ``generator`` when ``None`` and
                ``sigma > 0`` (unused when ``sigma = 0``).
        """
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        x_t = self.interpolate(x0, x1, t)
        if self.sigma > 0:
            if noise is None:
                noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            x_t = x_t + self.sigma * noise
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t,
                          target=regression_target(x0, x1, self.parametrization))

    def __repr__(self) -> str:
        return f"LinearPath(sigma={self.sigma}, parametrization={self.parametrization!r})"


class VelocityField(nn.Module):
    """Wrap a network ``model(x, t)`` so that ``forward(x, t)`` is always a velocity.

    ``forward_jvp(x, t, dx) -> (v, dv)`` (the :class:`causal_delta.jvp.ForwardJVP` protocol:
    ``dx`` may hold ``P`` tangents per sample) exists exactly when the wrapped model has one
    (``hasattr(field, "forward_jvp")`` tells); for x1-prediction it returns
    ``dv = (dg - dx) / max(1 - t, t_eps)`` with ``(g, dg) = model.forward_jvp(x, t, dx)``.

    Args:
        model: network with ``forward(x: (B, *event), t: (B,)) -> (B, *event)``.
        parametrization: what the network outputs, ``"velocity"`` or ``"x1"``.
        t_eps: guard on ``1 - t`` for the x1 conversion (see :func:`to_velocity`).
    """

    def __init__(self, model: nn.Module, parametrization: str = "velocity", *, t_eps: float = 1e-3) -> None:
        super().__init__()
        self.model = model
        self.parametrization = _check_parametrization(parametrization)
        if not t_eps > 0:
            raise ValueError(f"t_eps must be > 0, got {t_eps!r}")
        self.t_eps = float(t_eps)

    @property
    def config(self):
        """The wrapped model's ``config`` (``None`` when it has none)."""
        return getattr(self.model, "config", None)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``(B, *event)`` at ``x`` ``(B, *event)`` and times ``t`` ``(B,)``."""
        return to_velocity(self.model(x, t), x, t, self.parametrization, t_eps=self.t_eps)

    def _forward_jvp(self, x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        # reached only through forward_jvp, which checked the model has one
        g, dg = cast("ForwardJVP", self.model).forward_jvp(x, t, dx)  # dx, dg: (B·P, *event), P tangents per sample
        if self.parametrization == "velocity":
            return g, dg
        denom = _expand_time(1.0 - t, x).clamp_min(self.t_eps)
        ddenom = denom.repeat_interleave(dx.shape[0] // x.shape[0], dim=0)
        return (g - x) / denom, (dg - dx) / ddenom

    @property
    def forward_jvp(self):
        """``forward_jvp(x, t, dx) -> (v, dv)`` with ``dv = J_x v · dx``; only when the model has one."""
        if not callable(getattr(self.model, "forward_jvp", None)):
            # nn.Module.__getattr__ turns this into a plain "no attribute" error, so hasattr() is False.
            raise AttributeError("forward_jvp")
        return self._forward_jvp

    def extra_repr(self) -> str:
        return f"parametrization={self.parametrization!r}, t_eps={self.t_eps}"
