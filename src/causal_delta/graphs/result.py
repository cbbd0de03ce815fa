"""The result of a structure search: a learned graph with the settings and every CI test run.

:class:`GraphResult` is what :func:`causal_delta.graphs.pc_labels` and
:func:`causal_delta.graphs.jvp_pc` return; :func:`causal_delta.graphs.shd` accepts it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .dag import PDAG

__all__ = ["CITestRecord", "GraphResult"]


@dataclass(frozen=True)
class CITestRecord:
    """One conditional-independence test ``x ⟂ y | given``.

    Attributes:
        x, y: the tested pair (node names); given: the conditioning set (names).
        statistic: the test statistic (chi-square / G-square / Fisher-z value, or the conditioned
            JVP correlation for the JVP test); p_value: its p-value (independence kept when
            ``p_value > alpha``).
        extra: test-specific numbers (e.g. kept rows, bootstrap SE).
    """

    x: str
    y: str
    given: tuple[str, ...]
    statistic: float
    p_value: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "given": list(self.given), "statistic": self.statistic,
                "p_value": self.p_value, **({"extra": self.extra} if self.extra else {})}


@dataclass(frozen=True)
class GraphResult:
    """A learned partially directed graph and how it was obtained.

    Attributes:
        nodes: variable names in the variable order PC used (the column order of the data).
        directed: ``(a, b)`` meaning ``a -> b``; undirected: ``(a, b)`` meaning ``a -- b``;
            bidirected: ``(a, b)`` meaning ``a <-> b`` (conflicting orientations; rare).
        test: the CI test's name (``"chisq"``, ``"gsq"``, ``"fisherz"``, ``"jvp-condition"``,
            ``"jvp-hold_fixed"``); alpha: significance level; depth: maximum conditioning-set
            size (``-1`` unbounded); stable: PC-stable adjacency search.
        records: every CI test run, in the order PC ran them (cached repeats not listed twice).
        settings: anything else needed to reproduce the run (seed, quantile, n_boot, n, ...).
    """

    nodes: tuple[str, ...]
    directed: tuple[tuple[str, str], ...]
    undirected: tuple[tuple[str, str], ...]
    test: str
    alpha: float
    depth: int
    stable: bool = True
    bidirected: tuple[tuple[str, str], ...] = ()
    records: tuple[CITestRecord, ...] = ()
    settings: dict = field(default_factory=dict)

    @property
    def order(self) -> tuple[str, ...]:
        """The variable order (same as ``nodes``)."""
        return self.nodes

    def pdag(self) -> PDAG:
        """The learned graph alone (validated)."""
        return PDAG(self.nodes, self.directed, self.undirected, self.bidirected)

    def skeleton(self) -> set[frozenset]:
        return self.pdag().skeleton()

    def to_dot(self, name: str = "G") -> str:
        return self.pdag().to_dot(name)

    def to_dict(self) -> dict:
        return {**self.pdag().to_dict(), "test": self.test, "alpha": self.alpha, "depth": self.depth,
                "stable": self.stable, "order": list(self.nodes), "settings": dict(self.settings),
                "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GraphResult:
        g = PDAG.from_dict(d)
        recs = tuple(CITestRecord(r["x"], r["y"], tuple(r["given"]), r["statistic"], r["p_value"],
                                  dict(r.get("extra", {}))) for r in d.get("records", ()))
        return cls(g.nodes, g.directed, g.undirected, d["test"], float(d["alpha"]), int(d["depth"]),
                   bool(d.get("stable", True)), g.bidirected, recs, dict(d.get("settings", {})))
