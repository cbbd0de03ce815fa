r"""Flux Matching (arXiv 2605.07319): fields whose stationary law is the data, not only the score.

A field ``f`` leaves ``p`` invariant under ``dx = f dt + √2 dW`` iff the Langevin–Stein
residual ``r = ∇·u + u·s`` of ``u = f - s`` vanishes (arXiv 2605.07319). This package holds the
objective (:mod:`.objective`), the batch-KDE reference and its exact OU dynamics
(:mod:`.reference`), samplers (:mod:`.samplers`), fields including a masked, directed one
(:mod:`.fields`), the linear-SCM closed form for directed fields (:mod:`.directed`), a
training loop (:mod:`.train`) and read-outs (:mod:`.metrics`).

Example:
    >>> import torch
    >>> from causal_delta.flux import kde_score
    >>> kde_score(torch.zeros(1, 2), torch.ones(1, 2), 1.0)
    tensor([[1., 1.]])
"""

from __future__ import annotations

from .directed import linear_scm_covariance, linear_scm_sample, triangular_stationary_drift
from .fields import MaskedMLP, TimeFree, block_triangular_mask
from .metrics import curl_2d, mean_abs_curl, mmd2, radius_stats
from .objective import (
    DIVERGENCE_METHODS,
    PAIRINGS,
    SIMULATIONS,
    TIME_SAMPLINGS,
    divergence,
    dsm_loss,
    field_jacobian,
    field_jvp,
    flux_matching_loss,
    rademacher,
    stein_residual,
)
from .reference import kde_score, kde_score_divergence, kde_score_jvp, kde_weights, ou_simulate, ou_step
from .samplers import SampleResult, annealed_langevin, langevin
from .train import OBJECTIVES, FitResult, fit_field

__all__ = [
    "DIVERGENCE_METHODS", "PAIRINGS", "SIMULATIONS", "TIME_SAMPLINGS", "OBJECTIVES",
    "rademacher", "field_jvp", "field_jacobian", "divergence", "stein_residual", "flux_matching_loss",
    "dsm_loss",
    "kde_weights", "kde_score", "kde_score_jvp", "kde_score_divergence", "ou_step", "ou_simulate",
    "SampleResult", "langevin", "annealed_langevin",
    "TimeFree", "MaskedMLP", "block_triangular_mask",
    "linear_scm_covariance", "linear_scm_sample", "triangular_stationary_drift",
    "curl_2d", "mean_abs_curl", "mmd2", "radius_stats",
    "FitResult", "fit_field",
]
