"""Learned and true graphs side by side as one PNG (matplotlib only; circular layout)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_graphs"]


def plot_graphs(panels: Sequence[tuple[str, Any]], path: str | os.PathLike, *, highlight: bool = True) -> Path:
    """Draw graphs next to each other, nodes on a circle in the first graph's node order.

    Args:
        panels: ``(title, graph)`` pairs; a graph is a ``DAG``, ``PDAG`` or ``GraphResult`` over the
            same nodes. Directed edges get an arrow head, undirected ones none, bidirected both.
        path: the PNG to write (atomically).
        highlight: with two or more panels, draw in red the edges of each panel whose mark differs
            from the other panel's (first vs second; later panels vs the first).

    Returns:
        the written path.
    """
    from .. import report
    from .dag import PDAG, _as_pdag

    if not panels:
        raise ValueError("panels must hold at least one (title, graph) pair")
    graphs = [(str(t), _as_pdag(g, "graph")) for t, g in panels]
    nodes = graphs[0][1].nodes
    if any(set(g.nodes) != set(nodes) for _, g in graphs):
        raise ValueError("every panel must have the same nodes")
    m = len(nodes)
    xy = {v: (math.cos(math.pi / 2 - 2 * math.pi * i / m), math.sin(math.pi / 2 - 2 * math.pi * i / m))
          for i, v in enumerate(nodes)}
    fig, axes = report.new_figure(1, len(graphs), figsize=(4.2 * len(graphs), 4.4), squeeze=False)
    for col, (title, g) in enumerate(graphs):
        ax = axes[0][col]
        other = graphs[1 if col == 0 else 0][1] if len(graphs) > 1 else None
        mine = g.marks()
        # marks are written in a graph's own node order, so compare both in this panel's order
        theirs = PDAG(g.nodes, other.directed, other.undirected, other.bidirected).marks() if other else {}
        for kind, edges in (("->", g.directed), ("--", g.undirected), ("<->", g.bidirected)):
            for a, b in edges:
                key = frozenset((a, b))
                differs = highlight and other is not None and mine.get(key) != theirs.get(key)
                style = {"->": "-|>", "--": "-", "<->": "<|-|>"}[kind]
                ax.annotate("", xy=xy[b], xytext=xy[a],
                            arrowprops=dict(arrowstyle=style, color="tab:red" if differs else "0.2", lw=1.6,
                                            shrinkA=17, shrinkB=17, mutation_scale=16))
        for v, (x, y) in xy.items():
            ax.scatter([x], [y], s=900, color="white", edgecolors="0.2", zorder=3)
            ax.text(x, y, v if len(v) <= 6 else v[:5] + "…", ha="center", va="center", fontsize=8, zorder=4)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-1.35, 1.35)
        ax.set_ylim(-1.35, 1.35)
        ax.set_aspect("equal")
        ax.axis("off")
    return report.save_figure(fig, path)
