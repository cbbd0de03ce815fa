r"""Flow-matching training loop with exact resume.

Each step draws a minibatch from the data source, source points ``x0`` (``N(0, I)`` or a
user-chosen source for two-sided transport; with ``coupling="fixed"`` given pairs
``(x0_i, x1_i)`` drawn together by row index), times ``t`` and, for ``sigma > 0``, the path
noise, builds ``x_t`` with :class:`~causal_delta.paths.LinearPath` and minimises the mean
squared error ``mean ||model(x_t, t) - target||²`` (target ``x1 - x0`` or ``x1``, MATH.md §1)
with AdamW, optional gradient clipping and an optional exponential moving average (EMA).

Reproducibility: every random draw of the loop (data, ``x0``, ``t``, noise) comes from one
dedicated CPU ``torch.Generator`` seeded with ``seed``; model initialisation uses ``seed`` too
(inside :func:`torch.random.fork_rng`, so the caller's global RNG is untouched). A checkpoint
stores the weights, the optimiser and EMA state, the generator state (which is the whole data
loader position: finite data is sampled with replacement), the global RNG state of the
forked region and the loss history, so a resumed run on the CPU reproduces the losses of an
uninterrupted run bit for bit.

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

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .paths import GaussianSource, LinearPath, VelocityField
from .train_config import COUPLINGS, LR_SCHEDULES, T_SAMPLINGS, TrainConfig

__all__ = ["T_SAMPLINGS", "COUPLINGS", "LR_SCHEDULES", "TrainConfig", "learning_rate", "TrainResult", "TrainingDiverged",
           "TrainingInterrupted", "resolve_device", "make_source", "train"]

# Fields that may differ between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "out_dir", "device"}


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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; checks that a requested CUDA device exists."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def make_source(config: TrainConfig | dict[str, Any], event_shape: tuple[int, ...]):
    """The source sampler ``x0 ~ p_init`` of a run: ``N(0, I)`` or the configured data source."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if cfg.source is None:
        return GaussianSource(event_shape)
    from .datasets import load_data_source

    src = load_data_source(cfg.source, **cfg.source_args)
    if tuple(src.event_shape) != tuple(event_shape):
        raise ValueError(f"source {cfg.source!r} has event shape {tuple(src.event_shape)}, "
                         f"the data has {tuple(event_shape)}")
    return src


def _build_model(config: TrainConfig, event_shape: tuple[int, ...]) -> nn.Module:
    from .models import build_model

    try:
        model = build_model(config.preset, event_shape=event_shape, **config.model_args)
    except ValueError as exc:
        raise ValueError(f"data {config.data!r} with event shape {tuple(event_shape)} does not fit "
                         f"preset {config.preset!r}: {exc}") from exc
    with torch.no_grad():  # a wrong shape must fail here, with a clear message
        probe = torch.zeros((2, *event_shape))
        try:
            out = model(probe, torch.full((2,), 0.5))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"data {config.data!r} with event shape {tuple(event_shape)} does not fit "
                             f"preset {config.preset!r}: {exc}") from exc
        if out.shape != probe.shape:
            raise ValueError(f"data {config.data!r} with event shape {tuple(event_shape)} does not fit "
                             f"preset {config.preset!r}: model output shape {tuple(out.shape[1:])}")
    return model


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate of step ``step + 1`` (``step`` steps done): warm-up, then the schedule."""
    lr = config.lr
    if config.warmup_steps and step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(config.steps - config.warmup_steps, 1)
        frac = min(max(step - config.warmup_steps, 0) / span, 1.0)
        lr = lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


def _sample_t(kind: str, n: int, generator: torch.Generator) -> Tensor:
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(torch.randn(n, generator=generator))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _find_resume(config: TrainConfig, resume: bool | str | Path) -> Path | None:
    from .checkpoint import latest_checkpoint, resolve_checkpoint

    if resume is False or resume is None:
        return None
    if resume is True or resume == "auto":
        found = latest_checkpoint(config.out_dir)
        if found is None and resume is True:
            raise FileNotFoundError(f"resume: no checkpoint found in {Path(config.out_dir) / 'checkpoints'}")
        return found
    return resolve_checkpoint(resume)


def _check_resumable(config: TrainConfig, saved: dict[str, Any], path: Path, step: int, extend: bool) -> None:
    current = config.to_dict()
    saved = {"coupling": "independent", **saved}  # checkpoints from before the coupling setting
    diff = sorted(k for k in current if k not in _RESUMABLE_CHANGES and current[k] != saved.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff)
        raise ValueError(f"resume: config differs from checkpoint {path} in {detail}")
    if config.steps < step:
        raise ValueError(f"resume: steps {config.steps} is below the checkpoint's step {step} ({path}); "
                         f"give steps >= {step}")
    saved_total = saved.get("steps")
    if config.lr_schedule == "cosine" and saved_total != config.steps and not extend:
        raise ValueError(f"resume: steps {config.steps} differs from the run's total of {saved_total} steps "
                         f"(checkpoint {path}), and the cosine learning-rate schedule depends on the total; "
                         f"resume with steps {saved_total} to continue exactly, or pass extend=True (--extend) to "
                         f"recompute the schedule for {config.steps} steps (not bit-exact with any "
                         f"uninterrupted run)")


def train(
    config: TrainConfig,
    *,
    resume: bool | str | Path = False,
    extend: bool = False,
    progress: bool = True,
    callback: Callable[[int, float], Any] | None = None,
) -> TrainResult:
    """Train a flow-matching model.

    Args:
        config: the run (see :class:`TrainConfig`).
        resume: ``False`` (start fresh), ``True`` (resume from the latest checkpoint in
            ``config.out_dir``, which must exist), ``"auto"`` (resume if there is one) or a
            checkpoint / run path. Only ``steps``, ``checkpoint_every``, ``keep_checkpoints``,
            ``out_dir`` and ``device`` may differ from the checkpointed config; ``steps`` must
            be at least the checkpoint's step.
        extend: allow resuming a cosine-schedule run with a different total ``steps``; the
            schedule is recomputed for the new total from the checkpoint on (not bit-exact with
            any uninterrupted run). Without it that resume is refused. The constant schedule
            needs no flag: a different total continues bit-exactly.
        progress: show a tqdm bar with the running loss.
        callback: ``callback(step, loss)`` after every step (``step`` counts from 1); an
            exception raised there stops training (checkpoints already written stay valid).

    Returns:
        :class:`TrainResult`. A checkpoint is written every ``checkpoint_every`` steps and at
        the end.

    Raises:
        ValueError: invalid config, data that does not fit the model, incompatible resume.
        FileNotFoundError: missing data file or checkpoint.
        TrainingDiverged: a non-finite loss (a ``FloatingPointError``); checkpoints stay intact.
        TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``); checkpoints stay intact.
    """
    from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from .datasets import load_data_source

    config.validate()
    start_time = time.perf_counter()
    device = resolve_device(config.device)
    if config.coupling == "fixed":
        from .datasets.pairs import paired_source

        data = paired_source(config.data, config.data_args, config.source, config.source_args)
        source = None
    else:
        data = load_data_source(config.data, **config.data_args)
    event_shape = tuple(data.event_shape)
    if config.coupling != "fixed":
        source = make_source(config, event_shape)
    path = LinearPath(sigma=config.sigma, parametrization=config.parametrization)
    resume_path = _find_resume(config, resume)
    out_dir = Path(config.out_dir)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = _build_model(config, event_shape).to(device)
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=tuple(config.betas),
                                      weight_decay=config.weight_decay)
        ema: dict[str, Tensor] | None = None
        if config.ema_decay is not None:
            ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        losses: list[float] = []
        step = 0
        last_ckpt: Path | None = None
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path)
            _check_resumable(config, ckpt.train_config, ckpt.path, ckpt.step, extend)
            model.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.train_state["optimizer"])
            if ema is not None:
                ema = {k: v.to(device) for k, v in ckpt.ema_state.items()}
            generator.set_state(ckpt.train_state["generator"])
            _set_rng_state(ckpt.train_state["rng"])
            losses = [float(x) for x in ckpt.train_state["losses"]]
            step = ckpt.step
            last_ckpt = ckpt.path
        resumed_from = step

        def checkpoint() -> Path:
            meta = {
                "train_config": config.to_dict(),
                "model_config": asdict(model.config),
                "event_shape": list(event_shape),
                "data": data.describe(),
            }
            train_state = {
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "rng": _rng_state(),
                "losses": list(losses),
            }
            return save_checkpoint(out_dir, step, model_state=model.state_dict(), ema_state=ema,
                                   train_state=train_state, meta=meta, keep=config.keep_checkpoints)

        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        bar = None
        if progress and step < config.steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, initial=step, desc=f"train {config.preset}", unit="step",
                       dynamic_ncols=True)
        try:
            while step < config.steps:
                if source is None:  # fixed coupling: one index draw keeps each pair together
                    x0, x1 = data.sample_pairs(config.batch_size, generator)
                else:
                    x1 = data.sample(config.batch_size, generator)
                    x0 = source(config.batch_size, generator)
                t = _sample_t(config.t_sampling, config.batch_size, generator)
                noise = torch.randn(x1.shape, generator=generator) if config.sigma > 0 else None
                batch = path.sample(x0.to(device), x1.to(device), t.to(device),
                                    noise=None if noise is None else noise.to(device))
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                loss = F.mse_loss(model(batch.x_t, batch.t), batch.target)
                value = float(loss.detach())
                if not math.isfinite(value):  # before backward: the weights stay those of the last step
                    raise TrainingDiverged(step + 1, value, latest_checkpoint(out_dir), config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                if ema is not None:
                    decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
                    with torch.no_grad():
                        for k, v in model.state_dict().items():
                            if v.is_floating_point():
                                ema[k].lerp_(v, 1.0 - decay)
                            else:
                                ema[k].copy_(v)
                step += 1
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == config.steps:
                        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    last_ckpt = checkpoint()
                if callback is not None:
                    callback(step, value)
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

    final = model
    if ema is not None:
        from .models import model_from_config

        final = model_from_config(asdict(model.config)).to(device)
        final.load_state_dict(ema)
    flow = VelocityField(final, config.parametrization).eval()
    return TrainResult(losses=losses, step=step, flow=flow, config=config, checkpoint=last_ckpt,
                       out_dir=out_dir, device=str(device), seconds=time.perf_counter() - start_time,
                       resumed_from=resumed_from)
