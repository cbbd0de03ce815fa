r"""Bootstrap confidence intervals from replicates: percentile and BCa (bias-corrected, accelerated).

Public through :mod:`causal_delta.dependence` (:func:`bootstrap_interval`,
:func:`bootstrap_statistic`); :func:`causal_delta.dependence.bootstrap` and the experiments'
``bootstrap_ci`` both end here, so there is one definition of each interval.

Percentile interval at level ``1 - 2α``: the ``α`` and ``1 - α`` quantiles of the replicates
``θ*_b``. When the replicates sit mostly on one side of the estimate ``θ̂`` (a biased or skewed
statistic) it can exclude ``θ̂`` itself. BCa (Efron 1987; Efron & Tibshirani 1993, §14.3) moves
the quantile levels:

.. math::
    z_0 = Φ^{-1}\Big(\frac{\#\{θ^*_b < θ̂\} + \tfrac12 \#\{θ^*_b = θ̂\}}{B}\Big), \qquad
    a = \frac{\sum_i (\bar θ_{(\cdot)} - θ_{(i)})^3}{6 \big[\sum_i (\bar θ_{(\cdot)} - θ_{(i)})^2\big]^{3/2}},

    α_{1,2} = Φ\Big(z_0 + \frac{z_0 + z_{α, 1-α}}{1 - a (z_0 + z_{α, 1-α})}\Big),

with ``θ_(i)`` the jackknife (leave-one-out, or leave-one-group-out) values. ``z0`` is clipped to
the levels ``B`` replicates can resolve, ``[1/(2B), 1 - 1/(2B)]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ._validation import check_positive_int

__all__ = ["INTERVALS", "bootstrap_interval", "jackknife_acceleration", "bootstrap_statistic"]

INTERVALS = ("bca", "percentile")


def _check_level(level: float) -> float:
    lv = float(level)
    if not 0.0 < lv < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return lv


def _check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    return interval


def _quantile_at(sorted_reps: Tensor, count: Tensor, prob: Tensor) -> Tensor:
    """Per-entry quantile (linear interpolation) at its own probability ``prob (...)``.

    ``sorted_reps (B, ...)`` sorted along 0 with NaN last, ``count (...)`` finite replicates.
    """
    pos = prob.clamp(0.0, 1.0) * (count - 1).clamp_min(0)
    lo = pos.floor().long().clamp(0, sorted_reps.shape[0] - 1)
    hi = (lo + 1).clamp(max=(count - 1).clamp_min(0).long())
    frac = pos - lo.to(pos.dtype)
    a = torch.gather(sorted_reps, 0, lo.unsqueeze(0)).squeeze(0)
    b = torch.gather(sorted_reps, 0, hi.unsqueeze(0)).squeeze(0)
    out = a + frac * (b - a)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


def jackknife_acceleration(jackknife: Tensor) -> Tensor:
    r"""BCa acceleration ``a = Σ d³ / (6 (Σ d²)^{3/2})``, ``d_i = mean(θ_(·)) - θ_(i)``; ``jackknife (G, ...)``.

    Zero where the jackknife values do not vary (or are not finite).
    """
    d = jackknife.mean(0) - jackknife
    num = (d**3).sum(0)
    den = 6.0 * (d**2).sum(0).pow(1.5)
    ok = torch.isfinite(num) & torch.isfinite(den) & (den > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def bootstrap_interval(
    replicates: Tensor,
    estimate: Tensor,
    *,
    level: float = 0.95,
    interval: str = "bca",
    jackknife: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Two-sided interval at ``level`` for every entry, from bootstrap replicates.

    Args:
        replicates: ``(B, ...)`` bootstrap values ``θ*_b`` (NaN replicates are ignored).
        estimate: ``(...)`` the statistic on the full data ``θ̂``.
        level: confidence level in (0, 1).
        interval: ``"bca"`` (bias-corrected and accelerated; see the module docstring) or
            ``"percentile"``.
        jackknife: ``(G, ...)`` leave-one-out values for the BCa acceleration; without them
            ``a = 0`` (the bias-corrected percentile interval).

    Returns:
        ``(lower, upper)``, each shaped like ``estimate``; NaN where the estimate is NaN (BCa)
        or no replicate is finite.
    """
    lv = _check_level(level)
    _check_interval(interval)
    reps = replicates.double()
    est = torch.as_tensor(estimate, dtype=torch.float64).expand(reps.shape[1:])
    alpha = 0.5 * (1.0 - lv)
    finite = torch.isfinite(reps)
    count = finite.sum(0)
    sorted_reps = torch.sort(torch.where(finite, reps, torch.full_like(reps, float("nan"))), dim=0).values
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    if interval == "percentile":
        p_lo = torch.full_like(est, alpha)
        p_hi = torch.full_like(est, 1.0 - alpha)
    else:
        below = ((reps < est) & finite).sum(0).double()
        equal = ((reps == est) & finite).sum(0).double()
        B = count.double().clamp_min(1.0)
        prop = ((below + 0.5 * equal) / B).clamp(min=0.5 / B, max=1.0 - 0.5 / B)
        z0 = normal.icdf(prop)
        a = jackknife_acceleration(jackknife.double()) if jackknife is not None else torch.zeros_like(est)
        z_lo = normal.icdf(torch.tensor(alpha, dtype=torch.float64))
        z_hi = normal.icdf(torch.tensor(1 - alpha, dtype=torch.float64))

        def level_at(z: Tensor) -> Tensor:
            w = z0 + z
            return normal.cdf(z0 + w / (1.0 - a * w))

        p_lo, p_hi = level_at(z_lo), level_at(z_hi)
        nan = ~torch.isfinite(est)
        p_lo = torch.where(nan, torch.full_like(p_lo, float("nan")), p_lo)
        p_hi = torch.where(nan, torch.full_like(p_hi, float("nan")), p_hi)
    lower = _quantile_at(sorted_reps, count, torch.nan_to_num(p_lo, nan=0.0))
    upper = _quantile_at(sorted_reps, count, torch.nan_to_num(p_hi, nan=1.0))
    bad = ~torch.isfinite(p_lo) | ~torch.isfinite(p_hi)
    lower = torch.where(bad, torch.full_like(lower, float("nan")), lower)
    upper = torch.where(bad, torch.full_like(upper, float("nan")), upper)
    return lower, upper


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    n: int,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    interval: str = "bca",
    jackknife_blocks: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap interval of any ``statistic(indices)`` over resampled rows (not vectorised).

    For statistics that :func:`causal_delta.dependence.bootstrap` does not cover (e.g. a Pearson
    correlation between two correlation matrices). Each replicate calls ``statistic`` on
    ``n`` row indices drawn with replacement (a ``torch.Generator`` seeded with ``seed``); the BCa
    acceleration uses a delete-a-block jackknife over ``min(n, jackknife_blocks)`` contiguous
    blocks of rows (``G`` extra calls instead of ``n``).

    Returns:
        ``(estimate, lower, upper)`` arrays shaped like the statistic.
    """
    _check_level(level)
    _check_interval(interval)
    check_positive_int("n", n)
    check_positive_int("n_boot", n_boot)
    check_positive_int("jackknife_blocks", jackknife_blocks)
    gen = torch.Generator().manual_seed(int(seed))
    every = np.arange(n)
    est = np.asarray(statistic(every), dtype=np.float64)
    reps = np.asarray([statistic(torch.randint(0, n, (n,), generator=gen).numpy()) for _ in range(n_boot)],
                      dtype=np.float64)
    jack = None
    if interval == "bca" and n >= 3:
        blocks = np.array_split(every, min(n, jackknife_blocks))
        jack = torch.from_numpy(np.asarray([statistic(np.delete(every, b)) for b in blocks], dtype=np.float64))
    lo, hi = bootstrap_interval(torch.from_numpy(reps), torch.from_numpy(est), level=level, interval=interval,
                                jackknife=jack)
    return est, lo.numpy(), hi.numpy()

