"""``causal-delta jvp --moments-only``: stream the responses into a :class:`~causal_delta.moments.MomentAccumulator`.

Memory does not grow with ``-n``: samples are drawn, pushed through the generator and summed
batch by batch, and ``moments.npz`` holds the sums (count, Σ Δy, Σ Δy Δyᵀ, the Poisson-bootstrap
replicates and, with ``--condition-on``, the same for the rows passing each threshold).

Draws: sample ``i``'s ``x0`` and probes are the counter-based draws of :mod:`causal_delta._rng`,
a function of ``(--seed, i)`` only — the same for every ``--batch-size``, any split over
processes, and the same rows as the raw-responses route of ``jvp`` with the same seed.

Under ``torchrun`` (``torch.distributed`` initialised before the command runs) the batches are
split over the ranks, the sums all-reduced and rank 0 writes: the file is the same for any number
of processes (to float64 summation order).

Conditioning thresholds on ``|Δy_K|`` must be fixed before the rows stream past: they are the
``--quantiles`` of the first ``min(-n, PILOT_SAMPLES)`` samples' responses (the pilot, which is
then accumulated like any other chunk).
"""

from __future__ import annotations

import argparse

__all__ = ["PILOT_SAMPLES", "DEFAULT_QUANTILES", "DEFAULT_N_BOOT", "draw", "run"]


PILOT_SAMPLES = 1024
"""Samples whose responses choose the conditioning thresholds."""

DEFAULT_QUANTILES = (1.0, 0.7, 0.5, 0.3, 0.2, 0.17, 0.1, 0.05)
"""Kept fractions accumulated by default: ``dependence``'s default sweep and its default 0.17."""

DEFAULT_N_BOOT = 1000
"""Poisson-bootstrap replicates by default (``dependence``'s default ``--n-boot``)."""


def draw(seed: int, start: int, stop: int, event, *, probes: int, kind: str, normalize: bool):
    """``x0`` ``(stop-start, *event)`` and probes ``(stop-start, probes, *event)``, float64, of the
    global samples ``start .. stop-1``: the same counter-based draws as the raw route
    (:mod:`causal_delta._rng`, a function of ``(seed, sample index)`` only), so the moments equal the
    sums of the rows ``jvp`` writes without ``--moments-only``."""
    from .. import _rng

    rows = range(start, stop)
    return (_rng.normal(seed, "x0", rows, event),
            _rng.probes(seed, rows, event, probes=probes, kind=kind, normalize=normalize))


def run(args: argparse.Namespace, *, velocity, classifier, features, names, event, dtype, info, clf_info,
        truth) -> int:
    """Stream ``-n`` samples through the generator into ``moments.npz`` and ``report.json`` under ``--out``."""
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .. import jvp as J
    from .. import report
    from ..moments import MomentAccumulator, pilot_thresholds

    n_boot = DEFAULT_N_BOOT if args.n_boot is None else args.n_boot
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"--n-boot must be an integer >= 0, got {n_boot!r}")
    quantiles = list(DEFAULT_QUANTILES if args.quantiles is None else args.quantiles)
    if args.condition_on is not None and any(not 0 < q <= 1 for q in quantiles):
        raise ValueError(f"--quantiles must lie in (0, 1], got {quantiles}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0 with --moments-only (it seeds the bootstrap weights), got {args.seed}")
    out = Path(args.out)
    P, n = args.probes, args.n_samples

    def responses(start: int, stop: int, grid):
        x0, z = draw(args.seed, start, stop, event, probes=P, kind=args.probe_kind, normalize=args.normalize)
        res = J.attribute_jvp(velocity, x0.to(dtype), z.to(dtype), classifier=classifier, features=features,
                              mode=args.mode, eps=args.eps, method=args.solver, steps=args.steps, grid=grid,
                              batch_size=args.batch_size)
        index = torch.arange(start, stop).repeat_interleave(P)  # resample whole samples (their P probes)
        return res, res.responses.detach().cpu().double(), index

    # Under torchrun (torch.distributed initialised) rank r takes the batches b with b % world == r;
    # every rank computes the pilot (same draws, same thresholds) and rank 0 accumulates it.
    import torch.distributed as dist

    sharded = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    n_pilot = min(n, PILOT_SAMPLES)
    starts = list(range(n_pilot, n, args.batch_size))[rank::world]
    start_time = time.perf_counter()
    from .._progress import progress_bar  # tqdm is optional for library users

    bar = progress_bar(total=(n_pilot if rank == 0 else 0) + sum(min(s + args.batch_size, n) - s for s in starts),
                       desc="jvp (moments)", unit="sample")
    pilot, dy, index = responses(0, n_pilot, None)  # the pilot fixes the grid (dopri5) and the thresholds
    grid, nfe_total, m = pilot.grid, pilot.nfe_total, dy.shape[1]
    k, thresholds = args.condition_on, torch.empty(0, dtype=torch.float64)
    if k is not None:
        if not 0 <= k < m:
            raise ValueError(f"--condition-on must be a feature index in [0, {m}), got {k}")
        thresholds = pilot_thresholds(dy, k, quantiles)
    acc = MomentAccumulator(m, n_boot=n_boot, seed=args.seed, k=k, thresholds=thresholds,
                            quantiles=quantiles if k is not None else None)
    if rank == 0:
        acc.update(dy, index=index)
        bar.update(n_pilot)
    for s in starts:
        e = min(s + args.batch_size, n)
        res, dy, index = responses(s, e, grid)
        acc.update(dy, index=index)
        nfe_total += res.nfe_total
        bar.update(e - s)
    bar.close()
    if sharded:
        acc.all_reduce()
        nccl = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        nfe = torch.tensor([float(nfe_total - pilot.nfe_total)], device="cuda" if nccl else None)
        dist.all_reduce(nfe)
        nfe_total = pilot.nfe_total + int(nfe)
        if rank != 0:
            return 0  # rank 0 writes
    elapsed = time.perf_counter() - start_time
    if names is None or len(names) != m:
        names = [f"logit {j}" for j in range(m)]
    extra = {"names": np.array(names), "features": np.array(features if features is not None else [], dtype=np.int64),
             "n_samples": np.int64(n), "probes_per_sample": np.int64(P)}
    if truth is not None:
        extra["truth_corr"] = truth
    path = acc.save(out / "moments.npz", **extra)
    rep = {
        "command": "jvp",
        "config": {a: v for a, v in vars(args).items() if not a.startswith("_") and a != "command"},
        "flow": {a: info[a] for a in ("path", "step", "event_shape", "parametrization", "preset", "used_ema")},
        "data": info.get("data", {}),
        "classifier": clf_info,
        "units": "J z (derivative along the probe, not multiplied by eps)",
        "n_samples": n,
        "probes_per_sample": P,
        "n_responses": acc.n,
        "features": features,
        "names": names,
        "eps": pilot.eps,
        "solver": {"method": args.solver, "steps": int(grid.numel() - 1), "nfe": pilot.nfe, "nfe_total": nfe_total,
                   "batches": 1 + -(-(n - n_pilot) // args.batch_size)},
        "seconds": elapsed,
        "rms_response": acc.second_moment().diagonal().sqrt().tolist(),
        "corr_uncentred": acc.correlation(),
        "truth_corr": truth,
        "moments": {"n_boot": n_boot, "bootstrap": "Poisson(1) weights per sample, hashed from (seed, sample index)",
                    "seed": args.seed, "condition_on": k, "quantiles": quantiles if k is not None else None,
                    "thresholds": thresholds, "pilot_samples": n_pilot,
                    "draws": "counter-based per sample index (causal_delta._rng), as the raw route"},
        "responses_file": path.name,
    }
    report.write_json(out / "report.json", rep)
    print(f"wrote {path} (moments of {acc.n} x {m} responses, {args.mode}, {elapsed:.1f} s) "
          f"and {out / 'report.json'}")
    return 0
