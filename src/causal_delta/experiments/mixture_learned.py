r"""Table 4 / Figure 2 with a learned flow: the analytic mixture Jacobian against a trained MLP.

The closed-form part is :func:`causal_delta.experiments.mixture.run_mixture` (analytic drift
and Jacobian of the flow onto a 3-component 2-D Gaussian mixture, Eq. 2-4; numerical and
intervention Jacobians against it). This module adds what the paper's Table 4 could not check
with a formula: a velocity field *learned* by flow matching on samples of the same mixture.

At each time ``t`` of ``times`` (paper: 0, .25, .5, .75, .99) it draws ``x_t = (1-t) x0 + t x1``
(``x0 ~ N(μ0, Σ0)``, ``x1`` from the mixture) and compares the learned Jacobian
``∂v_θ/∂x (x_t, t)`` (forward mode, one JVP per coordinate) with the analytic ``∇v`` of Eq. 4:

- ``jacobian_gap_mean``: mean Frobenius norm ``‖∇v_θ - ∇v‖_F`` over the points (the measure
  of Table 4), and ``jacobian_gap_relative`` = that / mean ``‖∇v‖_F``;
- ``velocity_rmse``: root-mean-square ``|v_θ - v|`` at points drawn the same way.

The learned Jacobian is passed to :func:`run_mixture` as one more estimator
(``learned_flow``), so it is scored on exactly the points of the closed-form table; that
report (with its figures) is written to ``out_dir/closed_form`` and embedded under
``results["closed_form"]``. The mixture is the paper's (:data:`mixture.PAPER_MIXTURE`); the
flow is trained on fresh draws of it from ``x0 ~ N(0, I)`` (its base).

Under ``torchrun`` the flow trains with DDP, each rank computes the learned Jacobians and the
generated samples of its block of the points (the closed-form estimators, cheap, run on every
rank) and rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from . import _common as C
from ._checks import choose_solver

__all__ = ["MixtureLearnedConfig", "run_mixture_learned", "learned_velocity_jacobian", "PUBLISHED"]

PUBLISHED = {
    "times": [0.0, 0.25, 0.5, 0.75, 0.99],
    "numerical_vs_analytical": [0.058, 0.289, 0.219, 0.251, 0.179],
    "intervention_vs_analytical": ["<0.001", 0.284, 0.300, 0.039, "<0.001"],
}


@dataclass
class MixtureLearnedConfig(C.SizedConfig):
    """Settings of the mixture experiment with a learned flow.

    Attributes:
        times: times at which Jacobians are compared.
        n_points: points ``x_t`` per time.
        preset, overrides: model preset and ``((name, value), ...)`` overrides.
        lr, train_steps, batch_size: AdamW training on fresh mixture draws.
        method, solver_steps: ODE solver for the generated samples. ``"auto"`` (default) chooses
            solver and steps with :func:`causal_delta.discretisation.choose_steps` (correlation of
            the generator's JVP responses ``J z`` on the sampled ``x0``, steps doubled from
            ``solver_steps``); a solver name uses ``solver_steps`` as given. The check is reported.
        check_samples: paired samples recomputed at half the steps by the check.
        seed: random seed.
        size: ``"full"`` or ``"quick"``.
    """

    times: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.99)
    n_points: int = 2000
    preset: str = "mlp-small"
    overrides: tuple[tuple[str, Any], ...] = (("hidden", 256), ("depth", 4))
    lr: float = 1e-3
    train_steps: int = 5000
    batch_size: int = 512
    method: str = "auto"
    solver_steps: int = 4
    check_samples: int = 256
    seed: int = 0
    size: str = "full"

    # CI size: a 3x128 MLP trained 2,000 steps, 500 points per time.
    QUICK: ClassVar[dict[str, Any]] = dict(n_points=500, overrides=(), train_steps=2000, batch_size=256, size="quick")


def learned_velocity_jacobian(velocity, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v (B, d), ∂v/∂x (B, d, d))`` of a velocity at points ``x (B, d)``, times ``t (B,)``.

    Column ``j`` is the forward-mode JVP along ``e_j`` (rows = output coordinates).
    """
    d = x.shape[1]
    cols = []
    v = None
    with torch.no_grad():
        for j in range(d):
            e = torch.zeros_like(x)
            e[:, j] = 1.0
            v, dv = torch.func.jvp(lambda y: velocity(y, t), (x,), (e,))
            cols.append(dv)
    return v, torch.stack(cols, dim=-1)


def run_mixture_learned(config: MixtureLearnedConfig, out_dir: str | os.PathLike, *,
                        progress: bool = True) -> dict[str, Any]:
    """Train a flow on the paper's mixture, then run the closed-form job with it as an estimator."""
    from ..report import to_jsonable
    from ..solvers import sample
    from .mixture import PAPER_MIXTURE, MixtureConfig, build_mixture, default_estimators, draw_points, run_mixture

    out = C.prepare_output(out_dir)
    timer = C.Timer()
    mc_kwargs = dict(seed=config.seed, n_points=config.n_points, times=tuple(config.times))
    mc = MixtureConfig.quick(**mc_kwargs) if config.size == "quick" else MixtureConfig.full(**mc_kwargs)
    mixture = build_mixture(mc)
    data_args = {k: to_jsonable(PAPER_MIXTURE[k]) for k in ("weights", "means", "covs")}
    with timer("train"):
        model, losses, checkpoint = C.train_model(
            out, data="mixture", data_args=data_args, preset=config.preset, model_args=dict(config.overrides),
            steps=config.train_steps, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
            progress=progress)

    def learned(p) -> torch.Tensor:  # under torchrun each rank differentiates its block of the points
        def block(x):
            return learned_velocity_jacobian(model, x.float(), torch.full((x.shape[0],), float(p.t)))[1]

        return C.split_rows(block, p.x).double()

    with timer("closed_form"):
        closed = run_mixture(mc, out / "closed_form", progress=progress,
                             estimators={**default_estimators(), "learned_flow": learned})
    cres = closed["results"]

    rows = []
    with timer("velocity"), C.seeded(config.seed + 1) as gen:
        for r in cres["per_time"]:
            t = r["t"]
            x, _ = draw_points(mixture, t, config.n_points, gen, mc.points)
            v_true = mixture.velocity(x, t)
            with torch.no_grad():
                v_hat = model(x.float(), torch.full((x.shape[0],), float(t))).double()
            g = r["gaps"]["learned_flow"]
            rows.append({"t": t, "jacobian_gap_mean": g["mean"], "jacobian_gap_median": g.get("median"),
                         "jacobian_norm_mean": r["analytic_norm_mean"],
                         "jacobian_gap_relative": g["mean"] / r["analytic_norm_mean"],
                         "velocity_rmse": float((v_hat - v_true).pow(2).sum(1).mean().sqrt())})
    with timer("sampling"), C.seeded(config.seed + 2) as gen:
        x0 = mixture.sample_base(2000, generator=gen).float()
        target = mixture.sample(2000, generator=gen)
        probes = torch.randn(x0.shape, generator=gen)
    with timer("steps"):
        solver = choose_solver(model, x0, probes, method=config.method, steps=config.solver_steps,
                                 subsample=config.check_samples, seed=config.seed, progress=progress)
    with timer("sampling"):
        generated = C.split_rows(lambda a: sample(model, a, method=solver["method"], steps=solver["steps"]),
                                 x0).double()

    learned_res = {
        "per_time": rows,
        "times": [r["t"] for r in rows],
        "jacobian_gap_mean": [r["jacobian_gap_mean"] for r in rows],
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "checkpoint": str(checkpoint),
        "generated_mean": generated.mean(0),
        "target_mean": target.mean(0),
        "generated_cov": torch.cov(generated.T),
        "target_cov": torch.cov(target.T),
        "solver": solver,
    }
    results: dict[str, Any] = {
        "learned": learned_res,
        "closed_form": cres,
        "headline": {
            "learned_jacobian_gap_mean_over_t": float(np.mean(learned_res["jacobian_gap_mean"])),
            "learned_jacobian_gap_relative_over_t": float(np.mean([r["jacobian_gap_relative"] for r in rows])),
            **{f"closed_form_{k}": v for k, v in cres.get("headline", {}).items()},
        },
    }

    figures = []
    with timer("figures"):
        from ..report import new_figure, save_figure

        fig, axes = new_figure(1, 2, figsize=(11, 4.4))
        axes[0].plot(learned_res["times"], learned_res["jacobian_gap_mean"], "o-", label="learned flow vs analytic")
        for name, style in (("forward_fd_float32", "^:"), ("intervention_generating", "v:")):
            if name in cres["gap_mean"]:
                axes[0].plot(cres["times"], cres["gap_mean"][name], style, label=f"{name} vs analytic")
        axes[0].plot(PUBLISHED["times"], PUBLISHED["numerical_vs_analytical"], "s--", color="gray",
                     label="paper: numerical vs analytic")
        axes[0].set(xlabel="t", ylabel="mean ‖J - ∇v‖_F", title="velocity Jacobian gap over t")
        axes[0].legend(fontsize=7)
        axes[1].scatter(target[:, 0], target[:, 1], s=2, alpha=0.3, label="mixture")
        axes[1].scatter(generated[:, 0], generated[:, 1], s=2, alpha=0.3, label="learned flow")
        axes[1].set(title="samples", aspect="equal")
        axes[1].legend(fontsize=8, markerscale=4)
        save_figure(fig, out / "mixture_learned.png")
        figures.append("mixture_learned.png")
        figures += [f"closed_form/{f}" for f in closed.get("figures", [])]

    summary = C.markdown_table(
        ["t", "mean ‖∇v_θ - ∇v‖_F", "relative", "velocity RMSE", "float32 FD (paper's method)",
         "paper: numerical vs analytic"],
        [[r["t"], r["jacobian_gap_mean"], r["jacobian_gap_relative"], r["velocity_rmse"],
          cres["gap_mean"].get("forward_fd_float32", [None] * len(rows))[i], p]
         for i, (r, p) in enumerate(zip(rows, PUBLISHED["numerical_vs_analytical"] + [None] * len(rows)))],
    )
    summary = ("Learned flow (trained by flow matching on the paper's mixture) against the analytic "
               "Jacobian of Eq. 4, on the points of the closed-form table.\n\n" + summary +
               "\n\nSamples of the learned flow: " + solver["line"] +
               "\n\nClosed-form Table 4 / Figure 2 (all estimators): see `closed_form/summary.md`.\n")
    return C.write_report(out, experiment="mixture", paper="Table 4, Figure 2", config=config,
                          quick=config.size == "quick", results=results, published=PUBLISHED,
                          timer=timer, figures=figures, summary=summary)
