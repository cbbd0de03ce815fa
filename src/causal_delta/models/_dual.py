r"""Hand-written forward-mode ("dual") layer helpers with stacked tangents.

Each helper takes a primal activation ``h`` of shape ``(B, ...)`` and a tangent ``dh`` of shape
``(B·P, ...)`` — ``P >= 1`` tangents per sample, sample-major (row ``i·P + p`` belongs to sample
``i``) — and returns ``(y, dy)`` with ``y = f(h)`` ``(B, ...)`` and ``dy = J_f(h) · dh``
``(B·P, ...)``. The primal is computed once and serves all ``P`` tangents; this is the layout of
the :class:`causal_delta.jvp.ForwardJVP` protocol, and the helpers let a model write a
``forward_jvp`` that mirrors its ``forward`` line by line.

Rules that make this cheap (see ``shared/design/PERF.md``):

* Linear and convolution layers are linear in their input up to the bias, so the tangent is
  the same layer *without bias*. The ``dual_*`` helpers take primal and tangent as two tensors
  and two calls (the bias fused into the primal's), never concatenating per layer (a
  concatenation copies every activation). A network can instead carry one stacked batch
  ``hs = [h; dh]`` of ``B + B·P`` rows from input to output (``stacked_*`` helpers, used by the
  UNet): each convolution is then one call on all rows — cheaper per row than two calls where
  the feature maps are small (1 thread, 28×28 UNet: 0.83–0.91× at 4×4, 0.95–1.0× at 14–28 px,
  batch 8) — and elementwise layers write primal and tangent into the two halves of one output.
* Elementwise nonlinearities multiply the tangent by their derivative at the primal, computed
  once per sample and broadcast over the ``P`` tangents (:func:`per_probe`).
* GroupNorm and softmax attention use their exact derivatives (formulas in each docstring).

Tangents are in the same units as the primal input direction: no hidden scaling by ε.
Everything is plain tensor code (no ``.item()``; in-place writes only into tensors a helper has
just created); it is meant to run under ``torch.no_grad`` (the library's JVPs do). Under autograd
the stacked helpers fall back to concatenation (``out=`` writes are not differentiable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "sinusoidal_embedding",
    "probes_per_sample",
    "per_probe",
    "dual_linear",
    "dual_conv2d",
    "dual_silu",
    "silu_derivative",
    "dual_group_norm",
    "dual_attention",
    "stacked_conv2d",
    "stacked_group_norm",
]


def sinusoidal_embedding(t: Tensor, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    r"""Sinusoidal embedding of times ``t`` (B,) into (B, dim).

    ``emb = [cos(s t ω_i), sin(s t ω_i)]`` with ``ω_i = max_period^{-i/half}``, ``i < half =
    dim // 2`` and ``s = scale`` (times in [0, 1] are spread over ``[0, scale]`` as for discrete
    diffusion steps). An odd ``dim`` gets one trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half, 1)
    )
    args = (scale * t)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def probes_per_sample(h: Tensor, dh: Tensor) -> int:
    """``P = dh.shape[0] / h.shape[0]``: tangents per primal row (``dh`` is ``(B·P, ...)``, ``h`` ``(B, ...)``)."""
    B = h.shape[0]
    if dh.shape[1:] != h.shape[1:] or B == 0 or dh.shape[0] % B:
        raise ValueError(f"tangent must have shape (B·P, {', '.join(map(str, h.shape[1:]))}) for a primal of "
                         f"shape {tuple(h.shape)} (P tangents per sample), got {tuple(dh.shape)}")
    return dh.shape[0] // B


def per_probe(coef: Tensor, dh: Tensor, op=torch.mul) -> Tensor:
    """``op(coef_i, dh_{i,p})`` for every sample ``i`` and tangent ``p``: ``coef`` ``(B, ...)`` is
    broadcast over the ``P`` tangents of its sample without copying it; returns ``(B·P, ...)``.

    ``coef`` may have size 1 in trailing dimensions (per-channel coefficients)."""
    B = coef.shape[0]
    P = dh.shape[0] // B
    if P == 1:
        return op(coef, dh)
    out = op(coef.unsqueeze(1), dh.reshape(B, P, *dh.shape[1:]))
    return out.reshape(B * P, *out.shape[2:])


def dual_linear(layer: nn.Linear, h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
    r"""``y = W h + b`` ``(B, out)``, ``dy = W dh`` ``(B·P, out)``: two GEMMs, no concatenation."""
    return F.linear(h, layer.weight, layer.bias), F.linear(dh, layer.weight)


def dual_conv2d(layer: nn.Conv2d, h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
    r"""``y = conv(h) + b``, ``dy = conv(dh)`` (no bias): two convolution calls, no concatenation."""
    if layer.padding_mode != "zeros":
        raise ValueError(f"dual_conv2d supports padding_mode='zeros' only, got {layer.padding_mode!r}")
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.conv2d(h, layer.weight, layer.bias, *args), F.conv2d(dh, layer.weight, None, *args)


def silu_derivative(h: Tensor) -> tuple[Tensor, Tensor]:
    r"""Return ``(silu(h), silu'(h))`` with ``silu'(h) = σ(h) (1 + h (1 - σ(h)))``."""
    s = torch.sigmoid(h)
    y = h * s
    return y, s + y * (1 - s)  # = σ (1 + h (1 - σ))


def dual_silu(h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
    r"""``y = h σ(h)``, ``dy = σ(h) (1 + h (1 - σ(h))) · dh``.

    With one tangent per sample the tangent uses ATen's fused ``silu_backward(dh, h)``, which
    computes exactly ``dh · silu'(h)`` in one pass (it has its own derivative formulas, so
    ``torch.func`` still works through it); with ``P > 1`` ``silu'(h)`` is computed once per
    sample and multiplies its ``P`` tangents.
    """
    if dh.shape[0] == h.shape[0]:
        return F.silu(h), torch.ops.aten.silu_backward(dh, h)
    y, d = silu_derivative(h)
    return y, per_probe(d, dh)


def dual_group_norm(layer: nn.GroupNorm, h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
    r"""GroupNorm and its exact derivative.

    Per sample and group of ``n`` entries: ``μ = mean(h)``, ``r = (var(h) + eps)^{-1/2}``
    (biased variance), ``ĥ = (h - μ) r``, ``y = γ ĥ + β``. Differentiating,

    ``dĥ = r (dh - a - ĥ c)`` with ``a = mean(dh)``, ``c = mean(ĥ dh) = r (mean(h dh) - μ a)``,

    which is affine in ``(dh, h)`` per sample, tangent and channel:
    ``dy = γ r · dh - γ r² c · h + γ r (r c μ - a)``. The primal (with ``μ``, ``r``) comes from one
    fused ``native_group_norm`` call, once per sample; the tangent from :func:`_group_norm_tangent`.

    Shapes: ``h`` (B, C, *spatial), ``dh`` (B·P, C, *spatial); returns ``y`` shaped like ``h``
    and ``dy`` shaped like ``dh``.
    """
    probes_per_sample(h, dh)
    y, mu, r = _group_norm_primal(layer, h)
    return y, _group_norm_tangent(layer, h, dh, mu, r)


def _group_norm_primal(layer: nn.GroupNorm, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, μ, r)`` of one fused ``native_group_norm`` call (μ, r of shape (B, G))."""
    b, ch = h.shape[0], h.shape[1]
    return torch.native_group_norm(h, layer.weight, layer.bias, b, ch, math.prod(h.shape[2:]), layer.num_groups,
                                   layer.eps)


def _group_norm_tangent(layer: nn.GroupNorm, h: Tensor, dh: Tensor, mu: Tensor, r: Tensor) -> Tensor:
    r"""``dy = γ dĥ`` (B·P, C, *spatial) of :func:`dual_group_norm`, given the primal's ``μ``, ``r``.

    With one tangent per sample, ``dĥ`` is the input gradient of an unscaled GroupNorm at
    ``grad_output = dh`` (the normalisation's Jacobian ``r (I - 11ᵀ/n - ĥĥᵀ/n)`` is symmetric):
    one fused ``native_group_norm_backward`` call, then ``γ`` in place. With ``P > 1`` each
    tangent costs two reductions and two ``addcmul`` passes (``h`` broadcast over the ``P``
    tangents of its sample).
    """
    shape = h.shape
    b, ch, g = shape[0], shape[1], layer.num_groups
    P = dh.shape[0] // b
    hw = math.prod(shape[2:])
    view = (1,) * (len(shape) - 2)
    if P == 1:
        dhat = torch.ops.aten.native_group_norm_backward(dh, h, mu, r, None, b, ch, hw, g, [True, False, False])[0]
        return dhat.mul_(layer.weight.view(1, ch, *view)) if layer.affine else dhat
    n = (ch // g) * hw
    hg, dhg = h.reshape(b, 1, g, n), dh.reshape(b, P, g, n)
    a = dhg.mean(dim=-1)  # (B, P, G)
    mu, r = mu.reshape(b, 1, g), r.reshape(b, 1, g)
    c = r * (torch.linalg.vecdot(hg, dhg) / n - mu * a)  # (B, P, G)
    coef_h, const = -r * r * c, r * (r * c * mu - a)  # per tangent
    coef_dh = r  # per sample
    rep = ch // g
    coef_h, const, coef_dh = (k.repeat_interleave(rep, dim=-1) for k in (coef_h, const, coef_dh))  # (B, ·, C)
    if layer.affine:
        coef_h, const, coef_dh = coef_h * layer.weight, const * layer.weight, coef_dh * layer.weight
    h5, dh5 = h.reshape(b, 1, *shape[1:]), dh.reshape(b, P, *shape[1:])
    dy = torch.addcmul(torch.addcmul(const.reshape(b, P, ch, *view), coef_h.reshape(b, P, ch, *view), h5),
                       coef_dh.reshape(b, 1, ch, *view), dh5)
    return dy.reshape(dh.shape)


def stacked_conv2d(layer: nn.Conv2d, hs: Tensor, b: int, shift: Tensor | None = None) -> Tensor:
    r"""Convolution of a stacked primal and tangent ``hs = [h; dh]`` ``(B + B·P, C, H, W)``.

    One call on all ``B + B·P`` rows without bias (the tangent of ``conv(h) + bias`` is
    ``conv(dh)``), then ``bias + shift`` added in place to the ``b`` primal rows; ``shift`` is an
    optional per-sample, per-channel term ``(B, C_out)`` (e.g. a time embedding) folded into the same
    pass. One call on the stacked batch is what makes the tangent cheap: the convolution's
    per-row cost falls with the batch on a CPU, and nothing is concatenated per layer.
    """
    if layer.padding_mode != "zeros":
        raise ValueError(f"stacked_conv2d supports padding_mode='zeros' only, got {layer.padding_mode!r}")
    out = F.conv2d(hs, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    add = layer.bias
    if shift is not None:
        add = shift if add is None else shift + add
    if add is not None:
        out[:b].add_(add.reshape(-1 if add.ndim > 1 else 1, out.shape[1], 1, 1))
    return out


def stacked_group_norm(layer: nn.GroupNorm, hs: Tensor, b: int, *, silu: bool = False) -> Tensor:
    r"""GroupNorm (then SiLU if ``silu``) of a stacked ``hs = [h; dh]`` ``(B + B·P, C, *spatial)``.

    Returns ``[y; dy]`` with ``y = f(h)``, ``dy = J_f(h) dh`` (:func:`dual_group_norm`,
    :func:`dual_silu`), written straight into the two halves of one output (no concatenation):
    with ``silu`` and one tangent per sample the tangent's SiLU factor is ATen's fused
    ``silu_backward(dy, y)``, ``dy · σ(y)(1 + y(1 - σ(y)))``.
    """
    h, dh = hs[:b], hs[b:]
    P = probes_per_sample(h, dh)
    y, mu, r = _group_norm_primal(layer, h)
    dy = _group_norm_tangent(layer, h, dh, mu, r)
    if not silu:
        return torch.cat([y, dy])
    if torch.is_grad_enabled() and (y.requires_grad or dy.requires_grad):  # out= is not differentiable
        return torch.cat([F.silu(y), per_probe(silu_derivative(y)[1], dy)])
    out = torch.empty_like(hs)
    torch.ops.aten.silu.out(y, out=out[:b])
    if P == 1:
        torch.ops.aten.silu_backward.grad_input(dy, y, grad_input=out[b:])
    else:
        d = silu_derivative(y)[1]
        torch.mul(d.unsqueeze(1), dy.view(b, P, *dy.shape[1:]), out=out[b:].view(b, P, *dy.shape[1:]))
    return out


def dual_attention(
    q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, scale: float, *, heads: int = 1
) -> tuple[Tensor, Tensor]:
    r"""Softmax attention ``o = softmax(s q kᵀ) v`` and its exact derivative.

    With ``S = s q kᵀ`` and ``A = softmax(S)`` (rows):

    ``dS = s (dq kᵀ + q dkᵀ)``,  ``dA = A ⊙ (dS - rowsum(A ⊙ dS))``,  ``do = dA v + A dv``.

    Shapes: ``q``, ``k``, ``v`` of shape (B·heads, L, d) (L tokens), ordered sample-major;
    ``dq``, ``dk``, ``dv`` of shape (B·P·heads, L, d) ordered (sample, tangent, head). Returns
    ``o`` (B·heads, L, d) and ``do`` (B·P·heads, L, d). The attention matrix ``A`` is computed
    once per sample and broadcast over its ``P`` tangents.
    """
    a = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)
    o = torch.bmm(a, v)
    B = q.shape[0] // heads
    P = dq.shape[0] // q.shape[0]

    def s5(x: Tensor, p: int) -> Tensor:  # (B·p·heads, L, ·) -> (B, p, heads, L, ·)
        return x.reshape(B, p, heads, *x.shape[1:])

    q5, k5, v5, a5 = s5(q, 1), s5(k, 1), s5(v, 1), s5(a, 1)
    dq5, dk5, dv5 = s5(dq, P), s5(dk, P), s5(dv, P)
    ds = (torch.matmul(dq5, k5.transpose(-1, -2)) + torch.matmul(q5, dk5.transpose(-1, -2))) * scale
    da = a5 * (ds - (a5 * ds).sum(dim=-1, keepdim=True))
    do = torch.matmul(da, v5) + torch.matmul(a5, dv5)
    return o, do.reshape(dq.shape)
