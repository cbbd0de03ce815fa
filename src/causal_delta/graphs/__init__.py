"""Causal graphs: DAG specifications, PC on labels, and PC whose CI test is the JVP estimator.

* :mod:`.dag` — :class:`DAG`, :class:`PDAG`, :data:`KNOWN_GRAPHS`, :func:`shd`, :func:`skeleton_shd`.
* :mod:`.result` — :class:`GraphResult`, :class:`CITestRecord`.
"""

from .dag import DAG, KNOWN_GRAPHS, PDAG, known_graph, shd, skeleton_shd
from .result import CITestRecord, GraphResult

__all__ = ["DAG", "PDAG", "KNOWN_GRAPHS", "known_graph", "shd", "skeleton_shd", "CITestRecord", "GraphResult"]
