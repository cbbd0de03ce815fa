r"""Time-conditioned UNet velocity field for images (B, C, H, W).

DDPM-style architecture, GroupNorm + SiLU, hand-written softmax attention (no fused kernels,
so ``torch.func.jvp`` / ``vmap`` and the hand-written :meth:`UNet.forward_jvp` go through):

* time: ``τ = MLP(sinusoidal(t))`` of width ``time_embed_dim`` (t in [0, 1] scaled by 1000);
* ``conv_in`` (3×3) to ``c_0`` channels, ``c_i = base_channels · channel_mult[i]``;
* down path: per level ``i``, ``num_res_blocks[i]`` residual blocks at ``c_i`` channels (each
  followed by attention when the feature map's height is in ``attention_resolutions``; each
  output kept as a skip connection), then (except at the last level) GN → SiLU → a stride-2
  3×3 convolution ``c_i → c_{i+1}``;
* middle: ``mid_res_blocks`` residual blocks at the coarsest level, attention after the first
  (if ``mid_attention``);
* up path, coarsest level first: per level, ``num_res_blocks[i]`` residual blocks on
  ``cat([h, skip])`` (``2 c_i → c_i``), then (except at level 0) GN → SiLU → nearest resize →
  3×3 convolution ``c_i → c_{i-1}``;
* ``GroupNorm → SiLU → conv_out`` (3×3) to ``out_channels``.

Channel changes happen in the sampling convolutions, so a level may have 0 residual blocks;
this is how the ``unet-28`` preset keeps the paper's channel multipliers (1, 2, 4, 8, 16) at
about the paper's parameter count (3×3 residual blocks at 1024 channels alone would cost
≥ 19 M parameters each).

Residual block: ``h = conv₁(σ(GN₁(x))) + W_τ σ(τ)``, ``out = skip(x) + conv₂(σ(GN₂(h)))``.

Odd sizes: a stride-2 convolution (padding 1) maps a size ``n`` to ``ceil(n / 2)``
(28 → 14 → 7 → 4 → 2, 8 → 4 → 2 → 1). Upsampling is nearest-neighbour interpolation to the
*exact* size of the finer level recorded on the way down (e.g. 2 → 4 → 7 → 14 → 28), followed
by a 3×3 convolution, so any ``H × W`` works without padding or cropping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import as_time, check_event_shape, check_int_tuple, check_nonneg_int, check_positive_int, resize_nearest
from ._dual import dual_attention, probes_per_sample, sinusoidal_embedding, stacked_conv2d, stacked_group_norm

__all__ = ["UNetConfig", "UNet"]


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet` (JSON-serialisable through ``dataclasses.asdict``).

    Arguments:
        event_shape: ``(C, H, W)`` of one image.
        base_channels: channels after ``conv_in``; level ``i`` has ``base_channels ·
            channel_mult[i]``.
        channel_mult: channel multiplier per resolution level (one level per entry).
        num_res_blocks: residual blocks per level, on the down path and again on the up path;
            an int (>= 1) for every level or a tuple of ints (>= 0), one per level.
        mid_res_blocks: residual blocks at the coarsest level between the two paths (>= 0).
        time_embed_dim: width of the time embedding MLP.
        attention_resolutions: feature-map heights at which attention follows each residual
            block (e.g. ``(32, 16, 8)`` for 64 × 64 input); empty for none.
        mid_attention: attention between the two middle residual blocks.
        num_heads: attention heads (must divide the channels wherever attention is used).
        norm_groups: GroupNorm groups (must divide every channel count).
        in_channels: input channels; ``None`` takes ``event_shape[0]``; otherwise must equal it.
        out_channels: output channels; ``None`` means ``in_channels`` (a velocity shaped like x).
        kind: always ``"unet"``.
    """

    event_shape: tuple[int, ...]
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 1
    mid_res_blocks: int = 2
    time_embed_dim: int = 128
    attention_resolutions: tuple[int, ...] = ()
    mid_attention: bool = True
    num_heads: int = 1
    norm_groups: int = 8
    in_channels: int | None = None
    out_channels: int | None = None
    kind: str = "unet"

    def __post_init__(self) -> None:
        shape = check_event_shape(self.event_shape, "(C, H, W) with positive entries for a UNet, e.g. (1, 28, 28)")
        if len(shape) != 3:
            raise ValueError(
                f"event_shape must be (C, H, W) for a UNet (an image), got {tuple(shape)}; "
                "use an MLP preset for vectors"
            )
        self.event_shape = shape
        check_positive_int("base_channels", self.base_channels)
        self.channel_mult = check_int_tuple("channel_mult", self.channel_mult)
        nrb = self.num_res_blocks
        if isinstance(nrb, int) and not isinstance(nrb, bool):
            check_positive_int("num_res_blocks", nrb)
        else:
            try:
                nrb = tuple(nrb)
            except TypeError:
                nrb = None
            if (
                nrb is None
                or len(nrb) != len(self.channel_mult)
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in nrb)
            ):
                raise ValueError(
                    f"num_res_blocks must be an int >= 1 or a tuple of {len(self.channel_mult)} ints >= 0 "
                    f"(one per channel_mult entry), got {self.num_res_blocks!r}"
                )
        self.num_res_blocks = nrb
        check_nonneg_int("mid_res_blocks", self.mid_res_blocks)
        check_positive_int("time_embed_dim", self.time_embed_dim)
        self.attention_resolutions = check_int_tuple(
            "attention_resolutions", self.attention_resolutions, allow_empty=True
        )
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"mid_attention must be a bool, got {self.mid_attention!r}")
        check_positive_int("num_heads", self.num_heads)
        check_positive_int("norm_groups", self.norm_groups)
        if self.in_channels is None:
            self.in_channels = shape[0]
        check_positive_int("in_channels", self.in_channels)
        if self.in_channels != shape[0]:
            raise ValueError(
                f"event_shape {tuple(shape)} has {shape[0]} channels but in_channels is "
                f"{self.in_channels}; expected event_shape ({self.in_channels}, H, W)"
            )
        if self.out_channels is None:
            self.out_channels = self.in_channels
        check_positive_int("out_channels", self.out_channels)
        for m in self.channel_mult:
            ch = self.base_channels * m
            if ch % self.norm_groups:
                raise ValueError(
                    f"norm_groups must divide every channel count (base_channels * channel_mult = "
                    f"{[self.base_channels * k for k in self.channel_mult]}), got {self.norm_groups}"
                )
        for i, res in enumerate(self.resolutions):
            mid = self.mid_attention and self.mid_res_blocks > 0 and i == len(self.resolutions) - 1
            if res in self.attention_resolutions or mid:
                ch = self.base_channels * self.channel_mult[i]
                if ch % self.num_heads:
                    raise ValueError(f"num_heads must divide the attention channels {ch}, got {self.num_heads}")
        if self.kind != "unet":
            raise ValueError(f"kind must be 'unet' for UNetConfig, got {self.kind!r}")

    @property
    def blocks_per_level(self) -> tuple[int, ...]:
        """``num_res_blocks`` as one int per level."""
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.channel_mult)
        return tuple(self.num_res_blocks)

    @property
    def resolutions(self) -> list[int]:
        """Feature-map height at each level: ``H, ceil(H/2), ceil(H/4), …``."""
        res = [self.event_shape[1]]
        for _ in self.channel_mult[1:]:
            res.append((res[-1] + 1) // 2)
        return res


class ResBlock(nn.Module):
    r"""``out = skip(x) + conv₂(σ(GN₂(conv₁(σ(GN₁(x))) + W σ(τ))))``."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h

    def stacked_jvp(self, xs: Tensor, b: int, temb: Tensor) -> Tensor:
        """``[out; d out]`` of a stacked ``xs = [x; dx]`` (``b`` primal rows), see :meth:`UNet.forward_jvp`."""
        hs = stacked_conv2d(self.conv1, stacked_group_norm(self.norm1, xs, b, silu=True), b, self.emb(temb))
        hs = stacked_conv2d(self.conv2, stacked_group_norm(self.norm2, hs, b, silu=True), b)
        return hs.add_(xs if self.skip is None else stacked_conv2d(self.skip, xs, b))


class AttnBlock(nn.Module):
    r"""Multi-head self-attention over pixels: ``out = x + proj(softmax(q kᵀ / √d) v)``, q, k, v
    from a 1×1 convolution of ``GN(x)``. Written out by hand (no fused kernel)."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, c3, hh, ww = qkv.shape
        d = c3 // (3 * self.heads)
        # (B, 3, heads, d, L) -> three (B*heads, L, d)
        qkv = qkv.reshape(b, 3, self.heads, d, hh * ww).transpose(-1, -2)
        q, k, v = qkv.unbind(1)
        return (
            q.reshape(b * self.heads, hh * ww, d),
            k.reshape(b * self.heads, hh * ww, d),
            v.reshape(b * self.heads, hh * ww, d),
        )

    def _merge(self, o: Tensor, shape: torch.Size) -> Tensor:
        b, c, hh, ww = shape
        return o.reshape(b, self.heads, hh * ww, c // self.heads).transpose(-1, -2).reshape(shape)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(self.qkv(self.norm(x)))
        scale = 1.0 / math.sqrt(q.shape[-1])
        a = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)
        return x + self.proj(self._merge(torch.bmm(a, v), x.shape))

    def stacked_jvp(self, xs: Tensor, b: int) -> Tensor:
        """``[out; d out]`` of a stacked ``xs = [x; dx]`` (``b`` primal rows)."""
        hs = stacked_conv2d(self.qkv, stacked_group_norm(self.norm, xs, b), b)
        q, k, v = self._heads(hs[:b])
        dq, dk, dv = self._heads(hs[b:])
        o, do = dual_attention(q, k, v, dq, dk, dv, 1.0 / math.sqrt(q.shape[-1]), heads=self.heads)
        ohs = torch.cat([self._merge(o, xs[:b].shape), self._merge(do, xs[b:].shape)])
        return stacked_conv2d(self.proj, ohs, b).add_(xs)


class Downsample(nn.Module):
    """``conv_s2(σ(GN(x)))``: 3×3 stride-2 convolution ``c_in -> c_out`` (size ``n -> ceil(n/2)``),
    pre-activated so that consecutive levels without residual blocks are not a linear map."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c_in)
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.silu(self.norm(x)))

    def stacked_jvp(self, xs: Tensor, b: int) -> Tensor:
        """``[out; d out]`` of a stacked ``xs = [x; dx]`` (``b`` primal rows)."""
        return stacked_conv2d(self.conv, stacked_group_norm(self.norm, xs, b, silu=True), b)


class Upsample(nn.Module):
    """``conv(resize(σ(GN(x)), size))``: nearest-neighbour resize to ``size`` (the finer level's
    exact size), then a 3×3 convolution ``c_in -> c_out``; pre-activated like :class:`Downsample`."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c_in)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(resize_nearest(F.silu(self.norm(x)), size))

    def stacked_jvp(self, xs: Tensor, b: int, size: tuple[int, int]) -> Tensor:
        """``[out; d out]`` of a stacked ``xs = [x; dx]`` (``b`` primal rows)."""
        # nearest interpolation is linear and row-wise: primal and tangent are resized in one call
        hs = resize_nearest(stacked_group_norm(self.norm, xs, b, silu=True), size)
        return stacked_conv2d(self.conv, hs, b)


class UNet(nn.Module):
    """Time-conditioned UNet; ``forward(x, t)`` returns (B, out_channels, H, W).

    Arguments:
        config: a :class:`UNetConfig`.

    Example:
        >>> import torch
        >>> net = UNet(UNetConfig(event_shape=(1, 8, 8), base_channels=8, norm_groups=4))
        >>> net(torch.zeros(2, 1, 8, 8), torch.rand(2)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        g, td = cfg.norm_groups, cfg.time_embed_dim
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        blocks = cfg.blocks_per_level
        res = cfg.resolutions
        n_levels = len(chs)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.base_channels, td), nn.SiLU(), nn.Linear(td, td))
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)

        self.down = nn.ModuleList()
        for i in range(n_levels):
            for _ in range(blocks[i]):
                self.down.append(ResBlock(chs[i], chs[i], td, g))
                if res[i] in cfg.attention_resolutions:
                    self.down.append(AttnBlock(chs[i], cfg.num_heads, g))
            if i != n_levels - 1:
                self.down.append(Downsample(chs[i], chs[i + 1], g))

        self.mid = nn.ModuleList()
        for j in range(cfg.mid_res_blocks):
            self.mid.append(ResBlock(chs[-1], chs[-1], td, g))
            if j == 0 and cfg.mid_attention:
                self.mid.append(AttnBlock(chs[-1], cfg.num_heads, g))

        self.up = nn.ModuleList()
        for i in reversed(range(n_levels)):
            for _ in range(blocks[i]):
                self.up.append(ResBlock(2 * chs[i], chs[i], td, g))
                if res[i] in cfg.attention_resolutions:
                    self.up.append(AttnBlock(chs[i], cfg.num_heads, g))
            if i != 0:
                self.up.append(Upsample(chs[i], chs[i - 1], g))

        self.norm_out = nn.GroupNorm(g, chs[0])
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    def _time(self, t: Tensor, x: Tensor) -> Tensor:
        temb = self.time_mlp(sinusoidal_embedding(as_time(t, x), self.config.base_channels))
        return F.silu(temb)  # every block applies W σ(τ); compute σ(τ) once

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``v(x, t)``: x (B, C, H, W), t (B,) -> (B, out_channels, H, W)."""
        self._check(x)
        temb = self._time(t, x)
        h = self.conv_in(x)
        skips, sizes = [], []
        for layer in self.down:
            if isinstance(layer, ResBlock):
                h = layer(h, temb)
                skips.append(h)
            elif isinstance(layer, AttnBlock):
                h = layer(h)
                skips[-1] = h
            else:
                sizes.append(tuple(h.shape[-2:]))
                h = layer(h)
        for layer in self.mid:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb)
            elif isinstance(layer, AttnBlock):
                h = layer(h)
            else:
                h = layer(h, sizes.pop())
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward_jvp(self, x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        r"""Velocity and its directional derivative: returns ``(v, J_x v · dx)``, t held fixed.

        Mirrors :meth:`forward` (the :class:`causal_delta.jvp.ForwardJVP` protocol) on one stacked
        batch ``[h; dh]`` of ``B + B·P`` rows carried through the whole network: every
        convolution runs once on it without bias (the bias and time embedding go to the ``B``
        primal rows), GroupNorm, SiLU and attention write the primal and its exact derivative into
        the two halves of one tensor (:func:`~causal_delta.models._dual.stacked_group_norm`), and
        resizes, skip concatenations and residual sums are single calls on both. The primal runs
        once for all ``P`` tangents of a sample. Shapes: x (B, C, H, W), t (B,), dx (B·P, C, H, W)
        (row ``i·P + p`` is tangent ``p`` of sample ``i``); outputs (B, out_channels, H, W) and
        (B·P, out_channels, H, W).
        """
        self._check(x)
        probes_per_sample(x, dx)
        b = x.shape[0]
        temb = self._time(t, x)
        hs = stacked_conv2d(self.conv_in, torch.cat([x, dx]), b)
        skips, sizes = [], []
        for layer in self.down:
            if isinstance(layer, ResBlock):
                hs = layer.stacked_jvp(hs, b, temb)
                skips.append(hs)
            elif isinstance(layer, AttnBlock):
                hs = layer.stacked_jvp(hs, b)
                skips[-1] = hs
            else:
                sizes.append(tuple(hs.shape[-2:]))
                hs = layer.stacked_jvp(hs, b)
        for layer in self.mid:
            hs = layer.stacked_jvp(hs, b, temb) if isinstance(layer, ResBlock) else layer.stacked_jvp(hs, b)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                hs = layer.stacked_jvp(torch.cat([hs, skips.pop()], dim=1), b, temb)
            elif isinstance(layer, AttnBlock):
                hs = layer.stacked_jvp(hs, b)
            else:
                hs = layer.stacked_jvp(hs, b, sizes.pop())
        out = stacked_conv2d(self.conv_out, stacked_group_norm(self.norm_out, hs, b, silu=True), b)
        return out[:b], out[b:]
