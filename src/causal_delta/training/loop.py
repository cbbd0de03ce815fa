r"""Flow-matching training loop with exact resume, in one process or under ``torchrun``.

Each step draws a global minibatch of ``batch_size`` rows from the data source, source points
``x0`` (``N(0, I)`` or a user-chosen source for two-sided transport; with ``coupling="fixed"``
given pairs ``(x0_i, x1_i)`` drawn together by row index), times ``t`` and, for ``sigma > 0``,
the path noise, and minimises :func:`~causal_delta.training.flow_matching_loss` (Lipman et al. 2023, arXiv 2210.02747)
with AdamW, optional gradient clipping and an optional exponential moving average (EMA).

Reproducibility: every random draw of the loop (data, ``x0``, ``t``, noise) comes from one
dedicated CPU ``torch.Generator`` seeded with ``seed``; model initialisation uses ``seed`` too
(inside :func:`torch.random.fork_rng`, so the caller's global RNG is untouched). A checkpoint
stores the weights, the optimiser and EMA state, the generator state (which is the whole data
loader position: finite data is sampled with replacement), the global RNG state of the
forked region and the loss history, so a resumed run on the CPU reproduces the losses of an
uninterrupted run bit for bit.

Several processes (``torchrun --nproc-per-node W``; :mod:`causal_delta.distributed`): every
rank draws the same global batch from the same generator and keeps its block of
``batch_size / W`` rows; :class:`~torch.nn.parallel.DistributedDataParallel` averages the
gradients, which is the gradient of the global batch's mean loss. So ``W`` processes take the
steps of one process to float rounding, the generator state means the same at every world size
(a checkpoint resumes under any ``W``), and the EMA, identical on every rank, is saved by rank 0,
which writes every checkpoint while the others wait. Each rank draws the whole batch's random
numbers (cheap next to the network) so that nothing depends on ``W``; a torch ``Dataset`` reads
only the items of the rank's rows.

Resuming with a different total ``steps``: with the constant schedule the run simply goes on
(bit-exact with an uninterrupted run of the new total). The cosine schedule depends on the
total, so a different total is refused unless ``extend=True``, which recomputes the schedule
for the new total from the checkpoint on (the learning rate jumps there; the result matches no
uninterrupted run). A total below the checkpoint's step is always refused.

Failures keep what was written: a non-finite loss is caught before it reaches the weights and
raises :class:`TrainingDiverged`; Ctrl-C raises :class:`TrainingInterrupted`; both name the
step reached and the newest checkpoint on disk, which stays intact (checkpoints are atomic).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as dist
from ..paths import LinearPath, VelocityField
from ._inputs import (
    DatasetSource,
    as_data_source,
    build_model,
    check_model,
    make_source,
    model_record,
)
from ._resume import check_resumable, find_resume, restore_train_state, rng_state
from .config import TrainConfig, learning_rate
from .loss import flow_matching_loss, sample_t

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]


class _TrainingStopped:
    """Where a stopped run stands: ``step`` done, newest ``checkpoint`` on disk and its step."""

    def _where(self, step: int, checkpoint: Path | None) -> None:
        self.step = step
        self.checkpoint = checkpoint
        self.checkpoint_step = _checkpoint_step(checkpoint)

    def _checkpoint_text(self) -> str:
        if self.checkpoint is None:
            return "no checkpoint has been written (set checkpoint_every to write them during training)"
        return f"the checkpoint at step {self.checkpoint_step} ({self.checkpoint}) is intact"


class TrainingDiverged(_TrainingStopped, FloatingPointError):
    """The training loss became NaN or infinite; nothing of that step reached the weights.

    Attributes:
        step: the step whose loss was not finite (``step - 1`` steps completed).
        loss: the loss value.
        checkpoint: newest checkpoint on disk (``None`` when none was written), intact.
        checkpoint_step: its step.
    """

    def __init__(self, step: int, loss: float, checkpoint: Path | None, config: TrainConfig) -> None:
        self._where(step, checkpoint)
        self.loss = loss
        clip = "off" if config.grad_clip is None else f"{config.grad_clip:g}"
        super().__init__(f"training loss became {loss} at step {step}; {self._checkpoint_text()}; "
                         f"try a lower learning rate (lr, now {config.lr:g}) or gradient clipping "
                         f"(grad_clip, now {clip})")


class TrainingInterrupted(_TrainingStopped, KeyboardInterrupt):
    """Ctrl-C during training.

    Attributes:
        step: steps completed when the interrupt arrived.
        checkpoint: newest checkpoint on disk (``None`` when none was written), intact; resuming
            from it reproduces the uninterrupted run bit for bit on the CPU.
        checkpoint_step: its step.
    """

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self._where(step, checkpoint)
        super().__init__(f"interrupted at step {step}; {self._checkpoint_text()}"
                         + ("; resume=True continues from it" if checkpoint is not None else ""))


def _checkpoint_step(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    try:
        return int(checkpoint.name.rpartition("-")[2])
    except ValueError:
        return None


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        losses: loss of every step from step 1 to ``step`` (those before a resume included).
        step: steps done.
        flow: the trained velocity field (EMA weights when EMA is on), eval mode.
        config: the configuration used.
        checkpoint: directory of the last checkpoint written.
        out_dir: the run directory.
        device: device trained on.
        seconds: wall time of this call.
        resumed_from: step the run resumed from (0 for a fresh run).
        world_size: number of processes that trained (1 without torchrun).
    """

    losses: list[float]
    step: int
    flow: VelocityField
    config: TrainConfig
    checkpoint: Path | None
    out_dir: Path
    device: str
    seconds: float
    resumed_from: int = 0
    world_size: int = 1


def _inputs(model, data, config: TrainConfig | None) -> tuple[nn.Module | None, Any, TrainConfig]:
    """Sort out ``train(config)`` / ``train(model, data, config)`` and record what was given."""
    if isinstance(model, TrainConfig):  # train(config): preset and data named in the config
        if config is not None:
            raise ValueError("give the TrainConfig once: train(config) or train(model, data, config)")
        model, config = None, model
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if model is not None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module velocity model(x, t) with trainable parameters, got "
                             f"{type(model).__name__} (wrap other signatures with causal_delta.models.adapter)")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"model {type(model).__name__} has no trainable parameters")
        config = replace(config, preset=None, model_args={})  # the checkpoint says: user-defined
    elif config.preset is None:
        raise ValueError("preset is None, which means a user-defined model: pass it, train(model, data, config)")
    source = as_data_source(data, config)
    if data is not None:
        config = replace(config, data=f"user:{source.name}", data_args={})
    return model, source, config


def _rows(batch_size: int) -> slice:
    """This rank's rows of the global batch (all of them in one process)."""
    w = dist.world_size()
    if batch_size % w:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes ({w}), so "
                         f"that every rank takes batch_size / {w} rows of the same global batch")
    mine = dist.shard(batch_size)
    return slice(mine.start, mine.stop)



def record_step(step: int, value: float, losses: list[float], *, total: int, bar, checkpoint_every: int,
                checkpoint: Callable[[], Path], callback, last: Path | None) -> Path | None:
    """The bookkeeping after optimisation step ``step`` (shared with the classifier trainer):
    log the loss, move the progress bar (running mean of the last 10 losses), write a checkpoint
    every ``checkpoint_every`` steps and call ``callback(step, value)``. Returns the newest
    checkpoint (``last`` when none was written)."""
    losses.append(value)
    if bar is not None:
        bar.update(1)
        if step % 10 == 0 or step == total:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
    if checkpoint_every and step % checkpoint_every == 0:
        last = checkpoint()
    if callback is not None:
        callback(step, value)
    return last

def train(
    model: nn.Module | TrainConfig | None = None,
    data: Any = None,
    config: TrainConfig | None = None,
    *,
    resume: bool | str | Path = False,
    extend: bool = False,
    progress: bool = True,
    callback: Callable[[int, float], Any] | None = None,
) -> TrainResult:
    """Train a flow-matching model: ``train(config)`` or ``train(model, data, config)``.

    Under ``torchrun`` this joins the process group (:func:`causal_delta.distributed.init`) and
    trains with DistributedDataParallel on the same global batches (see the module docstring).

    Args:
        model: ``None`` for the preset ``config.preset``, or any ``nn.Module`` velocity
            ``model(x: (B, *event), t: (B,)) -> (B, *event)`` (trained in place; the checkpoint
            records it as user-defined, ``meta["model_source"]``, and ``preset`` as ``None``).
            A :class:`TrainConfig` here is read as ``train(config)``.
        data: ``None`` for ``config.data`` (a name or path), or the data itself: a tensor
            ``(N, *event)``, a map-style torch ``Dataset`` (items ``x`` or ``(x, label)``) or a
            :class:`~causal_delta.datasets.DataSource` (``config.data`` is then recorded as
            ``"user:<name>"``; a resume must pass the same data again).
        config: the run (see :class:`TrainConfig`); default ``TrainConfig()``.
        resume: ``False`` (start fresh), ``True`` (resume from the latest checkpoint in
            ``config.out_dir``, which must exist), ``"auto"`` (resume if there is one) or a
            checkpoint / run path. Only ``steps``, ``checkpoint_every``, ``keep_checkpoints``,
            ``out_dir`` and ``device`` may differ from the checkpointed config; ``steps`` must
            be at least the checkpoint's step. The number of processes may differ.
        extend: allow resuming a cosine-schedule run with a different total ``steps``; the
            schedule is recomputed for the new total from the checkpoint on (not bit-exact with
            any uninterrupted run). Without it that resume is refused. The constant schedule
            needs no flag: a different total continues bit-exactly.
        progress: show a tqdm bar with the running loss (rank 0 only).
        callback: ``callback(step, loss)`` after every step (``step`` counts from 1); an
            exception raised there stops training (checkpoints already written stay valid).

    Returns:
        :class:`TrainResult`. A checkpoint is written every ``checkpoint_every`` steps and at
        the end.

    Raises:
        ValueError: invalid config, data that does not fit the model, incompatible resume,
            ``batch_size`` not a multiple of the number of processes, bf16 off CUDA.
        FileNotFoundError: missing data file or checkpoint.
        TrainingDiverged: a non-finite loss (a ``FloatingPointError``); checkpoints stay intact.
        TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``); checkpoints stay intact.
    """
    from ..checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    user_model, data, config = _inputs(model, data, config)
    config.validate()
    start_time = time.perf_counter()
    dist.init()
    world = dist.world_size()
    rows = _rows(config.batch_size)
    device = dist.device(config.device)
    if config.precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision 'bf16' (autocast) runs on CUDA only, and this run is on {device}; "
                         f"use precision 'float32' on the CPU")
    event_shape = tuple(data.event_shape)
    source = None if config.coupling == "fixed" else make_source(config, event_shape)
    path = LinearPath(sigma=config.sigma, parametrization=config.parametrization)
    resume_path = find_resume(config, resume)
    out_dir = Path(config.out_dir)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if config.precision == "bf16"
                else contextlib.nullcontext())

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        if user_model is None:
            module = build_model(config, event_shape)
        else:
            module = user_model
            check_model(module, event_shape, f"model {type(module).__name__}")
        module = module.to(device)
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, betas=(config.betas[0], config.betas[1]),
                                      weight_decay=config.weight_decay)
        ema: dict[str, Tensor] | None = None
        if config.ema_decay is not None:
            ema = {k: v.detach().clone() for k, v in module.state_dict().items()}
        losses: list[float] = []
        step = 0
        last_ckpt: Path | None = None
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path)
            check_resumable(config, ckpt.train_config, ckpt.path, ckpt.step, extend)
            losses, step, last_ckpt = restore_train_state(ckpt, module, optimizer, generator)
            if ema is not None and ckpt.ema_state is not None:  # the config check matched ema_decay
                ema = {k: v.to(device) for k, v in ckpt.ema_state.items()}
        resumed_from = step
        net = module
        if world > 1:  # gradients averaged over ranks during backward
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

        def checkpoint() -> Path:
            # Rank 0 writes; the others wait for its word (a failed save stops every rank).
            failure = None
            if dist.is_main():
                meta = {"train_config": config.to_dict(), **model_record(module, config),
                        "event_shape": list(event_shape), "data": data.describe(), "world_size": world}
                train_state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                               "rng": rng_state(), "losses": list(losses)}
                try:
                    save_checkpoint(out_dir, step, model_state=module.state_dict(), ema_state=ema,
                                    train_state=train_state, meta=meta, keep=config.keep_checkpoints)
                except OSError as exc:
                    failure = exc
            message = dist.broadcast_object(None if failure is None else str(failure))
            if failure is not None:
                raise failure
            if message is not None:
                raise OSError(f"rank 0 could not write the checkpoint of step {step}: {message}")
            return out_dir / "checkpoints" / f"step-{step:08d}"

        net.train()
        params = [p for p in module.parameters() if p.requires_grad]
        bar = None
        if progress and step < config.steps and dist.is_main():
            from .._progress import progress_bar as tqdm  # tqdm is optional

            bar = tqdm(total=config.steps, initial=step, desc=f"train {config.preset or type(module).__name__}",
                       unit="step", dynamic_ncols=True)
        try:
            while step < config.steps:
                # The global batch, drawn identically on every rank; this rank keeps `rows`.
                if source is None:  # fixed coupling: one index draw keeps each pair together
                    x0, x1 = data.sample_pairs(config.batch_size, generator)
                    x1 = x1[rows]
                elif isinstance(data, DatasetSource):  # same draw, but only this rank's items are read
                    x1 = data.sample(config.batch_size, generator, rows=rows)
                    x0 = source(config.batch_size, generator)
                else:
                    x1 = data.sample(config.batch_size, generator)[rows]
                    x0 = source(config.batch_size, generator)
                t = sample_t(config.t_sampling, config.batch_size, generator)
                noise = (torch.randn((config.batch_size, *event_shape), generator=generator)[rows].to(device)
                         if config.sigma > 0 else None)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                with autocast:
                    loss = flow_matching_loss(net, x0[rows].to(device), x1.to(device), t[rows].to(device),
                                              path, noise=noise)
                value = float(dist.all_reduce(loss.detach().float(), "mean"))  # the global batch's loss
                if not math.isfinite(value):  # before backward: the weights stay those of the last step
                    raise TrainingDiverged(step + 1, value, latest_checkpoint(out_dir), config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                if ema is not None:
                    decay = min(float(config.ema_decay or 0.0), (1.0 + step) / (10.0 + step))
                    with torch.no_grad():
                        for k, v in module.state_dict().items():
                            if v.is_floating_point():
                                ema[k].lerp_(v, 1.0 - decay)
                            else:
                                ema[k].copy_(v)
                step += 1
                last_ckpt = record_step(step, value, losses, total=config.steps, bar=bar,
                                        checkpoint_every=config.checkpoint_every, checkpoint=checkpoint,
                                        callback=callback, last=last_ckpt)
        except KeyboardInterrupt as exc:
            if isinstance(exc, TrainingInterrupted):
                raise
            # What --resume would pick up: the newest complete checkpoint on disk.
            raise TrainingInterrupted(step, latest_checkpoint(out_dir)) from exc
        finally:
            if bar is not None:
                bar.close()
        if last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}"):
            last_ckpt = checkpoint()

    final = module
    if ema is not None:
        final = copy.deepcopy(module)
        final.load_state_dict(ema)
    flow = VelocityField(final, config.parametrization).eval()
    return TrainResult(losses=losses, step=step, flow=flow, config=config, checkpoint=last_ckpt,
                       out_dir=out_dir, device=str(device), seconds=time.perf_counter() - start_time,
                       resumed_from=resumed_from, world_size=world)
