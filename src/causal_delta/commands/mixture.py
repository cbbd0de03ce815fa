"""``causal-delta mixture``: the closed-form Gaussian-mixture job (paper Table 4, Figure 2).

Thin wrapper over :func:`causal_delta.experiments.mixture.run_mixture`: builds a
:class:`~causal_delta.experiments.mixture.MixtureConfig` from the arguments and writes
``report.json``, ``drift_field.png``, ``jacobian_gaps.png`` and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse

HELP = "closed-form Gaussian mixture: analytic vs numerical and intervention Jacobians (Table 4, Figure 2)"

DESCRIPTION = (
    "Compare the analytic Jacobian of the mixture drift (Eq. 4) with forward-mode autodiff, "
    "finite differences (float64, and float32 with eps = 1e-6 as in the paper) and the "
    "intervention Jacobian A_K(t), at t = 0, .25, .5, .75, .99; write report.json, figures and "
    "summary.md into --out. Runs in seconds on a CPU."
)

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "outputs", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options on ``parser``."""
    parser.add_argument("--out", default="runs/mixture", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (points, labels)")
    parser.add_argument("--n-points", type=int, default=2000, help="evaluation points per time")
    parser.add_argument("--times", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 0.99],
                        help="times t in [0, 1] of the comparison")
    parser.add_argument("--points", choices=("path", "standard_normal"), default="path",
                        help="evaluation points: x_t on the flow-matching path, or x ~ N(0, I) as the original code")
    parser.add_argument("--fd-eps", type=float, default=1e-5, help="step of the float64 central differences")
    parser.add_argument("--fd-eps-float32", type=float, default=1e-6,
                        help="step of the forward differences (the paper used 1e-6 in float32)")
    parser.add_argument("--intervention-label", choices=("generating", "sampled"), default="generating",
                        help="label K of the headline intervention Jacobian A_K(t): the component that "
                             "generated the point, or K drawn from the responsibilities")
    parser.add_argument("--quick", action="store_true", help="small run (300 points per time)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def outputs(args: argparse.Namespace):
    """The output folder ``--out``, locked while the run lasts."""
    from ._common import Output

    return [Output(args.out)]


def run(args: argparse.Namespace) -> int:
    """Run the job; print where the results are. Returns 0."""
    from ..experiments.mixture import MixtureConfig, run_mixture

    make = MixtureConfig.quick if args.quick else MixtureConfig.full
    options = dict(seed=args.seed, times=tuple(args.times), figure_times=tuple(args.times), out_dir=args.out,
                   points=args.points, fd_eps_central=args.fd_eps, fd_eps_float32=args.fd_eps_float32,
                   intervention_label=args.intervention_label, progress=not args.no_progress)
    if not args.quick or args.n_points != 2000:
        options["n_points"] = args.n_points
    report = run_mixture(make(**options))
    res = report["results"]
    print(f"mixture: wrote report.json, summary.md and {', '.join(report['figures'])} to {args.out}")
    chosen = f"intervention_{args.intervention_label}"
    for i, t in enumerate(res["times"]):
        g = res["gap_mean"]
        print(f"  t={t:.2f}  jacfwd {g['autodiff_jacfwd_float64'][i]:.1e}"
              f"  central fd64 {g['central_fd_float64'][i]:.1e}  fd32 {g['forward_fd_float32'][i]:.3f}"
              f"  intervention {g[chosen][i]:.3f}")
    return 0
