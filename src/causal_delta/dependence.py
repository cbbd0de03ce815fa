r"""Dependence estimators on JVP responses :math:`\Delta y` (Section 5 and 6.4 of arXiv 2602.02793).

Input everywhere: responses ``dy`` of shape ``(n, m)`` — one row per (sample, probe), one
column per feature (selected pixels, channels or classifier attributes), as produced by
:func:`causal_delta.jvp.attribute_jvp`. Nothing here forms a ``d × d`` matrix over the image;
the cost is ``O(n m²)``.

* :func:`second_moment`: uncentred :math:`S = E[\Delta y \Delta y^T]`.
* :func:`correlation`: the paper's :math:`\mathrm{Corr} = D^{-1/2} S D^{-1/2}`, ``D = diag(S)``;
  ``centered=True`` gives the Pearson correlation that the original code reported
  (``np.corrcoef``), for comparison only.
* :func:`bootstrap`: BCa (default) or percentile confidence intervals and standard errors for
  every entry, seeded and vectorised (multinomial resampling weights times the pairwise
  products; the BCa acceleration from a vectorised leave-one-out jackknife).
  :func:`bootstrap_interval` / :func:`bootstrap_statistic`: the same intervals for any
  replicates or any statistic of resampled rows.
* :func:`condition` / :func:`threshold_sweep`: keep the rows whose response of feature ``k`` is
  small and recompute (Section 6.4). This is *conditioning* on a small response, not a
  do-intervention.
* :func:`hold_fixed_probes` / :func:`hold_fixed_responses`: the first-order alternative —
  project every probe onto the null space of :math:`\nabla_{x_0}(C_k\circ f)(x_0)`, so that
  :math:`\Delta y_k = 0` to first order for every sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._intervals import INTERVALS, bootstrap_interval, bootstrap_statistic
from ._validation import check_finite, check_positive_int

__all__ = [
    "second_moment",
    "correlation",
    "correlation_from_moments",
    "BootstrapResult",
    "bootstrap",
    "bootstrap_interval",
    "bootstrap_statistic",
    "INTERVALS",
    "ConditionedEstimate",
    "condition",
    "SweepResult",
    "threshold_sweep",
    "hold_fixed_probes",
    "hold_fixed_responses",
]


def _check_dy(dy: Tensor, name: str = "responses") -> Tensor:
    if not isinstance(dy, Tensor):
        dy = torch.as_tensor(dy)
    if dy.ndim != 2 or dy.shape[0] < 1 or dy.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, m) with n, m >= 1, got {tuple(dy.shape)}")
    if not dy.is_floating_point():
        dy = dy.double()
    check_finite(name, dy)
    return dy


def _check_k(k: int, m: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < m:
        raise ValueError(f"{name} must be an integer feature index in [0, {m}), got {k!r}")
    return k


def second_moment(dy: Tensor) -> Tensor:
    r"""Uncentred second moment :math:`S = \frac1n \sum_i \Delta y_i \Delta y_i^T`, ``(m, m)``."""
    dy = _check_dy(dy)
    return dy.T @ dy / dy.shape[0]


def correlation_from_moments(S: Tensor, mean: Tensor | None = None) -> Tensor:
    r"""``D^{-1/2} S D^{-1/2}`` for ``S`` ``(..., m, m)``; with ``mean`` ``(..., m)`` the covariance
    ``S - μμ^T`` is normalised instead (Pearson). Zero-variance features give NaN entries."""
    if mean is not None:
        S = S - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    d = torch.diagonal(S, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    denom = d.unsqueeze(-1) * d.unsqueeze(-2)
    return torch.where(denom > 0, S / denom, torch.full_like(S, float("nan")))


def correlation(dy: Tensor, *, centered: bool = False) -> Tensor:
    r"""Correlation matrix of responses, ``(m, m)``.

    ``centered=False`` (default, the paper's estimator): :math:`D^{-1/2} S D^{-1/2}` with the
    uncentred :math:`S = E[\Delta y\Delta y^T]`. For probes with zero mean the population mean of
    :math:`\Delta y` is zero, so both estimate the same quantity; the uncentred one is what the
    paper defines. ``centered=True``: Pearson (``np.corrcoef``), what the original code reported.
    """
    dy = _check_dy(dy)
    n = dy.shape[0]
    S = dy.T @ dy / n
    return correlation_from_moments(S, dy.mean(0) if centered else None)


@dataclass
class BootstrapResult:
    """Bootstrap of :func:`correlation` (or of :func:`second_moment`).

    Attributes:
        estimate: the statistic on the full data ``(m, m)``.
        lower, upper: interval at ``level`` ``(m, m)`` (the kind named by ``interval``).
        se: bootstrap standard error ``(m, m)``.
        level: confidence level; n_boot: replicates; seed: the seed used; statistic: name.
        interval: ``"bca"`` or ``"percentile"`` (see :func:`bootstrap_interval`).
    """

    estimate: Tensor
    lower: Tensor
    upper: Tensor
    se: Tensor
    level: float
    n_boot: int
    seed: int
    statistic: str
    interval: str = "bca"

    def entry(self, i: int, j: int) -> dict:
        """``{"estimate", "lower", "upper", "se"}`` of entry ``(i, j)`` as floats."""
        return {k: float(getattr(self, k)[i, j]) for k in ("estimate", "lower", "upper", "se")}


_STATISTICS = ("corr", "centered_corr", "second_moment")


def bootstrap(
    dy: Tensor,
    *,
    statistic: str = "corr",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 100,
    groups: Tensor | None = None,
    interval: str = "bca",
) -> BootstrapResult:
    r"""Bootstrap interval for every entry of the correlation (or second moment) matrix.

    Vectorised: each replicate is a multinomial count vector ``w`` (``n`` draws with replacement),
    and its moments are ``w @ (Δy_i Δy_j)`` — one matrix product per chunk of replicates. The
    BCa acceleration comes from the leave-one-out (leave-one-group-out) jackknife, whose
    moments are ``(Σ - own term) / (n - own count)`` for every row at once.

    Args:
        dy: responses ``(n, m)``.
        statistic: ``"corr"`` (the paper's uncentred), ``"centered_corr"`` (Pearson) or
            ``"second_moment"``.
        n_boot: replicates; level: two-sided confidence level in (0, 1); seed: for a private
            ``torch.Generator``; chunk: replicates per matrix product.
        groups: optional ``(n,)`` integer group of each row (e.g. the sample index when several
            probes share a sample): whole groups are resampled (and left out by the jackknife).
        interval: ``"bca"`` (default: bias-corrected and accelerated, which keeps a skewed
            statistic's interval around its estimate) or ``"percentile"``; see
            :func:`bootstrap_interval`.
    """
    dy = _check_dy(dy)
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
    check_positive_int("n_boot", n_boot)
    check_positive_int("chunk", chunk)
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    n, m = dy.shape
    dy = dy.double() if dy.dtype != torch.float64 else dy
    prods = (dy.unsqueeze(2) * dy.unsqueeze(1)).reshape(n, m * m)
    if groups is not None:
        groups = torch.as_tensor(groups).reshape(-1)
        if groups.shape[0] != n:
            raise ValueError(f"groups must have shape (n,) = ({n},), got {tuple(groups.shape)}")
        _, gid = torch.unique(groups, return_inverse=True)
        G = int(gid.max()) + 1
        prods_g = torch.zeros(G, m * m, dtype=dy.dtype).index_add_(0, gid, prods)  # group sums
        dy_g = torch.zeros(G, m, dtype=dy.dtype).index_add_(0, gid, dy)
        count_g = torch.zeros(G, dtype=dy.dtype).index_add_(0, gid, torch.ones(n, dtype=dy.dtype))
    else:
        G, prods_g, dy_g, count_g = n, prods, dy, torch.ones(n, dtype=dy.dtype)
    gen = torch.Generator().manual_seed(int(seed))

    def stat(S: Tensor, mu: Tensor) -> Tensor:
        if statistic == "second_moment":
            return S
        return correlation_from_moments(S, mu if statistic == "centered_corr" else None)

    reps = []
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        idx = torch.randint(0, G, (b, G), generator=gen)
        w = torch.zeros(b, G, dtype=dy.dtype).scatter_add_(1, idx, torch.ones(b, G, dtype=dy.dtype))
        tot = (w @ count_g).unsqueeze(1)
        S = (w @ prods_g / tot).reshape(b, m, m)
        mu = w @ dy_g / tot
        reps.append(stat(S, mu))
    R = torch.cat(reps)
    S_full = prods.mean(0).reshape(m, m)
    est = stat(S_full, dy.mean(0))
    jack = None
    if interval == "bca" and G >= 3:
        rest = (count_g.sum() - count_g).unsqueeze(1)  # rows left after dropping each group
        jack = stat(((prods_g.sum(0) - prods_g) / rest).reshape(G, m, m), (dy_g.sum(0) - dy_g) / rest)
    lower, upper = bootstrap_interval(R, est, level=level, interval=interval, jackknife=jack)
    return BootstrapResult(estimate=est, lower=lower, upper=upper, se=R.std(0), level=float(level),
                           n_boot=n_boot, seed=int(seed), statistic=statistic, interval=interval)


@dataclass
class ConditionedEstimate:
    """Correlation recomputed on the rows whose response of feature ``k`` is small (:func:`condition`).

    Attributes:
        k: conditioning feature; threshold: the absolute threshold on ``|Δy_k|`` used.
        mask: ``(n,)`` bool, rows kept (``None`` from a streamed
            :meth:`causal_delta.moments.MomentAccumulator.condition`, which holds no rows).
        kept: their number; kept_fraction: kept / n.
        corr: correlation on the kept rows ``(m, m)`` (NaN-filled if fewer than 2 rows kept).
        ci: bootstrap of the kept rows, or ``None`` when ``n_boot=0``.
    """

    k: int
    threshold: float
    mask: Tensor | None
    kept: int
    kept_fraction: float
    corr: Tensor
    ci: BootstrapResult | None


def _threshold(dy: Tensor, k: int, threshold: float | None, quantile: float | None) -> float:
    if (threshold is None) == (quantile is None):
        raise ValueError("give exactly one of threshold (absolute, on |dy_k|) or quantile (in (0, 1])")
    if threshold is not None:
        t = float(threshold)
        if not t > 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        return t
    assert quantile is not None  # exactly one of the two was given
    q = float(quantile)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    return float(torch.quantile(dy[:, k].abs().double(), q))


def condition(
    dy: Tensor,
    k: int,
    *,
    threshold: float | None = None,
    quantile: float | None = None,
    centered: bool = False,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
    interval: str = "bca",
) -> ConditionedEstimate:
    r"""Keep rows with :math:`|\Delta y_k| \le` ``threshold`` (or the ``quantile`` of ``|Δy_k|``) and
    recompute the correlation (Section 6.4).

    This estimates the dependence *given* a small response of feature ``k`` — conditioning,
    not :math:`do(\cdot)`. For a linear-Gaussian model it tends to the partial correlation
    given feature ``k`` as the threshold shrinks. (The original CelebA script used the
    absolute threshold ``1e-4`` on logits for probes of norm ``1e-2``, i.e. ``1e-2`` in the
    units of ``J z`` used here.)
    """
    dy = _check_dy(dy)
    _check_k(k, dy.shape[1])
    thr = _threshold(dy, k, threshold, quantile)
    mask = dy[:, k].abs() <= thr
    kept = int(mask.sum())
    sub = dy[mask]
    m = dy.shape[1]
    if kept >= 2:
        corr = correlation(sub, centered=centered)
    else:
        corr = torch.full((m, m), float("nan"), dtype=dy.dtype)
    ci = None
    if n_boot and kept >= 2:
        ci = bootstrap(sub, statistic="centered_corr" if centered else "corr", n_boot=n_boot, seed=seed,
                       level=level, interval=interval)
    return ConditionedEstimate(k=k, threshold=thr, mask=mask, kept=kept, kept_fraction=kept / dy.shape[0],
                               corr=corr, ci=ci)


@dataclass
class SweepResult:
    """Threshold-sensitivity sweep of one correlation entry (:func:`threshold_sweep`).

    All tensors have one entry per quantile: ``quantiles``, ``thresholds`` (on ``|Δy_k|``),
    ``kept`` (rows), ``kept_fraction``, ``estimate``, ``lower``, ``upper``, ``se`` of
    ``Corr[i, j]`` on the kept rows. ``pair = (i, j)``, ``k`` the conditioning feature.
    """

    k: int
    pair: tuple[int, int]
    quantiles: Tensor
    thresholds: Tensor
    kept: Tensor
    kept_fraction: Tensor
    estimate: Tensor
    lower: Tensor
    upper: Tensor
    se: Tensor
    level: float


def threshold_sweep(
    dy: Tensor,
    k: int,
    pair: tuple[int, int],
    *,
    quantiles: Sequence[float] = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02),
    centered: bool = False,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
    interval: str = "bca",
) -> SweepResult:
    r"""``Corr[i, j]`` with bootstrap CI as a function of the kept fraction when conditioning on
    small :math:`|\Delta y_k|` (quantile thresholds; ``1.0`` keeps everything)."""
    dy = _check_dy(dy)
    m = dy.shape[1]
    _check_k(k, m)
    if len(pair) != 2:
        raise ValueError(f"pair must be two feature indices (i, j), got {pair!r}")
    i, j = (_check_k(p, m, "pair") for p in pair)
    rows = []
    for q in quantiles:
        c = condition(dy, k, quantile=q, centered=centered, n_boot=n_boot, seed=seed, level=level,
                      interval=interval)
        if c.ci is not None:
            e = c.ci.entry(i, j)
        else:
            e = {"estimate": float(c.corr[i, j]), "lower": float("nan"), "upper": float("nan"), "se": float("nan")}
        rows.append((float(q), c.threshold, c.kept, c.kept_fraction, e["estimate"], e["lower"], e["upper"], e["se"]))
    cols = list(zip(*rows))
    f = lambda c: torch.tensor(c, dtype=torch.float64)  # noqa: E731
    return SweepResult(k=k, pair=(i, j), quantiles=f(cols[0]), thresholds=f(cols[1]),
                       kept=torch.tensor(cols[2]), kept_fraction=f(cols[3]), estimate=f(cols[4]),
                       lower=f(cols[5]), upper=f(cols[6]), se=f(cols[7]), level=float(level))


def hold_fixed_probes(probes: Tensor, gradient: Tensor, *, renormalize: bool = False) -> Tensor:
    r"""Project probes onto the null space of the per-sample gradient ``g``: :math:`z - \frac{g^T z}{g^T g} g`.

    Then :math:`\Delta y_k = g^T z' = 0` to first order for every sample ("hold attribute ``k``
    fixed"). An isotropic Gaussian probe becomes an isotropic Gaussian on that null space.

    Args:
        probes: ``(n, *event)`` or ``(n, P, *event)``.
        gradient: ``(n, *event)`` from :func:`causal_delta.jvp.readout_gradient`. A zero gradient
            leaves the probe unchanged.
        renormalize: rescale each projected probe to its original norm.
    """
    if gradient.ndim < 2:
        raise ValueError(f"gradient must have shape (n, *event), got {tuple(gradient.shape)}")
    n, event = gradient.shape[0], tuple(gradient.shape[1:])
    if tuple(probes.shape) == tuple(gradient.shape):
        z = probes.unsqueeze(1)
        squeeze = True
    elif probes.ndim == gradient.ndim + 1 and probes.shape[0] == n and tuple(probes.shape[2:]) == event:
        z = probes
        squeeze = False
    else:
        raise ValueError(f"probes must have shape (n, *event) or (n, P, *event) matching gradient "
                         f"{tuple(gradient.shape)}, got {tuple(probes.shape)}")
    zf = z.flatten(2)
    g = gradient.to(z.dtype).flatten(1).unsqueeze(1)  # (n, 1, d)
    gg = (g * g).sum(-1, keepdim=True)
    coef = torch.where(gg > 0, (zf * g).sum(-1, keepdim=True) / torch.where(gg > 0, gg, 1.0), 0.0)
    out = zf - coef * g
    if renormalize:
        # A probe parallel to g projects to 0 and stays 0. No floor on the norm: a literal 1e-300
        # is 0 in float32 (0/0), and even finfo.tiny overflows |z| / tiny to inf (0 * inf = NaN).
        norm = out.norm(dim=-1, keepdim=True)
        ok = norm > 0
        out = torch.where(ok, out * (zf.norm(dim=-1, keepdim=True) / torch.where(ok, norm, 1.0)), out)
    out = out.reshape(z.shape)
    return out[:, 0] if squeeze else out


def hold_fixed_responses(
    velocity: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    probes: Tensor,
    k: int,
    *,
    classifier: Callable[[Tensor], Tensor] | None = None,
    features: Sequence[int] | Tensor | None = None,
    method: str = "rk4",
    steps: int = 100,
    grid: Tensor | None = None,
    gradient_mode: str = "reverse",
    batch_size: int = 256,
):
    r"""Responses to probes held orthogonal to :math:`\nabla_{x_0}(C_k\circ f)(x_0)` (first order).

    One VJP per sample (:func:`causal_delta.jvp.readout_gradient`; reverse mode through the
    solver, memory growing with steps — or ``gradient_mode="forward"`` for small ``d``), then
    forward-mode responses of the projected probes. Column ``k`` of the result is zero up to
    round-off; the correlation of the others is the "attribute ``k`` held fixed" estimate, to
    compare with :func:`condition`. Without ``classifier`` and ``features`` the read-out is the
    identity: every flattened coordinate is a feature and ``k`` indexes one of them.

    Returns:
        :class:`causal_delta.jvp.AttributeJVP` (``probes`` are the projected ones).
    """
    from . import jvp as _jvp

    g = _jvp.readout_gradient(velocity, x0, k, classifier=classifier, features=features, method=method,
                              steps=steps, grid=grid, mode=gradient_mode, batch_size=min(batch_size, 64))
    z = hold_fixed_probes(probes, g)
    return _jvp.attribute_jvp(velocity, x0, z, classifier=classifier, features=features, mode="forward",
                              method=method, steps=steps, grid=grid, batch_size=batch_size)
