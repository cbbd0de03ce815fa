"""Flow-matching training: ``train(config)`` or ``train(model, data, config)``, and the public loss.

* :mod:`~causal_delta.training.config`: :class:`TrainConfig`, the learning-rate schedule, devices;
* :mod:`~causal_delta.training.loss`: :func:`flow_matching_loss` (for users' own loops), :func:`sample_t`;
* :mod:`~causal_delta.training.loop`: :func:`train` (one process or DDP under ``torchrun``,
  exact resume, EMA, bf16 autocast on GPU).

Example (your own velocity network and data)::

    from causal_delta.training import TrainConfig, train

    result = train(MyNet(), torch.randn(5000, 2) @ L.T, TrainConfig(steps=2000, out_dir="runs/mine"))
    result.flow  # a VelocityField: sample, jvp, dependence take it
"""

from ._inputs import DatasetSource, make_source
from .config import COUPLINGS, LR_SCHEDULES, PRECISIONS, T_SAMPLINGS, TrainConfig, learning_rate, resolve_device
from .loop import TrainingDiverged, TrainingInterrupted, TrainResult, train
from .loss import flow_matching_loss, sample_t

__all__ = ["COUPLINGS", "LR_SCHEDULES", "PRECISIONS", "T_SAMPLINGS", "DatasetSource", "TrainConfig", "TrainResult",
           "TrainingDiverged", "TrainingInterrupted", "flow_matching_loss", "learning_rate", "make_source",
           "resolve_device", "sample_t", "train"]
