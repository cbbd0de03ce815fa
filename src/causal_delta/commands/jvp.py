"""``causal-delta jvp``: responses Δy = J_{C∘f}(x0) z of a trained flow to random latent probes.

Writes ``responses.npz`` (``responses`` (n·P, m), ``sample_index``, ``features`` / ``names``) and
``report.json`` (configuration, checkpoint info, solver cost, timings) under ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "JvpConfig", "add_arguments", "outputs", "run", "parse_features",
           "feature_labels"]

MAX_IDENTITY_FEATURES = 64
"""Without --features or --classifier, samples of at most this many coordinates are read whole."""

HELP = "JVP responses of a trained flow (pixels or classifier logits) to random latent probes"
DESCRIPTION = (
    "Push random probes z through the generator f of a trained flow and record "
    "Δy = J_{C∘f}(x0) z for selected pixels (--features) or the logits of a classifier "
    "(--classifier). Responses are in units of J z (not ε z). Use `causal-delta dependence` "
    "on the written responses.npz."
)


@dataclass(kw_only=True)
class JvpConfig(FlowSource):
    """The options of ``causal-delta jvp``."""

    n_samples: int = option(256, short="-n", deprecated=("--n",), help="number of source samples x0")
    probes: int = option(1, help="probe directions per sample")
    mode: Literal["forward", "fd", "central"] = option(
        "forward", deprecated=("--method",),
        help="how the JVP is computed: forward-mode AD (exact for the discretised flow), forward differences "
             "or central differences")
    eps: float | None = option(None, help="finite-difference step (default: sqrt / cbrt of the dtype's machine eps)")
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = option("rk4", help="ODE solver")
    steps: int = option(100, help="solver steps (ignored by adaptive dopri5)")
    features: str | None = option(
        None, group="readout",
        help="pixels to read: comma-separated flattened indices, or colon-separated multi-indices into the sample "
             "shape (e.g. '0:14:8,0:15:8'; missing leading dimensions are 0). Default without --classifier: every "
             f"coordinate, for samples of at most {MAX_IDENTITY_FEATURES} coordinates")
    classifier: str | None = option(None, group="readout", help="classifier checkpoint; responses are its logits")
    probe_kind: Literal["gaussian", "rademacher"] = option("gaussian", help="distribution of the probes")
    normalize: bool = option(True, help="rescale probes to unit norm (the paper's CelebA script used unit "
                                        "directions)")
    dtype: Literal["float32", "float64"] = option("float32", help="precision of the flow and the JVP")
    batch_size: int = option(64, help="samples per batch")
    seed: int = option(0, help="seed of x0 and the probes")
    ema: bool = option(True, help="use the EMA weights (--no-ema: the raw weights)")
    save_samples: bool = option(False, help="also store x0 and f(x0) in the npz")
    out: str = option("runs/jvp", help="output directory")


CONFIG = JvpConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def parse_features(spec: str, event_shape: tuple[int, ...]) -> list[int]:
    """Flattened indices from ``'3,17'`` or ``'0:14:8,0:15:8'`` for samples of ``event_shape``."""
    import math

    size = math.prod(event_shape)
    out = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        try:
            parts = [int(p) for p in tok.split(":")]
        except ValueError:
            raise ValueError(f"--features must be integers or colon-separated multi-indices, got {tok!r}") from None
        if len(parts) == 1:
            idx = parts[0]
        else:
            if len(parts) > len(event_shape):
                raise ValueError(f"--features index {tok!r} has more dimensions than the sample shape {event_shape}")
            parts = [0] * (len(event_shape) - len(parts)) + parts
            if any(not 0 <= p < s for p, s in zip(parts, event_shape)):
                raise ValueError(f"--features index {tok!r} is outside the sample shape {event_shape}")
            idx = 0
            for p, s in zip(parts, event_shape):
                idx = idx * s + p
        if not 0 <= idx < size:
            raise ValueError(f"--features index {tok!r} must lie in [0, {size}) for sample shape {event_shape}")
        out.append(idx)
    if not out:
        raise ValueError("--features must name at least one pixel")
    return out


def feature_labels(features: list[int], event_shape: tuple[int, ...], names=None) -> list[str]:
    """Report labels of selected features: the table's column names when the training data had a
    header, ``"x{i}"`` for other tables, ``"pixel {i}"`` (flattened index) for images."""
    if names is not None and len(event_shape) == 1 and len(names) == event_shape[0]:
        return [str(names[i]) for i in features]
    if len(event_shape) == 1:
        return [f"x{i}" for i in features]
    return [f"pixel {i}" for i in features]


def _load_classifier(path: str, use_ema: bool):
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..models import model_from_config

    ckpt = load_checkpoint(path)
    if not ckpt.model_config:
        raise CheckpointError(f"classifier checkpoint {ckpt.path} has no model_config")
    model = model_from_config(ckpt.model_config)
    state = ckpt.ema_state if (use_ema and ckpt.ema_state is not None) else ckpt.model_state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"classifier weights in {ckpt.path} do not fit its model config: {exc}") from exc
    model.eval().requires_grad_(False)
    names = ckpt.meta.get("class_names") or ckpt.meta.get("attribute_names")
    return model, {"path": str(ckpt.path), "step": ckpt.step, "model_config": ckpt.model_config}, names


def run(args: argparse.Namespace) -> int:
    import math
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .. import jvp as J
    from .. import report
    from .._validation import check_positive_int
    from ._model import load_velocity

    c = from_namespace(CONFIG, args)
    check_positive_int("-n", c.n_samples)
    check_positive_int("--probes", c.probes)
    check_positive_int("--steps", c.steps)
    check_positive_int("--batch-size", c.batch_size)
    if c.eps is not None and not c.eps > 0:
        raise ValueError(f"--eps must be > 0, got {c.eps}")
    if c.eps is not None and c.mode == "forward":
        raise ValueError("--eps applies to --mode fd / central only")
    dtype = getattr(torch, c.dtype)
    out = Path(c.out)

    velocity, info = load_velocity(c, use_ema=c.ema)
    velocity = velocity.to(dtype)
    event = tuple(info["event_shape"])
    if not event:
        raise ValueError(f"checkpoint {info['path']} does not record its event_shape")
    classifier, clf_info, names, features = None, None, None, None
    if c.classifier:
        classifier, clf_info, names = _load_classifier(c.classifier, c.ema)
        classifier = classifier.to(dtype)
    elif c.features is None:
        size = math.prod(event)
        if size > MAX_IDENTITY_FEATURES:
            raise ValueError(f"give --features or --classifier: the samples have {size} coordinates, and "
                             f"reading all of them is the default only up to {MAX_IDENTITY_FEATURES}")
        features = list(range(size))  # the identity read-out: every coordinate is a feature
    else:
        features = parse_features(c.features, event)
    if names is None:
        names = feature_labels(features, event, (info.get("data") or {}).get("feature_names"))

    # Draw in float64 whatever --dtype is, then cast: the same --seed gives the same (x0, z)
    # pairs (to float32 rounding) in float32 and float64, so runs compare sample by sample.
    gen = torch.Generator().manual_seed(c.seed)
    x0 = torch.randn(c.n_samples, *event, generator=gen, dtype=torch.float64).to(dtype)
    z = J.make_probes(c.n_samples, event, probes=c.probes, kind=c.probe_kind,
                      normalize=c.normalize, generator=gen, dtype=torch.float64).to(dtype)
    start = time.perf_counter()
    res = J.attribute_jvp(velocity, x0, z, classifier=classifier, features=features, mode=c.mode,
                          eps=c.eps, method=c.solver, steps=c.steps, batch_size=c.batch_size)
    elapsed = time.perf_counter() - start
    dy = res.responses.detach().cpu().double().numpy()
    m = dy.shape[1]
    if names is None or len(names) != m:
        names = [f"logit {k}" for k in range(m)]
    truth = None  # the data's known correlation of the chosen coordinates (Gaussian sources)
    known = (info.get("data") or {}).get("corr")
    if classifier is None and known is not None:
        full = np.asarray(known, dtype=np.float64)
        truth = full[np.ix_(features, features)]
    arrays = {
        "responses": dy,
        "sample_index": res.sample_index.cpu().numpy(),
        "names": np.array(names),
        "features": np.array(features if features is not None else [], dtype=np.int64),
    }
    if truth is not None:
        arrays["truth_corr"] = truth
    if c.save_samples:
        arrays["x0"] = x0.cpu().numpy()
        if res.samples is not None:
            arrays["samples"] = res.samples.detach().cpu().numpy()
    out.mkdir(parents=True, exist_ok=True)
    npz_path = out / "responses.npz"
    tmp = out / ".responses.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(npz_path)
    from ..dependence import correlation

    corr = correlation(torch.from_numpy(dy)) if dy.shape[0] >= 2 else None
    rep = {
        "command": "jvp",
        "config": config_to_dict(c),
        "flow": {k: info[k] for k in ("path", "step", "event_shape", "parametrization", "preset", "used_ema", "adapter")
                 if k in info},
        "data": info.get("data", {}),
        "classifier": clf_info,
        "units": "J z (derivative along the probe, not multiplied by eps)",
        "n_samples": c.n_samples,
        "probes_per_sample": c.probes,
        "n_responses": int(dy.shape[0]),
        "features": features,
        "names": names,
        "eps": res.eps,
        "solver": {"method": c.solver, "steps": int(res.grid.numel() - 1), "nfe": res.nfe,
                   "nfe_total": res.nfe_total, "batches": -(-c.n_samples // c.batch_size),
                   "nfe_note": "nfe: velocity evaluations per solve (one batch through the grid; "
                               "forward mode counts a primal+tangent call as one); nfe_total: all "
                               "batches together"},
        "seconds": elapsed,
        "rms_response": np.sqrt((dy ** 2).mean(0)).tolist(),
        "corr_uncentred": corr,
        "truth_corr": truth,
        "truth_note": ("the training data's correlation; a perfectly trained flow on Gaussian data has "
                       "JVP correlation equal to it (MATH.md §2)") if truth is not None else None,
        "responses_file": npz_path.name,
    }
    report.write_json(out / "report.json", rep)
    print(f"wrote {npz_path} ({dy.shape[0]} x {m} responses, {c.mode}, {elapsed:.1f} s) and {out / 'report.json'}")
    return 0
