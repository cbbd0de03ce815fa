"""UNet.forward_jvp on the stacked batch [h; dh]: the no-grad fast path (outputs written into the
halves of one tensor, biases added in place) against torch.func.jvp of forward, float64."""

import pytest
import torch
from torch.func import jvp

from causal_delta.models import UNet, UNetConfig

F64 = torch.float64


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("size,probes", [(7, 1), (8, 3)])
def test_stacked_forward_jvp_no_grad_matches_func_jvp(size, probes):
    torch.manual_seed(3)
    cfg = UNetConfig(event_shape=(2, size, size), base_channels=8, channel_mult=(1, 2, 2),
                     num_res_blocks=(1, 2, 0), attention_resolutions=((size + 1) // 2,), mid_attention=True,
                     num_heads=2, norm_groups=4, time_embed_dim=16)
    model = UNet(cfg).double().eval()
    with torch.no_grad():  # random affine GroupNorm parameters, so that gamma and beta are exercised
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(4)
    B = 3
    x = torch.randn(B, *cfg.event_shape, generator=g, dtype=F64)
    dx = torch.randn(B * probes, *cfg.event_shape, generator=g, dtype=F64)
    t = torch.rand(B, generator=g, dtype=F64)
    dxp = dx.reshape(B, probes, *cfg.event_shape)
    ref = [jvp(lambda y: model(y, t), (x,), (dxp[:, p],)) for p in range(probes)]
    v_ref = ref[0][0]
    dv_ref = torch.stack([r[1] for r in ref], 1).reshape(dx.shape)
    with torch.no_grad():
        v, dv = model.forward_jvp(x, t, dx)
    assert _rel(v, v_ref) < 1e-12 and _rel(dv, dv_ref) < 1e-10
    # with autograd on (out= is not differentiable) the same numbers come from the concatenating branch
    v2, dv2 = model.forward_jvp(x, t, dx)
    assert v2.requires_grad and _rel(v2, v) < 1e-13 and _rel(dv2, dv) < 1e-13


def test_resize_nearest_is_interpolate_bit_for_bit():
    from causal_delta.models._common import resize_nearest

    g = torch.Generator().manual_seed(5)
    for n_in in (1, 2, 3, 4, 5, 7, 13, 14, 28, 33):
        for n_out in (1, 2, 4, 5, 7, 8, 14, 27, 28, 56, 64):
            for dtype in (torch.float32, F64):
                h = torch.randn(2, 3, n_in, n_in + 1, generator=g, dtype=dtype)
                size = (n_out, n_out + 2)
                ref = torch.nn.functional.interpolate(h, size=size, mode="nearest")
                assert torch.equal(resize_nearest(h, size), ref), (n_in, n_out, dtype)
