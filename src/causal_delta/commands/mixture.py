"""``causal-delta mixture``: the closed-form Gaussian-mixture job (paper Table 4, Figure 2).

Thin wrapper over :func:`causal_delta.experiments.mixture.run_mixture`: builds a
:class:`~causal_delta.experiments.mixture.MixtureConfig` from the arguments and writes
``report.json``, ``drift_field.png``, ``jacobian_gaps.png`` and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from ..config import add_dataclass_arguments, from_namespace, option

HELP = "closed-form Gaussian mixture: analytic vs numerical and intervention Jacobians (Table 4, Figure 2)"

DESCRIPTION = (
    "Compare the analytic Jacobian of the mixture drift (Eq. 4) with forward-mode autodiff, "
    "finite differences (float64, and float32 with eps = 1e-6 as in the paper) and the "
    "intervention Jacobian A_K(t), at t = 0, .25, .5, .75, .99; write report.json, figures and "
    "summary.md into --out. Runs in seconds on a CPU."
)

__all__ = ["HELP", "DESCRIPTION", "CONFIG", "MixtureCommandConfig", "add_arguments", "outputs", "run"]


@dataclass
class MixtureCommandConfig:
    """The options of ``causal-delta mixture`` (mapped onto
    :class:`~causal_delta.experiments.mixture.MixtureConfig` by :func:`run`)."""

    out: str = option("runs/mixture", help="output folder")
    seed: int = option(0, help="random seed (points, labels)")
    n_points: int | None = option(None, help="evaluation points per time (default 2000, 300 with --quick)")
    times: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 0.99), nargs="+",
                                      help="times t in [0, 1] of the comparison")
    points: Literal["path", "standard_normal"] = option(
        "path", help="evaluation points: x_t on the flow-matching path, or x ~ N(0, I) as the original code")
    fd_eps: float = option(1e-5, help="step of the float64 central differences")
    fd_eps_float32: float = option(1e-6, help="step of the forward differences (the paper used 1e-6 in float32)")
    intervention_label: Literal["generating", "sampled"] = option(
        "generating", help="label K of the headline intervention Jacobian A_K(t): the component that generated "
                           "the point, or K drawn from the responsibilities")
    quick: bool = option(False, help="small run (300 points per time)")
    progress: bool = option(True, help="show progress bars")


CONFIG = MixtureCommandConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options on ``parser``."""
    add_dataclass_arguments(parser, CONFIG)


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def run(args: argparse.Namespace) -> int:
    """Run the job; print where the results are. Returns 0."""
    from ..experiments.mixture import MixtureConfig, run_mixture

    c = from_namespace(CONFIG, args)
    make = MixtureConfig.quick if c.quick else MixtureConfig.full
    options = dict(seed=c.seed, times=c.times, figure_times=c.times, out_dir=c.out, points=c.points,
                   fd_eps_central=c.fd_eps, fd_eps_float32=c.fd_eps_float32,
                   intervention_label=c.intervention_label, progress=c.progress)
    if c.n_points is not None:
        options["n_points"] = c.n_points
    report = run_mixture(make(**options))
    res = report["results"]
    print(f"mixture: wrote report.json, summary.md and {', '.join(report['figures'])} to {c.out}")
    chosen = f"intervention_{c.intervention_label}"
    for i, t in enumerate(res["times"]):
        g = res["gap_mean"]
        print(f"  t={t:.2f}  jacfwd {g['autodiff_jacfwd_float64'][i]:.1e}"
              f"  central fd64 {g['central_fd_float64'][i]:.1e}  fd32 {g['forward_fd_float32'][i]:.3f}"
              f"  intervention {g[chosen][i]:.3f}")
    return 0
