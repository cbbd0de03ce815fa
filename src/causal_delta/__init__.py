"""causal-delta: Jacobian-based dependency analysis of flow-matching generative models.

Data flows one way: data -> path -> model -> solver -> JVP -> dependence -> report.
The public API below (``causal_delta.train``, ``causal_delta.jvp_forward``,
``causal_delta.correlation`` ...) and the submodules are imported on first use, so
``import causal_delta`` is cheap and has no side effects.

Examples:
    >>> import torch, causal_delta as cd
    >>> flow = cd.GaussianFlow(torch.tensor([[1.0, 0.55], [0.55, 1.0]], dtype=torch.float64))
    >>> x0 = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> z = cd.make_probes(4000, (2,), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> dy = cd.jvp_forward(flow.velocity, x0, z, method="rk4", steps=20).jvp.reshape(4000, 2)
    >>> abs(float(cd.correlation(dy)[0, 1]) - 0.55) < 0.03  # the data's correlation (arXiv 2602.02793 §4.1)
    True
"""

from __future__ import annotations

import importlib

from ._version import __version__

# The public API, one screen (README "Public API"): name -> the module that defines it.
# Imported on first use, like the submodules.
_API: dict[str, str] = {
    # train a flow (or bring your own): data -> path -> model
    "TrainConfig": "training", "train": "training", "flow_matching_loss": "training",
    "as_velocity": "models", "build_model": "models", "load_flow": "checkpoint",
    # integrate it: model -> solver
    "sample": "solvers", "integrate": "solvers",
    # push probes through it: solver -> JVP
    "make_probes": "jvp", "jvp_forward": "jvp", "jvp_fd": "jvp", "attribute_jvp": "jvp",
    "top_singular_directions": "jvp",
    # read the dependence: JVP -> dependence
    "correlation": "dependence", "bootstrap": "dependence", "condition": "dependence",
    "threshold_sweep": "dependence", "hold_fixed_probes": "dependence", "MomentAccumulator": "moments",
    # trust it: ground truth and diagnostics
    "GaussianFlow": "closed_form", "GaussianMixture": "closed_form", "diagnose_memorisation": "diagnostics",
    "log_likelihood": "likelihood",
    # read-outs and graphs
    "train_classifier": "classifier_training", "load_classifier": "classifier_training", "jvp_pc": "graphs",
}

_SUBMODULES = (
    "closed_form", "paths", "models", "training", "distributed", "classifier_training", "checkpoint", "solvers",
    "jvp", "discretisation", "dependence", "moments", "likelihood", "graphs", "diagnostics", "datasets",
    "experiments", "flux",
    "config",
)

__all__ = ["__version__", *_API, *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'causal_delta' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
