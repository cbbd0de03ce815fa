r"""Training attribute read-outs ``C`` (classifiers or regressors) with exact resume.

A read-out maps images (or vectors) ``x`` to ``m`` attribute outputs. Two heads:

* ``"binary"``: labels ``y ∈ {0, 1}``; outputs are logits ``s``; loss
  ``mean_{i,k} BCEWithLogits(s_ik, y_ik)``;
* ``"regression"``: continuous targets; the network regresses standardised targets
  ``(y - μ) / σ`` (``μ, σ`` per attribute from the training set) with mean squared error, and
  the trained read-out outputs ``σ · net(x) + μ``: attribute values in the data's units.

The loop mirrors :func:`causal_delta.training.train` and reuses its pieces: AdamW, the same
learning-rate schedule (:func:`~causal_delta.training.learning_rate`), gradient clipping, one
CPU ``torch.Generator`` for every minibatch draw (indices with replacement; the held-out split
is a permutation from a second generator seeded alike), model initialisation inside
``fork_rng``, and atomic checkpoints
(:mod:`causal_delta.checkpoint`) holding weights, optimiser, generator and RNG states and the
loss history, so a resumed CPU run reproduces an uninterrupted one bit for bit.

Data: ``"celeba"`` (official ``train`` split for training, ``valid`` held out),
a ``.npz`` file with ``images`` (N, C, H, W) and ``targets`` (N, m) (optional ``attributes``
names), or in-memory tensors passed to :func:`train_classifier`. For the last two a seeded
``holdout_fraction`` is held out.

The held-out report (``report.json`` + ``summary.md`` in ``out_dir``) gives per attribute:
accuracy (logit > 0) and ROC-AUC for binary heads; R² ``= 1 - Σ(y - ŷ)² / Σ(y - ȳ)²`` and RMSE
for regression heads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._classifier_data import _fingerprint, _load_data, read_npz
from ._classifier_report import _summary, evaluate_classifier, roc_auc
from .models.readout import HEADS, AttributeClassifier
from .train_config import ClassifierTrainConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from .models.classifier import ResNetClassifier

__all__ = [
    "HEADS",
    "ClassifierTrainConfig",
    "ClassifierTrainResult",
    "train_classifier",
    "load_classifier",
    "evaluate_classifier",
    "read_npz",
    "roc_auc",
]


@dataclass
class ClassifierTrainResult:
    """Outcome of :func:`train_classifier`.

    Attributes:
        classifier: the trained read-out (:class:`AttributeClassifier`, eval mode).
        losses: loss of every step (those before a resume included).
        step: steps done.
        report: the held-out report (as written to ``report.json``).
        config: the configuration used.
        checkpoint: the last checkpoint directory.
        out_dir: the run directory.
        device: device trained on.
        seconds: wall time of this call.
        resumed_from: step the run resumed from (0 for a fresh run).
    """

    classifier: AttributeClassifier
    losses: list[float]
    step: int
    report: dict[str, Any]
    config: ClassifierTrainConfig
    checkpoint: Path
    out_dir: Path
    device: str
    seconds: float
    resumed_from: int = 0


def train_classifier(
    config: ClassifierTrainConfig,
    *,
    images: Tensor | np.ndarray | None = None,
    targets: Tensor | np.ndarray | None = None,
    resume: bool | str | Path = False,
    progress: bool = True,
    callback: Callable[[int, float], Any] | None = None,
) -> ClassifierTrainResult:
    """Train an attribute read-out, write checkpoints and the held-out report.

    Args:
        config: the run (:class:`ClassifierTrainConfig`).
        images: ``(N, C, H, W)`` (or ``(N, d)``) float in ``[-1, 1]`` or uint8, with
            ``config.data == "tensors"``.
        targets: ``(N, m)`` (or ``(N,)``): 0/1 labels (binary head) or values (regression).
        resume: as in :func:`causal_delta.training.train` (``False``, ``True``, ``"auto"`` or a
            path); the data must be the same (checked by a SHA-256 of the training tensors).
        progress: show a tqdm bar with the running loss.
        callback: ``callback(step, loss)`` after every step; an exception there stops training.

    Returns:
        :class:`ClassifierTrainResult`; ``out_dir`` gets ``checkpoints/``, ``report.json`` and
        ``summary.md``.

    Raises:
        ValueError: invalid config or data, incompatible resume.
        FileNotFoundError: missing data, weights or checkpoint.
    """
    from . import report as _report
    from .checkpoint import load_checkpoint, save_checkpoint
    from .models import build_classifier
    from .training import learning_rate, resolve_device
    from .training._resume import check_resumable, find_resume, restore_train_state, rng_state
    from .training.loop import record_step

    config.validate()
    start_time = time.perf_counter()
    device = resolve_device(config.device)
    data = _load_data(config, images, targets, progress=None if progress else False)
    fingerprint = _fingerprint(data.train_x, data.train_y)
    m = data.train_y.shape[1]
    event_shape = tuple(data.train_x.shape[1:])
    resume_path = find_resume(config, resume)
    out_dir = Path(config.out_dir)
    if config.head == "regression":
        shift = data.train_y.double().mean(0).float()
        scale = data.train_y.double().std(0).clamp_min(1e-12).float() if data.train_y.shape[0] > 1 else torch.ones(m)
    else:
        shift, scale = torch.zeros(m), torch.ones(m)

    ckpt = None
    if resume_path is not None:  # check before building the network: a refusal should be quick
        ckpt = load_checkpoint(resume_path)
        saved = ckpt.meta.get("classifier_config")
        if saved is None:
            raise ValueError(f"resume: {ckpt.path} is not a classifier checkpoint")
        check_resumable(config, saved, ckpt.path, ckpt.step, False)
        if ckpt.meta.get("data", {}).get("sha256") != fingerprint:
            raise ValueError(f"resume: the training data differ from those of checkpoint {ckpt.path}")

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        net = build_classifier(config.arch, event_shape, m, **config.model_args)
        if config.weights_path is not None:  # ClassifierTrainConfig allows weights for the ResNets only
            cast("ResNetClassifier", net).load_backbone(config.weights_path)
        net = net.to(device)
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        losses: list[float] = []
        step = 0
        last_ckpt: Path | None = None
        if ckpt is not None:
            losses, step, last_ckpt = restore_train_state(ckpt, net, optimizer, generator)
        resumed_from = step

        def checkpoint() -> Path:
            meta = {
                "classifier_config": config.to_dict(),
                "model_config": asdict(cast("DataclassInstance", net.config)),  # each arch's config dataclass
                "event_shape": list(event_shape),
                "head": config.head,
                "attributes": list(data.attributes),
                "target_shift": shift.tolist(),
                "target_scale": scale.tolist(),
                "data": {"source": data.source, "n_train": int(data.train_x.shape[0]),
                         "n_eval": int(data.eval_x.shape[0]), "sha256": fingerprint},
            }
            train_state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                           "rng": rng_state(), "losses": list(losses)}
            return save_checkpoint(out_dir, step, model_state=net.state_dict(), train_state=train_state,
                                   meta=meta, keep=config.keep_checkpoints)

        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        x_all, y_all = data.train_x, (data.train_y - shift) / scale
        bar = None
        if progress and step < config.steps:
            from ._progress import progress_bar as tqdm  # tqdm is optional

            bar = tqdm(total=config.steps, initial=step, desc=f"classifier {config.arch}", unit="step",
                       dynamic_ncols=True)
        try:
            while step < config.steps:
                idx = torch.randint(0, x_all.shape[0], (config.batch_size,), generator=generator)
                xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                out = net(xb)
                loss = (F.binary_cross_entropy_with_logits(out, yb) if config.head == "binary"
                        else F.mse_loss(out, yb))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"classifier loss became {value} at step {step}; lower lr")
                last_ckpt = record_step(step, value, losses, total=config.steps, bar=bar,
                                        checkpoint_every=config.checkpoint_every, checkpoint=checkpoint,
                                        callback=callback, last=last_ckpt)
        finally:
            if bar is not None:
                bar.close()
        if last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}"):
            last_ckpt = checkpoint()

    classifier = AttributeClassifier(net, data.attributes, config.head, shift=shift.to(device),
                                     scale=scale.to(device)).eval()
    classifier.requires_grad_(False)
    held_out = evaluate_classifier(classifier, data.eval_x, data.eval_y, head=config.head,
                                   attributes=data.attributes, batch_size=config.eval_batch_size)
    seconds = time.perf_counter() - start_time
    tail = losses[-min(50, len(losses)):]
    report = {
        "arch": config.arch, "step": step, "source": data.source, "n_train": int(data.train_x.shape[0]),
        "attributes": list(data.attributes), "held_out": held_out, "held_out_index": data.eval_index,
        "final_loss_mean_last_50": sum(tail) / max(len(tail), 1), "checkpoint": str(last_ckpt),
        "config": config.to_dict(), "device": str(device), "seconds": seconds, "resumed_from": resumed_from,
    }
    _report.write_json(out_dir / "report.json", report)
    _report.write_text(out_dir / "summary.md", _summary(report))
    return ClassifierTrainResult(classifier=classifier, losses=losses, step=step, report=report, config=config,
                                 checkpoint=last_ckpt, out_dir=out_dir, device=str(device), seconds=seconds,
                                 resumed_from=resumed_from)


def load_classifier(path: str | Path, *, attributes: Sequence[str] | None = None,
                    device: str | torch.device | None = None) -> AttributeClassifier:
    """Load a read-out trained by :func:`train_classifier` (eval mode, no gradients).

    Args:
        path: checkpoint directory, run directory or ``checkpoints`` folder.
        attributes: keep only these outputs, in this order (see :meth:`AttributeClassifier.select`).
        device: where to put it (default CPU).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: not a classifier checkpoint, or ``attributes`` names an output it lacks.
    """
    from .checkpoint import CheckpointError, load_checkpoint
    from .models import model_from_config

    ckpt = load_checkpoint(path)
    if "classifier_config" not in ckpt.meta:
        raise ValueError(f"{ckpt.path} is not a classifier checkpoint (no classifier_config in meta.json; "
                         f"a flow checkpoint?)")
    net = model_from_config(ckpt.model_config)
    try:
        net.load_state_dict(ckpt.model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"classifier weights in {ckpt.path} do not fit the model config: {exc}") from exc
    meta = ckpt.meta
    clf = AttributeClassifier(net, meta["attributes"], meta["head"], shift=torch.tensor(meta["target_shift"]),
                              scale=torch.tensor(meta["target_scale"]))
    if attributes is not None:
        clf = clf.select(attributes)
    clf.eval().requires_grad_(False)
    return clf.to(device) if device is not None else clf
