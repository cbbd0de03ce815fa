r"""Time-conditioned MLP velocity field for vector (or flattened) data.

``v(x, t) = W_L σ(… σ(W_1 [x, τ(t)] + b_1) …) + b_L`` with σ = SiLU, ``x`` flattened to
``(B, D)``, ``D = prod(event_shape)``, and ``τ(t)`` either the raw time (``time_embed = 0``,
one column) or a sinusoidal embedding of ``time_embed`` columns. ``depth`` hidden layers of
width ``hidden``, so ``depth + 1`` linear layers in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import as_time, check_event_shape, check_nonneg_int, check_positive_int
from ._dual import dual_linear, dual_silu, probes_per_sample, sinusoidal_embedding

__all__ = ["MLPConfig", "MLP"]


@dataclass
class MLPConfig:
    """Architecture of :class:`MLP` (JSON-serialisable through ``dataclasses.asdict``).

    Arguments:
        event_shape: shape of one sample, e.g. ``(2,)``; any shape, flattened inside.
        hidden: width of every hidden layer.
        depth: number of hidden layers (``depth + 1`` linear layers).
        time_embed: 0 to concatenate the raw time ``t``, else the number of sinusoidal
            embedding columns concatenated to ``x``.
        kind: always ``"mlp"``.
    """

    event_shape: tuple[int, ...]
    hidden: int = 128
    depth: int = 3
    time_embed: int = 0
    kind: str = "mlp"

    def __post_init__(self) -> None:
        self.event_shape = check_event_shape(self.event_shape, "a non-empty tuple of positive ints, e.g. (2,)")
        check_positive_int("hidden", self.hidden)
        check_positive_int("depth", self.depth)
        check_nonneg_int("time_embed", self.time_embed)
        if self.kind != "mlp":
            raise ValueError(f"kind must be 'mlp' for MLPConfig, got {self.kind!r}")


class MLP(nn.Module):
    """Time-conditioned SiLU MLP; ``forward(x, t)`` returns a velocity shaped like ``x``.

    Arguments:
        config: an :class:`MLPConfig`.

    Example:
        >>> import torch
        >>> net = MLP(MLPConfig(event_shape=(2,), hidden=16, depth=2))
        >>> net(torch.zeros(5, 2), torch.rand(5)).shape
        torch.Size([5, 2])
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        dim = math.prod(config.event_shape)
        t_dim = config.time_embed if config.time_embed > 0 else 1
        widths = [dim + t_dim] + [config.hidden] * config.depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def _time(self, t: Tensor, x: Tensor) -> Tensor:
        t = as_time(t, x)
        if self.config.time_embed > 0:
            return sinusoidal_embedding(t, self.config.time_embed)
        return t[:, None]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``v(x, t)``: x (B, *event_shape), t (B,) -> (B, *event_shape)."""
        b = x.shape[0]
        h = torch.cat([x.reshape(b, -1), self._time(t, x)], dim=-1)
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))
        return self.layers[-1](h).reshape(x.shape)

    def forward_jvp(self, x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        r"""Velocity and its directional derivative: returns ``(v, J_x v · dx)``, t held fixed.

        Shapes: x (B, *event_shape); t (B,); dx (B·P, *event_shape), ``P`` tangents per sample
        (row ``i·P + p`` is tangent ``p`` of sample ``i``; the :class:`causal_delta.jvp.ForwardJVP`
        protocol); outputs (B, *event_shape) and (B·P, *event_shape). The primal runs once; the
        tangent goes through each linear layer without bias, and through the first one without
        the time columns (the time is held fixed), so no zero columns are concatenated.
        """
        b = x.shape[0]
        probes_per_sample(x, dx)
        temb = self._time(t, x)
        first = self.layers[0]
        d = dx[0].numel()
        h = F.linear(torch.cat([x.reshape(b, -1), temb], dim=-1), first.weight, first.bias)
        h, dh = dual_silu(h, F.linear(dx.reshape(dx.shape[0], d), first.weight[:, :d]))
        for layer in self.layers[1:-1]:
            h, dh = dual_silu(*dual_linear(layer, h, dh))
        v, dv = dual_linear(self.layers[-1], h, dh)
        return v.reshape(x.shape), dv.reshape(dx.shape)
