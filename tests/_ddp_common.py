"""Runs shared by tests/test_distributed.py and the torchrun worker tests/_ddp_worker.py."""

import torch
from torch import nn

from causal_delta.training import TrainConfig


def small_config(out_dir, **kw) -> TrainConfig:
    base = {"data": "gaussian", "preset": "mlp-small", "model_args": {"hidden": 16, "depth": 2}, "steps": 6,
            "batch_size": 8, "lr": 1e-2, "ema_decay": 0.9, "sigma": 0.05, "checkpoint_every": 3,
            "keep_checkpoints": 0, "device": "cpu", "out_dir": str(out_dir)}
    base.update(kw)
    return TrainConfig(**base)


class UserNet(nn.Module):
    """A velocity network written the way users write theirs: forward(x, t), t of shape (B,)."""

    def __init__(self, dim: int = 3, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def user_data() -> torch.Tensor:
    """A raw tensor (N, 3): correlated Gaussian rows."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(500, 3, generator=g) @ torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.3], [0.0, 0.0, 1.0]])
