r"""Maximum mean discrepancy with a Gaussian kernel (unbiased U-statistic).

For samples ``X = (x_1..x_m)`` and ``Y = (y_1..y_n)`` and the kernel
:math:`k(a, b) = \exp(-\|a - b\|^2 / (2h^2))`,

.. math::
    \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} k(x_i, x_j)
        + \frac{1}{n(n-1)} \sum_{i \ne j} k(y_i, y_j) - \frac{2}{mn} \sum_{i, j} k(x_i, y_j),

an unbiased estimate of :math:`\mathrm{MMD}^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)`
(Gretton et al. 2012, Lemma 6); it can be negative when the distributions agree.
The bandwidth ``h`` defaults to the *median heuristic*: the median Euclidean distance between
distinct points of the pooled sample ``X ∪ Y`` (on at most 2000 points, drawn without
replacement by a seeded generator when there are more).

Closed form used to test it: for :math:`X \sim N(\mu_1, s^2 I_d)`, :math:`Y \sim N(\mu_2, s^2 I_d)`,
:math:`\mathrm{MMD}^2 = 2 (h^2 / (h^2 + 2 s^2))^{d/2} [1 - \exp(-\|\mu_1 - \mu_2\|^2 / (2 (h^2 + 2 s^2)))]`
(see :func:`gaussian_mmd2`).

Paired copies: when ``y_i`` is (nearly) a copy of ``x_i`` — a flow that maps each training
source onto its own target — the U-statistic is *negative* (the cross term keeps
``k(x_i, y_i) ≈ 1``, the within terms drop their diagonals), about ``-2(1 - mean k)/n``; the biased
V-statistic :func:`mmd2_biased` (diagonals kept) is ``≈ 0`` for copies, ``≥ 0`` always, and is
what a "memorisation MMD close to 0" refers to. Both are reported by the diagnostics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["median_bandwidth", "mmd2_unbiased", "mmd2_biased", "gaussian_mmd2", "MAX_MEDIAN_POINTS"]

MAX_MEDIAN_POINTS = 2000


def _flat(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"{name} must be a floating-point tensor of shape (n, *event), got "
                         f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples for the unbiased MMD, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf entries")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def median_bandwidth(x: Tensor, y: Tensor | None = None, *, seed: int = 0) -> float:
    """Median heuristic: the median distance between distinct points of the pooled sample."""
    z = _flat("x", x) if y is None else torch.cat([_flat("x", x), _flat("y", y)])
    if z.shape[0] > MAX_MEDIAN_POINTS:
        idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:MAX_MEDIAN_POINTS]
        z = z[idx]
    d = torch.cdist(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    h = float(d[iu[0], iu[1]].median())
    if not h > 0:
        raise ValueError("median heuristic: all points coincide; give the bandwidth explicitly")
    return h


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: float | None = None) -> tuple[float, float]:
    """Unbiased MMD² between samples ``x`` ``(m, *event)`` and ``y`` ``(n, *event)``.

    Args:
        bandwidth: kernel width ``h`` > 0; ``None`` for the median heuristic.

    Returns:
        ``(mmd2, h)``: the estimate (float64 arithmetic) and the bandwidth used.
    """
    xf, yf = _flat("x", x), _flat("y", y)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y must have the same event size, got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    m, n = xf.shape[0], yf.shape[0]

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2.0 * h * h))

    kxx = (k(xf, xf).sum() - m) / (m * (m - 1))  # the diagonal k(x_i, x_i) = 1 is left out
    kyy = (k(yf, yf).sum() - n) / (n * (n - 1))
    kxy = k(xf, yf).mean()
    return float(kxx + kyy - 2.0 * kxy), h


def mmd2_biased(x: Tensor, y: Tensor, bandwidth: float) -> float:
    r"""Biased (V-statistic) MMD²: ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)``, diagonals kept.

    Non-negative (the squared RKHS norm of the difference of the empirical mean embeddings), 0
    for identical samples; bias ``O(1/n)`` for independent samples.
    """
    xf, yf = _flat("x", x), _flat("y", y)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y must have the same event size, got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    h = float(bandwidth)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2.0 * h * h))

    return float(k(xf, xf).mean() + k(yf, yf).mean() - 2.0 * k(xf, yf).mean())


def gaussian_mmd2(mu1: Tensor, mu2: Tensor, s: float, bandwidth: float) -> float:
    r"""Exact MMD² between ``N(mu1, s² I)`` and ``N(mu2, s² I)`` for the Gaussian kernel of width ``h``.

    Uses :math:`E \exp(-\|Z\|^2 / (2h^2)) = (h^2/(h^2+v))^{d/2} \exp(-\|m\|^2 / (2(h^2+v)))` for
    :math:`Z \sim N(m, v I_d)`, with ``v = 2 s²`` for a difference of two independent draws.
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    d = mu1.numel()
    h2, v = float(bandwidth) ** 2, 2.0 * float(s) ** 2
    scale = (h2 / (h2 + v)) ** (d / 2)
    return 2.0 * scale * (1.0 - math.exp(-float((mu1 - mu2).square().sum()) / (2.0 * (h2 + v))))
