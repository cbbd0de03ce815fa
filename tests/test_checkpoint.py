from __future__ import annotations

import json

import pytest
import torch

from causal_delta.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_flow,
    save_checkpoint,
)
from causal_delta.models import build_model
from causal_delta.training import TrainConfig, train


def _save(tmp_path, step, ema=True):
    torch.manual_seed(step)
    model = build_model("mlp-small", event_shape=(2,), hidden=16, depth=2)
    meta = {"train_config": TrainConfig().to_dict(), "model_config": model.config.__dict__ | {},
            "event_shape": [2]}
    ema_state = {k: v + 1 for k, v in model.state_dict().items()} if ema else None
    path = save_checkpoint(tmp_path, step, model_state=model.state_dict(), ema_state=ema_state,
                           train_state={"losses": [1.0, 0.5], "generator": torch.Generator().get_state()},
                           meta=meta, keep=2)
    return model, path


def test_round_trip_latest_and_keep(tmp_path):
    for step in (1, 2, 3):
        model, path = _save(tmp_path, step)
    assert latest_checkpoint(tmp_path) == path
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    ck = load_checkpoint(tmp_path)  # run directory resolves to latest
    assert ck.step == 3 and ck.train_state["losses"] == [1.0, 0.5]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ck.model_state[k], v)
        torch.testing.assert_close(ck.ema_state[k], v + 1)
    assert load_checkpoint(path / "meta.json").path == path
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def test_load_flow(tmp_path):
    model, path = _save(tmp_path, 5)
    x, t = torch.randn(3, 2), torch.rand(3)
    flow, info = load_flow(path, use_ema=False)
    assert not flow.training and info["step"] == 5 and info["used_ema"] is False
    torch.testing.assert_close(flow(x, t), model(x, t))
    assert hasattr(flow, "forward_jvp")
    flow_ema, info = load_flow(tmp_path)
    assert info["used_ema"] is True and info["event_shape"] == (2,)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.pt", "meta.json"])
def test_truncated_file_names_the_file(tmp_path, name):
    _, path = _save(tmp_path, 1)
    f = path / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


def test_corrupt_bytes_same_length_detected(tmp_path):
    _, path = _save(tmp_path, 1)
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_flow(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_checkpoint_meta_holds_full_config(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=8, out_dir=str(tmp_path), model_args={"hidden": 8, "depth": 1},
                      ema_decay=0.9)
    result = train(cfg, progress=False)
    meta = json.loads((result.checkpoint / "meta.json").read_text())
    assert TrainConfig.from_dict(meta["train_config"]) == cfg
    assert meta["model_config"]["kind"] == "mlp" and meta["step"] == 3


@pytest.mark.parametrize("fmt, message", [
    (2, r"has format 2 \(written by causal-delta 9\.9\), newer than format 1 that causal-delta .* reads; upgrade"),
    (0, r"has format 0 .*not a format causal-delta .* reads \(format 1\)"),
    ("1", r"has format '1' "),
    (None, r"has format None "),
])
def test_format_version_is_checked_on_load(tmp_path, fmt, message):
    """A newer or unknown layout fails with one message naming meta.json and both versions
    (the SHA-256 of meta.json itself is not recorded, so editing it is how a newer writer looks)."""
    from causal_delta.checkpoint import FORMAT_VERSION

    _, path = _save(tmp_path, 1)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == FORMAT_VERSION == 1
    meta.update(format=fmt, causal_delta_version="9.9")
    if fmt is None:
        del meta["format"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=str(path / "meta.json").replace(".", r"\.") + " " + message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="format"):
        load_flow(tmp_path)
