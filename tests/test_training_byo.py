"""Bring your own model and data: train(model, data, config), the public loss, the checks."""

import pytest
import torch
from torch import nn

from _ddp_common import UserNet, small_config, user_data
from causal_delta import distributed
from causal_delta.checkpoint import CheckpointError, load_checkpoint, load_flow
from causal_delta.paths import LinearPath
from causal_delta.training import DatasetSource, flow_matching_loss, train


def test_flow_matching_loss_is_the_mean_squared_error_against_the_path_target():
    g = torch.Generator().manual_seed(0)
    x0, x1, t, eps = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(4))
    t = t[:, 0].sigmoid()
    net = nn.Linear(3, 3).double()
    def model(x, s):
        return net(x) * s[:, None]
    for sigma, param in ((0.0, "velocity"), (0.1, "x1")):
        loss = flow_matching_loss(model, x0, x1, t, LinearPath(sigma, param), noise=eps)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1 + sigma * eps  # by hand, MATH.md §1
        target = x1 - x0 if param == "velocity" else x1
        torch.testing.assert_close(loss, ((model(x_t, t) - target) ** 2).sum() / 15, rtol=1e-12, atol=0)
    assert float(flow_matching_loss(lambda x, s: x1 - x0, x0, x1, t)) == 0.0  # the exact conditional velocity
    with pytest.raises(ValueError, match=r"model output has shape \(5, 2\), expected \(5, 3\)"):
        flow_matching_loss(lambda x, s: x[:, :2], x0, x1, t)


def test_user_module_on_a_raw_tensor_learns_and_resumes_exactly(tmp_path):
    cfg = small_config(tmp_path / "full", steps=8, checkpoint_every=0, lr=1e-2)
    torch.manual_seed(0)
    full = train(UserNet(), user_data(), cfg, progress=False)
    assert full.config.preset is None and full.config.data == "user:tensor"
    meta = load_checkpoint(full.checkpoint).meta
    assert meta["model_source"] == {"kind": "user", "class": "_ddp_common.UserNet"} and meta["model_config"] is None
    with pytest.raises(CheckpointError, match="user-defined model .*UserNet.* cannot be rebuilt"):
        load_flow(full.checkpoint)

    class Stop(Exception):
        pass

    def stop_at_5(step, loss):
        if step == 5:
            raise Stop

    part = small_config(tmp_path / "part", steps=8, checkpoint_every=4, lr=1e-2)
    torch.manual_seed(0)
    with pytest.raises(Stop):
        train(UserNet(), user_data(), part, progress=False, callback=stop_at_5)
    resumed = train(UserNet(hidden=32), user_data(), part, resume=True, progress=False)  # fresh weights: loaded
    assert resumed.resumed_from == 4 and resumed.losses == full.losses
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(resumed.flow(x, t), full.flow(x, t), atol=0, rtol=0)


def test_user_module_fits_the_data(tmp_path):
    # On a fixed evaluation batch, the trained module beats the best constant-free guess v = 0, whose loss
    # is E||x1 - x0||^2 / d = (tr C + d) / d; the untrained one does not.
    g = torch.Generator().manual_seed(5)
    data = user_data()
    x1, x0, t = data[torch.randint(0, len(data), (8192,), generator=g)], torch.randn(8192, 3, generator=g), \
        torch.rand(8192, generator=g)
    zero = float(((x1 - x0) ** 2).mean())
    torch.manual_seed(0)
    model = UserNet()
    with torch.no_grad():
        before = float(flow_matching_loss(model, x0, x1, t))
    train(model, data, small_config(tmp_path, steps=300, batch_size=128, lr=1e-2, ema_decay=None, sigma=0.0,
                                    checkpoint_every=0), progress=False)  # trains `model` in place
    with torch.no_grad():
        after = float(flow_matching_loss(model, x0, x1, t))
    assert before > 0.95 * zero and after < 0.9 * zero, (before, after, zero)


def test_a_torch_dataset_draws_the_same_rows_as_its_tensor(tmp_path):
    data = user_data()
    labelled = torch.utils.data.TensorDataset(data, torch.zeros(len(data), dtype=torch.long))
    runs = []
    for name, d in (("tensor", data), ("dataset", labelled)):
        torch.manual_seed(0)
        runs.append(train(UserNet(), d, small_config(tmp_path / name, steps=3), progress=False))
    assert runs[0].losses == runs[1].losses
    assert runs[1].config.data == "user:TensorDataset"
    source = DatasetSource(labelled)  # a DDP rank reads only its rows of the same draw
    part = source.sample(8, torch.Generator().manual_seed(3), rows=slice(2, 5))
    assert torch.equal(part, source.sample(8, torch.Generator().manual_seed(3))[2:5])


def test_preset_with_own_data_tensor(tmp_path):
    res = train(None, user_data(), small_config(tmp_path, steps=2), progress=False)
    assert res.config.preset == "mlp-small" and load_checkpoint(res.checkpoint).meta["model_source"] == {
        "kind": "preset", "preset": "mlp-small"}
    _, info = load_flow(res.checkpoint)
    assert info["event_shape"] == (3,)


def test_bad_inputs_name_what_is_wrong(tmp_path, monkeypatch):
    cfg = small_config(tmp_path, steps=1)
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        train(lambda x, t: x, user_data(), cfg, progress=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(UserNet().requires_grad_(False), user_data(), cfg, progress=False)
    with pytest.raises(ValueError, match="give the TrainConfig once"):
        train(cfg, None, cfg, progress=False)
    with pytest.raises(ValueError, match="preset is None"):
        train(small_config(tmp_path, preset=None), progress=False)
    with pytest.raises(ValueError, match=r"event shape \(3,\) does not fit model _Squash: model output shape \(2,\)"):
        train(_Squash(), user_data(), cfg, progress=False)
    with pytest.raises(ValueError, match="data must be a data-source name or path"):
        train(UserNet(), 3.0, cfg, progress=False)
    with pytest.raises(ValueError, match="precision 'bf16'.*CUDA only"):
        train(UserNet(), user_data(), small_config(tmp_path, precision="bf16"), progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        train(UserNet(), user_data(), small_config(tmp_path, precision="fp8"), progress=False)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"batch_size 8 must be a multiple of the number of processes \(3\)"):
        train(UserNet(), user_data(), cfg, progress=False)


class _Squash(UserNet):
    """Returns 2 of 3 coordinates: the wrong shape, caught before training."""

    def forward(self, x, t):
        return super().forward(x, t)[:, :2]


def test_cli_refuses_bf16_on_the_cpu(tmp_path, capsys):
    from causal_delta import cli

    assert cli.main(["train", "--precision", "bf16", "--device", "cpu", "--steps", "1", "--no-progress",
                     "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("causal-delta train: error: precision 'bf16' (autocast) runs on CUDA only, and this run is on "
                   "cpu; use precision 'float32' on the CPU")


def test_the_shape_check_leaves_batch_norm_statistics_alone(tmp_path):
    class Normed(UserNet):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(3)

        def forward(self, x, t):
            return super().forward(self.norm(x), t)

    model = Normed()
    train(model, user_data(), small_config(tmp_path, steps=1, ema_decay=None), progress=False,
          callback=lambda step, loss: None)
    # One training batch of 8 rows moved the running mean; the zeros of the shape check did not add a step.
    assert int(model.norm.num_batches_tracked) == 1
