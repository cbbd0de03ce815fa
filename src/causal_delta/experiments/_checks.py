"""What the experiments report beside their estimates: the memorisation diagnostic of a trained
flow (:func:`memorisation_check`, :func:`memorisation_verdict`) and the solver and steps chosen by
the discretisation check (:func:`choose_solver`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["memorisation_check", "memorisation_verdict", "MEMORISED_MARGIN", "choose_solver"]


def memorisation_check(
    flow,
    targets: torch.Tensor,
    out_dir: Path,
    *,
    method: str,
    steps: int,
    seed: int,
    heldout: torch.Tensor | None = None,
    n_fresh: int = 0,
    jacobian_points: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """The memorisation diagnostic of a trained flow beside an experiment's estimates.

    Runs :func:`causal_delta.diagnostics.diagnose_memorisation` (independent coupling: no
    training sources, so the own-pair entry is the copy fraction) with settings light enough to
    sit inside an experiment — a 3-point gradient-variance grid on 64 pairs, the top-5 Jacobian
    spectrum at ``jacobian_points`` fresh sources — and writes its full report into
    ``out_dir`` (``report.json``, ``summary.md``, PNGs).

    Args:
        flow: the trained velocity field; targets: its training set ``(N, *event)``.
        method, steps: the experiment's solver (the generator whose estimates are reported).
        heldout: real held-out data for the baseline and the generalisation MMD, or ``None``
            (leave-one-out baseline on the training set).
        n_fresh: fresh sources (0: as many as training rows, at most 2048).

    Returns:
        the key numbers for the experiment's ``report.json``: ``line`` (the
        :func:`causal_delta.diagnostics.one_line_summary`), ``copy_fraction`` and
        ``median_ratio`` of fresh samples with their real-data baselines ``real_copy_fraction``,
        ``real_median_ratio`` (and ``real_reference``: what the baseline compares),
        ``median_nearest_over_spacing``, ``jacobian_rank`` of ``jacobian_k``, ``n_train``,
        ``n_fresh``, ``report`` (the full report's path) and ``verdict``
        (:func:`memorisation_verdict`).
    """
    from ..diagnostics import (
        MemorisationConfig,
        diagnose_memorisation,
        one_line_summary,
        write_memorisation_report,
    )

    cfg = MemorisationConfig(method=method, steps=steps, n_fresh=n_fresh, t_grid=(0.1, 0.5, 0.9), grad_samples=64,
                             jacobian_points=jacobian_points, jacobian_k=5, seed=seed)
    report = diagnose_memorisation(flow, targets, heldout=heldout, config=cfg, progress=progress)
    write_memorisation_report(report, out_dir)
    fresh, real = report["fresh"], report.get("real", {})
    jac = report.get("jacobian", {}).get("fresh", {})
    out = {"line": one_line_summary(report), "copy_fraction": fresh["fraction_below_1/3"],
            "median_ratio": fresh["median_ratio"], "real_copy_fraction": real.get("fraction_below_1/3"),
            "real_median_ratio": real.get("median_ratio"), "real_reference": real.get("reference"),
            "median_nearest_over_spacing": fresh["median_nearest_over_spacing"],
            "jacobian_rank": jac.get("mean_rank"), "jacobian_k": jac.get("k"), "n_train": report["n_train"],
            "n_fresh": report["n_fresh"], "report": str(Path(out_dir) / "report.json")}
    out["verdict"] = memorisation_verdict(out)
    return out


MEMORISED_MARGIN = 0.10
"""Copy-fraction excess over real data (absolute) that :func:`memorisation_verdict` calls material."""


def memorisation_verdict(numbers: Mapping[str, Any]) -> str:
    r"""``"memorised"`` or ``"not memorised"`` from :func:`memorisation_check`'s numbers.

    Memorised when the copy fraction of fresh samples :math:`p_g` (share with
    :math:`d_1/d_2 < 1/3`, over :math:`n_g` samples) exceeds the real-data baseline's
    :math:`p_r` (over :math:`n_r` rows) both materially and significantly:
    :math:`p_g - p_r > \max(0.1,\ 3\sqrt{p_g(1-p_g)/n_g + p_r(1-p_r)/n_r})`.
    Without a baseline (fewer than 3 training rows) the test is :math:`p_g > 0.5`.
    """
    pg, ng = float(numbers["copy_fraction"]), int(numbers["n_fresh"])
    pr = numbers.get("real_copy_fraction")
    if pr is None:
        return "memorised" if pg > 0.5 else "not memorised"
    pr, nr = float(pr), int(numbers["n_train"])
    se = math.sqrt(pg * (1 - pg) / ng + pr * (1 - pr) / nr)
    return "memorised" if pg - pr > max(MEMORISED_MARGIN, 3 * se) else "not memorised"


def choose_solver(velocity, x0: torch.Tensor, probes: torch.Tensor, *, method: str = "auto", steps: int = 4,
                  max_steps: int = 1024, subsample: int = 256, n_boot: int = 200, seed: int = 0, progress: bool = True,
                  **readout: Any) -> dict[str, Any]:
    """Solver and steps for an experiment's JVPs, from the discretisation check (issue 13, item 6).

    ``method="auto"``: :func:`causal_delta.discretisation.choose_steps` over RK4, midpoint and Euler,
    doubling from ``steps`` up to ``max_steps``, on the experiment's own ``x0`` and ``probes``; when no
    solver passes within ``max_steps``, the check closest to passing is chosen and ``chosen_by`` and
    ``line`` say so. A solver name: that solver with ``steps`` as given, checked. ``readout``: the
    read-out (``classifier`` / ``features``; none: the identity) and other keywords of the check
    (``batch_size``, ``mode``), passed on.

    Returns:
        JSON-ready ``{"method", "steps", "nfe", "chosen_by", "check", "trials", "line"}``; ``line``
        is one sentence for ``summary.md``.
    """
    from ..discretisation import choose_steps, discretisation_check

    kw = {"subsample": subsample, "n_boot": n_boot, "seed": seed, **readout}
    if method == "auto":
        start = max(int(steps), 2)
        if max_steps < start:
            raise ValueError(f"max_steps (the most solver steps the check may choose, {max_steps}) must be at least "
                             f"the starting steps ({start})")
        choice = choose_steps(velocity, x0, probes, start=start, max_steps=max_steps, progress=progress, **kw)
        how = "" if choice.passed else f"; no solver passed within {max_steps} steps, the closest is used"
        out = {**choice.to_dict(), "chosen_by": f"discretisation check (choose_steps{how})"}
        check: Any = choice.check
    else:
        check = discretisation_check(velocity, x0, probes, method=method, steps=steps, **kw) if steps >= 2 else None
        out = {"method": method, "steps": steps, "chosen_by": "config",
               "check": check.to_dict() if check is not None else {"skipped": "needs >= 2 steps"}}
    out["nfe"] = check.nfe if check is not None else None
    verdict = check.message() if check is not None else "not checked (1 step)"
    out["line"] = f"Solver: {out['method']}, {out['steps']} steps ({out['chosen_by']}); {verdict}."
    return out
