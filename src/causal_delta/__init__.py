"""causal-delta: Jacobian-based dependency analysis of flow-matching generative models.

Data flows one way: data -> path -> model -> solver -> JVP -> dependence -> report.
Submodules are imported on first use, so ``import causal_delta`` is cheap and has no side
effects; ``causal_delta.closed_form``, ``causal_delta.solvers`` etc. work as attributes.
"""

from __future__ import annotations

import importlib

from ._version import __version__

__all__ = [
    "__version__",
    "closed_form",
    "paths",
    "models",
    "training",
    "classifier_training",
    "checkpoint",
    "solvers",
    "jvp",
    "dependence",
    "discretisation",
    "graphs",
    "diagnostics",
    "datasets",
    "experiments",
    "flux",
]

_SUBMODULES = set(__all__) - {"__version__"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'causal_delta' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
