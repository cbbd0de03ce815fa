"""The scene read-out of ``known-graphs``: a small CNN regressing the attributes' render parameters.

Trained on scenes with *independent*, uniformly spread attributes (so it cannot learn the
SCM's correlations) and reused for every graph of a seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["fit_readout"]


def fit_readout(source, config, seed: int, out: Path, progress: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the read-out on ``source`` (a ``SceneSource`` with ``independent=True``).

    Returns:
        ``(readout in eval mode, {"r2_independent": [...], "final_loss": ...})`` where R² is per
        attribute on 2,000 held-out independent scenes.
    """
    import torch.nn.functional as F

    from ..models import ImageClassifier
    from . import _common as C

    gen = torch.Generator().manual_seed(20_000 + seed)
    with C.seeded(seed):
        net = ImageClassifier(3, len(source.attributes), config.image_size, width=config.readout_width, n_down=2)
    opt = torch.optim.AdamW(net.parameters(), lr=config.readout_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.readout_steps)
    losses = []
    net.train()
    for _ in C.progress(range(config.readout_steps), desc="read-out", enabled=progress):
        x, u = source.sample_labelled(config.readout_batch, gen)
        loss = F.mse_loss(net(x), u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    x, u = source.sample_labelled(2000, torch.Generator().manual_seed(30_000 + seed))
    with torch.no_grad():
        pred = net(x)
    r2 = 1 - ((pred - u) ** 2).mean(0) / u.var(0)
    return net, {"r2_independent": r2.tolist(), "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
                 "steps": config.readout_steps}
