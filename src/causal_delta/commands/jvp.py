"""``causal-delta jvp``: responses Δy = J_{C∘f}(x0) z of a trained flow to random latent probes.

Writes ``responses.npz`` (``responses`` (n·P, m), ``sample_index``, ``features`` / ``names``) and
``report.json`` (configuration, checkpoint info, solver cost, timings) under ``--out``; with
``--moments-only``, ``moments.npz`` (streamed sums, :mod:`causal_delta.commands._jvp_moments`) instead.

Sample ``i``'s ``x0`` and probes depend on ``(--seed, i)`` only (:mod:`causal_delta._rng`), so the
responses are the same at any ``--batch-size`` and under ``torchrun --nproc-per-node W``, where
each rank computes a contiguous block of samples and rank 0 gathers and writes them.

``report.json`` also holds the discretisation check of
:func:`causal_delta.discretisation.discretisation_check` (the statistic at half the steps).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option
from ._model import FlowSource

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "JvpConfig", "DISTRIBUTED", "add_arguments", "outputs", "run",
           "parse_features", "feature_labels"]

MAX_IDENTITY_FEATURES = 64
"""Without --features or --classifier, samples of at most this many coordinates are read whole."""

HELP = "JVP responses of a trained flow (pixels or classifier logits) to random latent probes"
DISTRIBUTED = True
"""Runs under ``torchrun`` (ranks share the work; rank 0 writes and prints)."""
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
    check_samples: int = option(64, help="discretisation check: recompute the correlation for this many samples "
                                         "(same x0 and probes) at half the steps and warn when it moves by more "
                                         "than its bootstrap SE (0: no check)")
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
    moments_only: bool = option(False, help="stream the responses into moments.npz (sums, Poisson-bootstrap "
                                             "replicates, conditioning sums) instead of responses.npz: memory "
                                             "independent of -n")
    n_boot: int | None = option(None, help="with --moments-only: bootstrap replicates (1000)")
    condition_on: int | None = option(None, metavar="K",
                                      help="with --moments-only: also accumulate the rows with small |Δy_K|")
    quantiles: tuple[float, ...] | None = option(
        None, help="with --condition-on: kept fractions; thresholds from the first 1024 samples "
                   "(default 1,0.7,0.5,0.3,0.2,0.17,0.1,0.05)")
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


def _discretisation(args, velocity, x0, z, classifier, features, res) -> dict:
    """The discretisation check of the run (report entry); warns on stderr when it fails."""
    import sys
    import time

    from ..discretisation import discretisation_check

    if args.check_samples == 0:
        return {"skipped": "--check-samples 0"}
    if x0.shape[0] < 2 or res.grid.numel() < 3:
        return {"skipped": "needs at least 2 samples and 2 solver steps"}
    start = time.perf_counter()
    check = discretisation_check(velocity, x0, z, classifier=classifier, features=features, mode=args.mode,
                                 eps=args.eps, method=args.solver, grid=res.grid, responses=res.responses,
                                 subsample=args.check_samples, seed=args.seed, batch_size=args.batch_size)
    if check.verdict == "not converged":
        print(f"warning: {check.message()}; raise --steps or use a higher-order --solver", file=sys.stderr)
    return {**check.to_dict(), "seconds": time.perf_counter() - start}


def run(args: argparse.Namespace) -> int:
    import math
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .. import _rng, report
    from .. import distributed as dist
    from .. import jvp as J
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
    if c.check_samples < 0:
        raise ValueError(f"--check-samples must be an integer >= 0, got {c.check_samples}")

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
    # features is None exactly when a classifier reads out; an unnamed one's outputs are "logit k" below
    if names is None and features is not None:
        names = feature_labels(features, event, (info.get("data") or {}).get("feature_names"))
    truth = None  # the data's known correlation of the chosen coordinates (Gaussian sources)
    known = (info.get("data") or {}).get("corr")
    if features is not None and known is not None:
        truth = np.asarray(known, dtype=np.float64)[np.ix_(features, features)]
    moment_opts = [o for o, v in (("--n-boot", c.n_boot), ("--condition-on", c.condition_on),
                                  ("--quantiles", c.quantiles)) if v is not None]
    if moment_opts and not c.moments_only:
        raise ValueError(f"{', '.join(moment_opts)}: only with --moments-only (for raw responses, give them to "
                         "`causal-delta dependence`)")
    if c.moments_only:
        if c.save_samples:
            raise ValueError("--save-samples holds every sample: it does not go with --moments-only")
        from . import _jvp_moments

        return _jvp_moments.run(c, velocity=velocity, classifier=classifier, features=features, names=names,
                                event=event, dtype=dtype, info=info, clf_info=clf_info, truth=truth)

    # Sample i's x0 and probes are a function of (--seed, i) only (counter-based draws), so the
    # responses do not depend on --batch-size or on the number of torchrun processes: each rank
    # computes its block of samples and rank 0 gathers them. Drawn in float64 whatever --dtype
    # is, then cast: float32 and float64 runs compare sample by sample.
    if c.n_samples < dist.world_size():
        raise ValueError(f"-n ({c.n_samples}) must be at least the number of processes ({dist.world_size()})")
    mine = dist.shard(c.n_samples)
    x0 = _rng.normal(c.seed, "x0", mine, event).to(dtype)
    z = _rng.probes(c.seed, mine, event, probes=c.probes, kind=c.probe_kind,
                    normalize=c.normalize).to(dtype)
    start = time.perf_counter()
    res = J.attribute_jvp(velocity, x0, z, classifier=classifier, features=features, mode=c.mode,
                          eps=c.eps, method=c.solver, steps=c.steps, batch_size=c.batch_size)
    elapsed = time.perf_counter() - start
    # rank 0 checks its own block of samples (the others wait at the gather below)
    check = _discretisation(c, velocity, x0, z, classifier, features, res) if dist.is_main() else None
    dy = dist.all_gather(res.responses.detach().cpu().double()).numpy()
    sample_index = dist.all_gather(res.sample_index.cpu() + mine.start).numpy()
    nfe_total = int(dist.all_reduce(torch.tensor(res.nfe_total), "sum"))
    batches = int(dist.all_reduce(torch.tensor(-(-len(mine) // c.batch_size)), "sum"))
    if c.save_samples:
        x0 = dist.all_gather(x0.cpu())
        samples = None if res.samples is None else dist.all_gather(res.samples.detach().cpu())
    if not dist.is_main():  # rank 0 writes for all
        return 0
    m = dy.shape[1]
    if names is None or len(names) != m:
        names = [f"logit {k}" for k in range(m)]
    arrays = {
        "responses": dy,
        "sample_index": sample_index,
        "names": np.array(names),
        "features": np.array(features if features is not None else [], dtype=np.int64),
    }
    if truth is not None:
        arrays["truth_corr"] = truth
    if c.save_samples:
        arrays["x0"] = x0.numpy()
        if samples is not None:
            arrays["samples"] = samples.numpy()
    out.mkdir(parents=True, exist_ok=True)
    npz_path = out / "responses.npz"
    tmp = out / ".responses.tmp.npz"
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **kwds to allow_pickle
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
        "processes": dist.world_size(),
        "solver": {"method": c.solver, "steps": int(res.grid.numel() - 1), "nfe": res.nfe,
                   "nfe_total": nfe_total, "batches": batches,
                   "nfe_note": "nfe: velocity evaluations per solve (one batch through the grid; "
                               "forward mode counts a primal+tangent call as one); nfe_total: all "
                               "batches together"},
        "seconds": elapsed,
        "discretisation": check,
        "rms_response": np.sqrt((dy ** 2).mean(0)).tolist(),
        "corr_uncentred": corr,
        "truth_corr": truth,
        "truth_note": ("the training data's correlation; a perfectly trained flow on Gaussian data has "
                       "JVP correlation equal to it (arXiv 2602.02793 §4.1, App. B)") if truth is not None else None,
        "responses_file": npz_path.name,
    }
    report.write_json(out / "report.json", rep)
    print(f"wrote {npz_path} ({dy.shape[0]} x {m} responses, {c.mode}, {elapsed:.1f} s) and {out / 'report.json'}")
    return 0
