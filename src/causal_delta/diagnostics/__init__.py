"""Diagnostics of a trained flow: memorisation of training pairs and gradient variance.

* :mod:`.mmd` — unbiased Gaussian-kernel MMD² (median-heuristic bandwidth) and its closed form
  for two isotropic Gaussians;
* :mod:`.gradient_variance` — trace of the per-sample gradient covariance of the loss on a grid
  of ``t`` (arXiv 2510.18118);
* :mod:`.memorisation` — own-pair fraction, nearest-copy ratio (and its real-data baseline),
  memorisation / generalisation MMDs, Jacobian spectra; ``causal-delta diagnose memorisation`` writes them.
"""

from .gradient_variance import GradientVariance, gradient_variance
from .memorisation import (
    MemorisationConfig,
    diagnose_memorisation,
    jacobian_spectra,
    nearest_copy_statistics,
    one_line_summary,
    own_pair_statistics,
    real_copy_statistics,
    write_memorisation_report,
)
from .mmd import gaussian_mmd2, median_bandwidth, mmd2_biased, mmd2_unbiased

__all__ = ["GradientVariance", "gradient_variance", "MemorisationConfig", "diagnose_memorisation",
           "jacobian_spectra", "nearest_copy_statistics", "one_line_summary", "own_pair_statistics",
           "real_copy_statistics", "write_memorisation_report", "gaussian_mmd2", "median_bandwidth", "mmd2_biased",
           "mmd2_unbiased"]
