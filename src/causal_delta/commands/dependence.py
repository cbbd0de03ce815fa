"""``causal-delta dependence``: correlations, bootstrap CIs and conditioning from a responses file.

Reads the ``responses.npz`` written by ``causal-delta jvp`` — or the ``moments.npz`` of
``jvp --moments-only`` (streamed sums: Poisson-bootstrap percentile intervals, conditioning at the
thresholds accumulated there) — and writes ``report.json``, ``corr.png`` (heatmap of the
uncentred correlation) and, when conditioning, ``sweep.png``. Both print the same table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, config_to_dict, from_namespace, option

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "DependenceConfig", "add_arguments", "outputs", "run", "format_table"]

HELP = "correlations, bootstrap CIs, conditioning and threshold sweeps of JVP responses"
DESCRIPTION = (
    "Estimate the paper's Corr = D^{-1/2} S D^{-1/2} (uncentred second moment S = E[Δy Δyᵀ]) "
    "from JVP responses, with bias-corrected (BCa) bootstrap intervals, the centred (Pearson) "
    "correlation for comparison, and — with --condition-on — the correlation on the samples "
    "whose response of one feature is small (conditioning, not do()) and its sensitivity to "
    "the threshold."
)


@dataclass
class DependenceConfig:
    """The options of ``causal-delta dependence``."""

    responses: str = option(help="responses.npz from `causal-delta jvp`, or moments.npz from `jvp --moments-only`")
    n_boot: int | None = option(None, help="bootstrap replicates (default 1000; for a moments file: all it holds)")
    level: float = option(0.95, help="confidence level")
    seed: int | None = option(None, help="bootstrap seed (default 0; a moments file's replicates were drawn by jvp)")
    interval: Literal["bca", "percentile"] | None = option(
        None, help="bootstrap interval: bias-corrected and accelerated (default) or percentile (the only one a "
                   "moments file allows)")
    condition_on: int | None = option(None, metavar="K",
                                      help="feature index k: keep samples with small |Δy_k| and recompute")
    quantile: float | None = option(None, group="threshold",
                                    help="keep the fraction q of samples with the smallest |Δy_k| (default 0.17)")
    threshold: float | None = option(None, group="threshold", help="keep samples with |Δy_k| <= threshold")
    pair: tuple[int, int] | None = option(None, metavar="I,J",
                                          help="feature pair 'i,j' for the threshold-sensitivity sweep (default: "
                                               "the first two features other than K)")
    quantiles: tuple[float, ...] | None = option(
        None, help="kept fractions of the sweep (default 1,0.7,0.5,0.3,0.2,0.1,0.05; for a moments file: those it "
                   "holds)")
    out: str = option("runs/dependence", help="output directory")


CONFIG = DependenceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CONFIG)


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def _heatmap(corr, names, path, title):
    from .. import report

    m = corr.shape[0]
    fig, ax = report.new_figure(figsize=(1.2 + 0.5 * m, 1.0 + 0.5 * m))
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(m))
    ax.set_yticks(range(m))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if m <= 12:
        for i in range(m):
            for j in range(m):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return report.save_figure(fig, path)


MAX_TABLE_PAIRS = 12
"""Pairs printed to the terminal (all of them are in report.json)."""


def format_table(boot, names, n_samples: int, truth=None) -> str:
    """The terminal summary: one line per feature pair ``i < j`` with estimate, CI, n (and truth).

    ``boot`` is a :class:`~causal_delta.dependence.BootstrapResult`; ``truth`` an optional
    ``(m, m)`` array of known correlations. Pairs whose truth lies outside their interval are
    marked ``*`` and explained below the table.
    """
    m = boot.estimate.shape[0]
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    width = max([len(f"{names[i]} ~ {names[j]}") for i, j in pairs[:MAX_TABLE_PAIRS]] + [4])
    level = f"{100 * boot.level:g} % CI ({boot.interval})"
    head = f"{'pair':<{width}}  {'estimate':>8}  {level:<22}  {'n':>7}"
    lines = [head + ("  truth" if truth is not None else ""), "-" * (len(head) + (7 if truth is not None else 0))]
    missed = 0
    for i, j in pairs[:MAX_TABLE_PAIRS]:
        est, lo, hi = (float(getattr(boot, a)[i, j]) for a in ("estimate", "lower", "upper"))
        row = f"{names[i] + ' ~ ' + names[j]:<{width}}  {est:>8.3f}  {f'[{lo:.3f}, {hi:.3f}]':<22}  {n_samples:>7d}"
        if truth is not None:
            t = float(truth[i][j])
            outside = not lo <= t <= hi
            missed += outside
            row += f"  {t:.3f}" + (" *" if outside else "")
        lines.append(row)
    if len(pairs) > MAX_TABLE_PAIRS:
        lines.append(f"... {len(pairs) - MAX_TABLE_PAIRS} more pairs in report.json")
    if missed:
        lines.append(f"* truth outside the interval ({missed} pair(s)): the estimate is biased, not noisy - usually "
                     "an under-trained flow (train longer; --lr-schedule cosine and --ema help) or too few "
                     "solver steps in `causal-delta jvp`.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from .. import dependence as D
    from .. import report
    from .._validation import check_positive_int

    c = from_namespace(CONFIG, args)
    path = Path(c.responses)
    if not path.is_file():
        raise FileNotFoundError(f"--responses file not found: {path}")
    if c.n_boot is not None:
        check_positive_int("--n-boot", c.n_boot)
    try:
        data = np.load(path)
        files = data.files
    except (ValueError, OSError) as exc:
        raise ValueError(f"--responses {path} is not a responses.npz with a 'responses' array: {exc}") from None
    if "format" in files:  # the sums of `jvp --moments-only`
        return _run_moments(c, path, data)
    c.n_boot = 1000 if c.n_boot is None else c.n_boot
    c.seed = 0 if c.seed is None else c.seed
    c.interval = c.interval or "bca"
    c.quantiles = [1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05] if c.quantiles is None else c.quantiles
    try:
        dy = torch.from_numpy(np.asarray(data["responses"], dtype=np.float64))
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"--responses {path} is not a responses.npz with a 'responses' array: {exc}") from None
    if dy.ndim != 2 or dy.shape[0] < 2:
        raise ValueError(f"--responses must hold a (n, m) array with n >= 2, got shape {tuple(dy.shape)}")
    m = dy.shape[1]
    names = [str(s) for s in data["names"]] if "names" in data.files else [str(i) for i in range(m)]
    groups = torch.from_numpy(data["sample_index"]) if "sample_index" in data.files else None
    n_samples = int(torch.unique(groups).numel()) if groups is not None else int(dy.shape[0])
    truth = np.asarray(data["truth_corr"], dtype=np.float64) if "truth_corr" in data.files else None
    if truth is not None and truth.shape != (m, m):
        truth = None  # a table written for other features: do not guess
    if groups is not None and bool((torch.bincount(groups) <= 1).all()):
        groups = None  # one probe per sample: the ordinary bootstrap
    out = Path(c.out)

    boot = D.bootstrap(dy, n_boot=c.n_boot, level=c.level, seed=c.seed, groups=groups,
                       interval=c.interval)
    centred = D.correlation(dy, centered=True)
    rep = _report(c, path, boot, names, n_responses=int(dy.shape[0]), n_boot=c.n_boot, seed=c.seed,
                  groups="samples" if groups is not None else "rows", centred=centred, n_samples=n_samples,
                  truth=truth)
    _heatmap(boot.estimate.numpy(), names, out / "corr.png", "uncentred JVP correlation")

    if c.condition_on is not None:
        k = _check_condition_on(c.condition_on, m)
        if c.threshold is None and c.quantile is None:
            c.quantile = 0.17
        cond = D.condition(dy, k, threshold=c.threshold, quantile=c.quantile, n_boot=c.n_boot,
                           seed=c.seed, level=c.level, interval=c.interval)
        pair = _sweep_pair(c.pair, m, k)
        for q in c.quantiles:
            if not 0 < q <= 1:
                raise ValueError(f"--quantiles must lie in (0, 1], got {q}")
        sweep = D.threshold_sweep(dy, k, pair, quantiles=c.quantiles, n_boot=c.n_boot, seed=c.seed,
                                  level=c.level, interval=c.interval)
        _conditioning_outputs(rep, cond, sweep, names, c.level, out)
    report.write_json(out / "report.json", rep)
    print(format_table(boot, names, n_samples, truth))
    print(f"wrote {out / 'report.json'} and {out / 'corr.png'}")
    return 0


def _report(c, path, boot, names, *, n_responses: int, n_boot: int, seed: int, groups: str, centred, n_samples: int,
            truth, source: str | None = None, bootstrap: str | None = None) -> dict:
    """The report's entries common to raw responses and streamed moments (``source`` and
    ``bootstrap`` describe the moments route)."""
    rep: dict = {"command": "dependence", "config": config_to_dict(c), "responses_file": str(path)}
    if source is not None:
        rep["source"] = source
    rep.update({
        "n_responses": n_responses,
        "features": names,
        "estimator": "Corr = D^-1/2 S D^-1/2, S = E[dy dy^T] (uncentred, the paper's)",
        "corr": boot.estimate,
        "ci_lower": boot.lower,
        "ci_upper": boot.upper,
        "se": boot.se,
        "level": c.level,
        "n_boot": n_boot,
        "interval": boot.interval,
    })
    if bootstrap is not None:
        rep["bootstrap"] = bootstrap
    rep.update({"seed": seed, "bootstrap_groups": groups, "corr_centred_pearson": centred,
                "n_samples": n_samples, "truth_corr": truth})
    return rep


def _check_condition_on(k: int, m: int) -> int:
    if not 0 <= k < m:
        raise ValueError(f"--condition-on must be a feature index in [0, {m}), got {k}")
    return k


def _sweep_pair(pair, m: int, k: int) -> tuple[int, int]:
    """``--pair``, or the first two features other than ``k``."""
    if pair is not None:
        return pair
    others = [i for i in range(m) if i != k]
    if len(others) < 2:
        raise ValueError("the sensitivity sweep needs two features other than --condition-on; give --pair")
    return others[0], others[1]


def _conditioning_outputs(rep: dict, cond, sweep, names, level: float, out) -> None:
    """The report's ``conditioning`` and ``sweep`` entries and ``sweep.png``."""
    from .. import report

    k, pair = cond.k, sweep.pair
    rep["conditioning"] = {
        "note": "conditioning on a small response of feature k, not a do-intervention",
        "k": k,
        "feature": names[k],
        "threshold": cond.threshold,
        "kept": cond.kept,
        "kept_fraction": cond.kept_fraction,
        "corr": cond.corr,
        "ci_lower": cond.ci.lower if cond.ci else None,
        "ci_upper": cond.ci.upper if cond.ci else None,
    }
    rep["sweep"] = sweep
    fig, ax = report.new_figure(figsize=(5, 3.5))
    x = sweep.kept_fraction.numpy()
    ax.fill_between(x, sweep.lower.numpy(), sweep.upper.numpy(), alpha=0.3)
    ax.plot(x, sweep.estimate.numpy(), "-o", ms=3)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel(f"kept fraction (smallest |Δy| of {names[k]})")
    ax.set_ylabel(f"Corr({names[pair[0]]}, {names[pair[1]]})")
    ax.set_title(f"conditioning sensitivity ({int(100 * level)} % bootstrap CI)", fontsize=9)
    report.save_figure(fig, out / "sweep.png")


def _quantile_threshold(acc, q: float, path) -> float:
    """The threshold accumulated for the pilot quantile ``q``."""
    import math

    held = acc.quantiles.tolist()
    for qq, t in zip(held, acc.thresholds.tolist()):
        if math.isclose(qq, q, rel_tol=1e-12):
            return t
    raise ValueError(f"{path} holds the quantiles {held}; got {q} (choose one, or rerun "
                     "`jvp --moments-only --quantiles ...`)")


def _run_moments(c: DependenceConfig, path, data) -> int:
    """``dependence`` on the sums of ``jvp --moments-only`` (:class:`~causal_delta.moments.MomentAccumulator`)."""
    from pathlib import Path

    import numpy as np

    from ..moments import MomentAccumulator

    acc = MomentAccumulator.from_state_dict({key: data[key] for key in data.files})
    if c.interval == "bca":
        raise ValueError("--interval bca needs the rows (its acceleration is a jackknife over them); "
                         f"{path} holds moments: use --interval percentile")
    if acc.n < 2:
        raise ValueError(f"--responses {path} holds the moments of {acc.n} rows; at least 2 needed")
    if acc.n_boot == 0:
        raise ValueError(f"--responses {path} holds no bootstrap replicates (written with --n-boot 0)")
    if c.n_boot is not None and c.n_boot > acc.n_boot:
        raise ValueError(f"--n-boot must be <= the {acc.n_boot} replicates in {path}, got {c.n_boot}")
    if c.seed is not None and c.seed != acc.seed:
        raise ValueError(f"--seed: the replicates in {path} were drawn with seed {acc.seed} by `jvp`, got {c.seed}")
    m = acc.m
    names = [str(s) for s in data["names"]] if "names" in data.files else [str(i) for i in range(m)]
    n_samples = int(data["n_samples"]) if "n_samples" in data.files else acc.n
    probes = int(data["probes_per_sample"]) if "probes_per_sample" in data.files else 1
    truth = np.asarray(data["truth_corr"], dtype=np.float64) if "truth_corr" in data.files else None
    if truth is not None and truth.shape != (m, m):
        truth = None
    out = Path(c.out)
    boot = acc.bootstrap(level=c.level, n_boot=c.n_boot)
    rep = _report(c, path, boot, names, n_responses=acc.n, n_boot=boot.n_boot, seed=acc.seed,
                  groups="samples" if probes > 1 else "rows", centred=acc.correlation(centered=True),
                  n_samples=n_samples, truth=truth,
                  source="moments (streamed sums of `jvp --moments-only`)",
                  bootstrap="online: Poisson(1) weight per sample, hashed from (seed, sample index)")
    _heatmap(boot.estimate.numpy(), names, out / "corr.png", "uncentred JVP correlation")
    if c.condition_on is not None:
        k = _check_condition_on(c.condition_on, m)
        if acc.k is None:
            raise ValueError(f"{path} holds no conditioning sums: run `jvp --moments-only --condition-on {k}`")
        if k != acc.k:
            raise ValueError(f"--condition-on must be {acc.k}, the feature {path} was conditioned on, got {k}")
        threshold = c.threshold if c.threshold is not None else _quantile_threshold(
            acc, 0.17 if c.quantile is None else c.quantile, path)
        cond = acc.condition(threshold, level=c.level, n_boot=c.n_boot)
        qs = acc.quantiles.tolist() if c.quantiles is None else c.quantiles
        sweep = acc.threshold_sweep(_sweep_pair(c.pair, m, k), thresholds=[_quantile_threshold(acc, q, path)
                                                                               for q in qs],
                                    level=c.level, n_boot=c.n_boot)
        _conditioning_outputs(rep, cond, sweep, names, c.level, out)
    from .. import report

    report.write_json(out / "report.json", rep)
    print(format_table(boot, names, n_samples, truth))
    print(f"wrote {out / 'report.json'} and {out / 'corr.png'}")
    return 0
