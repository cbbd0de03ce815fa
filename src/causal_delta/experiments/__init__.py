"""Reproductions of the paper's tables and figures, one module per experiment.

Each experiment has a typed config dataclass with ``quick()`` (a CI-sized run) and
``full()`` (the paper's sizes) constructors, and a function
``run_<name>(config, out_dir, *, progress=True) -> dict`` that writes ``report.json``, PNG
figures and ``summary.md`` into ``out_dir`` and returns the report. The registry
:data:`EXPERIMENTS` maps the names used by ``causal-delta reproduce`` to them; nothing heavy
is imported until :func:`get_experiment` is called.

| name | paper | module |
| --- | --- | --- |
| ``gaussian-1d`` | Figure 1 | :mod:`.gaussian_1d` |
| ``gaussian-2d`` | Section 5.5 (rho = 0.55) | :mod:`.gaussian_2d` |
| ``mixture`` | Table 4, Figure 2 (+ learned flow) | :mod:`.mixture_learned` (calls :mod:`.mixture`) |
| ``pixels`` | Section 6.3, Table 5 | :mod:`.pixels` |
| ``attributes`` | Section 6.4, Table 6 (CelebA) | :mod:`.attributes` |
| ``known-graphs`` | beyond the paper: fork / chain / collider with known graphs | :mod:`.known_graphs` |
| ``memorisation`` | arXiv 2510.18118 (fixed coupling, σ) | :mod:`.memorisation` |
| ``flux`` | Flux Matching, arXiv 2605.07319 | :mod:`.flux` |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ExperimentSpec", "EXPERIMENTS", "get_experiment"]


@dataclass(frozen=True)
class ExperimentSpec:
    """Where an experiment lives: ``module`` under this package, its config class and function."""

    name: str
    paper: str
    module: str
    config: str
    function: str


EXPERIMENTS: dict[str, ExperimentSpec] = {
    s.name: s
    for s in (
        ExperimentSpec("gaussian-1d", "Figure 1", "gaussian_1d", "Gaussian1DConfig", "run_gaussian_1d"),
        ExperimentSpec("gaussian-2d", "Section 5.5", "gaussian_2d", "Gaussian2DConfig", "run_gaussian_2d"),
        ExperimentSpec("mixture", "Table 4, Figure 2", "mixture_learned", "MixtureLearnedConfig",
                       "run_mixture_learned"),
        ExperimentSpec("pixels", "Section 6.3, Table 5", "pixels", "PixelsConfig", "run_pixels"),
        ExperimentSpec("attributes", "Section 6.4, Table 6", "attributes", "AttributesConfig",
                       "run_attributes"),
        ExperimentSpec("known-graphs", "issue 9 (known-graph benchmarks)", "known_graphs", "KnownGraphsConfig",
                       "run_known_graphs"),
        ExperimentSpec("memorisation", "arXiv 2510.18118", "memorisation", "MemorisationExperimentConfig",
                       "run_memorisation"),
        ExperimentSpec("flux", "arXiv 2605.07319", "flux", "FluxConfig", "run_flux"),
    )
}
"""Experiment name (as in ``causal-delta reproduce NAME``) -> :class:`ExperimentSpec`."""


def get_experiment(name: str) -> tuple[type, Callable[..., dict[str, Any]]]:
    """Import experiment ``name`` and return ``(config_class, run_function)``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    spec = EXPERIMENTS[name]
    mod = importlib.import_module(f".{spec.module}", __name__)
    return getattr(mod, spec.config), getattr(mod, spec.function)
