"""JVPs of the generator: forward mode, finite differences, full Jacobian, read-outs, SVD, ε sweep."""

import math
import warnings

import pytest
import torch

from causal_delta import jvp as J
from causal_delta.closed_form import GaussianFlow, GaussianMixture
from causal_delta.models import MLPClassifier, MLPClassifierConfig, build_model
from causal_delta.solvers import integrate, time_grid

F64 = torch.float64


def _spd(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    return A @ A.T + 0.5 * torch.eye(d, dtype=F64)


def _mixture():
    return GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=F64),
        torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=F64),
        torch.stack([0.5 * torch.eye(2, dtype=F64), torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=F64)]),
    )


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- exactness on closed forms


def test_forward_mode_rk4_equals_flow_jacobian(one_thread):
    flow = GaussianFlow(_spd(4))
    x0, z = _randn(6, 4, seed=1), _randn(6, 4, seed=2)
    res = J.jvp_forward(flow.velocity, x0, z, method="rk4", steps=200)
    R = flow.flow_jacobian(1.0)
    assert (res.jvp - z @ R.T).abs().max() <= 1e-8
    assert (res.x - flow.flow_map(x0, 1.0)).abs().max() <= 1e-8
    assert res.mode == "forward" and res.eps is None and res.grid.shape == (201,)
    assert res.nfe == 800


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5"])
def test_forward_mode_is_the_derivative_of_the_discretised_map(method):
    torch.manual_seed(0)
    model = build_model("mlp-small", event_shape=(3,)).double().eval()
    x0, z = _randn(4, 3, seed=3), _randn(4, 3, seed=4)
    grid = time_grid(7, dtype=F64)
    res = J.jvp_forward(model, x0, z, method=method, grid=grid)
    _, ref = torch.func.jvp(lambda x: integrate(model, x, method=method, grid=grid).x, (x0,), (z,))
    assert (res.jvp - ref).abs().max() <= 1e-10 * ref.abs().max()
    # the model's hand-written forward_jvp and torch.func.jvp give the same tangent
    slow = J.jvp_forward(model, x0, z, method=method, grid=grid, use_forward_jvp=False)
    assert (slow.jvp - res.jvp).abs().max() <= 1e-10 * ref.abs().max()


def test_adaptive_grid_is_shared_by_both_estimators():
    mix = _mixture()
    x0, z = _randn(8, 2, seed=5), _randn(8, 2, seed=6)
    fwd = J.jvp_forward(mix.velocity, x0, z, method="dopri5")
    fd = J.jvp_fd(mix.velocity, x0, z, method="dopri5")
    assert torch.equal(fwd.grid, fd.grid) and fwd.grid.numel() > 2


def test_mixture_forward_mode_vs_central_fd_float64():
    mix = _mixture()
    x0, z = _randn(64, 2, seed=7), _randn(64, 2, seed=8)
    fwd = J.jvp_forward(mix.velocity, x0, z, method="rk4", steps=100)  # uses mix.forward_jvp
    fd = J.jvp_fd(mix.velocity, x0, z, mode="central", method="rk4", steps=100)
    assert (fwd.jvp - fd.jvp).abs().max() <= 1e-6 * fwd.jvp.abs().max()
    assert fd.x is None and fd.eps == pytest.approx(J.default_eps(F64, "central"))


def test_fd_returns_j_z_not_j_eps_z(one_thread):
    flow = GaussianFlow(_spd(3, seed=1))
    x0, z = _randn(5, 3, seed=9), _randn(5, 3, seed=10)
    R = flow.flow_jacobian(1.0)
    for eps in (1e-3, 1e-6):
        for mode in ("fd", "central"):
            res = J.jvp_fd(flow.velocity, x0, z, eps=eps, mode=mode, steps=100)
            assert (res.jvp - z @ R.T).abs().max() < 1e-6
    fd = J.jvp_fd(flow.velocity, x0, z, mode="fd", steps=100)
    assert torch.allclose(fd.x, flow.flow_map(x0, 1.0), atol=1e-8)


def test_full_jacobian(one_thread):
    flow = GaussianFlow(_spd(3, seed=2))
    x0 = _randn(2, 3, seed=11)
    Jm = J.jacobian(flow.velocity, x0, steps=100)
    assert Jm.shape == (2, 3, 3)
    assert (Jm - flow.flow_jacobian(1.0)).abs().max() < 1e-8


def test_several_probes_per_sample_match_single_probes():
    torch.manual_seed(1)
    model = build_model("mlp-small", event_shape=(3,)).double().eval()
    x0, z = _randn(5, 3, seed=12), _randn(5, 4, 3, seed=13)
    single = torch.stack([J.jvp_forward(model, x0, z[:, p], steps=5).jvp for p in range(4)], 1)
    for fast in (True, False):  # repeated primal through forward_jvp / vmap over the probes
        multi = J.jvp_forward(model, x0, z, steps=5, use_forward_jvp=fast, batch_size=2)
        assert multi.jvp.shape == (5, 4, 3)
        assert (multi.jvp - single).abs().max() < 1e-12
    fd = J.jvp_fd(model, x0, z, steps=5)
    assert (fd.jvp - single).abs().max() < 1e-7


def test_unet_fd_agrees_with_forward_mode():
    torch.manual_seed(0)
    net = build_model("unet-small", event_shape=(1, 8, 8)).eval()
    x0, z = _randn(2, 1, 8, 8, seed=14), J.make_probes(2, (1, 8, 8), generator=torch.Generator().manual_seed(3),
                                                       dtype=F64)[:, 0]
    net64 = net.double()
    fwd = J.jvp_forward(net64, x0, z, method="rk4", steps=4)
    fd = J.jvp_fd(net64, x0, z, mode="central", method="rk4", steps=4)
    rel64 = float((fwd.jvp - fd.jvp).norm() / fwd.jvp.norm())
    net32 = net.float()
    fwd32 = J.jvp_forward(net32, x0.float(), z.float(), method="rk4", steps=4)
    fd32 = J.jvp_fd(net32, x0.float(), z.float(), mode="central", method="rk4", steps=4)
    rel32 = float((fwd32.jvp - fd32.jvp).norm() / fwd32.jvp.norm())
    print(f"UNet FD (central) vs forward mode: relative error {rel64:.2e} float64, {rel32:.2e} float32")
    assert rel64 < 1e-7
    assert rel32 < 1e-2
    assert float((fwd32.jvp.double() - fwd.jvp).norm() / fwd.jvp.norm()) < 1e-4


# ---------------------------------------------------------------- ε and probes


def test_default_eps():
    assert J.default_eps(torch.float32, "fd") == pytest.approx(math.sqrt(torch.finfo(torch.float32).eps))
    assert J.default_eps(F64, "central") == pytest.approx(torch.finfo(F64).eps ** (1 / 3))


def test_float32_small_eps_warns():
    mix = _mixture()
    x0, z = _randn(4, 2, seed=15, dtype=torch.float32), _randn(4, 2, seed=16, dtype=torch.float32)
    v32 = mix.to(torch.float32).velocity
    with pytest.warns(RuntimeWarning, match="round-off dominates"):
        J.jvp_fd(v32, x0, z, eps=1e-6, mode="fd", steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        J.jvp_fd(v32, x0, z, mode="fd", steps=10)
        J.jvp_fd(mix.velocity, x0.double(), z.double(), eps=1e-6, mode="fd", steps=10)


def test_make_probes():
    g = torch.Generator().manual_seed(0)
    z = J.make_probes(5, (2, 3), probes=4, generator=g)
    assert z.shape == (5, 4, 2, 3)
    assert torch.allclose(z.flatten(2).norm(dim=2), torch.ones(5, 4))
    r = J.make_probes(3, (4,), kind="rademacher", normalize=False, generator=g)
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    a = J.make_probes(3, (4,), generator=torch.Generator().manual_seed(1))
    b = J.make_probes(3, (4,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- read-outs


def test_attribute_jvp_linear_classifier_all_modes(one_thread):
    flow = GaussianFlow(_spd(3, seed=3))
    W = _randn(2, 3, seed=17)
    C = torch.nn.Linear(3, 2, bias=True).double().eval()
    with torch.no_grad():
        C.weight.copy_(W)
    x0, z = _randn(10, 3, seed=18), _randn(10, 2, 3, seed=19)
    exact = torch.einsum("npd,ed,ke->npk", z, flow.flow_jacobian(1.0), W).reshape(20, 2)
    for mode in ("forward", "fd", "central"):
        res = J.attribute_jvp(flow.velocity, x0, z, classifier=C, mode=mode, steps=100, batch_size=4)
        assert res.responses.shape == (20, 2)
        assert (res.responses - exact).abs().max() < 1e-6, mode
        assert res.sample_index.tolist() == [i for i in range(10) for _ in range(2)]
    pix = J.attribute_jvp(flow.velocity, x0, z, features=[2, 0], steps=100)
    full = torch.einsum("npd,ed->npe", z, flow.flow_jacobian(1.0)).reshape(20, 3)
    assert (pix.responses - full[:, [2, 0]]).abs().max() < 1e-8
    assert pix.samples.shape == (10, 3) and pix.outputs.shape == (10, 2)


def test_classifier_forward_jvp_matches_func_jvp():
    torch.manual_seed(0)
    model = build_model("mlp-small", event_shape=(4,)).double().eval()
    clf = MLPClassifier.from_config(MLPClassifierConfig(event_shape=(4,), n_classes=3)).double().eval()
    x0, z = _randn(6, 4, seed=20), _randn(6, 4, seed=21)
    fast = J.attribute_jvp(model, x0, z, classifier=clf, steps=5)
    slow = J.attribute_jvp(model, x0, z, classifier=lambda x: clf(x), steps=5)
    assert (fast.responses - slow.responses).abs().max() < 1e-10


def test_readout_gradient_reverse_equals_forward(one_thread):
    flow = GaussianFlow(_spd(3, seed=4))
    x0 = _randn(4, 3, seed=22)
    g_rev = J.readout_gradient(flow.velocity, x0, 1, features=[0, 1, 2], steps=50, mode="reverse")
    g_fwd = J.readout_gradient(flow.velocity, x0, 1, features=[0, 1, 2], steps=50, mode="forward")
    R = flow.flow_jacobian(1.0)
    assert (g_rev - g_fwd).abs().max() < 1e-10
    assert (g_rev - R[1].expand(4, 3)).abs().max() < 1e-6


def test_top_singular_directions(one_thread):
    cov = _spd(5, seed=5)
    flow = GaussianFlow(cov)
    sv = J.top_singular_directions(flow.velocity, _randn(5, seed=23), k=2, iters=3, steps=50,
                                   generator=torch.Generator().manual_seed(0))
    true = torch.linalg.eigvalsh(cov).flip(0).sqrt()[:2]
    assert torch.allclose(sv.values, true, rtol=1e-6)
    R = flow.flow_jacobian(1.0)
    assert torch.allclose(sv.right @ R.T, sv.values[:, None] * sv.left, atol=1e-5)


def test_eps_sweep_writes_json_and_png(tmp_path):
    mix = _mixture()
    vel = {F64: mix.velocity, torch.float32: mix.to(torch.float32).velocity}
    res = J.eps_sweep(vel, _randn(16, 2, seed=24), _randn(16, 2, seed=25), eps_values=[1e-6, 1e-3],
                      steps=20)
    e32, e64 = res["errors"]["float32"], res["errors"]["float64"]
    assert e32["fd"][0] > 1e-2  # the original code's float32 ε = 1e-6: round-off dominates
    assert e64["central"][0] < 1e-8
    # The sweep's reference is float64 forward mode, so its own float64 error is 0 by construction;
    # check the reference itself against Richardson-extrapolated central differences of the
    # float64 solver (no forward mode involved; truncation O(h⁴) ~ 1e-12 at h = 1e-3).
    x0, z = _randn(16, 2, seed=24), _randn(16, 2, seed=25)

    def central(h):
        return (integrate(mix.velocity, x0 + h * z, method="rk4", steps=20).x
                - integrate(mix.velocity, x0 - h * z, method="rk4", steps=20).x) / (2 * h)

    independent = (4 * central(5e-4) - central(1e-3)) / 3
    ref = J.jvp_forward(mix.velocity, x0, z, method="rk4", steps=20).jvp
    assert float((ref - independent).norm() / independent.norm()) < 1e-9
    fwd32 = J.jvp_forward(mix.to(torch.float32).velocity, x0.float(), z.float(), method="rk4", steps=20).jvp
    err32 = float((fwd32.double() - independent).norm() / independent.norm())
    assert res["forward_mode_error"]["float32"] == pytest.approx(err32, rel=1e-3) and 1e-9 < err32 < 1e-5
    assert e64["central"][0] == pytest.approx(float((J.jvp_fd(mix.velocity, x0, z, eps=1e-6, mode="central",
                                                               method="rk4", steps=20).jvp - independent).norm()
                                                    / independent.norm()), rel=0.05)
    paths = J.write_eps_sweep(res, tmp_path)
    assert paths["json"].exists() and paths["png"].stat().st_size > 0


# ---------------------------------------------------------------- bad input


def test_bad_input_errors_are_named():
    mix = _mixture()
    x0, z = _randn(4, 2), _randn(4, 2)
    with pytest.raises(ValueError, match="probes must have shape"):
        J.jvp_forward(mix.velocity, x0, _randn(3, 2))
    with pytest.raises(ValueError, match="probes must have shape"):
        J.jvp_fd(mix.velocity, x0, _randn(4, 3))
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        J.jvp_fd(mix.velocity, x0, z, eps=0.0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        J.attribute_jvp(mix.velocity, x0, z, features=[0], mode="central", eps=-1e-3)
    with pytest.raises(ValueError, match="mode must be one of"):
        J.generator_jvp(mix.velocity, x0, z, mode="backward")
    with pytest.raises(ValueError, match="method must be one of"):
        J.jvp_forward(mix.velocity, x0, z, method="rk45")
    with pytest.raises(ValueError, match="k must be an integer in"):
        J.readout_gradient(mix.velocity, x0, 2, features=[0, 1], steps=2)
    with pytest.raises(ValueError, match="feature indices must lie in"):
        J.attribute_jvp(mix.velocity, x0, z, features=[5], steps=2)
    with pytest.raises(ValueError, match="either classifier or features"):
        J.attribute_jvp(mix.velocity, x0, z, features=[0], classifier=torch.nn.Identity().eval())
    with pytest.raises(ValueError, match="eval mode"):
        J.attribute_jvp(mix.velocity, x0, z, classifier=torch.nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor"):
        J.jvp_forward(mix.velocity, torch.ones(4), z)
    with pytest.raises(ValueError, match="use_forward_jvp=True"):
        J.jvp_forward(lambda x, t: x, x0, z, use_forward_jvp=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        J.make_probes(2, (3,), kind="uniform")
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        J.jvp_forward(mix.velocity, x0, z, batch_size=0)
    with pytest.warns(FutureWarning, match="chunk_size"):  # the former name still works
        J.jvp_forward(mix.velocity, x0, z, steps=2, chunk_size=1)
