r"""Memorisation with a fixed coupling and what path noise does to it (arXiv 2510.18118).

Three settings at CPU scale, every flow trained with :func:`causal_delta.training.train`
(``coupling="fixed"``: fixed pairs ``(x0_i, x1_i)``; ``sigma``: the stochastic interpolant):

(a) **crossing lines**, ``d = 2``: ``x0 ~ N(0, I)``, ``x1 = R_180 x0 + 5 = 5 - x0``, so every line
    passes through ``(2.5, 2.5)`` at ``t = ½`` with a different velocity ``5 - 2 x0``: no field
    fits them there. Reported: the gradient variance ``V(t)`` (:mod:`causal_delta.diagnostics.gradient_variance`)
    for each σ, and its peak ratios ``V(½) / V(0.45)`` and ``V(½) / V(0.55)``.
(b) **random pairs**, ``d = 50``: ``N`` pairs ``x0 ~ N(0, I)``, ``x1 ~ N(5, I)`` paired at random.
    Reported for each σ of a sweep and for the independent coupling (``x0`` fresh at every step):
    own-pair fraction of ``f(x0_i)``, nearest-copy ratio from fresh sources, memorisation MMD²
    (``f(x0_i)`` vs training targets) and generalisation MMD² (``f(z)``, ``z`` fresh, vs
    held-out ``N(5, I)`` draws); the *break point* is the smallest σ of the sweep with own-pair
    fraction below ½ (the transition is plotted).
(c) **Gaussian mixture**, ``d = 3`` and ``d = 50``: fixed random pairs ``N(0, I)`` → mixture,
    memorisation and generalisation MMD² for σ = 0 and 0.05 next to the paper's numbers.

MMDs are Gaussian-kernel U-statistics (unbiased; negative for paired copies) and V-statistics
(biased, ≥ 0, ≈ 0 for copies), with the median-heuristic bandwidth of each comparison
(recorded); the paper's kernel and bandwidth are not known here, so the comparison
is of the direction (σ = 0.05 vs 0), not of the values.

Under ``torchrun`` rank 0 writes each flow's pairs file, then every flow trains with DDP (each
rank keeps its rows of the same global batch of pairs, so every rank holds the same flow); the
diagnostics (gradient variance, :func:`causal_delta.diagnostics.diagnose_memorisation`) are
called on every rank, and rank 0 writes. DDP takes the steps of one process to float rounding,
which the flows that cannot fit or that memorise amplify: at the quick size 2 processes' numbers
differ from 1 process's by up to 2 % for the crossing lines at σ ≤ 0.05 (gradient variance),
2e-4 for the random pairs at σ = 0, < 1e-5 elsewhere; the own-pair fractions are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from . import _common as C

__all__ = ["MemorisationExperimentConfig", "run_memorisation", "train_pairs", "crossing_pairs", "random_pairs",
           "mixture_pairs", "run_crossing", "run_random_pairs", "run_mixture", "PUBLISHED"]

PUBLISHED = {
    "source": "arXiv 2510.18118 via a secondary summary; kernel and bandwidth unknown",
    "mixture_d3": {"generalisation_mmd": {"0": 0.0034, "0.05": 0.0018}, "memorisation_mmd": {"0": 1.76e-6, "0.05": 3.1e-5}},
    "mixture_d50": {"generalisation_mmd": {"0": 0.0021, "0.05": 0.0020}, "memorisation_mmd": {"0": 9.1e-6, "0.05": 6.1e-5}},
}


@dataclass
class MemorisationExperimentConfig(C.SizedConfig):
    """Settings (defaults: the full size, ≤ 20 min on 2 CPU cores).

    Attributes:
        hidden, depth, time_embed: MLP of every flow (``mlp-small`` preset with these overrides).
        steps, batch_size, lr: training of every flow (AdamW, cosine schedule); (a) trains for
            ``crossing_steps`` (the steep field near t = ½ takes longer to fit).
        crossing_pairs, crossing_sigmas, t_grid: setting (a).
        pairs_dim, pairs_n, pairs_shift, pairs_sigmas, pairs_independent, heldout: setting (b)
            (``pairs_sigmas`` is the transition sweep; the independent coupling is added when
            ``pairs_independent``; ``heldout`` is also the held-out size of (c)).
        mixture_dims, mixture_n, mixture_components, mixture_sigmas: setting (c).
        solver_steps: RK4 steps of the flow map.
        seed: random seed.
    """

    QUICK: ClassVar[dict[str, Any]] = {"hidden": 128, "time_embed": 32, "steps": 400, "crossing_steps": 400, "crossing_pairs": 64, "pairs_n": 32,
                                       "pairs_sigmas": (0.0, 0.5, 2.0), "mixture_dims": (3,), "mixture_n": 64,
                                       "heldout": 64, "t_grid": (0.3, 0.45, 0.5, 0.55, 0.7), "solver_steps": 10}

    hidden: int = 256
    depth: int = 3
    time_embed: int = 64
    steps: int = 1500
    crossing_steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-3
    crossing_pairs: int = 256
    crossing_sigmas: tuple[float, ...] = (0.0, 0.05, 0.5)
    t_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.48, 0.5, 0.52, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
    pairs_dim: int = 50
    pairs_n: int = 256
    pairs_shift: float = 5.0
    pairs_sigmas: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0)
    pairs_independent: bool = True
    heldout: int = 512
    mixture_dims: tuple[int, ...] = (3, 50)
    mixture_n: int = 512
    mixture_components: int = 4
    mixture_sigmas: tuple[float, ...] = (0.0, 0.05)
    solver_steps: int = 50
    seed: int = 0


def crossing_pairs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0 ~ N(0, I_2)``, ``x1 = R_180 x0 + 5 = 5 - x0`` (every line crosses (2.5, 2.5) at t = ½)."""
    x0 = torch.randn(n, 2, generator=generator)
    return x0, 5.0 - x0


def random_pairs(n: int, dim: int, shift: float, generator: torch.Generator):
    """``n`` pairs ``x0 ~ N(0, I)``, ``x1 ~ N(shift, I)`` drawn independently (a random fixed pairing)."""
    return torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator) + shift


def _mixture(dim: int, k: int, generator: torch.Generator):
    """Equal-weight isotropic mixture: means ``~ N(0, 9 I)``, component std 0.5."""
    means = 3.0 * torch.randn(k, dim, generator=generator)

    def draw(n: int) -> torch.Tensor:
        comp = torch.randint(0, k, (n,), generator=generator)
        return means[comp] + 0.5 * torch.randn(n, dim, generator=generator)

    return draw, means


def mixture_pairs(n: int, dim: int, k: int, generator: torch.Generator, heldout: int):
    """Fixed random pairs ``N(0, I)`` → mixture, plus ``heldout`` fresh mixture draws."""
    draw, _ = _mixture(dim, k, generator)
    return torch.randn(n, dim, generator=generator), draw(n), draw(heldout)


def train_pairs(out: Path, x0: torch.Tensor | None, x1: torch.Tensor, *, sigma: float, config, name: str,
                progress: bool = True, steps: int | None = None):
    """Train a flow on fixed pairs (``x0`` given) or with the independent coupling (``x0=None``)."""
    from ..datasets.pairs import save_pairs
    from ..training import TrainConfig, train

    data_dir = C.prepare_output(out / "data")
    # Rank 0 writes the data file that every rank's training reads (on_main: the others wait for it).
    if x0 is None:
        path = data_dir / f"{name}_targets.npy"
        C.on_main(lambda: np.save(path, x1.numpy()))
        coupling = "independent"
    else:
        path = C.on_main(lambda: save_pairs(data_dir / f"{name}_pairs.npz", x0, x1))
        coupling = "fixed"
    cfg = TrainConfig(data=str(path), coupling=coupling, preset="mlp-small",
                      model_args={"hidden": config.hidden, "depth": config.depth, "time_embed": config.time_embed}, steps=steps or config.steps,
                      batch_size=config.batch_size, lr=config.lr, lr_schedule="cosine", sigma=sigma,
                      seed=config.seed, out_dir=str(out / "train" / name), device="cpu")
    result = train(cfg, progress=progress)
    return result.flow.eval(), result.losses


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def run_crossing(config, out: Path, timer: C.Timer, *, progress: bool = True) -> dict[str, Any]:
    """Setting (a): gradient variance on a grid of t for each σ."""
    from ..diagnostics import gradient_variance

    with C.seeded(config.seed) as gen:
        x0, x1 = crossing_pairs(config.crossing_pairs, gen)
    rows = {}
    for sigma in config.crossing_sigmas:
        with timer("train"):
            flow, losses = train_pairs(out, x0, x1, sigma=sigma, config=config, name=f"crossing_s{sigma:g}",
                                       progress=progress, steps=config.crossing_steps)
        with timer("gradient_variance"):
            gv = gradient_variance(flow, x0, x1, list(config.t_grid), sigma=sigma,
                                   generator=torch.Generator().manual_seed(config.seed + 1))
        tr = dict(zip([round(t, 6) for t in gv.t.tolist()], gv.trace.tolist()))
        rows[f"{sigma:g}"] = {**gv.to_dict(), "final_loss": float(np.mean(losses[-50:])),
                              "peak_over_0.45": _ratio(tr.get(0.5, math.nan), tr.get(0.45, math.nan)),
                              "peak_over_0.55": _ratio(tr.get(0.5, math.nan), tr.get(0.55, math.nan))}
    return rows


def _memorisation_stats(flow, x0, x1, heldout, config, *, jacobian_points: int = 0) -> dict[str, Any]:
    from ..diagnostics import MemorisationConfig, diagnose_memorisation

    cfg = MemorisationConfig(steps=config.solver_steps, t_grid=(0.5,), grad_samples=min(len(x0), 256),
                             jacobian_points=jacobian_points, seed=config.seed, n_fresh=len(heldout))
    rep = diagnose_memorisation(flow, x1, sources=x0, heldout=heldout, config=cfg)
    return {"own_pair": rep["own_pair"]["fraction"], "own_over_other": rep["own_pair"]["median_own_over_other"],
            "copy_ratio_fresh": rep["fresh"]["median_ratio"], "diverged_fresh": rep["fresh"]["nonfinite"],
            "memorisation_mmd2": rep["mmd"]["memorisation"]["mmd2"],
            "memorisation_mmd2_biased": rep["mmd"]["memorisation"]["mmd2_biased"],
            "generalisation_mmd2": rep["mmd"]["generalisation"]["mmd2"],
            "generalisation_mmd2_biased": rep["mmd"]["generalisation"]["mmd2_biased"],
            "bandwidths": [rep["mmd"]["memorisation"]["bandwidth"], rep["mmd"]["generalisation"]["bandwidth"]],
            "gradient_variance_t0.5": rep["gradient_variance"]["trace"][0]}


def run_random_pairs(config, out: Path, timer: C.Timer, *, progress: bool = True) -> dict[str, Any]:
    """Setting (b): own-pair fraction and MMDs along a σ sweep and for the independent coupling."""
    with C.seeded(config.seed + 2) as gen:
        x0, x1 = random_pairs(config.pairs_n, config.pairs_dim, config.pairs_shift, gen)
        heldout = torch.randn(config.heldout, config.pairs_dim, generator=gen) + config.pairs_shift
    rows: dict[str, Any] = {}
    for sigma in [*config.pairs_sigmas, *(["independent"] if config.pairs_independent else [])]:
        name = "independent" if sigma == "independent" else f"{sigma:g}"
        with timer("train"):
            flow, losses = train_pairs(out, None if sigma == "independent" else x0, x1,
                                       sigma=0.0 if sigma == "independent" else sigma, config=config,
                                       name=f"pairs_{name}", progress=progress)
        with timer("diagnose"):
            rows[name] = {**_memorisation_stats(flow, x0, x1, heldout, config),
                          "final_loss": float(np.mean(losses[-50:]))}
    # σ at which memorisation breaks: defined only when the smallest σ of the sweep memorises
    first = rows[f"{min(config.pairs_sigmas):g}"]["own_pair"] >= 0.5
    swept = [s for s in config.pairs_sigmas if rows[f"{s:g}"]["own_pair"] < 0.5]
    return {"rows": rows, "break_sigma": min(swept) if swept and first else None,
            "memorised_at_smallest_sigma": first,
            "spacing": {"median_nn_x0": _nn(x0), "median_nn_x1": _nn(x1),
                        "median_nn_midpoints": _nn(0.5 * (x0 + x1))}}


def _nn(x: torch.Tensor) -> float:
    d = torch.cdist(x.double(), x.double()).fill_diagonal_(math.inf)
    return float(d.min(1).values.median())


def run_mixture(config, out: Path, timer: C.Timer, *, progress: bool = True) -> dict[str, Any]:
    """Setting (c): memorisation and generalisation MMD² on a Gaussian mixture, σ = 0 and 0.05."""
    rows: dict[str, Any] = {}
    for dim in config.mixture_dims:
        with C.seeded(config.seed + 3 + dim) as gen:
            x0, x1, heldout = mixture_pairs(config.mixture_n, dim, config.mixture_components, gen, config.heldout)
        for sigma in config.mixture_sigmas:
            with timer("train"):
                flow, losses = train_pairs(out, x0, x1, sigma=sigma, config=config,
                                           name=f"mixture_d{dim}_s{sigma:g}", progress=progress)
            with timer("diagnose"):
                rows[f"d{dim}_s{sigma:g}"] = {"dim": dim, "sigma": sigma,
                                              **_memorisation_stats(flow, x0, x1, heldout, config),
                                              "final_loss": float(np.mean(losses[-50:]))}
    return rows


def _figures(out: Path, crossing: dict, pairs: dict) -> list[str]:
    from ..report import new_figure, save_figure

    fig, ax = new_figure(figsize=(5.5, 3.8))
    for sigma, row in crossing.items():
        ax.semilogy(row["t"], [max(v, 1e-30) for v in row["trace"]], "o-", ms=3, label=f"σ = {sigma}")
    ax.set(xlabel="t", ylabel="tr Cov[per-sample gradient]", title="(a) crossing lines, d = 2")
    ax.legend()
    save_figure(fig, out / "crossing_gradient_variance.png")
    fig, ax = new_figure(figsize=(5.5, 3.8))
    rows = pairs["rows"]
    sig = [float(k) for k in rows if k != "independent"]
    own = [rows[f"{s:g}"]["own_pair"] for s in sig]
    xs = [max(s, 1e-3) for s in sig]  # σ = 0 drawn at 1e-3 on the log axis
    ax.semilogx(xs, own, "o-", label="fixed coupling")
    if "independent" in rows:
        ax.axhline(rows["independent"]["own_pair"], color="C1", ls="--", label="independent coupling")
    ax.set(xlabel="σ (σ = 0 drawn at 1e-3)", ylabel="own-pair fraction", ylim=(-0.03, 1.03),
           title="(b) memorisation vs path noise, d = 50")
    ax.legend()
    save_figure(fig, out / "pairs_transition.png")
    return ["crossing_gradient_variance.png", "pairs_transition.png"]


def run_memorisation(config: MemorisationExperimentConfig, out_dir, *, progress: bool = True) -> dict[str, Any]:
    """Run (a), (b) and (c); write ``report.json``, two PNGs and ``summary.md`` into ``out_dir``."""
    out = C.prepare_output(out_dir)
    timer = C.Timer()
    crossing = run_crossing(config, out, timer, progress=progress)
    pairs = run_random_pairs(config, out, timer, progress=progress)
    mixture = run_mixture(config, out, timer, progress=progress)
    with timer("figures"):
        figures = _figures(out, crossing, pairs)
    s0 = crossing.get("0", {})
    headline = {"crossing_peak_over_0.45": s0.get("peak_over_0.45"), "crossing_peak_over_0.55": s0.get("peak_over_0.55"),
                "own_pair_sigma0": pairs["rows"].get("0", {}).get("own_pair"),
                "own_pair_independent": pairs["rows"].get("independent", {}).get("own_pair"),
                "break_sigma": pairs["break_sigma"]}
    results = {"crossing": crossing, "random_pairs": pairs, "mixture": mixture, "headline": headline}
    lines = ["## (a) crossing lines (d = 2): gradient variance V(t)", "",
             C.markdown_table(["σ", "V(0.45)", "V(0.5)", "V(0.55)", "V(½)/V(0.45)", "V(½)/V(0.55)", "final loss"],
                              [[s, *[dict(zip([round(t, 6) for t in r["t"]], r["trace"])).get(t) for t in (0.45, 0.5, 0.55)],
                                r["peak_over_0.45"], r["peak_over_0.55"], r["final_loss"]] for s, r in crossing.items()]),
             "", f"## (b) {config.pairs_n} random pairs N(0, I) → N({config.pairs_shift:g}, I), d = {config.pairs_dim}", "",
             C.markdown_table(["σ", "own-pair", "own/other dist", "copy ratio (fresh)", "memorisation MMD² (U; V)",
                               "generalisation MMD² (U; V)", "V(½)", "final loss"],
                              [[s, r["own_pair"], r["own_over_other"], r["copy_ratio_fresh"], _uv(r, "memorisation"),
                                _uv(r, "generalisation"), r["gradient_variance_t0.5"], r["final_loss"]]
                               for s, r in pairs["rows"].items()]),
             "", (f"Memorisation breaks (own-pair < ½) first at σ = {C.fmt(pairs['break_sigma'])} of the sweep; "
                  if pairs["memorised_at_smallest_sigma"] else "No memorisation even at the smallest σ (too little "
                  "training for these pairs: the quick size shows the plumbing, not the finding); ")
             + f"median nearest-neighbour distance of the sources {pairs['spacing']['median_nn_x0']:.3g}, of the "
             f"line midpoints {pairs['spacing']['median_nn_midpoints']:.3g} (noise σ·√d = σ·{math.sqrt(config.pairs_dim):.3g}).",
             "", "## (c) Gaussian mixture: MMD² (ours: median-heuristic Gaussian kernel; paper: kernel unknown)", "",
             C.markdown_table(["setting", "memorisation MMD² (U; V)", "paper", "generalisation MMD² (U; V)", "paper",
                               "own-pair"],
                              [[k, _uv(r, "memorisation"), _paper(r, "memorisation_mmd"), _uv(r, "generalisation"),
                                _paper(r, "generalisation_mmd"), r["own_pair"]] for k, r in mixture.items()])]
    return C.write_report(out, experiment="memorisation", paper="arXiv 2510.18118", config=config,
                          quick=config.steps < MemorisationExperimentConfig.steps, results=results,
                          published=PUBLISHED, timer=timer, figures=figures, summary="\n".join(lines) + "\n")


def _uv(row: dict, what: str) -> str:
    return f"{C.fmt(row[f'{what}_mmd2'])}; {C.fmt(row[f'{what}_mmd2_biased'])}"


def _paper(row: dict, key: str):
    entry = PUBLISHED.get(f"mixture_d{row['dim']}", {}).get(key, {})
    return entry.get(f"{row['sigma']:g}", "n/a")
