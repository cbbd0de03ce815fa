r"""Figure 1: a learned 1-D flow against the closed-form Gaussian flow.

Target ``x1 ~ N(0, σ²)`` (default ``σ = 2``), source ``x0 ~ N(0, 1)``. The exact flow map is
``φ_t(x0) = S(t)^{1/2} x0`` with ``S(t) = (1-t)² + t² σ²`` (arXiv 2602.02793 §4.1, App. B), so the exact
generator Jacobian is ``dφ_t/dx0 = S(t)^{1/2}``, equal to ``σ`` at ``t = 1``.

An MLP (preset ``mlp-small``: hidden 128; paper: lr 1e-3, 2,000 steps, 10,000 samples) is trained
by flow matching on a fixed set of ``n_train`` samples. Reported:

- trajectory gap: ``|φ̂_t(x0) - φ_t(x0)|`` over a grid of starting points and every solver time
  (max and root-mean-square);
- generator Jacobian: ``dφ̂_1/dx0`` by forward mode through the solver at ``n_eval`` random
  ``x0`` (mean, std, mean absolute error against ``σ``), and its mean over ``x0`` at several
  times ``t`` against ``S(t)^{1/2}``;
- mean and standard deviation of generated samples against ``0`` and ``σ``.

Under ``torchrun`` rank 0 writes the training data, the flow trains with DDP, each rank
integrates the JVPs of its block of the ``n_eval`` points, and the statistics run on the gathered
results on every rank (rank 0 writes the report).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from . import _common as C

__all__ = ["Gaussian1DConfig", "run_gaussian_1d", "PUBLISHED"]

PUBLISHED = {"model": "MLP hidden 128", "lr": 1e-3, "train_steps": 2000, "n_train": 10000}


@dataclass
class Gaussian1DConfig(C.SizedConfig):
    """Settings of the 1-D Gaussian experiment (defaults: the paper's sizes).

    Attributes:
        std: standard deviation ``σ`` of the target ``N(0, σ²)``.
        preset, overrides: model preset (:func:`causal_delta.models.build_model`) and
            hyper-parameter overrides as ``((name, value), ...)``.
        lr, train_steps, batch_size: AdamW training.
        n_train: size of the fixed training set drawn from the target.
        method, solver_steps: ODE solver for trajectories and JVPs.
        n_trajectories: starting points ``x0`` on ``[-2.5, 2.5]`` for the trajectory figure/gap.
        n_eval: random ``x0`` for the Jacobian and sample statistics.
        jacobian_times: number of times in ``(0, 1]`` at which the Jacobian is compared.
        seed: random seed.
        size: ``"full"`` or ``"quick"`` (a label for the report).
    """

    std: float = 2.0
    preset: str = "mlp-small"
    overrides: tuple = ()
    lr: float = 1e-3
    train_steps: int = 2000
    batch_size: int = 256
    n_train: int = 10_000
    method: str = "rk4"
    solver_steps: int = 50
    n_trajectories: int = 15
    n_eval: int = 2000
    jacobian_times: int = 10
    seed: int = 0
    size: str = "full"

    # CI size: half the paper's training (a few seconds on a CPU).
    QUICK: ClassVar[dict[str, Any]] = dict(train_steps=1000, n_train=5000, solver_steps=20, n_eval=500,
                                           jacobian_times=5, size="quick")


def run_gaussian_1d(config: Gaussian1DConfig, out_dir: str | os.PathLike, *,
                    progress: bool = True) -> dict[str, Any]:
    """Train, compare with the closed form, write ``report.json``, figures and ``summary.md``."""
    from ..closed_form import GaussianFlow
    from ..jvp import jvp_forward
    from ..solvers import integrate, time_grid

    if not config.std > 0:
        raise ValueError(f"std must be > 0, got {config.std!r}")
    out = C.prepare_output(out_dir)
    timer = C.Timer()
    sigma = float(config.std)
    exact = GaussianFlow(torch.tensor([[sigma**2]], dtype=torch.float64))

    with C.seeded(config.seed) as gen:
        data = sigma * torch.randn(config.n_train, 1, generator=gen)
        x_eval = torch.randn(config.n_eval, 1, generator=gen)
    data_path = out / "train" / "data.npy"

    def save_data() -> None:  # rank 0 writes the file that every rank's training then reads
        data_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(data_path, data.numpy())

    C.on_main(save_data)
    with timer("train"):
        model, losses, checkpoint = C.train_model(
            out, data=str(data_path), preset=config.preset, model_args=dict(config.overrides),
            steps=config.train_steps, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
            progress=progress)

    with timer("evaluate"), torch.no_grad():
        grid = time_grid(config.solver_steps, dtype=torch.float32)
        x0 = torch.linspace(-2.5, 2.5, config.n_trajectories).reshape(-1, 1)
        traj = integrate(model, x0, method=config.method, grid=grid, return_trajectory=True).trajectory
        traj = traj[..., 0].double()  # (N + 1, n)
        exact_traj = torch.stack([exact.flow_map(x0.double(), float(t))[:, 0] for t in grid])
        gap = (traj - exact_traj).abs()

        # Jacobian over t: forward mode on the prefix of the grid ending at t_k.
        idx = np.unique(np.linspace(0, config.solver_steps, config.jacobian_times + 1).round().astype(int))[1:]

        def block(x):  # under torchrun each rank integrates its block of x_eval
            res = jvp_forward(model, x, torch.ones_like(x), method=config.method, grid=grid)
            jt = [jvp_forward(model, x, torch.ones_like(x), method=config.method, grid=grid[: k + 1]).jvp[:, 0]
                  for k in idx]
            return res.x[:, 0], res.jvp[:, 0], torch.stack(jt, dim=1)

        x1, dx1, j_over_t = C.split_rows(block, x_eval)
        j1 = dx1.double()
        samples = x1.double()
        times, learned_t, exact_t = [0.0], [1.0], [1.0]
        for i, k in enumerate(idx):
            times.append(float(grid[k]))
            learned_t.append(float(j_over_t[:, i].double().mean()))
            exact_t.append(float(exact.flow_jacobian(float(grid[k]))[0, 0]))

    results = {
        "trajectory_gap_max": float(gap.max()),
        "trajectory_gap_rms": float(gap.pow(2).mean().sqrt()),
        "endpoint_gap_max": float(gap[-1].max()),
        "jacobian_t1": {
            "exact": sigma,
            "learned_mean": float(j1.mean()),
            "learned_std": float(j1.std()),
            "mean_abs_error": float((j1 - sigma).abs().mean()),
            "max_abs_error": float((j1 - sigma).abs().max()),
        },
        "jacobian_over_t": {"t": times, "exact": exact_t, "learned_mean": learned_t,
                            "max_abs_error": max(abs(a - b) for a, b in zip(learned_t, exact_t))},
        "samples": {"mean": float(samples.mean()), "std": float(samples.std()),
                    "target_mean": 0.0, "target_std": sigma},
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "checkpoint": str(checkpoint),
        "headline": {
            "jacobian_t1_learned": float(j1.mean()),
            "jacobian_t1_exact": sigma,
            "trajectory_gap_rms": float(gap.pow(2).mean().sqrt()),
        },
    }

    figures = []
    with timer("figures"):
        from ..report import new_figure, save_figure

        fig, axes = new_figure(1, 3, figsize=(14, 4))
        g = grid.double().numpy()
        for i in range(x0.shape[0]):
            axes[0].plot(g, exact_traj[:, i].numpy(), color="C0", lw=1.2, label="exact" if i == 0 else None)
            axes[0].plot(g, traj[:, i].numpy(), color="C1", lw=1.2, ls="--", label="learned" if i == 0 else None)
        axes[0].set(xlabel="t", ylabel="x_t", title="trajectories: exact S(t)^{1/2} x0 vs learned")
        axes[0].legend()
        axes[1].plot(times, exact_t, "-", color="C0", label="exact S(t)^{1/2}")
        axes[1].plot(times, learned_t, "o--", color="C1", label="learned (mean over x0)")
        axes[1].set(xlabel="t", ylabel="dφ_t/dx0", title="generator Jacobian over t")
        axes[1].legend()
        xs = np.linspace(-4 * sigma, 4 * sigma, 200)
        axes[2].hist(samples.numpy(), bins=50, density=True, alpha=0.5, color="C1", label="generated")
        axes[2].plot(xs, np.exp(-xs**2 / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2), color="C0",
                     label=f"N(0, {sigma:g}²)")
        axes[2].set(xlabel="x1", title="samples")
        axes[2].legend()
        save_figure(fig, out / "gaussian_1d.png")
        figures.append("gaussian_1d.png")

    jt = results["jacobian_t1"]
    summary = C.markdown_table(
        ["quantity", "learned", "exact"],
        [
            ["Jacobian dφ_1/dx0 (mean over x0)", jt["learned_mean"], jt["exact"]],
            ["Jacobian mean abs error", jt["mean_abs_error"], 0.0],
            ["trajectory gap (rms / max)", f"{C.fmt(results['trajectory_gap_rms'])} / "
             f"{C.fmt(results['trajectory_gap_max'])}", "0"],
            ["sample std", results["samples"]["std"], sigma],
        ],
    )
    return C.write_report(out, experiment="gaussian-1d", paper="Figure 1", config=config,
                          quick=config.size == "quick", results=results,
                          published=PUBLISHED, timer=timer, figures=figures, summary=summary + "\n")
