"""Probes that share their primal: the ForwardJVP protocol (primal B, tangent B·P) for every preset
and wrapper, through the solver; and top_singular_directions on a single (1, H, W) point."""

import pytest
import torch
from torch.func import jvp

from causal_delta import jvp as J
from causal_delta.closed_form import GaussianMixture
from causal_delta.flux import MaskedMLP, TimeFree
from causal_delta.jvp._forward import hand_written_jvp
from causal_delta.models import PRESETS, build_model
from causal_delta.models._dual import per_probe, probes_per_sample
from causal_delta.paths import VelocityField
from causal_delta.solvers import integrate, time_grid

F64 = torch.float64
SHAPES = {"mlp-2d": (2,), "mlp-small": (3,), "unet-28": (1, 8, 8), "unet-64": (3, 8, 8),
          "unet-small": (1, 8, 8)}


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def _per_probe_reference(f, x, dx):
    """``J_f(x_i) dx_{i,p}`` one probe at a time by torch.func.jvp (the independent route)."""
    B, P = x.shape[0], dx.shape[0] // x.shape[0]
    dxp = dx.reshape(B, P, *x.shape[1:])
    cols = [jvp(f, (x,), (dxp[:, p],))[1] for p in range(P)]
    return torch.stack(cols, 1).reshape(dx.shape)


def _mixture(d=3):
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), _randn(2, d, seed=1),
                           torch.stack([0.5 * torch.eye(d, dtype=F64), torch.eye(d, dtype=F64)]))


def test_every_preset_takes_a_tangent_batch_of_b_times_p():
    assert set(SHAPES) == set(PRESETS)
    for preset, shape in SHAPES.items():
        torch.manual_seed(0)
        model = build_model(preset, event_shape=shape).double().eval()
        assert isinstance(model, J.ForwardJVP), preset
        x, t, dx = _randn(2, *shape, seed=1), torch.rand(2, dtype=F64), _randn(2 * 2, *shape, seed=2)
        with torch.no_grad():
            v, dv = model.forward_jvp(x, t, dx)
            assert v.shape == x.shape and dv.shape == dx.shape
            assert _rel(v, model(x, t)) < 1e-12, preset
            # the per-probe route: one tangent per primal (checked against torch.func.jvp in test_models)
            single = torch.stack([model.forward_jvp(x, t, dxp)[1] for dxp in dx.reshape(2, 2, *shape).unbind(1)], 1)
        assert _rel(dv, single.reshape(dx.shape)) < 1e-12, preset
    # and one preset against torch.func.jvp directly, probe by probe
    assert _rel(dv, _per_probe_reference(lambda y: model(y, t), x, dx)) < 1e-10


def test_wrappers_and_closed_forms_take_a_tangent_batch_of_b_times_p():
    torch.manual_seed(1)
    mlp = build_model("mlp-small", event_shape=(3,)).double().eval()
    x, t, dx = _randn(3, 3, seed=3), torch.rand(3, dtype=F64) * 0.9, _randn(3 * 4, 3, seed=4)
    mix = _mixture()
    fields = {
        "velocity field (velocity)": (VelocityField(mlp), lambda y: VelocityField(mlp)(y, t), t),
        "velocity field (x1)": (VelocityField(mlp, "x1"), lambda y: VelocityField(mlp, "x1")(y, t), t),
        "time-free MLP": (TimeFree(mlp), lambda y: TimeFree(mlp)(y), None),
        "masked MLP": (MaskedMLP([0, 1, 1]).double(), None, None),
        "mixture, per-point t": (mix, lambda y: mix.velocity(y, t), t),
        "mixture, scalar t": (mix, lambda y: mix.velocity(y, 0.4), 0.4),
    }
    for name, (field, f, tt) in fields.items():
        f = f or field
        with torch.no_grad():
            v, dv = field.forward_jvp(x, tt, dx)
        assert v.shape == x.shape and dv.shape == dx.shape, name
        assert _rel(dv, _per_probe_reference(f, x, dx)) < 1e-10, name


def test_the_primal_runs_once_per_stage_and_matches_the_per_probe_route():
    """Through the solver: the hand-written route sees primal B and tangent B·P, and equals vmap'd
    torch.func.jvp and single-probe calls; float64 forward mode agrees with central differences."""
    torch.manual_seed(2)
    model = build_model("unet-small", event_shape=(1, 8, 8)).double().eval()
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, t):
            return self.net(x, t)

        def forward_jvp(self, x, t, dx):
            seen.append((x.shape[0], dx.shape[0]))
            return self.net.forward_jvp(x, t, dx)

    B, P = 2, 3
    x0, z = _randn(B, 1, 8, 8, seed=5), _randn(B, P, 1, 8, 8, seed=6)
    grid = time_grid(2, dtype=F64)
    fast = J.jvp_forward(Spy().eval(), x0, z, method="rk4", grid=grid)
    assert seen and set(seen) == {(B, B * P)} and len(seen) == fast.nfe == 8
    slow = J.jvp_forward(model, x0, z, method="rk4", grid=grid, use_forward_jvp=False)
    single = torch.stack([J.jvp_forward(model, x0, z[:, p], method="rk4", grid=grid).jvp for p in range(P)], 1)
    assert _rel(fast.jvp, slow.jvp) < 1e-12 and _rel(fast.jvp, single) < 1e-12
    assert _rel(fast.x, integrate(model, x0, method="rk4", grid=grid).x) < 1e-13

    # central differences, Richardson-extrapolated (truncation O(h^4)): an independent route
    def central(h):
        return J.jvp_fd(model, x0, z, eps=h, mode="central", method="rk4", grid=grid).jvp

    fd = (4 * central(5e-4) - central(1e-3)) / 3
    rel = _rel(fast.jvp, fd)
    print(f"unet-small float64, 3 probes per sample: forward mode vs extrapolated central FD {rel:.1e}")
    assert rel < 1e-9


def test_mixture_and_mlp_share_the_primal_through_the_solver():
    mix = _mixture(2)
    x0, z = _randn(4, 2, seed=7), _randn(4, 5, 2, seed=8)
    assert hand_written_jvp(mix.velocity) is not None  # the bound velocity of a ForwardJVP owner
    fast = J.jvp_forward(mix.velocity, x0, z, steps=20)
    slow = J.jvp_forward(mix.velocity, x0, z, steps=20, use_forward_jvp=False)
    assert _rel(fast.jvp, slow.jvp) < 1e-12
    flow = TimeFree(build_model("mlp-small", event_shape=(2,)).double()).eval()
    Jm = J.jacobian(flow, x0, steps=10)  # d probes per sample through TimeFree.forward_jvp
    ref = torch.func.vmap(torch.func.jacfwd(lambda y: integrate(flow, y[None], steps=10).x[0]))(x0)
    assert (Jm - ref).abs().max() < 1e-12


def test_forward_jvp_is_found_by_protocol_not_by_name():
    mix = _mixture(2)

    def velocity(x, t):  # named like a method, but a plain function: no forward_jvp to use
        return mix.velocity(x, t)

    assert hand_written_jvp(velocity) is None
    assert hand_written_jvp(mix.jacobian) is None  # a bound method, but not the one forward_jvp differentiates
    net = build_model("mlp-small", event_shape=(2,)).double().eval()
    assert hand_written_jvp(net.forward) is not None and hand_written_jvp(net) is not None
    assert hand_written_jvp(VelocityField(torch.nn.Linear(2, 2))) is None  # the wrapped net has none
    with pytest.raises(ValueError, match="use_forward_jvp=True"):
        J.jvp_forward(velocity, _randn(2, 2), _randn(2, 2), use_forward_jvp=True)


def test_a_forward_jvp_that_ignores_the_probe_axis_is_refused():
    class OneToOne:  # the pre-protocol contract: tangent shaped like the primal
        def __call__(self, x, t):
            return -x

        def forward_jvp(self, x, t, dx):
            return -x, -dx[: x.shape[0]]

    x0, z = _randn(2, 3), _randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"B·P rows .*ForwardJVP"):
        J.jvp_forward(OneToOne(), x0, z, steps=2)
    ok = J.jvp_forward(OneToOne(), x0, z, steps=2, use_forward_jvp=False)
    assert ok.jvp.shape == z.shape


def test_dual_helpers_check_the_tangent_layout():
    h = _randn(2, 3)
    assert probes_per_sample(h, _randn(6, 3)) == 3
    with pytest.raises(ValueError, match=r"tangent must have shape \(B·P, 3\)"):
        probes_per_sample(h, _randn(5, 3))
    coef, dh = _randn(2, 1), _randn(6, 3)
    assert torch.equal(per_probe(coef, dh), coef.repeat_interleave(3, 0) * dh)


def test_top_singular_directions_of_a_single_image_keeps_its_channel():
    """A single point (1, H, W) is one image with one channel (issue 11), not a batch of one."""
    torch.manual_seed(3)
    net = build_model("unet-small", event_shape=(1, 4, 4)).double().eval()
    x0 = _randn(1, 4, 4, seed=9)
    grid = time_grid(2, dtype=F64)
    # l = k + oversample = d = 16: the sketch spans the whole space, so the values are exact
    sv = J.top_singular_directions(net, x0, k=3, oversample=13, iters=1, grid=grid,
                                   generator=torch.Generator().manual_seed(0))
    assert sv.left.shape == sv.right.shape == (3, 1, 4, 4)
    # independent route: the full Jacobian (16 forward-mode probes) and its exact SVD
    Jm = J.jacobian(net, x0[None], grid=grid)[0]
    s = torch.linalg.svdvals(Jm)
    assert torch.allclose(sv.values, s[:3], rtol=1e-10)
    assert torch.allclose(sv.right.reshape(3, 16) @ Jm.T, sv.values[:, None] * sv.left.reshape(3, 16), atol=1e-8)
    batched = J.top_singular_directions(net, x0[None], k=3, oversample=13, iters=1, grid=grid, event_shape=(1, 4, 4),
                                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(batched.values, sv.values)
    with pytest.raises(ValueError, match=r"x0 must have shape event_shape = \(1, 4, 4\)"):
        J.top_singular_directions(net, x0[None, None], k=3, grid=grid, event_shape=(1, 4, 4))
