"""The configuration of a flow-matching training run and the pure functions of it (schedule, device)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .._validation import check_nonnegative, check_positive_int

__all__ = [
    "COUPLINGS",
    "LR_SCHEDULES",
    "PRECISIONS",
    "T_SAMPLINGS",
    "TrainConfig",
    "learning_rate",
    "resolve_device",
]

T_SAMPLINGS = ("uniform", "logit-normal")
COUPLINGS = ("independent", "fixed")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "bf16")
# Fields that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "out_dir", "device"}
# Values of fields added after the first checkpoints were written (what those runs used).
FIELD_DEFAULTS_BEFORE = {"coupling": "independent", "precision": "float32"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as JSON in every checkpoint).

    Attributes:
        data: data-source name (``"gaussian"``, ``"gaussian-1d"``, ``"mixture"``, ...) or a path
            to a .npy / .csv / .pt file or an image folder (see :mod:`causal_delta.datasets`).
            When :func:`~causal_delta.training.train` is given the data itself (a tensor or a
            torch ``Dataset``), it records ``"user:<name>"`` here.
        data_args: keyword arguments of the data source (e.g. ``{"rho": 0.55}``).
        source: ``None`` for ``x0 ~ N(0, I)``, else a data-source name or path for ``x0``
            (two-sided transport); it must have the data's event shape.
        source_args: keyword arguments of ``source``.
        coupling: ``"independent"`` (each step pairs fresh ``x0`` with data drawn on their own)
            or ``"fixed"``: train on given pairs ``(x0_i, x1_i)`` (MATH.md §7), drawn by row
            index so each stays paired: ``data`` is a pairs file (``.npz`` with ``x0``/``x1``,
            ``.npy`` ``(N, 2, *event)``) and ``source`` is ``None``, or ``data`` (targets) and
            ``source`` are two files of the same length (see :mod:`causal_delta.datasets.pairs`).
        preset: model preset (:data:`causal_delta.models.PRESETS`); ``None`` when the caller
            gives its own model (recorded so by :func:`~causal_delta.training.train`).
        model_args: overrides of the preset's hyper-parameters.
        steps: optimisation steps in total.
        batch_size: global minibatch size. Under ``torchrun`` with ``W`` processes each rank
            takes ``batch_size / W`` rows of the same global batch (it must divide evenly), so
            the run sees exactly the batches of a single process.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decay to 0 at ``steps``); a pure function
            of the step, so it needs no state (so a resume that changes ``steps`` would change
            it: :func:`~causal_delta.training.train` refuses that unless ``extend=True``).
        warmup_steps: linear warm-up from 0 to ``lr`` over this many steps.
        ema_decay: EMA decay in [0, 1), ``None`` for no EMA. The decay used at step ``k`` is
            ``min(ema_decay, (1 + k) / (10 + k))`` so early weights fade quickly.
        grad_clip: clip the global gradient norm to this value; ``None`` for no clipping.
        sigma: constant noise level of the stochastic interpolant (0 = deterministic).
        parametrization: ``"velocity"`` (regress ``x1 - x0``) or ``"x1"`` (regress ``x1``).
        t_sampling: ``"uniform"`` (``t ~ U(0, 1)``) or ``"logit-normal"`` (``sigmoid(N(0, 1))``).
        precision: ``"float32"`` or ``"bf16"`` (the forward pass and loss under
            ``torch.autocast`` with bfloat16; weights, optimiser and EMA stay float32; CUDA only).
        seed: seeds model initialisation and the training generator.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        keep_checkpoints: keep the newest this many checkpoints (0 keeps all).
        out_dir: run directory (checkpoints go to ``out_dir/checkpoints``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``
            (under ``torchrun``: ``"auto"`` or ``"cuda"``, each rank on ``cuda:LOCAL_RANK``).
    """

    data: str = "gaussian"
    data_args: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    source_args: dict[str, Any] = field(default_factory=dict)
    coupling: str = "independent"
    preset: str | None = "mlp-small"
    model_args: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    ema_decay: float | None = None
    grad_clip: float | None = 1.0
    sigma: float = 0.0
    parametrization: str = "velocity"
    t_sampling: str = "uniform"
    precision: str = "float32"
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    out_dir: str = "runs/train"
    device: str = "auto"

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        from ..models import PRESETS
        from ..paths import PARAMETRIZATIONS

        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        check_nonnegative("weight_decay", self.weight_decay)
        check_nonnegative("sigma", self.sigma)
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) or be None, got {self.ema_decay!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {self.parametrization!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("checkpoint_every", "keep_checkpoints", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def resolve_device(device):
    """``"auto"`` -> CUDA when available else CPU; checks that a requested CUDA device exists.

    Returns a :class:`torch.device`; raises ``ValueError`` naming ``device`` otherwise.
    """
    import torch

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
