"""The training configuration, torch-free: :class:`TrainConfig`.

The same dataclass defines a training run in the library (:func:`causal_delta.training.train`,
which re-exports it), is saved as JSON in every checkpoint, and generates the options of
``causal-delta train`` (:mod:`causal_delta.config`); the field metadata below is the help text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from .config import config_to_dict, option

__all__ = ["T_SAMPLINGS", "COUPLINGS", "LR_SCHEDULES", "TrainConfig"]

T_SAMPLINGS = ("uniform", "logit-normal")
COUPLINGS = ("independent", "fixed")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as JSON in every checkpoint).

    Attributes:
        data: data-source name (``"gaussian"``, ``"gaussian-1d"``, ``"mixture"``, ...) or a path
            to a .npy / .csv / .pt file or an image folder (see :mod:`causal_delta.datasets`).
        data_args: keyword arguments of the data source (e.g. ``{"rho": 0.55}``).
        source: ``None`` for ``x0 ~ N(0, I)``, else a data-source name or path for ``x0``
            (two-sided transport); it must have the data's event shape.
        source_args: keyword arguments of ``source``.
        coupling: ``"independent"`` (each step pairs fresh ``x0`` with data drawn on their own)
            or ``"fixed"``: train on given pairs ``(x0_i, x1_i)`` (MATH.md §7), drawn by row
            index so each stays paired: ``data`` is a pairs file (``.npz`` with ``x0``/``x1``,
            ``.npy`` ``(N, 2, *event)``) and ``source`` is ``None``, or ``data`` (targets) and
            ``source`` are two files of the same length (see :mod:`causal_delta.datasets.pairs`).
        preset: model preset (:data:`causal_delta.models.PRESETS`).
        model_args: overrides of the preset's hyper-parameters.
        steps: optimisation steps in total.
        batch_size: minibatch size.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decay to 0 at ``steps``); a pure function
            of the step, so it needs no state (so a resume that changes ``steps`` would change
            it: :func:`train` refuses that unless ``extend=True``).
        warmup_steps: linear warm-up from 0 to ``lr`` over this many steps.
        ema_decay: EMA decay in [0, 1), ``None`` for no EMA. The decay used at step ``k`` is
            ``min(ema_decay, (1 + k) / (10 + k))`` so early weights fade quickly.
        grad_clip: clip the global gradient norm to this value; ``None`` for no clipping.
        sigma: constant noise level of the stochastic interpolant (0 = deterministic).
        parametrization: ``"velocity"`` (regress ``x1 - x0``) or ``"x1"`` (regress ``x1``).
        t_sampling: ``"uniform"`` (``t ~ U(0, 1)``) or ``"logit-normal"`` (``sigmoid(N(0, 1))``).
        seed: seeds model initialisation and the training generator.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        keep_checkpoints: keep the newest this many checkpoints (0 keeps all).
        out_dir: run directory (checkpoints go to ``out_dir/checkpoints``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
    """

    data: str = option("gaussian", help="data source: gaussian, gaussian-1d, mixture, ... or a .npy/.csv/.pt file "
                                        "or image folder")
    data_args: dict[str, Any] = option(default_factory=dict, help='JSON keyword arguments of the data source, '
                                                                  'e.g. \'{"rho": 0.55}\'')
    source: str | None = option(None, help="data source for x0 (default N(0, I))")
    source_args: dict[str, Any] = option(default_factory=dict, help="JSON keyword arguments of --source")
    coupling: Literal["independent", "fixed"] = option(
        "independent", help="fixed: train on given pairs, row i of --source with row i of --data (two files of "
                            "the same length); see also --pairs")
    preset: str = option("mlp-small", help="model preset")
    model_args: dict[str, Any] = option(default_factory=dict, help="JSON overrides of the preset")
    steps: int = option(1000, help="optimisation steps in total")
    batch_size: int = option(128, help="samples per minibatch")
    lr: float = option(2e-4, help="AdamW learning rate")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas")
    lr_schedule: Literal["constant", "cosine"] = option("constant", help="learning-rate schedule")
    warmup_steps: int = option(0, help="linear warm-up steps")
    ema_decay: float | None = option(None, metavar="DECAY", deprecated=("--ema",),
                                     help="EMA decay in [0, 1) (none: no EMA)")
    grad_clip: float | None = option(1.0, help="clip the gradient norm (none or 0: no clipping)")
    sigma: float = option(0.0, help="noise of the stochastic interpolant")
    parametrization: Literal["velocity", "x1"] = option("velocity", help="regression target: x1 - x0 or x1")
    t_sampling: Literal["uniform", "logit-normal"] = option("uniform", help="distribution of the time t")
    seed: int = option(0, help="seeds model initialisation and the training generator")
    checkpoint_every: int = option(0, help="write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(3, help="keep the newest N checkpoints (0 keeps all)")
    out_dir: str = option("runs/train", flag="--out", help="run directory")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        from ._validation import check_nonnegative, check_positive_int
        from .models import PRESETS
        from .paths import PARAMETRIZATIONS
        from .training import resolve_device

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
        if self.preset not in PRESETS:
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
        """The JSON-ready dict stored in checkpoints (:func:`causal_delta.config.config_to_dict`)."""
        return config_to_dict(self)

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
