"""Causal graphs: DAG specifications, PC on labels, and PC whose CI test is the JVP estimator.

* :mod:`.dag` — :class:`DAG`, :class:`PDAG`, :data:`KNOWN_GRAPHS`, :func:`shd`, :func:`skeleton_shd`
  (numpy only).
* :mod:`.result` — :class:`GraphResult`, :class:`CITestRecord`.
* :mod:`.pc` — :func:`pc_labels`, :func:`run_pc` (PC of causal-learn with any CI test; causal-learn is
  imported when a search runs: ``pip install causal-delta[graph]``).
* :mod:`.jvp_pc` — :func:`jvp_pc`, :class:`ResponseOracle`, :func:`hold_fixed_probes_multi`.
* :mod:`.plot` — :func:`plot_graphs` (graphs side by side, circular layout).
"""

from .dag import DAG, KNOWN_GRAPHS, PDAG, known_graph, shd, skeleton_shd
from .jvp_pc import ResponseOracle, hold_fixed_probes_multi, joint_small_mask, jvp_ci_test, jvp_pc
from .pc import partial_correlation, pc_labels, run_pc
from .plot import plot_graphs
from .result import CITestRecord, GraphResult

__all__ = ["DAG", "PDAG", "KNOWN_GRAPHS", "known_graph", "shd", "skeleton_shd", "CITestRecord", "GraphResult",
           "pc_labels", "run_pc", "partial_correlation", "jvp_pc", "jvp_ci_test", "joint_small_mask",
           "hold_fixed_probes_multi", "ResponseOracle", "plot_graphs"]
