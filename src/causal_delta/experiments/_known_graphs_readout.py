"""The scene read-out of ``known-graphs``: a small CNN regressing the attributes' render parameters.

Trained with :func:`causal_delta.classifier_training.train_classifier` (regression head) on
``readout_train`` scenes whose attributes are *independent* and uniformly spread (so it cannot
learn the SCM's correlations), and reused for every graph of a seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["fit_readout"]


def fit_readout(source, config, seed: int, out: Path, progress: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the read-out on scenes of ``source`` (a ``SceneSource`` with ``independent=True``).

    Returns:
        ``(read-out in eval mode, {"r2_independent": [...], "final_loss", "steps", "n_train"})``,
        R² per attribute on the held-out 10 % of the independent scenes.
    """
    from ..classifier_training import ClassifierTrainConfig, train_classifier

    images, targets = source.sample_labelled(config.readout_train, torch.Generator().manual_seed(20_000 + seed))
    cfg = ClassifierTrainConfig(data="tensors", attributes=list(source.attributes), arch="small-cnn",
                                model_args={"width": config.readout_width, "n_down": 2}, head="regression",
                                steps=config.readout_steps, batch_size=config.readout_batch, lr=config.readout_lr,
                                seed=seed, out_dir=str(out), device="cpu", keep_checkpoints=1, holdout_fraction=0.1)
    res = train_classifier(cfg, images=images, targets=targets, progress=progress)
    per = res.report["held_out"]["per_attribute"]
    return res.classifier, {"r2_independent": [per[a]["r2"] for a in source.attributes],
                            "final_loss": res.report["final_loss_mean_last_50"], "steps": res.step,
                            "n_train": res.report["n_train"], "checkpoint": str(res.checkpoint)}
