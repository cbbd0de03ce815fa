from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from causal_delta.datasets import load_data_source
from causal_delta.solvers import sample
from causal_delta.training import TrainConfig, learning_rate, train


def _draw(flow, n=4000, dim=2, steps=10):
    x0 = torch.randn(n, dim, generator=torch.Generator().manual_seed(123))
    return sample(flow, x0, method="rk4", steps=steps, batch_size=n)


def test_gaussian_correlation(tmp_path, one_thread):
    cfg = TrainConfig(data="gaussian", data_args={"rho": 0.55}, preset="mlp-small", steps=800,
                      batch_size=256, lr=3e-3, lr_schedule="cosine", out_dir=str(tmp_path))
    result = train(cfg, progress=False)
    assert len(result.losses) == 800 and result.device == "cpu"
    x = _draw(result.flow)
    cov = torch.cov(x.T.double())
    corr = cov[0, 1] / cov.diag().prod().sqrt()
    assert abs(float(corr) - 0.55) < 0.05, cov
    assert torch.allclose(cov.diag(), torch.ones(2, dtype=torch.float64), rtol=0.10), cov


def test_mixture_component_weights(tmp_path, one_thread):
    cfg = TrainConfig(data="mixture", preset="mlp-small", steps=1200, batch_size=256, lr=3e-3,
                      lr_schedule="cosine", out_dir=str(tmp_path))
    result = train(cfg, progress=False)
    mixture = load_data_source("mixture").mixture
    x = _draw(result.flow, steps=20).double()
    labels = mixture.responsibilities(x, 1.0).argmax(-1)
    freq = torch.bincount(labels, minlength=mixture.n_components).double() / x.shape[0]
    assert torch.allclose(freq, mixture.weights.double(), atol=0.05), (freq, mixture.weights)


def _small(tmp_path, **kw):
    base = dict(data="gaussian", preset="mlp-small", model_args={"hidden": 16, "depth": 2}, steps=12,
                batch_size=16, lr=1e-2, out_dir=str(tmp_path))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9, "sigma": 0.05, "parametrization": "x1",
                                         "t_sampling": "logit-normal", "lr_schedule": "cosine",
                                         "warmup_steps": 3}])
def test_kill_and_resume_is_bit_exact(tmp_path, extra):
    full = train(_small(tmp_path / "full", **extra), progress=False)

    class Killed(Exception):
        pass

    def kill_at_7(step, loss):
        if step == 7:
            raise Killed

    cfg = _small(tmp_path / "part", checkpoint_every=5, **extra)
    with pytest.raises(Killed):
        train(cfg, progress=False, callback=kill_at_7)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.resumed_from == 5
    assert resumed.losses == full.losses  # exact float equality, every step
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(resumed.flow(x, t), full.flow(x, t), atol=0, rtol=0)


def test_resume_with_more_steps_and_config_mismatch(tmp_path):
    first = train(_small(tmp_path, steps=6), progress=False)
    more = train(_small(tmp_path, steps=12), resume="auto", progress=False)
    assert more.losses[:6] == first.losses and len(more.losses) == 12
    with pytest.raises(ValueError, match="lr"):
        train(_small(tmp_path, steps=20, lr=0.5), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(_small(tmp_path / "empty"), resume=True, progress=False)


def test_seed_changes_losses(tmp_path):
    a = train(_small(tmp_path / "a", steps=3), progress=False)
    b = train(_small(tmp_path / "b", steps=3, seed=1), progress=False)
    assert a.losses != b.losses


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"sigma": -0.1}, "sigma"), ({"steps": 0}, "steps"), ({"batch_size": 0}, "batch_size"),
     ({"preset": "resnet-9"}, "preset"), ({"lr": 0.0}, "lr"), ({"ema_decay": 1.0}, "ema_decay"),
     ({"parametrization": "eps"}, "parametrization"), ({"t_sampling": "beta"}, "t_sampling"),
     ({"device": "tpu"}, "device"), ({"data": "nonsense"}, "data")],
)
def test_bad_config(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(_small(tmp_path, **kwargs), progress=False)


def test_missing_data_file(tmp_path):
    missing = tmp_path / "missing.npy"
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        train(_small(tmp_path, data=str(missing)), progress=False)


def test_wrong_data_shape_for_model(tmp_path):
    # Tabular 2-D data cannot feed a UNet.
    with pytest.raises(ValueError, match=r"data .*event shape \(2,\).*unet-small"):
        train(_small(tmp_path, preset="unet-small", model_args={}), progress=False)
    # A two-sided source must match the data's shape.
    np.save(tmp_path / "src.npy", np.zeros((10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="source"):
        train(_small(tmp_path, source=str(tmp_path / "src.npy")), progress=False)


def test_tabular_and_image_sources(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "t.npy", table)
    np.savetxt(tmp_path / "t.csv", table, delimiter=",", header="a,b,c", comments="")
    for name in ("t.npy", "t.csv"):
        src = load_data_source(str(tmp_path / name))
        assert src.event_shape == (3,) and len(src) == 50
        torch.testing.assert_close(src.data, torch.from_numpy(table), atol=1e-6, rtol=0)
    imgs = rng.integers(0, 256, size=(6, 1, 8, 8), dtype=np.uint8)
    torch.save(torch.from_numpy(imgs), tmp_path / "imgs.pt")
    src = load_data_source(str(tmp_path / "imgs.pt"))
    assert src.event_shape == (1, 8, 8) and src.data.min() >= -1 and src.data.max() <= 1
    pytest.importorskip("PIL", reason="image files need pillow (the vision extra)")
    from PIL import Image

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(imgs[i, 0]).save(folder / f"{i}.png")
    src = load_data_source(str(folder))
    assert src.event_shape == (1, 8, 8)
    torch.testing.assert_close(src.data, torch.from_numpy(imgs[:4]).float() / 127.5 - 1)
    batch = src.sample(5, torch.Generator().manual_seed(0))
    assert batch.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
        load_data_source(str(tmp_path / "bad.npy"))


def test_images_train_with_unet(tmp_path, one_thread):
    imgs = np.random.default_rng(0).normal(size=(20, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "imgs.npy", imgs)
    cfg = TrainConfig(data=str(tmp_path / "imgs.npy"), preset="unet-small",
                      model_args={"base_channels": 8, "channel_mult": [1, 2], "norm_groups": 4},
                      steps=2, batch_size=4, out_dir=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    assert len(result.losses) == 2
    assert result.flow(torch.zeros(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, steps=10, warmup_steps=2, lr_schedule="cosine")
    assert learning_rate(cfg, 0) == 0.5 and learning_rate(cfg, 1) == 1.0
    assert learning_rate(cfg, 2) == 1.0 and learning_rate(cfg, 10) == pytest.approx(0.0)


def test_resume_with_a_new_total(tmp_path):
    # Constant schedule: nothing depends on the total, so 4 -> 8 continues bit-exactly.
    full = train(_small(tmp_path / "full", steps=8), progress=False)
    train(_small(tmp_path / "part", steps=4), progress=False)
    more = train(_small(tmp_path / "part", steps=8), resume=True, progress=False)
    assert more.resumed_from == 4 and more.losses == full.losses
    # Cosine: the schedule depends on the total; a new total is refused, naming both ...
    cos = _small(tmp_path / "cos", steps=4, lr_schedule="cosine")
    train(cos, progress=False)
    with pytest.raises(ValueError, match=r"steps 8 differs from the run's total of 4 steps.*extend=True"):
        train(_small(tmp_path / "cos", steps=8, lr_schedule="cosine"), resume=True, progress=False)
    # ... unless extended: from step 4 on the learning rate follows the schedule of 8 steps.
    seen = []
    ext = _small(tmp_path / "cos", steps=8, lr_schedule="cosine")
    res = train(ext, resume=True, extend=True, progress=False, callback=lambda step, loss: seen.append(step))
    assert res.step == 8 and seen == [5, 6, 7, 8]
    from causal_delta.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "cos")
    assert ckpt.train_config["steps"] == 8  # the new total is the run's total from now on
    assert ckpt.train_state["optimizer"]["param_groups"][0]["lr"] == learning_rate(ext, 7) > 0
    assert learning_rate(cos, 7) == 0.0  # the 4-step schedule had ended
    # A total below the checkpoint's step is refused whatever the schedule, naming both.
    with pytest.raises(ValueError, match=r"steps 3 is below the checkpoint's step 8"):
        train(_small(tmp_path / "cos", steps=3, lr_schedule="cosine"), resume=True, progress=False)


def test_non_finite_loss_stops_before_the_weights_and_names_the_checkpoint(tmp_path):
    from causal_delta.checkpoint import load_checkpoint
    from causal_delta.training import TrainingDiverged

    cfg = _small(tmp_path, lr=1e4, grad_clip=None, steps=30, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"at step 3; the checkpoint at step 2 .* is intact") as info:
        train(cfg, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert info.value.step == 3 and info.value.checkpoint_step == 2 and not math.isfinite(info.value.loss)
    assert load_checkpoint(tmp_path).step == 2


def test_ctrl_c_in_the_loop_names_the_intact_checkpoint(tmp_path):
    from causal_delta.training import TrainingInterrupted

    def ctrl_c_at_7(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 7; the checkpoint at step 5") as info:
        train(_small(tmp_path, checkpoint_every=5), progress=False, callback=ctrl_c_at_7)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.checkpoint.name == "step-00000005"
