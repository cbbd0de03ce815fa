r"""Training attribute read-outs ``C`` (classifiers or regressors) with exact resume.

A read-out maps images (or vectors) ``x`` to ``m`` attribute outputs. Two heads:

* ``"binary"``: labels ``y ∈ {0, 1}``; outputs are logits ``s``; loss
  ``mean_{i,k} BCEWithLogits(s_ik, y_ik)``;
* ``"regression"``: continuous targets; the network regresses standardised targets
  ``(y - μ) / σ`` (``μ, σ`` per attribute from the training set) with mean squared error, and
  the trained read-out outputs ``σ · net(x) + μ``: attribute values in the data's units.

The loop mirrors :func:`causal_delta.training.train` and reuses its pieces: AdamW, the same
learning-rate schedule (:func:`~causal_delta.training.learning_rate`), gradient clipping, one
CPU ``torch.Generator`` for every random draw (minibatch indices, drawn with replacement, and
the held-out split), model initialisation inside ``fork_rng``, and atomic checkpoints
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

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_nonnegative, check_positive_int

__all__ = [
    "HEADS",
    "ClassifierTrainConfig",
    "ClassifierTrainResult",
    "AttributeClassifier",
    "train_classifier",
    "load_classifier",
    "evaluate_classifier",
    "roc_auc",
]

HEADS = ("binary", "regression")


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

    data: str = "tensors"
    celeba_root: str | None = None
    attributes: list[str] | None = None
    image_size: int = 64
    limit: int | None = None
    eval_limit: int | None = None
    holdout_fraction: float = 0.1
    arch: str = "small-cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    weights_path: str | None = None
    head: str = "binary"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    eval_batch_size: int = 256
    out_dir: str = "runs/classifier"
    device: str = "auto"

    def validate(self) -> ClassifierTrainConfig:
        """Raise ``ValueError`` naming the first invalid field; return ``self``."""
        from .models import CLASSIFIER_ARCHS
        from .training import LR_SCHEDULES, resolve_device

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
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierTrainConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown ClassifierTrainConfig field(s) {unknown}")
        return cls(**d)


class AttributeClassifier(nn.Module):
    r"""A trained read-out with named outputs: ``forward(x) = (σ ⊙ net(x) + μ)[:, index]``.

    For binary heads ``σ = 1, μ = 0`` (outputs are logits); for regression heads the outputs
    are attribute values. ``forward_jvp(x, dx)`` returns the outputs and ``J dx`` (the network's
    own ``forward_jvp`` when it has one, else :func:`torch.func.jvp`), so
    :func:`causal_delta.jvp.attribute_jvp` uses the fast path.

    Attributes:
        net: the network, (B, *event) -> (B, m_all).
        attributes: names of the outputs, in order.
        head: ``"binary"`` or ``"regression"``.
    """

    def __init__(self, net: nn.Module, attributes: Sequence[str], head: str = "binary", *,
                 shift: Tensor | None = None, scale: Tensor | None = None,
                 index: Sequence[int] | None = None, all_attributes: Sequence[str] | None = None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.net = net
        self.head = head
        self.all_attributes = tuple(all_attributes if all_attributes is not None else attributes)
        m = len(self.all_attributes)
        self.register_buffer("shift", torch.zeros(m) if shift is None else shift.detach().float().clone())
        self.register_buffer("scale", torch.ones(m) if scale is None else scale.detach().float().clone())
        self.index = None if index is None else list(index)
        self.attributes = tuple(attributes)

    def _affine(self, out: Tensor, *, derivative: bool = False) -> Tensor:
        out = out * self.scale.to(out.dtype) if self.head == "regression" else out
        if self.head == "regression" and not derivative:
            out = out + self.shift.to(out.dtype)
        return out if self.index is None else out[:, self.index]

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``(B, len(attributes))``."""
        return self._affine(self.net(x))

    def forward_jvp(self, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs and their directional derivative ``J_x C · dx``; both ``(B, len(attributes))``."""
        fj = getattr(self.net, "forward_jvp", None)
        y, dy = fj(x, dx) if fj is not None else torch.func.jvp(self.net, (x,), (dx,))
        return self._affine(y), self._affine(dy, derivative=True)

    def select(self, attributes: Sequence[str]) -> AttributeClassifier:
        """The same read-out restricted to ``attributes`` (in that order; shares the network).

        Raises:
            ValueError: a name the classifier does not output (the message lists its outputs).
        """
        names = [attributes] if isinstance(attributes, str) else list(attributes)
        missing = [a for a in names if a not in self.attributes]
        if missing or not names:
            raise ValueError(f"classifier outputs {list(self.attributes)} do not include {missing or names}; "
                             f"train it on those attributes or choose among its outputs")
        base = self.index if self.index is not None else list(range(len(self.all_attributes)))
        idx = [base[self.attributes.index(a)] for a in names]
        out = AttributeClassifier(self.net, names, self.head, shift=self.shift, scale=self.scale, index=idx,
                                  all_attributes=self.all_attributes)
        return out.train(self.training)

    def extra_repr(self) -> str:
        return f"head={self.head!r}, attributes={list(self.attributes)}"


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


@dataclass
class _Data:
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    attributes: tuple[str, ...]
    source: str
    eval_index: list[int] | None = None  # rows of the given data held out (npz / tensors)


def _as_images(x: Any, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (N, d) with N >= 2, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0  # 8-bit images -> [-1, 1], as the image loaders
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point or uint8, got dtype {x.dtype}")
    return x.to(torch.float32).contiguous()


def _as_targets(y: Any, n: int, name: str = "targets") -> Tensor:
    y = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y
    y = y.reshape(-1, 1) if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, m) to match the images, got {tuple(y.shape)}")
    y = y.to(torch.float32).contiguous()
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return y


def _load_data(cfg: ClassifierTrainConfig, images: Any, targets: Any) -> _Data:
    if cfg.data == "celeba":
        from .datasets.celeba import load_celeba

        kw = dict(attributes=cfg.attributes, size=cfg.image_size)
        tr = load_celeba(cfg.celeba_root, split="train", limit=cfg.limit, **kw)
        ev = load_celeba(cfg.celeba_root, split="valid", limit=cfg.eval_limit, **kw)
        return _Data(tr.images, tr.labels, ev.images, ev.labels, tr.attributes, f"celeba:{tr.source}")
    names = None
    if cfg.data == "tensors":
        if images is None or targets is None:
            raise ValueError("data 'tensors' needs images and targets passed to train_classifier")
        source = "tensors"
    else:
        if images is not None or targets is not None:
            raise ValueError(f"images/targets are only used with data='tensors', not data={cfg.data!r}")
        path = Path(cfg.data).expanduser()
        if path.suffix != ".npz":
            raise ValueError(f"data must be 'celeba', 'tensors' or a path to a .npz file, got {cfg.data!r}")
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path} (a .npz with arrays 'images' (N, C, H, W) "
                                    f"and 'targets' (N, m))")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("images", "targets") if k not in npz.files]
            if missing:
                raise ValueError(f"{path} lacks array(s) {missing}; it has {npz.files}")
            images, targets = npz["images"], npz["targets"]
            names = [str(a) for a in npz["attributes"]] if "attributes" in npz.files else None
        source = str(path)
    x = _as_images(images, "images")
    y = _as_targets(targets, x.shape[0])
    m = y.shape[1]
    if cfg.attributes is not None and names is not None and list(cfg.attributes) != names:
        raise ValueError(f"attributes {cfg.attributes} differ from the names stored in {cfg.data}: {names}")
    names = list(cfg.attributes) if cfg.attributes is not None else (names or [f"attr_{k}" for k in range(m)])
    if len(names) != m:
        raise ValueError(f"attributes name {len(names)} outputs but the targets have {m} columns")
    if cfg.head == "binary" and not ((y == 0) | (y == 1)).all():
        raise ValueError("head 'binary' needs targets in {0, 1}; use head='regression' for continuous ones")
    n = x.shape[0]
    n_eval = min(max(1, round(cfg.holdout_fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    ev, tr = perm[:n_eval].sort().values, perm[n_eval:].sort().values
    return _Data(x[tr], y[tr], x[ev], y[ev], tuple(names), source, ev.tolist())


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def roc_auc(scores: Any, labels: Any) -> float:
    r"""Area under the ROC curve, ``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`` (Mann–Whitney U with mid-ranks).

    Args:
        scores: ``(n,)`` real scores (higher means class 1).
        labels: ``(n,)`` in {0, 1}.

    Returns:
        The AUC in [0, 1], or NaN when only one class is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mid-ranks of tie groups, 1-based
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def evaluate_classifier(classifier: nn.Module, images: Tensor, targets: Tensor, *, head: str = "binary",
                        attributes: Sequence[str] | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Held-out metrics of ``classifier`` (eval mode, no gradients) on ``images`` / ``targets`` (N, m).

    Returns:
        ``{"n", "head", "per_attribute": {name: {...}}, "mean": {...}}``: accuracy, ROC-AUC and
        positive rate (binary) or R² and RMSE (regression) per attribute, and their means.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    was_training = classifier.training
    classifier.eval()
    device = next((p.device for p in classifier.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = torch.cat([classifier(images[s: s + batch_size].to(device)).float().cpu()
                         for s in range(0, images.shape[0], batch_size)])
    classifier.train(was_training)
    y = targets.float()
    if out.shape != y.shape:
        raise ValueError(f"classifier outputs {tuple(out.shape[1:])} per image, the targets have {tuple(y.shape[1:])}")
    names = list(attributes) if attributes is not None else [f"attr_{k}" for k in range(y.shape[1])]
    per: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        o, t = out[:, k].double(), y[:, k].double()
        if head == "binary":
            per[name] = {"accuracy": float(((o > 0).double() == t).double().mean()),
                         "roc_auc": roc_auc(o.numpy(), t.numpy()), "positive_rate": float(t.mean())}
        else:
            ss_tot = float(((t - t.mean()) ** 2).sum())
            ss_res = float(((t - o) ** 2).sum())
            per[name] = {"r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
                         "rmse": math.sqrt(ss_res / t.numel())}
    keys = ("accuracy", "roc_auc") if head == "binary" else ("r2", "rmse")
    mean = {k: float(np.nanmean([v[k] for v in per.values()])) if any(math.isfinite(v[k]) for v in per.values())
            else float("nan") for k in keys}
    return {"n": int(y.shape[0]), "head": head, "per_attribute": per, "mean": mean}


def _summary(report: dict[str, Any]) -> str:
    from .experiments._common import markdown_table

    ev = report["held_out"]
    cols = ["accuracy", "roc_auc"] if ev["head"] == "binary" else ["r2", "rmse"]
    rows = [[name, *[v[c] for c in cols]] for name, v in ev["per_attribute"].items()]
    rows.append(["**mean**", *[ev["mean"][c] for c in cols]])
    return "\n".join([
        f"# classifier ({report['arch']}, {ev['head']} head)", "",
        f"{report['step']} steps on {report['n_train']} training examples from {report['source']}; "
        f"held-out set of {ev['n']}; {report['seconds']:.1f} s on {report['device']}.", "",
        markdown_table(["attribute", *cols], rows), "",
    ])


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
    from .training import _check_resumable, _find_resume, _rng_state, _set_rng_state, learning_rate, resolve_device

    config.validate()
    start_time = time.perf_counter()
    device = resolve_device(config.device)
    data = _load_data(config, images, targets)
    fingerprint = _fingerprint(data.train_x, data.train_y)
    m = data.train_y.shape[1]
    event_shape = tuple(data.train_x.shape[1:])
    resume_path = _find_resume(config, resume)
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
        _check_resumable(config, saved, ckpt.path)
        if ckpt.meta.get("data", {}).get("sha256") != fingerprint:
            raise ValueError(f"resume: the training data differ from those of checkpoint {ckpt.path}")

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        net = build_classifier(config.arch, event_shape, m, **config.model_args)
        if config.weights_path is not None:
            net.load_backbone(config.weights_path)
        net = net.to(device)
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        losses: list[float] = []
        step = 0
        last_ckpt: Path | None = None
        if ckpt is not None:
            net.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.train_state["optimizer"])
            generator.set_state(ckpt.train_state["generator"])
            _set_rng_state(ckpt.train_state["rng"])
            losses = [float(x) for x in ckpt.train_state["losses"]]
            step = ckpt.step
            last_ckpt = ckpt.path
        resumed_from = step

        def checkpoint() -> Path:
            meta = {
                "classifier_config": config.to_dict(),
                "model_config": asdict(net.config),
                "event_shape": list(event_shape),
                "head": config.head,
                "attributes": list(data.attributes),
                "target_shift": shift.tolist(),
                "target_scale": scale.tolist(),
                "data": {"source": data.source, "n_train": int(data.train_x.shape[0]),
                         "n_eval": int(data.eval_x.shape[0]), "sha256": fingerprint},
            }
            train_state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                           "rng": _rng_state(), "losses": list(losses)}
            return save_checkpoint(out_dir, step, model_state=net.state_dict(), train_state=train_state,
                                   meta=meta, keep=config.keep_checkpoints)

        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        x_all, y_all = data.train_x, (data.train_y - shift) / scale
        bar = None
        if progress and step < config.steps:
            from tqdm.auto import tqdm

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
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == config.steps:
                        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    last_ckpt = checkpoint()
                if callback is not None:
                    callback(step, value)
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
