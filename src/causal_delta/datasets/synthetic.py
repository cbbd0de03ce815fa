"""Synthetic data sources with a known ground truth.

* ``gaussian``: ``N(mean, Σ)`` in ``d`` dimensions (default: 2-D, unit variances, correlation
  0.55, the paper's Section 4.1 example);
* ``gaussian-1d``: ``N(mean, std²)`` in one dimension (default ``N(0, 4)``);
* ``mixture``: a Gaussian mixture from :class:`causal_delta.closed_form.GaussianMixture`
  (default: the 3-component 2-D mixture :data:`DEFAULT_MIXTURE`).

Each source keeps its ground truth as attributes (``cov``/``mean``, ``mixture``), so that
analyses can compare a trained model with the exact answer. Sampling is done in float64 and
returned as float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._validation import check_spd
from . import SamplerSource

__all__ = ["DEFAULT_MIXTURE", "gaussian_source", "gaussian_1d_source", "mixture_source"]

DEFAULT_MIXTURE: dict[str, Sequence] = {
    "weights": [0.5, 0.3, 0.2],
    "means": [[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]],
    "covs": [
        [[0.5, 0.2], [0.2, 0.5]],
        [[0.4, -0.1], [-0.1, 0.3]],
        [[0.3, 0.0], [0.0, 0.6]],
    ],
}
"""Default 3-component 2-D mixture: well separated modes, different shapes."""


def _as_matrix(value, name: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {value!r}") from exc


def gaussian_source(cov: Sequence | Tensor | None = None, *, mean: Sequence | Tensor | None = None,
                    rho: float = 0.55, dim: int = 2) -> SamplerSource:
    """``N(mean, cov)``; without ``cov``, ``dim`` unit variances with all correlations ``rho``.

    Attributes of the result: ``mean`` ``(d,)`` and ``cov`` ``(d, d)`` (float64).
    """
    if cov is None:
        if not -1.0 / max(dim - 1, 1) < rho < 1.0:
            raise ValueError(f"rho must lie in (-1/(dim-1), 1) for a valid covariance, got {rho!r}")
        cov_t = torch.full((dim, dim), float(rho), dtype=torch.float64)
        cov_t.fill_diagonal_(1.0)
    else:
        cov_t = _as_matrix(cov, "cov")
        if cov_t.ndim == 0:
            cov_t = cov_t.reshape(1, 1)
    check_spd("cov", cov_t)
    d = cov_t.shape[0]
    mean_t = torch.zeros(d, dtype=torch.float64) if mean is None else _as_matrix(mean, "mean").reshape(-1)
    if mean_t.shape != (d,):
        raise ValueError(f"mean must have shape ({d},), got {tuple(mean_t.shape)}")
    chol = torch.linalg.cholesky(cov_t)

    def draw(n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn((n, d), generator=generator, dtype=torch.float64)
        return mean_t + z @ chol.T

    return SamplerSource(draw, (d,), name="gaussian", mean=mean_t, cov=cov_t)


def gaussian_1d_source(mean: float = 0.0, std: float = 2.0) -> SamplerSource:
    """``N(mean, std²)`` in one dimension, event shape ``(1,)`` (default ``N(0, 4)``)."""
    if not float(std) > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    m, s = float(mean), float(std)

    def draw(n: int, generator: torch.Generator | None = None) -> Tensor:
        return m + s * torch.randn((n, 1), generator=generator, dtype=torch.float64)

    return SamplerSource(draw, (1,), name="gaussian-1d",
                         mean=torch.tensor([m], dtype=torch.float64),
                         cov=torch.tensor([[s * s]], dtype=torch.float64))


def mixture_source(weights: Sequence | Tensor | None = None, means: Sequence | Tensor | None = None,
                   covs: Sequence | Tensor | None = None) -> SamplerSource:
    """Gaussian mixture ``Σ_k π_k N(μ_k, Σ_k)``; defaults to :data:`DEFAULT_MIXTURE`.

    Args:
        weights: ``(K,)`` positive, summing to 1.
        means: ``(K, d)``.
        covs: ``(K, d, d)`` symmetric positive-definite.

    The result has the attribute ``mixture`` (a :class:`~causal_delta.closed_form.GaussianMixture`).
    """
    from ..closed_form import GaussianMixture

    given = (weights is None, means is None, covs is None)
    if all(given):
        weights, means, covs = DEFAULT_MIXTURE["weights"], DEFAULT_MIXTURE["means"], DEFAULT_MIXTURE["covs"]
    elif any(given):
        raise ValueError("mixture needs all of weights, means and covs, or none of them (default mixture)")
    mixture = GaussianMixture(_as_matrix(weights, "weights"), _as_matrix(means, "means"),
                              _as_matrix(covs, "covs"))

    def draw(n: int, generator: torch.Generator | None = None) -> Tensor:
        out = mixture.sample(n, generator=generator)
        if isinstance(out, tuple):  # (samples, labels)
            out = out[0]
        return out

    return SamplerSource(draw, (mixture.dim,), name="mixture", mixture=mixture)
