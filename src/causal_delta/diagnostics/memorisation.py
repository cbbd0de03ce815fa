r"""Does a flow reproduce its training pairs? Copy statistics, MMDs, gradient variance, Jacobian spectra.

Notation: training pairs ``(x0_i, x1_i)``, ``i = 1..N``; the flow map ``f`` (the ODE of the
learned velocity from ``t = 0`` to ``1``). Statistics (all distances Euclidean on flattened
events):

* **own-pair fraction** (needs the training sources): ``ŷ_i = f(x0_i)``; the fraction of ``i``
  whose nearest training target is its own, ``argmin_j ‖ŷ_i - x1_j‖ = i``; with it the distance
  to the own target ``‖ŷ_i - x1_i‖`` and to the nearest other, ``min_{j≠i} ‖ŷ_i - x1_j‖``
  (medians reported). A memorising flow has fraction ≈ 1 and own distance ≪ other distance;
  a flow that ignores the pairing has fraction ≈ 1/N.
* **nearest-copy ratio** (from fresh sources ``z ~ p_init``): for ``g = f(z)``,
  ``r = d_1(g) / d_2(g)``, the distances to the nearest and second-nearest training target
  (the usual copy-detection statistic for generators); ``r → 0`` for a copy. Reported: the
  median ``r``, the fraction with ``r < 1/3`` and ``d_1`` over the typical train-train spacing
  (the median nearest-neighbour distance among training targets). The same is reported for
  ``f(x0_i)``, with the own target included among the candidates.
* **real-data baseline** of the same ratio: held-out targets against the training targets
  when held-out data is given, else each training target against the *other* training targets
  (leave-one-out). A generator that does not copy scores like real data; a copying one has a
  much smaller median ratio and a much larger copy fraction than its baseline.
* **copy fraction** (the own-pair statistic of the *independent* coupling, where a generated
  point has no own pair): the fraction of ``f(z)``, ``z`` fresh, whose nearest training target
  is at most a third as far as the second nearest, ``d_1 / d_2 < 1/3`` (``fraction_below_1/3``
  of ``fresh``); its baseline is the same fraction for real data (above).
* **MMD** (:mod:`.mmd`, unbiased, Gaussian kernel): *memorisation* MMD² between ``f(x0_i)`` and
  the training targets; *generalisation* MMD² between ``f(z)`` (fresh) and held-out targets
  (when given); and ``f(z)`` vs training targets. Each as the unbiased U-statistic and the
  biased V-statistic (the U-statistic is negative for paired copies, see :mod:`.mmd`).
  Bandwidths are recorded.
* **gradient variance** ``V(t)`` on a grid (:mod:`.gradient_variance`) on the training pairs,
  or on fresh sources paired at random with the targets when no sources are given.
* **Jacobian view**: top singular values of ``J_f`` at training sources and at fresh sources
  (:func:`causal_delta.jvp.top_singular_directions`); a numerical rank counts the values above
  ``rank_rtol`` times the point's largest.

A trajectory that diverges (a non-finite end point, e.g. a memorising field driven off its lines
from a fresh source) is counted (``nonfinite``), never a copy, and left out of distances and MMDs.

Under ``torchrun`` the pushes of fresh and training sources through the flow are split over the
ranks (each integrates its block of rows, gathered on every rank); the statistics, the gradient
variance and the Jacobian spectra then run on every rank alike, and rank 0 writes the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._validation import check_positive_int
from .gradient_variance import gradient_variance
from .mmd import mmd2_biased, mmd2_unbiased

__all__ = ["MemorisationConfig", "own_pair_statistics", "nearest_copy_statistics", "real_copy_statistics",
           "jacobian_spectra", "diagnose_memorisation", "write_memorisation_report", "one_line_summary"]

COPY_RATIO = 1.0 / 3.0


@dataclass
class MemorisationConfig:
    """Settings of :func:`diagnose_memorisation`.

    Attributes:
        method, steps: ODE solver and its number of steps for ``f``.
        n_fresh: fresh sources to draw (0: as many as training pairs, at most 2048).
        t_grid: times of the gradient-variance curve.
        grad_samples: pairs used at each ``t`` (0: all, at most 1024).
        sigma: interpolant noise for the gradient variance (``None``: the checkpoint's).
        jacobian_points: points per group (training / fresh) for the spectra (0 skips them).
        jacobian_k: singular values per point (capped at the dimension).
        rank_rtol: relative threshold of the numerical rank.
        bandwidth: MMD kernel width (``None``: median heuristic per comparison).
        seed: seeds every draw (fresh sources, subsets, path noise, probes).
    """

    method: str = "rk4"
    steps: int = 50
    n_fresh: int = 0
    t_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.48, 0.5, 0.52, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
    grad_samples: int = 0
    sigma: float | None = None
    jacobian_points: int = 8
    jacobian_k: int = 5
    rank_rtol: float = 0.01
    bandwidth: float | None = None
    seed: int = 0


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _check_targets(name: str, x: Tensor, n_min: int = 2) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape (N, *event), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.shape[0] < n_min:
        raise ValueError(f"{name} needs at least {n_min} rows, got {x.shape[0]}")


def own_pair_statistics(generated: Tensor, targets: Tensor) -> dict[str, Any]:
    """Own-pair statistics of ``generated[i] = f(x0_i)`` against ``targets`` ``(N, *event)``."""
    _check_targets("targets", targets)
    if generated.shape != targets.shape:
        raise ValueError(f"generated must match targets row for row, got {tuple(generated.shape)} "
                         f"and {tuple(targets.shape)}")
    g = _flat(generated)
    finite = torch.isfinite(g).all(1)
    d = torch.cdist(g.nan_to_num(0.0, 0.0, 0.0), _flat(targets)).masked_fill(~finite[:, None], math.inf)
    n = d.shape[0]
    own = d.diagonal().clone()
    other = d.masked_fill(torch.eye(n, dtype=torch.bool), math.inf).min(1).values
    hit = (d.argmin(1) == torch.arange(n)) & finite  # a diverged trajectory copies nothing
    return {"fraction": float(hit.double().mean()), "n": n, "nonfinite": int((~finite).sum()),
            "chance": 1.0 / n, "median_own_distance": float(own.median()),
            "median_other_distance": float(other.median()),
            "median_own_over_other": float((own / other).median())}


def _spacing(targets: Tensor) -> float:
    d = torch.cdist(_flat(targets), _flat(targets))
    return float(d.fill_diagonal_(math.inf).min(1).values.median())


def _ratio_statistics(two: Tensor, spacing: float, n_given: int) -> dict[str, Any]:
    """Summary of the two nearest distances ``two`` ``(n, 2)`` (float64) of each point."""
    ratio = two[:, 0] / two[:, 1].clamp_min(torch.finfo(two.dtype).tiny)
    return {"median_ratio": float(ratio.median()), "fraction_below_1/3": float((ratio < COPY_RATIO).double().mean()),
            "median_nearest_distance": float(two[:, 0].median()), "train_spacing": spacing,
            "median_nearest_over_spacing": float(two[:, 0].median() / spacing), "n": two.shape[0],
            "nonfinite": n_given - two.shape[0]}


def nearest_copy_statistics(generated: Tensor, targets: Tensor, spacing: float | None = None) -> dict[str, Any]:
    """Nearest-copy ratio ``d_1 / d_2`` of each generated point against the training targets.

    ``d_1 ≤ d_2`` are the distances of a point to its nearest and second-nearest training
    target; reported: the median ratio, the copy fraction (ratio ``< 1/3``) and ``d_1`` over
    the training set's own spacing (see the module docstring).
    """
    _check_targets("targets", targets)
    g = _flat(generated)
    g = g[torch.isfinite(g).all(1)]
    if g.shape[0] == 0:
        return {"n": 0, "nonfinite": generated.shape[0], "median_ratio": math.nan}
    two = torch.cdist(g, _flat(targets)).topk(2, dim=1, largest=False).values
    return _ratio_statistics(two, _spacing(targets) if spacing is None else spacing, generated.shape[0])


def real_copy_statistics(targets: Tensor, heldout: Tensor | None = None) -> dict[str, Any]:
    """The real-data baseline of :func:`nearest_copy_statistics`: what a non-copying draw scores.

    With ``heldout`` ``(M, *event)``: held-out targets against the training targets. Without:
    each training target against the others (leave-one-out, ``N - 1`` candidates, needs
    ``N >= 3``). The entry ``"reference"`` says which.
    """
    _check_targets("targets", targets, n_min=3)
    if heldout is not None:
        return {**nearest_copy_statistics(heldout, targets), "reference": "held-out targets vs training targets"}
    d = torch.cdist(_flat(targets), _flat(targets)).fill_diagonal_(math.inf)
    two = d.topk(2, dim=1, largest=False).values
    return {**_ratio_statistics(two, float(two[:, 0].median()), targets.shape[0]),
            "reference": "each training target vs the other training targets (leave-one-out)"}


def jacobian_spectra(flow, points: Tensor, *, k: int, method: str, steps: int, seed: int = 0,
                     rank_rtol: float = 0.01, progress: bool = False, desc: str = "jacobian") -> dict[str, Any]:
    """Top-``k`` singular values of ``J_f`` at each point, ``(P, k)``, and their summary."""
    from ..jvp import top_singular_directions

    check_positive_int("k", k)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    it = range(points.shape[0])
    if progress:
        from .._progress import progress_bar as tqdm  # tqdm is optional

        it = tqdm(it, desc=desc, unit="point", leave=False, dynamic_ncols=True)
    for i in it:
        res = top_singular_directions(flow, points[i], k=k, method=method, steps=steps, generator=generator)
        rows.append(res.values.detach().to(torch.float64))
    s = torch.stack(rows)
    rank = (s >= rank_rtol * s[:, :1]).sum(1).double()
    return {"values": s.tolist(), "mean": s.mean(0).tolist(), "mean_rank": float(rank.mean()), "k": k,
            "rank_rtol": rank_rtol, "n": s.shape[0]}


def _mmd(x: Tensor, y: Tensor, bandwidth: float | None, what: str) -> dict[str, Any]:
    """MMD² on the finite rows of ``x`` (a diverged trajectory is counted, not compared)."""
    keep = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    entry: dict[str, Any] = {"what": what, "nonfinite": int((~keep).sum())}
    if int(keep.sum()) < 2:
        return {**entry, "mmd2": math.nan, "mmd2_biased": math.nan, "bandwidth": math.nan}
    v, h = mmd2_unbiased(x[keep], y, bandwidth)
    return {**entry, "mmd2": v, "mmd2_biased": mmd2_biased(x[keep], y, h), "bandwidth": h}


def _sample_rows(flow, x0: Tensor, *, method: str, steps: int, progress: bool) -> Tensor:
    """``f(x0)`` ``(n, *event)`` by :func:`causal_delta.solvers.sample`, split over ranks under torchrun.

    Each rank integrates its contiguous block of the rows (:func:`causal_delta.distributed.map_rows`)
    and every rank gets all of them back, in row order, on ``x0``'s device; row ``i`` depends on
    ``x0[i]`` alone, so the statistics do not depend on the number of processes. In one process
    (or with fewer rows than processes, which every rank sees alike) this is ``sample`` itself.
    """
    from .. import distributed as dist
    from ..solvers import sample

    if dist.world_size() == 1:
        return sample(flow, x0, method=method, steps=steps, progress=progress)

    def block(rows: range) -> Tensor:  # gathered on the CPU: gloo does not take CUDA tensors
        return sample(flow, x0[rows.start:rows.stop], method=method, steps=steps, progress=progress).cpu()

    return dist.map_rows(block, x0.shape[0]).to(x0.device)


def _subset(n: int, m: int, generator: torch.Generator) -> Tensor:
    return torch.arange(n) if m <= 0 or m >= n else torch.randperm(n, generator=generator)[:m]


def diagnose_memorisation(
    flow,
    targets: Tensor,
    *,
    sources: Tensor | None = None,
    heldout: Tensor | None = None,
    fresh_source: Callable[..., Tensor] | None = None,
    config: MemorisationConfig | None = None,
    train_sigma: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """All the statistics of this module for a flow and its training set.

    Args:
        flow: velocity field ``flow(x, t)`` (e.g. from :func:`causal_delta.checkpoint.load_flow`).
        targets: training targets ``x1``, ``(N, *event)``.
        sources: the training sources ``x0`` paired row by row with ``targets`` (fixed coupling),
            or ``None`` (then no own-pair statistics, and the gradient variance pairs fresh
            sources with the targets).
        heldout: held-out targets for the generalisation MMD, or ``None``.
        fresh_source: ``sampler(n, generator) -> (n, *event)``; default ``N(0, I)``.
        train_sigma: the run's interpolant noise (used when ``config.sigma`` is ``None``).

    Returns:
        a JSON-ready dict (see the module docstring for each entry).
    """
    from ..paths import GaussianSource

    cfg = config or MemorisationConfig()
    _check_targets("targets", targets)
    event = tuple(targets.shape[1:])
    if sources is not None and tuple(sources.shape) != tuple(targets.shape):
        raise ValueError(f"sources must match targets row for row, got {tuple(sources.shape)} and "
                         f"{tuple(targets.shape)}")
    if heldout is not None:
        _check_targets("heldout", heldout)
        if tuple(heldout.shape[1:]) != event:
            raise ValueError(f"heldout has event shape {tuple(heldout.shape[1:])}, the training data {event}")
    gen = torch.Generator().manual_seed(cfg.seed)
    fresh_source = fresh_source or GaussianSource(event)
    n = targets.shape[0]
    n_fresh = cfg.n_fresh or min(n, 2048)
    fresh = fresh_source(n_fresh, gen).to(device=targets.device, dtype=torch.float32)
    if tuple(fresh.shape[1:]) != event:
        raise ValueError(f"fresh sources have event shape {tuple(fresh.shape[1:])}, the training data {event}")
    out: dict[str, Any] = {"n_train": n, "n_fresh": n_fresh, "event_shape": list(event),
                           "config": asdict(cfg), "copy_ratio_threshold": COPY_RATIO}
    spacing = _spacing(targets)
    gen_fresh = _sample_rows(flow, fresh, method=cfg.method, steps=cfg.steps, progress=progress)
    out["fresh"] = nearest_copy_statistics(gen_fresh, targets, spacing)
    if n >= 3:
        out["real"] = real_copy_statistics(targets, heldout)
    mmd: dict[str, Any] = {"kernel": "gaussian exp(-|a-b|^2 / (2 h^2))",
                           "bandwidth_rule": "given" if cfg.bandwidth is not None else "median heuristic (pooled)"}
    mmd["fresh_vs_train"] = _mmd(gen_fresh, targets, cfg.bandwidth, "f(fresh sources) vs training targets")
    if sources is not None:
        gen_train = _sample_rows(flow, sources.to(torch.float32), method=cfg.method, steps=cfg.steps,
                                 progress=progress)
        out["own_pair"] = own_pair_statistics(gen_train, targets)
        out["train_sources"] = nearest_copy_statistics(gen_train, targets, spacing)
        mmd["memorisation"] = _mmd(gen_train, targets, cfg.bandwidth, "f(training sources) vs training targets")
    if heldout is not None:
        mmd["generalisation"] = _mmd(gen_fresh, heldout, cfg.bandwidth, "f(fresh sources) vs held-out targets")
    out["mmd"] = mmd

    sigma = train_sigma if cfg.sigma is None else cfg.sigma
    idx = _subset(n, cfg.grad_samples or min(n, 1024), gen)
    x1 = targets[idx].to(torch.float32)
    x0 = (sources[idx].to(torch.float32) if sources is not None
          else fresh_source(len(idx), gen).to(device=targets.device, dtype=torch.float32))
    gv = gradient_variance(flow, x0, x1, list(cfg.t_grid), sigma=sigma, generator=gen, progress=progress)
    out["gradient_variance"] = {**gv.to_dict(), "pairs": "training pairs" if sources is not None else
                                "fresh sources paired at random with training targets"}

    if cfg.jacobian_points > 0:
        k = min(cfg.jacobian_k, math.prod(event))
        jac = {}
        groups = [("fresh", fresh)] + ([("train", sources.to(torch.float32))] if sources is not None else [])
        for name, pts in groups:
            sel = pts[_subset(pts.shape[0], cfg.jacobian_points, gen)]
            jac[name] = jacobian_spectra(flow, sel, k=k, method=cfg.method, steps=cfg.steps, seed=cfg.seed,
                                         rank_rtol=cfg.rank_rtol, progress=progress, desc=f"jacobian ({name})")
        out["jacobian"] = jac
    return out


def one_line_summary(report: dict[str, Any]) -> str:
    """``own-pair / nearest-copy ratio / Jacobian rank`` of a :func:`diagnose_memorisation` report, one line.

    * **own-pair**: with training sources (fixed coupling), the own-pair fraction; with the
      independent coupling (no sources), the copy fraction — the share of fresh samples
      ``f(z)`` whose nearest training target is at most a third as far as the second nearest
      (``d_1 / d_2 < 1/3``) — beside the same share for real data (``report["real"]``);
    * **nearest-copy ratio**: the median ``d_1 / d_2`` of fresh samples, beside real data's;
    * **Jacobian rank**: the mean numerical rank of ``J_f`` among its top ``k`` singular values
      at fresh sources (values above ``rank_rtol`` times the largest).
    """
    real = report.get("real")
    fresh = report["fresh"]
    own = report.get("own_pair", {}).get("fraction")
    if own is not None:
        first = f"own-pair {own:.1%}"
    else:
        first = f"own-pair (copies, d1/d2 < 1/3) {fresh['fraction_below_1/3']:.1%}"
        if real is not None:
            first += f" (real data {real['fraction_below_1/3']:.1%})"
    ratio = f"nearest-copy ratio (fresh, median) {fresh['median_ratio']:.3f}"
    if real is not None:
        ratio += f" (real data {real['median_ratio']:.3f})"
    jac = report.get("jacobian", {}).get("fresh")
    rank = (f"Jacobian rank (fresh, of top {jac['k']}) {jac['mean_rank']:.1f}" if jac is not None
            else "Jacobian rank n/a")
    return " / ".join([first, ratio, rank])


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def write_memorisation_report(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write ``report.json``, ``gradient_variance.png``, ``jacobian_spectrum.png`` and ``summary.md``."""
    from ..report import new_figure, save_figure, write_json, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    gv = report["gradient_variance"]
    fig, ax = new_figure(figsize=(5, 3.5))
    ax.semilogy(gv["t"], [max(v, 1e-30) for v in gv["trace"]], "o-")
    ax.set_xlabel("t")
    ax.set_ylabel("tr Cov[per-sample gradient]")
    ax.set_title(f"gradient variance (σ = {gv['sigma']:g}, n = {gv['n']})")
    save_figure(fig, out / "gradient_variance.png")
    figures.append("gradient_variance.png")
    if "jacobian" in report:
        fig, ax = new_figure(figsize=(5, 3.5))
        for name, jac in report["jacobian"].items():
            ax.semilogy(range(1, jac["k"] + 1), jac["mean"], "o-", label=f"{name} sources (n = {jac['n']})")
        ax.set_xlabel("index i")
        ax.set_ylabel("mean singular value s_i of J_f")
        ax.legend()
        save_figure(fig, out / "jacobian_spectrum.png")
        figures.append("jacobian_spectrum.png")
    report = {**report, "figures": figures}
    write_json(out / "report.json", report)
    own = report.get("own_pair", {})
    mmd = report["mmd"]
    lines = ["# Memorisation diagnostic", "", one_line_summary(report), "",
             "| statistic | value |", "| --- | --- |"]
    if own:
        lines += [f"| own-pair fraction (chance {_fmt(own.get('chance'))}) | {_fmt(own.get('fraction'))} |",
                  f"| median distance to own / nearest other target | {_fmt(own.get('median_own_distance'))} / "
                  f"{_fmt(own.get('median_other_distance'))} |"]
    else:
        lines.append("| own-pair: no training sources (independent coupling); the copy fraction below stands in | |")
    lines += [f"| nearest-copy ratio d1/d2, fresh sources (median; fraction < 1/3) | "
             f"{_fmt(report['fresh']['median_ratio'])}; {_fmt(report['fresh']['fraction_below_1/3'])} |",
             "| nearest distance / train spacing, fresh (median) | "
             f"{_fmt(report['fresh']['median_nearest_over_spacing'])} |"]
    if "real" in report:
        real = report["real"]
        lines.append(f"| real-data baseline d1/d2 (median; fraction < 1/3): {real['reference']} | "
                     f"{_fmt(real['median_ratio'])}; {_fmt(real['fraction_below_1/3'])} |")
    for key in ("memorisation", "generalisation", "fresh_vs_train"):
        if key in mmd:
            lines.append(f"| MMD² {key}, unbiased; biased V-statistic (h = {mmd[key]['bandwidth']:.4g}) | "
                         f"{_fmt(mmd[key]['mmd2'])}; {_fmt(mmd[key]['mmd2_biased'])} |")
    i_max = max(range(len(gv["t"])), key=lambda i: gv["trace"][i])
    lines.append(f"| gradient variance: max at t = {gv['t'][i_max]:g} | {_fmt(gv['trace'][i_max])} |")
    for name, jac in report.get("jacobian", {}).items():
        lines.append(f"| J_f top-{jac['k']} singular values, {name} (mean) | "
                     f"{', '.join(f'{v:.3g}' for v in jac['mean'])}; rank {jac['mean_rank']:.1f} |")
    diverged = {k: report[k].get("nonfinite", 0) for k in ("fresh", "train_sources") if k in report}
    if any(diverged.values()):
        lines += ["", "Diverged trajectories (non-finite end points, left out): "
                  + ", ".join(f"{k} {v}" for k, v in diverged.items()) + "."]
    lines += ["", f"MMD kernel: {mmd['kernel']}, bandwidth: {mmd['bandwidth_rule']}.",
              "Figures: " + ", ".join(f"`{f}`" for f in figures)]
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    return figures
