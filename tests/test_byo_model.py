"""Bring your own model: networks written the way torchcfm / flow_matching write theirs go through
``as_velocity`` into sample -> jvp -> dependence (library and CLI ``--model module:factory --weights``)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_delta import _rng
from causal_delta import dependence as D
from causal_delta import jvp as J
from causal_delta.cli import main
from causal_delta.models import as_velocity, build_model
from causal_delta.solvers import sample

# The user's module, as another flow library's examples write it. Written to tmp_path and imported
# from there, as a user's own file would be.
NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class TorchCFMNet(nn.Module):
        """torchcfm style: forward(t, x), t a 0-dim tensor (odeint) or (B,) (training loop)."""

        def __init__(self, dim=3, width=32):
            super().__init__()
            # torchcfm's MLP uses SELU; its kink at 0 would put O(1) errors into central differences
            self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                     nn.Linear(width, dim))

        def forward(self, t, x):
            if t.dim() == 0:
                t = t.repeat(x.shape[0])
            return self.net(torch.cat([x, t[:, None]], dim=-1))


    class ConditionalNet(nn.Module):
        """flow_matching style: forward(x, t, y=None), t a scalar or (B,), class label y (B,)."""

        def __init__(self, dim=3, width=32, classes=2):
            super().__init__()
            self.embed = nn.Embedding(classes + 1, width)  # index `classes`: unconditional
            self.inp = nn.Linear(dim + 1, width)
            self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))
            self.classes = classes

        def forward(self, x, t, y=None):
            t = t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)
            if y is None:
                y = torch.full((x.shape[0],), self.classes, dtype=torch.long, device=x.device)
            return self.out(self.inp(torch.cat([x, t], dim=-1)) + self.embed(y))


    def make_cfm(width=32):
        return TorchCFMNet(width=width)


    def make_conditional(width=32, classes=2):
        return ConditionalNet(width=width, classes=classes)
''')

COV = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """The user's module (importable), a torchcfm-style net trained by a plain user loop, its weights."""
    folder = tmp_path_factory.mktemp("byo")
    (folder / "byo_nets.py").write_text(NETS)
    sys.path.insert(0, str(folder))
    try:
        import byo_nets
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)  # parameter init only; the data come from a generator
    net = byo_nets.make_cfm()
    gen = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(COV).float()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(80):  # the user's own loop: independent coupling, linear path, (B,) times
        x0 = torch.randn(128, 3, generator=gen)
        x1 = torch.randn(128, 3, generator=gen) @ chol.T
        t = torch.rand(128, generator=gen)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = (net(t, xt) - (x1 - x0)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    torch.save(net.state_dict(), folder / "w.pt")
    return {"folder": folder, "module": byo_nets, "net": net, "weights": folder / "w.pt", "loss": float(loss.detach())}


def _env(folder):
    """The subprocess imports the user's folder and the causal_delta this test imported (absolute paths:
    it runs in another working directory)."""
    import causal_delta

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(Path(causal_delta.__file__).parents[1]),
                                         env.get("PYTHONPATH", "")])
    return env


def test_auto_probe_finds_t_x_and_matches_the_hand_call(nets):
    v = as_velocity(nets["net"], event_shape=(3,))
    assert (v.signature, v.time) == ("t,x", "batch")
    assert "argument names forward(t, x)" in v.decision
    assert not hasattr(v, "forward_jvp")  # the user's net has none: the library must use torch.func.jvp
    x, t = torch.randn(5, 3), torch.rand(5)
    torch.testing.assert_close(v(x, t), nets["net"](t, x), rtol=0, atol=0)
    # a number and a 0-dim tensor are times for every sample
    torch.testing.assert_close(v(x, 0.3), nets["net"](torch.tensor(0.3), x), rtol=0, atol=0)


def test_library_sample_jvp_dependence_forward_vs_central_fd(nets):
    v = as_velocity(copy.deepcopy(nets["net"])).to(torch.float64)  # lazy probe at the first call
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    x1 = sample(v, x0, steps=20)
    assert x1.shape == x0.shape and torch.isfinite(x1).all()
    assert v.decision.startswith("signature t,x")
    z = J.make_probes(400, (3,), generator=gen, dtype=torch.float64)
    fwd = J.jvp_forward(v, x0, z, steps=20)
    fd = J.jvp_fd(v, x0, z, mode="central", eps=1e-5, steps=20)
    torch.testing.assert_close(fwd.x, x1, rtol=1e-12, atol=1e-12)
    # central FD error ~ eps^2 |f'''| + round-off/eps: ~1e-9 here
    err = (fwd.jvp - fd.jvp).abs().max() / fwd.jvp.abs().max()
    assert err < 1e-8, float(err)
    dy = fwd.jvp.reshape(400, 3)  # one probe per sample: (n, P=1, 3) -> (n, 3)
    boot = D.bootstrap(dy, n_boot=200, seed=0)
    corr = D.correlation(dy)
    torch.testing.assert_close(boot.estimate, corr)
    assert torch.allclose(torch.diagonal(corr), torch.ones(3, dtype=torch.float64))
    # the trained flow recovers the strong dependence of coordinates 0 and 1 (truth 0.6)
    assert 0.3 < float(corr[0, 1]) < 0.9, corr


def test_conditioning_keyword_and_library_forward_jvp(nets):
    net = nets["module"].make_conditional().eval()
    x, t = torch.randn(4, 3), torch.rand(4)
    v = as_velocity(net, y=torch.tensor([1]), event_shape=(3,))  # one label for every sample
    assert (v.signature, v.time) == ("x,t", "batch")
    torch.testing.assert_close(v(x, t), net(x, t, y=torch.ones(4, dtype=torch.long)), rtol=0, atol=0)
    uncond = as_velocity(net, event_shape=(3,))
    assert not torch.allclose(uncond(x, t), v(x, t))
    # forward mode through the conditional net (torch.func.jvp fallback) vs central FD
    v64 = v.to(torch.float64)
    x0 = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z = torch.randn(6, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fwd = J.jvp_forward(v64, x0, z, steps=10)
    fd = J.jvp_fd(v64, x0, z, mode="central", eps=1e-5, steps=10)
    assert float((fwd.jvp - fd.jvp).abs().max() / fwd.jvp.abs().max()) < 1e-8
    # a library model keeps its hand-written forward_jvp through the adapter
    mlp = build_model("mlp-small", event_shape=(3,), hidden=16).double().eval()
    wrapped = as_velocity(mlp, event_shape=(3,))
    assert hasattr(wrapped, "forward_jvp")
    dx = torch.randn_like(x0)
    tt = torch.full((6,), 0.4, dtype=torch.float64)
    v_ref, dv_ref = torch.func.jvp(lambda y: mlp(y, tt), (x0,), (dx,))
    v_a, dv_a = wrapped.forward_jvp(x0, tt, dx)
    torch.testing.assert_close(v_a, v_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dv_a, dv_ref, rtol=1e-10, atol=1e-12)


class _ScalarTime(torch.nn.Module):
    """Takes the time as a Python float (torchdyn-style), for the grouping by distinct times."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x, t):
        return self.lin(x) * (1.0 + float(t))


class _Ambiguous(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, a, b):
        return self.lin(torch.cat([a, b], dim=1))


def test_time_forms_and_errors():
    m = _ScalarTime()
    v = as_velocity(m, event_shape=(2,))
    # (B,) and (B, 1) broadcast against x of (B, 2) with B = 3 fail; a 0-dim tensor runs
    assert v.time == "scalar"
    x, t = torch.randn(6, 2), torch.tensor([0.1, 0.5, 0.1, 0.9, 0.5, 0.2])
    rows = torch.stack([m(x[i:i + 1], float(t[i]))[0] for i in range(6)])
    torch.testing.assert_close(v(x, t), rows)  # per-sample times: one call per distinct time
    f = as_velocity(m, time="float", event_shape=(2,))
    assert f.time == "float" and "given" in f.decision
    torch.testing.assert_close(f(x, t), rows)
    with pytest.raises(ValueError, match="cannot decide the argument order.*signature='x,t'"):
        as_velocity(_Ambiguous(), event_shape=(2,))
    assert as_velocity(_Ambiguous(), "t,x", event_shape=(2,)).time == "batch1"
    with pytest.raises(ValueError, match=r"runs in none of the tried forms.*\(x,t\) time=batch"):
        as_velocity(_ScalarTime(), event_shape=(5,))
    with pytest.raises(ValueError, match=r"signature must be one of \['auto', 'x,t', 't,x'\]"):
        as_velocity(m, signature="xt")
    with pytest.raises(ValueError, match=r"time must be one of"):
        as_velocity(m, time="vector")
    with pytest.raises(ValueError, match="module must be a torch.nn.Module"):
        as_velocity(lambda x, t: x)


def test_cli_sample_jvp_dependence_with_user_model(nets, tmp_path, monkeypatch, capsys):
    """Acceptance: the CLI takes --model module:factory --weights and agrees with the library. `jvp` runs
    in a subprocess that finds the user's module through PYTHONPATH; `sample` and `dependence` in-process."""
    env = _env(nets["folder"])
    model = ["--model", "byo_nets:make_cfm", "--weights", str(nets["weights"]), "--model-args", '{"width": 32}',
             "--event-shape", "3"]
    cmd = [sys.executable, "-m", "causal_delta.cli"]
    monkeypatch.syspath_prepend(str(nets["folder"]))
    assert main(["sample", *model, "-n", "50", "--steps", "10", "--out", str(tmp_path / "s.npy")]) == 0
    assert "signature t,x" in capsys.readouterr().out
    v = as_velocity(nets["net"])
    x0 = _rng.normal(0, "x0", range(50), (3,)).float()  # the command's draws: sample i's x0 from (seed, i)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), sample(v, x0, steps=10).numpy(), rtol=1e-6, atol=1e-6)

    out = subprocess.run(cmd + ["jvp", *model, "-n", "40", "--steps", "10", "--dtype", "float64",
                                "--out", str(tmp_path / "j")], env=env, capture_output=True, text=True, check=False,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--model byo_nets:make_cfm: signature t,x" in out.stdout
    dy = np.load(tmp_path / "j" / "responses.npz")["responses"]
    x0 = _rng.normal(0, "x0", range(40), (3,)).double()  # the command's draws: x0 and unit Gaussian probes
    z = _rng.probes(0, range(40), (3,)).double()
    ref = J.jvp_forward(copy.deepcopy(v).to(torch.float64), x0, z, steps=10).jvp.reshape(40, 3)
    np.testing.assert_allclose(dy, ref.numpy(), rtol=1e-10, atol=1e-12)
    rep = json.loads((tmp_path / "j" / "report.json").read_text())
    assert rep["config"]["model"] == "byo_nets:make_cfm" and rep["flow"]["adapter"].startswith("signature t,x")

    assert main(["dependence", "--responses", str(tmp_path / "j" / "responses.npz"), "--n-boot", "50",
                 "--out", str(tmp_path / "d")]) == 0
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    np.testing.assert_allclose(rep["corr"], D.correlation(torch.from_numpy(dy)).numpy(), atol=1e-12)


def test_cli_diagnose_with_user_model_and_safetensors(nets, tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    monkeypatch.syspath_prepend(str(nets["folder"]))
    save_file(nets["net"].state_dict(), str(tmp_path / "w.safetensors"))
    data = (torch.randn(24, 3, generator=torch.Generator().manual_seed(4)) @ torch.linalg.cholesky(COV).float().T)
    np.save(tmp_path / "train.npy", data.numpy())
    args = ["diagnose", "memorisation", "--model", "byo_nets:make_cfm", "--weights", str(tmp_path / "w.safetensors"),
            "--event-shape", "3", "--train-data", str(tmp_path / "train.npy"), "--steps", "5", "--t-grid", "0.5",
            "--jacobian-points", "2", "--jacobian-k", "2", "--no-progress", "--out", str(tmp_path / "diag")]
    assert main(args) == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "diag" / "report.json").read_text())
    assert rep["checkpoint"]["path"].endswith("w.safetensors")
    # without --train-data there is nothing to compare with: say so
    no_data = [a for a in args if a not in ("--train-data", str(tmp_path / "train.npy"))]
    assert main(no_data[:-1] + [str(tmp_path / "diag2")]) == 2
    assert "--train-data" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--model", "no_such_module_xyz:make"], "--model: cannot import 'no_such_module_xyz'"),
    (["--model", "byo_nets:nothing"],
     "--model: module 'byo_nets' has no callable 'nothing'; its callables: .*make_cfm"),
    (["--model", "byo_nets"], "--model must be MODULE:FACTORY"),
    (["--model", "byo_nets:make_cfm", "--model-args", "{width: 3}"], "--model-args: expected a JSON object"),
    (["--model", "byo_nets:make_cfm", "--model-args", '{"depth": 3}'], "rejected --model-args"),
    (["--model", "byo_nets:make_cfm", "--model-args", '{"width": 8}'], "--weights .* do not fit the module"),
    (["--model", "byo_nets:make_cfm", "--event-shape", "3,a"], "--event-shape: expected"),
    (["--model", "byo_nets:make_cfm", "--no-weights"], "give --event-shape"),
])
def test_cli_model_errors_name_the_argument(nets, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.syspath_prepend(str(nets["folder"]))
    if "--no-weights" in extra:
        extra = [a for a in extra if a != "--no-weights"]
    else:
        extra = extra + ["--weights", str(nets["weights"])]
    if "--event-shape" not in extra and "give --event-shape" not in message:
        extra += ["--event-shape", "3"]
    try:  # a value of the wrong form is the parser's error (SystemExit 2), the rest run's
        code = main(["sample", *extra, "-n", "4", "--steps", "2", "--out", str(tmp_path / "s.npy")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err


def test_cli_model_and_checkpoint_exclusive(tmp_path, capsys):
    for command in (["sample"], ["jvp"], ["graph"], ["diagnose", "memorisation"]):  # every flow reader
        assert main([*command, "--model", "no_such_module_xyz:f", "--out", str(tmp_path / "o")]) == 2
        assert "--model: cannot import 'no_such_module_xyz'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(tmp_path), "--model", "a:b"])
    assert "not allowed with argument" in capsys.readouterr().err
    for extra in (["--weights", "w.pt"], ["--signature", "t,x"], ["--model-args", "{}"]):
        assert main(["sample", "--checkpoint", str(tmp_path), *extra, "--out", str(tmp_path / "s.npy")]) == 2
        assert f"{extra[0]} applies to --model only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["jvp", "--out", str(tmp_path / "j")])
    assert "one of the arguments --checkpoint --model is required" in capsys.readouterr().err


def test_probe_leaves_batch_norm_statistics_alone():
    class WithNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(2)
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x, t):
            return self.lin(torch.cat([self.norm(x), t[:, None]], dim=1))

    net = WithNorm()  # training mode: a forward call would update the running statistics
    v = as_velocity(net, event_shape=(2,))
    assert v.time == "batch" and net.training and v.training
    torch.testing.assert_close(net.norm.running_mean, torch.zeros(2), rtol=0, atol=0)
    assert int(net.norm.num_batches_tracked) == 0


def test_model_from_a_file_path(nets, tmp_path):
    from causal_delta.commands._model import load_factory

    factory = load_factory(f"{nets['folder'] / 'byo_nets.py'}:make_conditional")
    assert type(factory(width=4)).__name__ == "ConditionalNet"
    with pytest.raises(FileNotFoundError, match="--model file not found"):
        load_factory(f"{tmp_path / 'missing.py'}:make")


def test_cli_choices_are_the_adapters():
    from causal_delta.commands import _model
    from causal_delta.models import adapter

    assert (_model.SIGNATURES, _model.TIME_FORMS) == (adapter.SIGNATURES, adapter.TIME_FORMS)


def test_lazy_probe_inside_forward_mode_with_several_probes():
    """The first call may come from inside torch.func.jvp under vmap (P > 1): the probe draws nothing
    at random there, and the scalar-time module still matches central differences."""
    class Scalar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return torch.tanh(self.lin(x)) * (1.0 + float(t))

    torch.manual_seed(0)
    v = as_velocity(Scalar().double().eval())
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z = torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    fwd = J.jvp_forward(v, x0, z, steps=8)
    assert v.time == "scalar"
    fd = J.jvp_fd(v, x0, z, mode="central", eps=1e-5, steps=8)
    assert float((fwd.jvp - fd.jvp).abs().max() / fwd.jvp.abs().max()) < 1e-8
