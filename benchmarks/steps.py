"""Steps that suffice: velocity evaluations for a JVP correlation within a tolerance of converged.

Paired draws: every solver and step count sees the same ``x0`` and the same probes ``z``, and
"converged" is a reference on those pairs — RK4 with ``--ref-steps`` steps. The error of a run
is ``max_ij |Corr_ij - Corr_ref_ij|`` over the off-diagonal entries of the (uncentred,
normalised) correlation of the responses ``Δy = J_{C∘f}(x0) z``.

Cases:

* ``gaussian-2d``: the closed-form flow onto ``N(0, Σ)``, ``ρ = 0.55`` (float64, identity read-out);
* ``digits``: a small image flow (``unet-small``, 16 base channels) trained ``--train-steps`` steps
  on scikit-learn's 8×8 digits, read out at the 16 central pixels.

Per solver (Euler, midpoint, RK4, Dormand–Prince on a uniform grid), the smallest step count of
a geometric ladder whose error is within ``--tol`` and stays within it for the next two ladder
points; its cost in velocity evaluations (``steps × evaluations per step``). Adaptive dopri5:
the loosest ``rtol = atol`` of a ladder that does the same, its cost = grid search (rejected
steps included) + 6 per accepted step. Last, what :func:`causal_delta.discretisation.choose_steps`
picks from the half-steps check alone (no reference) and its error against the reference.

Usage: ``python benchmarks/steps.py [--case all|gaussian-2d|digits] [--tol 0.01 0.001]
[--image-tol 0.01] [--n 4000] [--image-n 256] [--train-steps 600] [--checkpoint RUN] [--threads 1]``.
An image-flow reference of RK4 128 steps at n = 256 costs 512 evaluations of the UNet at batch 2·256
(about 0.4–0.8 s each on a loaded 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

import torch

from causal_delta.dependence import correlation
from causal_delta.discretisation import choose_steps
from causal_delta.jvp import attribute_jvp
from causal_delta.solvers import NFE_PER_STEP, dopri5_grid, time_grid

LADDER = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512)
RTOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7)


def corr_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over off-diagonal entries of |a - b| (NaN counts as infinite)."""
    m = a.shape[0]
    d = (a - b).abs()
    d = torch.where(torch.isfinite(d), d, torch.inf)
    return float(d[~torch.eye(m, dtype=torch.bool)].max())


def run_case(name, velocity, x0, z, features, tols, ref_steps, max_steps):
    def corr(**solver):
        r = attribute_jvp(velocity, x0, z, features=features, batch_size=1024, **solver)
        return correlation(r.responses.double()), r

    t0 = time.perf_counter()
    ref, _ = corr(method="rk4", steps=ref_steps)
    print(f"\n== {name}: n = {x0.shape[0]} pairs, reference RK4 {ref_steps} steps ({time.perf_counter() - t0:.1f} s)")
    ladder = [s for s in LADDER if s <= max_steps]
    found = {}
    for method in ("euler", "midpoint", "rk4", "dopri5"):
        errs = []
        for s in ladder:
            grid = time_grid(s, dtype=x0.dtype)
            c, _ = corr(method=method, grid=grid)
            errs.append((s, NFE_PER_STEP[method] * s, corr_error(c, ref)))
            if all(_settled(errs, tol) is not None for tol in tols):
                break
        found[method] = {tol: _settled(errs, tol) for tol in tols}
        print(f"  {method:8s} " + "  ".join(f"{s}:{e:.1e}" for s, _, e in errs))
    errs = []
    for rtol in RTOLS:
        grid, nfe_grid = dopri5_grid(velocity, x0, atol=rtol, rtol=rtol)
        steps = grid.numel() - 1
        c, _ = corr(method="dopri5", grid=grid)
        errs.append((f"rtol {rtol:g} ({steps} steps)", nfe_grid + 6 * steps, corr_error(c, ref)))
        if all(_settled(errs, tol) is not None for tol in tols):
            break
    found["dopri5 adaptive"] = {tol: _settled(errs, tol) for tol in tols}
    print("  dopri5 adaptive " + "  ".join(f"{s}: nfe {n} err {e:.1e}" for s, n, e in errs))
    for tol in tols:
        print(f"  velocity evaluations for max |Δcorr| <= {tol:g} (paired, vs RK4 {ref_steps}):")
        best = None
        for method, per_tol in found.items():
            hit = per_tol[tol]
            if hit is None:
                print(f"    {method:16s} not within the ladder")
                continue
            label, nfe, err = hit
            what = f"{label} steps" if isinstance(label, int) else label
            print(f"    {method:16s} {nfe:6d} evaluations ({what}, error {err:.1e})")
            if best is None or nfe < best[1]:
                best = (method, nfe)
        if best is not None:
            print(f"    cheapest: {best[0]} ({best[1]} evaluations)")
    t0 = time.perf_counter()
    choice = choose_steps(velocity, x0, z, features=features, methods=("rk4", "midpoint", "euler"), start=2,
                          subsample=min(256, x0.shape[0]), n_boot=200, batch_size=1024)
    c, _ = corr(method=choice.method, steps=choice.steps)
    print(f"  choose_steps (half-steps check, no reference): {choice.method} {choice.steps} steps = {choice.nfe} "
          f"evaluations, bootstrap SE {choice.check.se_at_worst:.3f}, error vs reference {corr_error(c, ref):.1e} "
          f"({time.perf_counter() - t0:.1f} s)")
    return found


def _settled(errs, tol):
    """First ladder point within tol that stays within it for the next two (or to the end)."""
    for i, (label, nfe, e) in enumerate(errs):
        after = [x[2] for x in errs[i + 1: i + 3]]
        if e <= tol and len(after) == 2 and all(a <= tol for a in after):
            return label, nfe, e
    return None


def gaussian_case(n):
    from causal_delta.closed_form import GaussianFlow

    flow = GaussianFlow(torch.tensor([[1.0, 0.55], [0.55, 1.0]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return flow.velocity, x0, z, None


def digits_case(n, train_steps, out, checkpoint=None):
    if checkpoint is not None:
        from causal_delta.checkpoint import load_flow

        flow, info = load_flow(checkpoint)
        print(f"loaded {info['path']} (step {info['step']})")
    else:
        from causal_delta.datasets.images import load_images
        from causal_delta.training import TrainConfig, train

        data = load_images("digits")
        path = f"{out}/digits.pt"
        torch.save(data.images, path)
        t0 = time.perf_counter()
        res = train(TrainConfig(data=path, preset="unet-small", model_args={"base_channels": 16},
                                steps=train_steps, batch_size=64, lr=2e-3, seed=0, out_dir=f"{out}/train"),
                    progress=False)
        print(f"trained unet-small on {len(data)} digits 8x8, {train_steps} steps, final loss "
              f"{sum(res.losses[-50:]) / len(res.losses[-50:]):.3f} ({time.perf_counter() - t0:.0f} s)")
        flow = res.flow.eval()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 1, 8, 8, generator=g)
    z = torch.randn(n, 1, 8, 8, generator=g)
    features = [r * 8 + c for r in range(2, 6) for c in range(2, 6)]
    return flow, x0, z, features


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("all", "gaussian-2d", "digits"), default="all")
    parser.add_argument("--tol", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--n", type=int, default=4000, help="pairs (x0, z) for the 2-D Gaussian")
    parser.add_argument("--image-n", type=int, default=256, help="pairs for the image flow")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--checkpoint", default=None, help="image flow checkpoint to use instead of training one")
    parser.add_argument("--image-tol", type=float, nargs="+", default=[0.01], help="tolerances for the image flow")
    parser.add_argument("--image-max-steps", type=int, default=128, help="largest step count of the image ladder")
    parser.add_argument("--ref-steps", type=int, default=256, help="RK4 steps of the converged reference")
    parser.add_argument("--image-ref-steps", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if args.case in ("all", "gaussian-2d"):
        run_case("gaussian-2d (closed form, float64)", *gaussian_case(args.n), args.tol, args.ref_steps, 512)
    if args.case in ("all", "digits"):
        with tempfile.TemporaryDirectory() as tmp:
            velocity, x0, z, features = digits_case(args.image_n, args.train_steps, tmp, args.checkpoint)
            run_case("digits 8x8 (unet-small, float32, 16 central pixels)", velocity, x0, z, features,
                     args.image_tol, args.image_ref_steps, args.image_max_steps)


if __name__ == "__main__":
    main()
