"""The training configurations, torch-free: :class:`TrainConfig` (flows) and
:class:`ClassifierTrainConfig` (attribute read-outs).

Each dataclass defines a run in the library (:func:`causal_delta.training.train` and
:func:`causal_delta.classifier_training.train_classifier`, whose modules re-export them), is
saved as JSON in every checkpoint, and generates the options of ``causal-delta train`` and
``causal-delta classifier train`` (:mod:`causal_delta.config`); the field metadata is the help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from .config import config_to_dict, option

__all__ = ["T_SAMPLINGS", "COUPLINGS", "LR_SCHEDULES", "PRECISIONS", "TrainConfig", "ClassifierTrainConfig"]

T_SAMPLINGS = ("uniform", "logit-normal")
COUPLINGS = ("independent", "fixed")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "bf16")


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
            or ``"fixed"``: train on given pairs ``(x0_i, x1_i)`` (arXiv 2510.18118), drawn by row
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
            it: :func:`train` refuses that unless ``extend=True``).
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

    data: str = option("gaussian", help="data source: gaussian, gaussian-1d, mixture, ... or a .npy/.csv/.pt file "
                                        "or image folder")
    data_args: dict[str, Any] = option(default_factory=dict, help='JSON keyword arguments of the data source, '
                                                                  'e.g. \'{"rho": 0.55}\'')
    source: str | None = option(None, help="data source for x0 (default N(0, I))")
    source_args: dict[str, Any] = option(default_factory=dict, help="JSON keyword arguments of --source")
    coupling: Literal["independent", "fixed"] = option(
        "independent", help="fixed: train on given pairs, row i of --source with row i of --data (two files of "
                            "the same length); see also --pairs")
    preset: str | None = option("mlp-small", help="model preset (none: the caller's own model, library only)")
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
    precision: Literal["float32", "bf16"] = option(
        "float32", help="bf16: forward pass and loss under torch.autocast with bfloat16 (CUDA only); weights, "
                        "optimiser and EMA stay float32")
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
        """The JSON-ready dict stored in checkpoints (:func:`causal_delta.config.config_to_dict`)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = _known_fields(cls, d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``d`` (a config read back from a checkpoint), refused if it names a field ``cls`` lacks."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}")
    return dict(d)


@dataclass
class ClassifierTrainConfig:
    """Everything that defines a read-out training run (saved as JSON in every checkpoint).

    Attributes:
        data: ``"celeba"``, a path to a ``.npz`` file (``images``, ``targets``, optional
            ``attributes``), or ``"tensors"`` (``images`` / ``targets`` given to
            :func:`train_classifier`).
        celeba_root: CelebA folder (``data="celeba"``).
        attributes: attribute names: CelebA names to train on (``None``: all 40); for other
            data the names of the target columns (``None``: ``attr_0, attr_1, ...``).
        image_size: CelebA images are centre-cropped and resized to this (64 as the paper).
        limit: at most this many training examples (CelebA; ``None``: all).
        eval_limit: at most this many held-out examples (CelebA; ``None``: all).
        holdout_fraction: share held out for the report (npz / tensors).
        arch: :data:`causal_delta.models.CLASSIFIER_ARCHS` (``"small-cnn"``, ``"resnet50"``, ...).
        model_args: overrides of the architecture's hyper-parameters.
        weights_path: local file with backbone weights (ResNet only, e.g. ImageNet); never downloaded.
        head: ``"binary"`` (BCE with logits) or ``"regression"`` (MSE on standardised targets).
        steps, batch_size, lr, weight_decay, lr_schedule, warmup_steps, grad_clip, seed,
        checkpoint_every, keep_checkpoints, out_dir, device: as in
            :class:`causal_delta.training.TrainConfig`.
        eval_batch_size: batch size of the held-out evaluation.
    """

    data: str = option("tensors", metavar="celeba|FILE.npz",
                       help="'celeba' (with --celeba-root) or a .npz holding 'images' (N, C, H, W) in [-1, 1] or "
                            "uint8, 'targets' (N, m) and optionally 'attributes' (m names)")
    celeba_root: str | None = option(None, metavar="DIR", help="folder with img_align_celeba/ and "
                                     "list_attr_celeba.txt (list_eval_partition.txt optional)")
    attributes: list[str] | None = option(None, nargs="+", metavar="NAME",
                                          help="attribute names (CelebA: default all 40; .npz: names of the "
                                               "target columns)")
    image_size: int = option(64, help="CelebA: centre crop 178, then resize to this")
    limit: int | None = option(None, help="CelebA: at most this many training images")
    eval_limit: int | None = option(None, help="CelebA: at most this many held-out images")
    holdout_fraction: float = option(0.1, flag="--holdout", help=".npz: share of rows held out for the report")
    arch: str = option("small-cnn", choices=("small-cnn", "resnet18", "resnet34", "resnet50", "mlp"), help="network")
    model_args: dict[str, Any] = option(default_factory=dict, help="JSON overrides of the architecture")
    weights_path: str | None = option(None, flag="--weights", metavar="FILE",
                                      help="ResNet backbone weights from a local file (e.g. torchvision's ImageNet "
                                           ".pth); never downloaded")
    head: Literal["binary", "regression"] = option(
        "binary", help="binary: BCE with logits on 0/1 labels; regression: MSE, outputs are attribute values")
    steps: int = option(2000, help="optimisation steps")
    batch_size: int = option(128, help="samples per minibatch")
    lr: float = option(1e-3, help="AdamW learning rate")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    lr_schedule: Literal["constant", "cosine"] = option("cosine", help="learning-rate schedule")
    warmup_steps: int = option(0, help="linear warm-up steps")
    grad_clip: float | None = option(1.0, help="clip the gradient norm (none: no clipping)")
    seed: int = option(0, help="seeds initialisation, the split and the minibatches")
    checkpoint_every: int = option(0, help="write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(3, help="keep the newest N checkpoints (0 keeps all)")
    eval_batch_size: int = option(256, help="batch size of the held-out evaluation")
    out_dir: str = option("runs/classifier", flag="--out", help="run folder")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")

    def validate(self) -> ClassifierTrainConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        from ._validation import check_nonnegative, check_positive_int
        from .models import CLASSIFIER_ARCHS
        from .models.readout import HEADS
        from .training import resolve_device

        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data must be 'celeba', 'tensors' or a path to a .npz file, got {self.data!r}")
        if self.data == "celeba" and not self.celeba_root:
            raise ValueError("data 'celeba' needs celeba_root (--celeba-root): the CelebA folder")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.arch not in CLASSIFIER_ARCHS:
            raise ValueError(f"arch must be one of {CLASSIFIER_ARCHS}, got {self.arch!r}")
        if self.weights_path is not None and not self.arch.startswith("resnet"):
            raise ValueError(f"weights_path is for the ResNet architectures, not arch {self.arch!r}")
        for name in ("steps", "batch_size", "eval_batch_size", "image_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("limit", "eval_limit"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        check_nonnegative("weight_decay", self.weight_decay)
        if not 0.0 < float(self.holdout_fraction) < 1.0:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        for name in ("seed", "checkpoint_every", "keep_checkpoints", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.attributes is not None:
            if isinstance(self.attributes, str) or not all(isinstance(a, str) for a in self.attributes):
                raise ValueError(f"attributes must be a list of names, got {self.attributes!r}")
            self.attributes = list(self.attributes)
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict stored in checkpoints."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierTrainConfig:
        return cls(**_known_fields(cls, d))
