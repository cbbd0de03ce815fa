"""``causal-delta jvp``: responses Δy = J_{C∘f}(x0) z of a trained flow to random latent probes.

Writes ``responses.npz`` (``responses`` (n·P, m), ``sample_index``, ``features`` / ``names``) and
``report.json`` (configuration, checkpoint info, solver cost, timings, the discretisation check of
:func:`causal_delta.discretisation.discretisation_check`) under ``--out``.
"""

from __future__ import annotations

import argparse

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "outputs", "run", "parse_features", "feature_labels"]

MAX_IDENTITY_FEATURES = 64
"""Without --features or --classifier, samples of at most this many coordinates are read whole."""

HELP = "JVP responses of a trained flow (pixels or classifier logits) to random latent probes"
DESCRIPTION = (
    "Push random probes z through the generator f of a trained flow and record "
    "Δy = J_{C∘f}(x0) z for selected pixels (--features) or the logits of a classifier "
    "(--classifier). Responses are in units of J z (not ε z). Use `causal-delta dependence` "
    "on the written responses.npz."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="flow checkpoint (run dir or checkpoint dir)")
    parser.add_argument("-n", "--n", type=int, default=256, help="number of source samples x0")
    parser.add_argument("--probes", type=int, default=1, help="probe directions per sample")
    parser.add_argument("--method", choices=("forward", "fd", "central"), default="forward",
                        help="forward-mode AD (exact for the discretised flow) or finite differences")
    parser.add_argument("--eps", type=float, default=None,
                        help="finite-difference step (default: sqrt / cbrt of the dtype's machine eps)")
    parser.add_argument("--solver", choices=("euler", "midpoint", "rk4", "dopri5"), default="rk4")
    parser.add_argument("--steps", type=int, default=100, help="solver steps (ignored by adaptive dopri5)")
    parser.add_argument("--check-samples", type=int, default=64,
                        help="discretisation check: recompute the correlation for this many samples (same "
                             "x0 and probes) at half the steps and warn when it moves by more than its "
                             "bootstrap SE (0: no check)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--features", type=str, default=None,
                      help="pixels to read: comma-separated flattened indices, or colon-separated "
                           "multi-indices into the sample shape (e.g. '0:14:8,0:15:8'; missing "
                           "leading dimensions are 0). Default without --classifier: every "
                           f"coordinate, for samples of at most {MAX_IDENTITY_FEATURES} coordinates")
    what.add_argument("--classifier", type=str, default=None,
                      help="classifier checkpoint; responses are its logits")
    parser.add_argument("--probe-kind", choices=("gaussian", "rademacher"), default="gaussian")
    parser.add_argument("--no-normalize", action="store_true",
                        help="do not rescale probes to unit norm (the paper's CelebA script used unit "
                             "directions)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA ones")
    parser.add_argument("--save-samples", action="store_true", help="also store x0 and f(x0) in the npz")
    parser.add_argument("--out", type=str, default="runs/jvp", help="output directory")


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
    if args.n < 2 or res.grid.numel() < 3:
        return {"skipped": "needs at least 2 samples and 2 solver steps"}
    start = time.perf_counter()
    check = discretisation_check(velocity, x0, z, classifier=classifier, features=features, mode=args.method,
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

    from .. import jvp as J
    from .. import report
    from .._validation import check_positive_int
    from ..checkpoint import load_flow

    check_positive_int("-n", args.n)
    check_positive_int("--probes", args.probes)
    check_positive_int("--steps", args.steps)
    check_positive_int("--batch-size", args.batch_size)
    if args.check_samples < 0:
        raise ValueError(f"--check-samples must be an integer >= 0, got {args.check_samples}")
    if args.eps is not None and not args.eps > 0:
        raise ValueError(f"--eps must be > 0, got {args.eps}")
    if args.eps is not None and args.method == "forward":
        raise ValueError("--eps applies to --method fd / central only")
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)

    velocity, info = load_flow(args.checkpoint, use_ema=not args.no_ema)
    velocity = velocity.to(dtype)
    event = tuple(info["event_shape"])
    if not event:
        raise ValueError(f"checkpoint {info['path']} does not record its event_shape")
    classifier, clf_info, names, features = None, None, None, None
    if args.classifier:
        classifier, clf_info, names = _load_classifier(args.classifier, not args.no_ema)
        classifier = classifier.to(dtype)
    elif args.features is None:
        size = math.prod(event)
        if size > MAX_IDENTITY_FEATURES:
            raise ValueError(f"give --features or --classifier: the samples have {size} coordinates, and "
                             f"reading all of them is the default only up to {MAX_IDENTITY_FEATURES}")
        features = list(range(size))  # the identity read-out: every coordinate is a feature
    else:
        features = parse_features(args.features, event)
    if names is None:
        names = feature_labels(features, event, (info.get("data") or {}).get("feature_names"))

    # Draw in float64 whatever --dtype is, then cast: the same --seed gives the same (x0, z)
    # pairs (to float32 rounding) in float32 and float64, so runs compare sample by sample.
    gen = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn(args.n, *event, generator=gen, dtype=torch.float64).to(dtype)
    z = J.make_probes(args.n, event, probes=args.probes, kind=args.probe_kind,
                      normalize=not args.no_normalize, generator=gen, dtype=torch.float64).to(dtype)
    start = time.perf_counter()
    res = J.attribute_jvp(velocity, x0, z, classifier=classifier, features=features, mode=args.method,
                          eps=args.eps, method=args.solver, steps=args.steps, batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    check = _discretisation(args, velocity, x0, z, classifier, features, res)
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
    if args.save_samples:
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
        "config": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"},
        "flow": {k: info[k] for k in ("path", "step", "event_shape", "parametrization", "preset", "used_ema")},
        "data": info.get("data", {}),
        "classifier": clf_info,
        "units": "J z (derivative along the probe, not multiplied by eps)",
        "n_samples": args.n,
        "probes_per_sample": args.probes,
        "n_responses": int(dy.shape[0]),
        "features": features,
        "names": names,
        "eps": res.eps,
        "solver": {"method": args.solver, "steps": int(res.grid.numel() - 1), "nfe": res.nfe,
                   "nfe_total": res.nfe_total, "batches": -(-args.n // args.batch_size),
                   "nfe_note": "nfe: velocity evaluations per solve (one batch through the grid; "
                               "forward mode counts a primal+tangent call as one); nfe_total: all "
                               "batches together"},
        "seconds": elapsed,
        "discretisation": check,
        "rms_response": np.sqrt((dy ** 2).mean(0)).tolist(),
        "corr_uncentred": corr,
        "truth_corr": truth,
        "truth_note": ("the training data's correlation; a perfectly trained flow on Gaussian data has "
                       "JVP correlation equal to it (MATH.md §2)") if truth is not None else None,
        "responses_file": npz_path.name,
    }
    report.write_json(out / "report.json", rep)
    print(f"wrote {npz_path} ({dy.shape[0]} x {m} responses, {args.method}, {elapsed:.1f} s) and {out / 'report.json'}")
    return 0
