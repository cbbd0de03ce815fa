r"""Stationary (time-free) vector fields for Flux Matching.

* :class:`TimeFree` wraps a library velocity model ``net(x, t)`` (e.g. an MLP preset from
  :func:`causal_delta.models.build_model`) into ``f(x) = net(x, 0)``; ``t`` is held at 0, which
  for the MLP with raw time input only adds a constant column's weights to the first bias.
* :class:`MaskedMLP` is a SiLU MLP whose Jacobian ``∂f_i/∂x_j`` is zero wherever
  ``mask[i, j] = 0`` — by construction, to float precision — when the mask is a
  (block-)lower-triangular pattern over an ordering of the variables (MADE-style masked
  linear layers, Germain et al. 2015, with non-strict output degrees so the diagonal block is
  allowed). :func:`block_triangular_mask` builds such masks.

Both follow the library's velocity protocol ``forward(x, t)`` (``t`` ignored, may be omitted)
and offer ``forward_jvp(x, t, dx) -> (f, J_f dx)``, so :mod:`causal_delta.jvp` (``jacobian``,
``attribute_jvp``) integrates them like any velocity field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._compat import load_forward_ad
from .._validation import check_positive_int
from ..models._dual import dual_linear, per_probe, silu_derivative
from ..models.mlp import MLP

__all__ = ["TimeFree", "MaskedMLP", "block_triangular_mask"]


class TimeFree(nn.Module):
    """``f(x) = net(x, 0)``: a time-conditioned velocity model used as a stationary field.

    Shapes: x (B, *event) -> (B, *event). ``forward_jvp`` uses the model's own when present.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def _t(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.net(x, self._t(x))

    def forward_jvp(self, x: Tensor, t: Tensor | None, dx: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), J_f(x) dx)``, twice differentiable (the double backprop of the loss needs it).

        For the library MLP the tangent goes through each linear layer without bias (``dx`` may
        hold ``P`` tangents per point, ``(B·P, d)``, the primal runs once); the SiLU derivative
        is written in plain ops because ATen's fused ``silu_backward`` (used by
        ``MLP.forward_jvp``) has no derivative of its own.
        """
        if isinstance(self.net, MLP):
            net = self.net
            b = x.shape[0]
            temb = net._time(self._t(x), x)
            h = torch.cat([x.reshape(b, -1), temb], dim=-1)
            dh = dx.reshape(dx.shape[0], -1)  # (B·P, d): P tangents per point (ForwardJVP protocol)
            dh = torch.cat([dh, torch.zeros_like(dh[:, :1]).expand(-1, temb.shape[1])], dim=-1)
            layers = [cast(nn.Linear, layer) for layer in net.layers]  # MLP.layers holds nn.Linear only
            for layer in layers[:-1]:
                h, dh = dual_linear(layer, h, dh)
                h, dsig = silu_derivative(h)
                dh = per_probe(dsig, dh)
            v, dv = dual_linear(layers[-1], h, dh)
            return v.reshape(x.shape), dv.reshape(dx.shape)
        load_forward_ad()
        P = dx.shape[0] // x.shape[0]
        xr = x.repeat_interleave(P, dim=0) if P > 1 else x  # torch.func.jvp needs a primal per tangent
        # without has_aux, torch.func.jvp returns (output, jvp_out); its stub also allows the aux triple
        v, dv = cast("tuple[Tensor, Tensor]", torch.func.jvp(lambda y: self.net(y, self._t(y)), (xr,), (dx,)))
        return v[::P], dv


def block_triangular_mask(blocks: Sequence[int]) -> Tensor:
    r"""Allowed-dependency mask ``M[i, j] = 1`` iff ``block(j) <= block(i)``, shape ``(d, d)``.

    ``blocks[i]`` is the position of variable ``i`` in the ordering (variables sharing a block
    may depend on each other). ``[0, 1, 2]`` gives the lower-triangular mask with diagonal.
    """
    b = torch.as_tensor(list(blocks))
    if b.ndim != 1 or b.numel() == 0 or b.dtype not in (torch.int64, torch.int32) or (b < 0).any():
        raise ValueError(f"blocks must be a non-empty sequence of integers >= 0, got {blocks!r}")
    return (b[None, :] <= b[:, None]).to(torch.float32)


class MaskedMLP(nn.Module):
    r"""SiLU MLP with ``∂f_i/∂x_j ≡ 0`` where ``block(j) > block(i)`` (MADE masks).

    Degrees: input ``j`` has degree ``k_j = block(j)``; hidden unit ``h`` a degree ``m_h``
    cycling through the block levels; a hidden-to-hidden weight is kept iff
    ``m_out >= m_in``, an input-to-hidden one iff ``m_h >= k_j``, a hidden-to-output one iff
    ``block(i) >= m_h``. Every path from ``x_j`` to ``f_i`` then has non-decreasing degrees, so
    ``f_i`` depends only on ``x_j`` with ``block(j) <= block(i)``.

    Args:
        blocks: block position of each of the ``d`` variables (see :func:`block_triangular_mask`).
        hidden: width of each hidden layer; depth: number of hidden layers.
    """

    def __init__(self, blocks: Sequence[int], *, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        mask = block_triangular_mask(blocks)
        check_positive_int("hidden", hidden)
        check_positive_int("depth", depth)
        deg_in = torch.as_tensor(list(blocks))
        levels = torch.unique(deg_in)
        if hidden < levels.numel():
            raise ValueError(f"hidden must be >= the number of blocks ({levels.numel()}), got {hidden}")
        deg_h = levels[torch.arange(hidden) % levels.numel()]
        d = deg_in.numel()
        self.blocks = tuple(int(v) for v in deg_in)
        self.register_buffer("mask", mask)
        widths = [d] + [hidden] * depth + [d]
        degs = [deg_in] + [deg_h] * depth + [deg_in]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for k, (din, dout) in enumerate(zip(degs[:-1], degs[1:])):
            self.register_buffer(f"mask{k}", (dout[:, None] >= din[None, :]).to(torch.float32))

    def _linears(self) -> list[nn.Linear]:
        return [cast(nn.Linear, layer) for layer in self.layers]  # an nn.ModuleList is untyped

    def _weights(self) -> list[Tensor]:
        return [layer.weight * getattr(self, f"mask{k}") for k, layer in enumerate(self._linears())]

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``f(x)``: x (B, d) -> (B, d)."""
        ws = self._weights()
        h = x
        layers = self._linears()
        for w, layer in zip(ws[:-1], layers[:-1]):
            h = F.silu(F.linear(h, w, layer.bias))
        return F.linear(h, ws[-1], layers[-1].bias)

    def forward_jvp(self, x: Tensor, t: Tensor | None, dx: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), J_f(x) dx)``; x (B, d), dx (B·P, d) -> (B, d), (B·P, d): the primal runs once."""
        ws = self._weights()
        h, dh = x, dx  # dx: (B·P, d), P tangents per point (ForwardJVP protocol)
        for k, (w, layer) in enumerate(zip(ws, self._linears())):
            h, dh = F.linear(h, w, layer.bias), F.linear(dh, w)
            if k < len(ws) - 1:
                h, dsig = silu_derivative(h)  # plain ops: twice differentiable
                dh = per_probe(dsig, dh)
        return h, dh
