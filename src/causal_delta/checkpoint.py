"""Atomic training checkpoints: safetensors weights, optimiser / EMA / RNG state, JSON config.

Layout of a run directory ``out_dir``::

    out_dir/checkpoints/step-00001000/
        model.safetensors   trained weights (the raw network, not the VelocityField wrapper)
        ema.safetensors     EMA weights (when EMA is on)
        state.pt            optimiser state, RNG states, loss history (torch.save of a dict)
        meta.json           step, full training config, model config, SHA-256 of the files above
    out_dir/checkpoints/latest   name of the newest complete checkpoint directory

A checkpoint directory is written under a temporary name and renamed into place only when
every file is complete and flushed; ``latest`` is replaced atomically afterwards. An
interrupted or failing save (disk full, Ctrl-C, SIGKILL) therefore leaves the previous
checkpoint intact; a failing save raises ``OSError`` naming the checkpoint. On load every file is
checked against the SHA-256 in ``meta.json``, so a truncated or corrupt file raises
:class:`CheckpointError` naming that file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._version import __version__
from .report import atomic_write_bytes, to_jsonable

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "resolve_checkpoint",
    "load_flow",
    "FORMAT_VERSION",
]

_MODEL, _EMA, _STATE, _META, _LATEST = "model.safetensors", "ema.safetensors", "state.pt", "meta.json", "latest"
FORMAT_VERSION = 1
"""Layout version written into ``meta.json`` as ``"format"``; :func:`load_checkpoint` reads only this one."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt (the message names the file)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the checkpoint directory.
        step: optimisation steps done.
        meta: the parsed ``meta.json`` (``train_config``, ``model_config``, ``event_shape``, ...).
        model_state: network weights (state dict of CPU tensors, unless ``map_location``).
        ema_state: EMA weights, or ``None`` when EMA was off.
        train_state: optimiser state, RNG states and loss history (``state.pt``).
    """

    path: Path
    step: int
    meta: dict[str, Any]
    model_state: dict[str, Tensor]
    ema_state: dict[str, Tensor] | None = None
    train_state: dict[str, Any] = field(default_factory=dict)

    @property
    def train_config(self) -> dict[str, Any]:
        return self.meta.get("train_config", {})

    @property
    def model_config(self) -> dict[str, Any]:
        return self.meta.get("model_config", {})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_dict_bytes(state: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return save(tensors)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under ``run_dir/checkpoints``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / _META).exists())


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor] | None = None,
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    keep: int = 0,
) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically and point ``latest`` at it.

    Args:
        model_state: network state dict (saved as safetensors).
        ema_state: EMA state dict, or ``None``.
        train_state: anything ``torch.load(weights_only=True)`` can read back (tensors, numbers,
            strings, lists, dicts): optimiser state, RNG states, losses.
        meta: JSON-serialisable metadata (training config, model config, ...).
        keep: keep only the newest ``keep`` checkpoints (0 keeps all).

    Returns:
        The checkpoint directory.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(step):08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        blobs = {_MODEL: _state_dict_bytes(model_state)}
        if ema_state is not None:
            blobs[_EMA] = _state_dict_bytes(ema_state)
        buf = io.BytesIO()
        torch.save(train_state or {}, buf)
        blobs[_STATE] = buf.getvalue()
        for name, data in blobs.items():
            _write(tmp / name, data)
        full_meta = {
            "format": FORMAT_VERSION,
            "causal_delta_version": __version__,
            "step": int(step),
            **to_jsonable(meta or {}),
            "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in blobs.items()},
        }
        _write(tmp / _META, (json.dumps(full_meta, indent=2, allow_nan=False) + "\n").encode())
        if final.exists():  # re-saving the same step: replace it
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:  # disk full, quota, I/O error: say which checkpoint, keep the others
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(exc.errno, f"could not write checkpoint {final} ({exc.strerror or exc}); the "
                                 f"earlier checkpoints in {root} are untouched") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        atomic_write_bytes(root / _LATEST, (final.name + "\n").encode())
    except OSError as exc:  # the checkpoint is complete; `latest` still names the previous one
        raise OSError(exc.errno, f"checkpoint {final} is complete but {root / _LATEST} could not be "
                                 f"updated ({exc.strerror or exc}); it still names the previous checkpoint") from exc
    if keep and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``run_dir/checkpoints/latest`` points to (or the newest one), else ``None``."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / _LATEST
    if pointer.exists():
        target = root / pointer.read_text().strip()
        if (target / _META).exists():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint directory, a file inside one, a ``checkpoints`` folder or a run directory.

    Raises:
        FileNotFoundError: naming ``path`` when nothing usable is there.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_file():
        p = p.parent
    if (p / _META).exists() or (p / _MODEL).exists():
        return p
    found = None
    if (p / "checkpoints").is_dir():  # a run directory
        found = latest_checkpoint(p)
    elif p.name == "checkpoints" or (p / _LATEST).exists():  # the checkpoints folder
        found = latest_checkpoint(p.parent)
    if found is not None:
        return found
    raise FileNotFoundError(f"no checkpoint found in {p} (expected {_META} or checkpoints/{_LATEST})")


def _read_verified(path: Path, expected: dict[str, Any] | None) -> bytes:
    if not path.exists():
        raise CheckpointError(f"checkpoint file missing: {path}")
    data = path.read_bytes()
    if expected is not None:
        if len(data) != expected.get("bytes", len(data)):
            raise CheckpointError(f"checkpoint file {path} is truncated or corrupt: "
                                  f"{len(data)} bytes, expected {expected['bytes']}")
        if _sha256(data) != expected.get("sha256"):
            raise CheckpointError(f"checkpoint file {path} is corrupt: SHA-256 does not match meta.json")
    return data


def _load_safetensors(path: Path, data: bytes) -> dict[str, Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt: {exc}") from exc


def _check_format(meta: dict[str, Any], meta_path: Path) -> None:
    """``CheckpointError`` naming the file and both versions unless ``meta["format"]`` is ours.

    Checked before any other file is read, so a newer layout fails with this message rather than
    with a missing or unreadable file.
    """
    fmt = meta.get("format")
    if fmt == FORMAT_VERSION and not isinstance(fmt, bool):
        return
    written = meta.get("causal_delta_version")
    written = f"causal-delta {written}" if written else "an unknown writer"
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint file {meta_path} has format {fmt} (written by {written}), "
                              f"newer than format {FORMAT_VERSION} that causal-delta {__version__} reads; "
                              f"upgrade causal-delta")
    raise CheckpointError(f"checkpoint file {meta_path} has format {fmt!r} (written by {written}), not a format "
                          f"causal-delta {__version__} reads (format {FORMAT_VERSION})")


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (see :func:`resolve_checkpoint` for the accepted paths).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: (a ``ValueError``) a file is missing, truncated or corrupt, or ``meta.json``
            has another ``format`` than :data:`FORMAT_VERSION`; the message names the file.
    """
    ckpt = resolve_checkpoint(path)
    meta_path = ckpt / _META
    raw = _read_verified(meta_path, None)
    try:
        meta = json.loads(raw.decode())
        files = meta["files"]
        step = int(meta["step"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {meta_path} is truncated or corrupt: {exc}") from exc
    _check_format(meta, meta_path)
    model_state = _load_safetensors(ckpt / _MODEL, _read_verified(ckpt / _MODEL, files.get(_MODEL)))
    ema_state = None
    if _EMA in files:
        ema_state = _load_safetensors(ckpt / _EMA, _read_verified(ckpt / _EMA, files[_EMA]))
    state_path = ckpt / _STATE
    train_state: dict[str, Any] = {}
    if _STATE in files:
        data = _read_verified(state_path, files[_STATE])
        try:
            train_state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"checkpoint file {state_path} is truncated or corrupt: {exc}") from exc
    if str(map_location) != "cpu":
        model_state = {k: v.to(map_location) for k, v in model_state.items()}
        if ema_state is not None:
            ema_state = {k: v.to(map_location) for k, v in ema_state.items()}
    return Checkpoint(path=ckpt, step=step, meta=meta, model_state=model_state, ema_state=ema_state,
                      train_state=train_state)


def load_flow(path: str | os.PathLike, use_ema: bool = True, device: str | torch.device | None = None):
    """Load a trained flow as a :class:`~causal_delta.paths.VelocityField` in eval mode.

    Args:
        path: checkpoint directory, run directory or ``checkpoints`` folder.
        use_ema: use the EMA weights when the checkpoint has them.
        device: where to put the model (default CPU).

    Returns:
        ``(field, info)``: ``field(x, t)`` is the velocity (``(B, *event)``, ``t`` ``(B,)``),
        with ``field.forward_jvp`` when the network has one; ``info`` holds ``path``, ``step``,
        ``event_shape``, ``parametrization``, ``preset``, ``used_ema``, ``train_config``,
        ``model_config`` and ``data`` (the training data's description: name, size, dtype and
        cast, ``feature_names`` of a table with a header, the known ``corr`` of synthetic Gaussian
        data; ``{}`` when not recorded).
    """
    from .models import model_from_config
    from .paths import VelocityField

    ckpt = load_checkpoint(path)
    model_config = ckpt.model_config
    user = ckpt.meta.get("model_source") or {}
    if not model_config and user.get("kind") == "user":  # written by train(model, data, config)
        raise CheckpointError(f"checkpoint {ckpt.path} holds a user-defined model ({user.get('class')}), which "
                              f"cannot be rebuilt from the checkpoint: build the module and load "
                              f"{ckpt.path / _MODEL} into it (safetensors)")
    if not model_config:
        raise CheckpointError(f"checkpoint file {ckpt.path / _META} has no model_config")
    model = model_from_config(model_config)
    ema = ckpt.ema_state if use_ema else None
    used_ema = ema is not None
    state = ema if ema is not None else ckpt.model_state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights in {ckpt.path} do not fit the model config: {exc}") from exc
    train_config = ckpt.train_config
    field = VelocityField(model, train_config.get("parametrization", "velocity"))
    field.eval()
    field.requires_grad_(False)
    if device is not None:
        field.to(device)
    info = {
        "path": str(ckpt.path),
        "step": ckpt.step,
        "event_shape": tuple(ckpt.meta.get("event_shape", ())),
        "parametrization": field.parametrization,
        "preset": train_config.get("preset"),
        "used_ema": used_ema,
        "train_config": train_config,
        "model_config": model_config,
        "data": ckpt.meta.get("data", {}),
    }
    return field, info
