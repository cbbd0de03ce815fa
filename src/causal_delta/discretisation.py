r"""Steps that suffice: the discretisation check of a JVP statistic, and a step chooser.

The generator ``f`` is the solver's map, so the JVP statistic — the correlation
:math:`\mathrm{Corr} = D^{-1/2} S D^{-1/2}` of the responses :math:`\Delta y = J_{C\circ f}(x_0) z`
(arXiv 2602.02793 §5) — depends on the solver and its grid. :func:`discretisation_check` measures that
dependence where it is cheap: it recomputes the statistic on a *paired* subsample (the first
``subsample`` source points with their probes, so the same ``x0`` and the same ``z``) on the
grid with every other point (half the steps: ``grid[::2]``, ending at ``t1``) and compares

.. math::
    \delta_{ij} = \mathrm{Corr}^{(N)}_{ij}(\text{sub}) - \mathrm{Corr}^{(N/2)}_{ij}(\text{sub})

with the bootstrap standard error :math:`s_{ij}` of the full estimate
:math:`\mathrm{Corr}^{(N)}_{ij}`. Verdict ``converged`` when :math:`|\delta_{ij}| \le s_{ij}` for
every off-diagonal entry: the discretisation error is then below the sampling error. For a method
of order ``p`` the error of the ``N``-step statistic is about :math:`|\delta| / (2^p - 1)`
(Richardson), so the test is conservative by that factor. Pairing removes the sampling noise the
two grids share: what is left of :math:`\delta` is the discretisation effect itself.

:func:`choose_steps` doubles the steps from a start until the check passes (up to a cap), per
solver, and returns the solver and count that pass with the fewest velocity evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._validation import check_positive_int
from .solvers import METHODS, NFE_PER_STEP, Velocity, dopri5_grid, time_grid

__all__ = ["DiscretisationCheck", "StepChoice", "choose_steps", "discretisation_check"]

VERDICTS = ("converged", "not converged", "no off-diagonal entries")


@dataclass
class DiscretisationCheck:
    """Result of :func:`discretisation_check`; matrices are ``(m, m)`` over the read-out features.

    Attributes:
        method: solver; steps: steps ``N`` of the checked grid; coarse_steps: steps of the halved
            grid (``ceil(N / 2)``); nfe: velocity evaluations of one solve on the checked grid
            (plus the dopri5 grid search when there was one).
        samples: source points in the paired subsample; rows: their responses (samples × probes).
        estimate: the statistic on all responses at ``N`` steps; se: its bootstrap standard error
            (``n_boot`` replicates, whole samples resampled).
        fine, coarse: the statistic on the subsample at ``N`` and at ``N / 2`` steps.
        diff: ``fine - coarse``.
        entries: off-diagonal finite entries compared; worst: the entry ``(i, j)`` with the
            largest ``|diff| / se``; max_abs_diff: the largest ``|diff|``; se_at_worst and ratio:
            the SE and ``|diff| / se`` at ``worst``.
        verdict: ``"converged"`` (every ``|diff| <= se``), ``"not converged"`` or
            ``"no off-diagonal entries"`` (one feature: nothing to compare).
    """

    method: str
    steps: int
    coarse_steps: int
    nfe: int
    samples: int
    rows: int
    estimate: Tensor
    se: Tensor
    fine: Tensor
    coarse: Tensor
    diff: Tensor
    entries: int
    worst: tuple[int, int] | None
    max_abs_diff: float
    se_at_worst: float
    ratio: float
    n_boot: int
    verdict: str

    @property
    def converged(self) -> bool:
        """``True`` when every compared entry differs by at most its standard error."""
        return self.verdict == "converged"

    def message(self) -> str:
        """One line: the verdict with its numbers."""
        head = (f"discretisation check ({self.method}, {self.steps} vs {self.coarse_steps} steps, "
                f"{self.samples} paired samples)")
        if self.worst is None:
            return f"{head}: {self.verdict}"
        cmp = "<=" if self.converged else ">"
        return (f"{head}: {self.verdict}: max |Δcorr| = {self.max_abs_diff:.3g}; at entry {self.worst} "
                f"|Δcorr| = {self.ratio * self.se_at_worst:.3g} {cmp} bootstrap SE {self.se_at_worst:.3g}")

    def to_dict(self) -> dict:
        """JSON-ready summary (matrices as nested lists)."""
        from .report import to_jsonable

        keys = ("method", "steps", "coarse_steps", "nfe", "samples", "rows", "entries", "worst", "max_abs_diff",
                "se_at_worst", "ratio", "n_boot", "verdict", "estimate", "se", "fine", "coarse", "diff")
        out = {k: to_jsonable(getattr(self, k)) for k in keys}
        out["converged"] = self.converged
        out["rule"] = ("converged when |corr(N steps) - corr(N/2 steps)| on the paired subsample (same x0 and "
                       "probes) is at most the bootstrap SE of the N-step estimate, for every off-diagonal entry")
        return out


def _halve(grid: Tensor) -> Tensor:
    """Every other point of ``grid``, always ending at its last point: ``N`` steps -> ``ceil(N/2)``."""
    coarse = grid[::2]
    if coarse[-1] != grid[-1]:
        coarse = torch.cat([coarse, grid[-1:]])
    return coarse


def _grid(velocity: Velocity, x0: Tensor, method: str, steps: int, grid: Tensor | None) -> tuple[Tensor, int]:
    """The checked grid: given, uniform with ``steps`` steps, or dopri5's adaptive grid on ``x0``."""
    if grid is not None:
        return grid.to(device=x0.device, dtype=x0.dtype), 0
    if method == "dopri5":
        with torch.no_grad():
            return dopri5_grid(velocity, x0)
    return time_grid(steps, dtype=x0.dtype, device=x0.device), 0


def _offdiag_compare(estimate: Tensor, diff: Tensor, se: Tensor
                     ) -> tuple[int, tuple[int, int] | None, float, float, float]:
    """``(entries, worst, max |diff|, se at worst, ratio at worst)`` over the off-diagonal entries
    where the estimate is finite. A NaN ``diff`` there (the halved grid gives a zero-variance
    feature) counts as an infinite ratio: the coarse statistic does not exist."""
    m = diff.shape[0]
    mask = ~torch.eye(m, dtype=torch.bool) & torch.isfinite(estimate) & torch.isfinite(se)
    entries = int(mask.sum())
    if entries == 0:
        return 0, None, 0.0, 0.0, 0.0
    a = torch.where(torch.isfinite(diff), diff.abs(), math.inf)
    # |diff| / se, with 0/0 = 0 (both grids agree exactly) and x/0 = inf
    ratio = torch.where(se > 0, a / torch.where(se > 0, se, 1.0), torch.where(a > 0, math.inf, 0.0))
    ratio = torch.where(mask, ratio, -1.0)
    flat = int(torch.argmax(ratio))
    i, j = divmod(flat, m)
    return entries, (i, j), float(a[mask].max()), float(se[i, j]), float(ratio[i, j])


def discretisation_check(
    velocity: Velocity,
    x0: Tensor,
    probes: Tensor,
    *,
    classifier: Callable[[Tensor], Tensor] | None = None,
    features: Sequence[int] | Tensor | None = None,
    mode: str = "forward",
    eps: float | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    responses: Tensor | None = None,
    subsample: int = 64,
    n_boot: int = 200,
    seed: int = 0,
    batch_size: int = 256,
    se: Tensor | None = None,
) -> DiscretisationCheck:
    r"""Compare the correlation of JVP responses at ``N`` and ``N / 2`` steps on a paired subsample.

    Args:
        velocity, x0, probes, classifier, features, mode, eps, batch_size: as for
            :func:`causal_delta.jvp.attribute_jvp` (``x0`` ``(n, *event)``, probes ``(n, *event)`` or
            ``(n, P, *event)``; the read-out is ``classifier``, the pixel selection ``features`` or
            the identity).
        method, steps, grid: the solver and grid being checked (``N = len(grid) - 1`` steps, at
            least 2); ``dopri5`` without ``grid`` checks its adaptive grid on ``x0``.
        responses: the responses ``(n·P, m)`` already computed on that grid for all of ``x0``
            (sample-major rows, as ``attribute_jvp`` returns them); computed here when ``None``.
        subsample: number of source points (the first ones, with all their probes) recomputed at
            half the steps; cost ``subsample / n`` of half a run.
        n_boot, seed: bootstrap of the full estimate's standard error (whole samples resampled).
        se: that standard error ``(m, m)`` when it is already known (:func:`choose_steps` bootstraps
            it once and reuses it across its trials, since it hardly depends on the steps): then
            only the subsample is integrated, at both step counts, and ``estimate`` is the
            subsample's statistic at ``N`` steps.

    Returns:
        :class:`DiscretisationCheck`.
    """
    from .dependence import bootstrap, correlation
    from .jvp import attribute_jvp

    check_positive_int("subsample", subsample)
    check_positive_int("n_boot", n_boot)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a tensor of shape (n, *event), got {getattr(x0, 'shape', type(x0).__name__)}")
    n = x0.shape[0]
    k = min(subsample, n)
    if k < 2:
        raise ValueError(f"the discretisation check needs at least 2 source points, got n={n}, subsample={subsample}")
    fine_grid, nfe_grid = _grid(velocity, x0, method, steps, grid)
    N = fine_grid.numel() - 1
    if N < 2:
        raise ValueError(f"steps must be >= 2 for the discretisation check (it halves them), got {N}")
    coarse_grid = _halve(fine_grid)
    kw: dict[str, Any] = {"classifier": classifier, "features": features, "mode": mode, "eps": eps,
                          "method": method, "batch_size": batch_size}  # attribute_jvp's keywords, shared
    # the subsample first: attribute_jvp checks the probes' shape before it is used here
    coarse_resp = attribute_jvp(velocity, x0[:k], probes[:k], grid=coarse_grid, **kw).responses.detach().double()
    P = 1 if probes.ndim == x0.ndim else probes.shape[1]
    m = coarse_resp.shape[1]
    coarse = correlation(coarse_resp)
    if se is not None:  # a known SE: the paired subsample alone, at N steps too
        se = torch.as_tensor(se, dtype=torch.float64)
        if se.shape != (m, m):
            raise ValueError(f"se must have shape (m, m) = ({m}, {m}) for the read-out, got {tuple(se.shape)}")
        fine_resp = attribute_jvp(velocity, x0[:k], probes[:k], grid=fine_grid, **kw).responses
        estimate = fine = correlation(fine_resp.detach().double())
    else:
        if responses is None:
            responses = attribute_jvp(velocity, x0, probes, grid=fine_grid, **kw).responses
        responses = responses.detach().double()
        if responses.ndim != 2 or responses.shape[0] != n * P or responses.shape[1] != m:
            raise ValueError(f"responses must have shape (n·P, m) = ({n * P}, {m}) for x0, probes "
                             f"and the read-out, got {tuple(responses.shape)}")
        fine = correlation(responses[: k * P])
        groups = torch.arange(n).repeat_interleave(P) if P > 1 else None
        boot = bootstrap(responses, statistic="corr", n_boot=n_boot, seed=seed, groups=groups, interval="percentile")
        estimate, se = boot.estimate, boot.se
    diff = fine - coarse
    entries, worst, max_abs, se_w, ratio = _offdiag_compare(estimate, diff, se)
    if entries == 0:
        verdict = VERDICTS[2]
    else:
        verdict = VERDICTS[0] if ratio <= 1.0 else VERDICTS[1]
    return DiscretisationCheck(
        method=method, steps=N, coarse_steps=coarse_grid.numel() - 1, nfe=nfe_grid + NFE_PER_STEP[method] * N,
        samples=k, rows=k * P, estimate=estimate, se=se, fine=fine, coarse=coarse, diff=diff,
        entries=entries, worst=worst, max_abs_diff=max_abs, se_at_worst=se_w, ratio=ratio, n_boot=n_boot,
        verdict=verdict)


@dataclass
class StepChoice:
    """Result of :func:`choose_steps`.

    Attributes:
        method, steps, nfe: the chosen solver, its uniform step count and the velocity evaluations
            of one solve (``NFE_PER_STEP[method] * steps``).
        passed: whether the chosen count passed the check (``False``: no solver passed within
            ``max_steps``; the choice is then the one closest to passing).
        check: the :class:`DiscretisationCheck` of the chosen solver and count.
        trials: per solver, the checks tried in order as ``{"steps", "nfe", "max_abs_diff",
            "se_at_worst", "ratio", "verdict"}``; ``stopped`` says why the doubling ended.
    """

    method: str
    steps: int
    nfe: int
    passed: bool
    check: DiscretisationCheck
    trials: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary with the chosen check and every trial."""
        return {"method": self.method, "steps": self.steps, "nfe": self.nfe, "passed": self.passed,
                "check": self.check.to_dict(), "trials": self.trials,
                "rule": "per solver, steps doubled from the start until the discretisation check passes "
                        "(or the cap); the passing solver with the fewest velocity evaluations is chosen; trials "
                        "after the first compare on the paired subsample against the first trial's bootstrap SE, "
                        "and the chosen steps get a full check"}


def choose_steps(
    velocity: Velocity,
    x0: Tensor,
    probes: Tensor,
    *,
    methods: Sequence[str] = ("rk4", "midpoint", "euler"),
    start: int = 4,
    max_steps: int = 1024,
    progress: bool = False,
    **check_kwargs,
) -> StepChoice:
    r"""Solver and step count that pass :func:`discretisation_check` with the fewest velocity evaluations.

    For each solver in ``methods`` the uniform step count doubles from ``start`` (``>= 2``) until
    the check passes or the next count would exceed ``max_steps``. A solver stops early once its
    next count would cost more evaluations than a count that already passed (it cannot be the
    cheapest), so list the high-order solvers first. ``dopri5`` here is the fixed-step
    Dormand–Prince method (6 evaluations per step) on the uniform grid.

    Cost: the first trial integrates all of ``x0`` once and bootstraps the estimate's standard
    error; the later trials reuse that SE and integrate only the paired subsample (at ``N`` and
    ``N / 2`` steps), and the chosen solver and steps get one full check at the end (its
    ``estimate`` and SE are those of all of ``x0`` at the chosen steps; its verdict decides
    ``passed``).

    Args:
        velocity, x0, probes: as for :func:`discretisation_check`.
        check_kwargs: passed on (read-out, ``mode``, ``subsample``, ``n_boot``, ``seed``, ...).

    Returns:
        :class:`StepChoice`.
    """
    check_positive_int("start", start)
    check_positive_int("max_steps", max_steps)
    if start < 2 or start > max_steps:
        raise ValueError(f"start must be an integer in [2, max_steps={max_steps}], got {start}")
    methods = tuple(methods)
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods must be a non-empty sequence of {METHODS}, got {methods!r}")
    for bad in ("method", "steps", "grid", "responses"):
        if bad in check_kwargs:
            raise ValueError(f"choose_steps chooses {bad!r} itself; do not pass it")
    se: Tensor | None = None  # the full estimate's SE, bootstrapped at the first trial
    first: DiscretisationCheck | None = None
    best: DiscretisationCheck | None = None  # cheapest passing check
    passing: list[DiscretisationCheck] = []  # each solver's passing trial, in the order tried
    closest: DiscretisationCheck | None = None  # smallest ratio when none passes
    trials: dict[str, dict] = {}
    bar = None
    if progress:
        from ._progress import progress_bar  # tqdm is optional for library users

        bar = progress_bar(desc="choosing solver steps", unit="check", leave=False)
    for method in methods:
        rows, steps, stopped = [], start, "cap"
        while True:
            if best is not None and NFE_PER_STEP[method] * steps > best.nfe:
                stopped = "costlier than a passing choice"
                break
            grid = time_grid(steps, dtype=x0.dtype, device=x0.device)
            chk = discretisation_check(velocity, x0, probes, method=method, grid=grid, se=se, **check_kwargs)
            if se is None:
                se, first = chk.se, chk
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{method} {steps}: {chk.verdict}")
            rows.append({"steps": steps, "nfe": chk.nfe, "max_abs_diff": chk.max_abs_diff,
                         "se_at_worst": chk.se_at_worst, "ratio": chk.ratio, "verdict": chk.verdict})
            if chk.verdict != VERDICTS[1]:
                stopped = "passed"
                passing.append(chk)
                if best is None or chk.nfe < best.nfe:
                    best = chk
                break
            if closest is None or chk.ratio < closest.ratio:
                closest = chk
            if steps * 2 > max_steps:
                break
            steps *= 2
        trials[method] = {"checks": rows, "stopped": stopped}
    if bar is not None:
        bar.close()
    assert first is not None  # methods is not empty: the first trial ran
    done = [first]  # checks on all samples

    def full(chk: DiscretisationCheck) -> DiscretisationCheck:  # a trial on the subsample: checked on all samples
        if any(chk is d for d in done):
            return chk
        grid = time_grid(chk.steps, dtype=x0.dtype, device=x0.device)
        done.append(discretisation_check(velocity, x0, probes, method=chk.method, grid=grid, **check_kwargs))
        return done[-1]

    # The cheapest passing trial whose full check (its own SE) passes too; the trials' SE is the
    # first trial's, so a trial that passed by a hair may fail there, and the next one is tried.
    for cand in sorted(passing, key=lambda c: c.nfe):
        chk = full(cand)
        if chk.verdict != VERDICTS[1]:
            return StepChoice(method=chk.method, steps=chk.steps, nfe=chk.nfe, passed=True, check=chk, trials=trials)
        if closest is None or chk.ratio < closest.ratio:
            closest = chk
    assert closest is not None  # methods is not empty: each trial either passed or set closest
    chk = full(closest)
    return StepChoice(method=chk.method, steps=chk.steps, nfe=chk.nfe, passed=False, check=chk, trials=trials)
