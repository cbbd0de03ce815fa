r"""Read-outs of generated samples and their responses :math:`\Delta y = J_{C \circ f}(x_0) z` (Section 5).

A read-out maps samples ``(B, *event)`` to features ``(B, m)``: selected pixels
(:func:`pixel_readout`), a classifier's logits, or — by default, as for tabular data — the
identity (every flattened coordinate). :func:`attribute_jvp` pushes probes through generator and
read-out; :func:`readout_gradient` is the gradient of one read-out feature with respect to ``x0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._compat import load_forward_ad
from .._validation import check_positive_int
from ..solvers import Velocity, integrate
from ._common import (
    Readout,
    _check_eps,
    _check_method,
    _check_mode,
    _check_x0,
    _probe_layout,
    _resolve_grid,
    _warn_training,
)
from ._fd import _fd_endpoints, _warn_roundoff, default_eps
from ._forward import jvp_forward

__all__ = ["pixel_readout", "AttributeJVP", "attribute_jvp", "readout_gradient"]


def pixel_readout(indices: Sequence[int] | Tensor) -> Readout:
    """Read-out selecting flattened event entries ``indices`` (m,): ``x -> x.flatten(1)[:, indices]``.

    Linear, so its JVP is the same selection of the tangent.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        raise ValueError("features must hold at least one index")

    def readout(x: Tensor) -> Tensor:
        flat = x.flatten(1)
        if int(idx.max()) >= flat.shape[1] or int(idx.min()) < -flat.shape[1]:
            raise ValueError(f"feature indices must lie in [0, {flat.shape[1]}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return flat[:, idx.to(flat.device)]

    readout.linear = True  # type: ignore[attr-defined]
    return readout


def _identity_readout(x: Tensor) -> Tensor:
    """Every coordinate is a feature: ``x -> x.flatten(1)`` (the default read-out, linear)."""
    return x.flatten(1)


_identity_readout.linear = True  # type: ignore[attr-defined]


def _readout_jvp(readout: Readout | nn.Module) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(x, dx) -> (r(x), J_r dx)``: linear read-outs directly, ``forward_jvp`` if present, else func.jvp."""
    if getattr(readout, "linear", False):
        return lambda x, dx: (readout(x), readout(dx))
    fj = getattr(readout, "forward_jvp", None)
    if fj is not None:
        return fj
    load_forward_ad()
    return lambda x, dx: torch.func.jvp(readout, (x,), (dx,))


def _check_classifier(classifier: Any) -> None:
    if not callable(classifier):
        raise ValueError(f"classifier must be a callable nn.Module x -> logits, got {type(classifier).__name__}")
    if isinstance(classifier, nn.Module) and classifier.training:
        raise ValueError("classifier must be in eval mode (call classifier.eval()): batch-norm / dropout "
                         "in training mode make its output batch-dependent")


def _make_readout(classifier: Any, features: Sequence[int] | Tensor | None) -> Readout:
    if classifier is not None and features is not None:
        raise ValueError("give either classifier or features (pixel indices), not both")
    if classifier is not None:
        _check_classifier(classifier)
        return classifier
    if features is None:
        return _identity_readout  # every coordinate, as for tabular data
    return pixel_readout(features)


@dataclass
class AttributeJVP:
    r"""Responses :math:`\Delta y = J_{C\circ f}(x_0) z` of a read-out to probes (:func:`attribute_jvp`).

    Attributes:
        responses: ``(n·P, m)`` rows ordered sample-major (row ``i·P + p`` is sample ``i``,
            probe ``p``); units of ``J z``.
        x0: source points ``(n, *event)``.
        probes: ``(n, P, *event)`` — the directions actually pushed through.
        samples: generated ``f(x0)``, ``(n, *event)`` (``None`` for central differences).
        outputs: read-out at the samples ``C(f(x0))``, ``(n, m)`` (``None`` for central differences).
        grid: solver time grid ``(N + 1,)``.
        nfe: velocity evaluations of one solve (one batch through the grid, plus the dopri5
            grid search when there was one), whatever the number of batches; forward mode
            counts a primal + tangent call as one.
        mode: ``"forward"``, ``"fd"`` or ``"central"``.
        eps: finite-difference step or ``None``.
        method: solver method.
        nfe_total: velocity calls of all batches together (``nfe`` for one batch).
    """

    responses: Tensor
    x0: Tensor
    probes: Tensor
    samples: Tensor | None
    outputs: Tensor | None
    grid: Tensor
    nfe: int
    mode: str
    eps: float | None = None
    method: str = "rk4"
    meta: dict = field(default_factory=dict)
    nfe_total: int | None = None

    def __post_init__(self) -> None:
        if self.nfe_total is None:
            self.nfe_total = self.nfe

    @property
    def sample_index(self) -> Tensor:
        """``(n·P,)`` index of the sample each response row belongs to."""
        n, P = self.probes.shape[:2]
        return torch.arange(n, device=self.responses.device).repeat_interleave(P)


def attribute_jvp(
    velocity: Velocity,
    x0: Tensor,
    probes: Tensor,
    *,
    classifier: nn.Module | Callable[[Tensor], Tensor] | None = None,
    features: Sequence[int] | Tensor | None = None,
    mode: str = "forward",
    eps: float | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int = 256,
) -> AttributeJVP:
    r"""Attribute-level responses :math:`\Delta y = J_{C \circ f}(x_0)\, z` (Section 5).

    The read-out is a classifier ``C`` (any ``nn.Module`` in eval mode, on its logits; its
    ``forward_jvp(x, dx)`` is used if present, else :func:`torch.func.jvp` at the end point), a
    selection of flattened pixel indices ``features``, or — when neither is given — the identity
    (every flattened coordinate is a feature, ``m = prod(event)``). Forward mode pushes the probe exactly;
    finite differences difference the read-out, :math:`(C(f(x_0+\varepsilon z)) - C(f(x_0)))/\varepsilon`.

    Args:
        x0: ``(n, *event)``; probes: ``(n, *event)`` or ``(n, P, *event)`` (see :func:`make_probes`).
        batch_size: samples per batch (each with its ``P`` probes).

    Returns:
        :class:`AttributeJVP` with ``responses`` of shape ``(n·P, m)``.
    """
    _check_x0(x0)
    _check_mode(mode)
    _check_method(method)
    check_positive_int("batch_size", batch_size)
    P = _probe_layout(x0, probes)
    if eps is not None:
        eps = _check_eps(eps)
    readout = _make_readout(classifier, features)
    r_jvp = _readout_jvp(readout)
    n = x0.shape[0]
    event = tuple(x0.shape[1:])
    probes = probes.to(dtype=x0.dtype, device=x0.device).reshape(n, P, *event)
    grid_, nfe_grid = _resolve_grid(velocity, x0, method, steps, grid, 1e-6, 1e-6)
    nfe = nfe_total = nfe_grid
    resp, samples, outputs = [], [], []
    used_eps = None
    if mode != "forward":
        used_eps = default_eps(x0.dtype, mode) if eps is None else eps
        _warn_roundoff(used_eps, x0.dtype, mode)
        _warn_training(velocity, "velocity")
    for s in range(0, n, batch_size):
        xb, zb = x0[s: s + batch_size], probes[s: s + batch_size]
        if mode == "forward":
            g = jvp_forward(velocity, xb, zb, method=method, grid=grid_)
            b = xb.shape[0]
            with torch.no_grad():
                xr = g.x.repeat_interleave(P, dim=0) if P > 1 else g.x
                y, dy = r_jvp(xr, g.jvp.reshape(b * P, *event))
            resp.append(dy.reshape(b * P, -1))
            samples.append(g.x)
            outputs.append(y[::P].reshape(b, -1))
        else:
            b = xb.shape[0]
            f0, fp, fm, nfe_b = _fd_endpoints(velocity, xb, zb, P, used_eps, mode, method, grid_)
            with torch.no_grad():
                if mode == "fd":
                    y0 = readout(f0)
                    y0r = y0.repeat_interleave(P, dim=0) if P > 1 else y0
                    dy = (readout(fp) - y0r) / used_eps
                    samples.append(f0)
                    outputs.append(y0.reshape(b, -1))
                else:
                    dy = (readout(fp) - readout(fm)) / (2.0 * used_eps)
            resp.append(dy.reshape(b * P, -1))
        nfe_batch = g.nfe if mode == "forward" else nfe_b  # the grid is given: no search inside
        nfe = nfe_grid + nfe_batch
        nfe_total += nfe_batch
    return AttributeJVP(
        responses=torch.cat(resp),
        x0=x0,
        probes=probes,
        samples=torch.cat(samples) if samples else None,
        outputs=torch.cat(outputs) if outputs else None,
        grid=grid_,
        nfe=nfe,
        mode=mode,
        eps=used_eps,
        method=method,
        nfe_total=nfe_total,
    )


def readout_gradient(
    velocity: Velocity,
    x0: Tensor,
    k: int,
    *,
    classifier: nn.Module | Callable[[Tensor], Tensor] | None = None,
    features: Sequence[int] | Tensor | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    batch_size: int = 64,
    mode: str = "reverse",
) -> Tensor:
    r"""Gradient :math:`g = \nabla_{x_0} (C_k \circ f)(x_0)` per sample, shape ``(n, *event)``.

    Used by :func:`causal_delta.dependence.hold_fixed_probes` to project probes onto the null
    space of ``g``, so that the response of read-out ``k`` vanishes to first order. The read-out is
    ``classifier``, the pixel selection ``features``, or by default the identity (``k`` is then
    a flattened coordinate of the sample).

    Cost: ``mode="reverse"`` is one vector-Jacobian product per sample by reverse mode through
    the whole solver — about 2–3 sampling passes of time, and memory that *grows with the
    number of steps* (the autograd graph of every step of a batch is kept); use a small
    ``batch_size`` for images. ``mode="forward"`` builds the full Jacobian by ``d`` forward-mode
    JVPs per sample (flat memory, cost ``≈ d`` sampling passes): only for small ``d``.
    Read-outs must treat samples independently (eval mode).
    """
    _check_x0(x0)
    _check_method(method)
    check_positive_int("batch_size", batch_size)
    if mode not in ("reverse", "forward"):
        raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
    readout = _make_readout(classifier, features)
    with torch.no_grad():
        m = readout(x0[:1]).reshape(1, -1).shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < m:
        raise ValueError(f"k must be an integer in [0, {m}) (index of a read-out feature), got {k!r}")
    grid_, _ = _resolve_grid(velocity, x0, method, steps, grid, 1e-6, 1e-6)
    event = tuple(x0.shape[1:])
    out = []
    for s in range(0, x0.shape[0], batch_size):
        xb = x0[s: s + batch_size]
        if mode == "forward":
            d = math.prod(event)
            eye = torch.eye(d, dtype=x0.dtype, device=x0.device).reshape(d, *event)
            z = eye.unsqueeze(0).expand(xb.shape[0], d, *event)
            res = attribute_jvp(velocity, xb, z, classifier=classifier, features=features,
                                mode="forward", method=method, grid=grid_, batch_size=batch_size)
            out.append(res.responses[:, k].reshape(xb.shape[0], *event))
        else:
            with torch.enable_grad():
                xg = xb.detach().clone().requires_grad_(True)
                y = readout(integrate(velocity, xg, method=method, grid=grid_).x).reshape(xb.shape[0], -1)
                (g,) = torch.autograd.grad(y[:, k].sum(), xg)
            out.append(g.detach())
    return torch.cat(out)
