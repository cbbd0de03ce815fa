r"""Directed acyclic graphs, partially directed graphs and structural Hamming distances.

* :class:`DAG` — a validated DAG over named nodes: ``DAG(["A", "B"], [("A", "B")])`` or
  ``DAG.parse("A->B, A->C")``; topological order, parents, skeleton, adjacency, CPDAG, DOT.
* :class:`PDAG` — a partially directed graph (directed, undirected and, rarely, bidirected
  edges): a learned equivalence class such as the output of PC, or the CPDAG of a DAG.
* :data:`KNOWN_GRAPHS` — the named benchmark graphs (fork, collider, chain, independent, five).
* :func:`shd` / :func:`skeleton_shd` — distances between a learned graph and a true DAG.

SHD convention (the one of causal-learn's ``causallearn.graph.SHD``): for every unordered pair of
nodes compare the edge marks — none, ``a -> b``, ``b -> a``, ``a -- b`` or ``a <-> b`` — of the
learned graph with those of the *CPDAG of the true DAG* (its Markov equivalence class, which is all
that conditional-independence tests can identify); every pair whose marks differ counts 1. So a
missing edge, an extra edge, a reversed edge and an edge left undirected that the class directs
(or vice versa) each cost 1. Skeleton SHD ignores orientation: missing + extra adjacencies.

This module needs only numpy; nothing here imports torch or causal-learn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DAG", "PDAG", "KNOWN_GRAPHS", "known_graph", "shd", "skeleton_shd"]

#: Named benchmark graphs. ``independent`` has nodes A, B, C and no edge. ``five`` mixes the three
#: motifs: a fork at A (A->B, A->C), a collider at D (B->D<-C, B and C not adjacent) and a chain
#: D->E; its CPDAG keeps A--B, A--C undirected and orients B->D, C->D, D->E.
KNOWN_GRAPHS: dict[str, str] = {
    "fork": "A->B, A->C",
    "collider": "A->C, B->C",
    "chain": "A->B, B->C",
    "independent": "A, B, C",
    "five": "A->B, A->C, B->D, C->D, D->E",
}

_ARROW = re.compile(r"\s*->\s*")
_SEP = re.compile(r"[,;\n]")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"{what} must be a non-empty string without surrounding spaces, got {name!r}")
    if "->" in name or any(c in name for c in ",;\n"):
        raise ValueError(f"{what} must not contain '->', ',' or ';', got {name!r}")
    return name


def _find_cycle(nodes: Sequence[str], children: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A directed cycle as ``[a, b, ..., a]``, or ``None`` (iterative depth-first search)."""
    state = {v: 0 for v in nodes}  # 0 new, 1 on the stack, 2 done
    for root in nodes:
        if state[root]:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path = [root]
        state[root] = 1
        while stack:
            v, i = stack[-1]
            kids = children[v]
            if i < len(kids):
                stack[-1] = (v, i + 1)
                w = kids[i]
                if state[w] == 1:
                    return path[path.index(w):] + [w]
                if state[w] == 0:
                    state[w] = 1
                    stack.append((w, 0))
                    path.append(w)
            else:
                state[v] = 2
                stack.pop()
                path.pop()
    return None


def _pair_mark(directed: set, undirected: set, bidirected: set, a: str, b: str) -> str:
    """Edge mark between ``a`` and ``b`` (``a < b`` in the caller's order)."""
    if (a, b) in directed:
        return "->"
    if (b, a) in directed:
        return "<-"
    if frozenset((a, b)) in undirected:
        return "--"
    if frozenset((a, b)) in bidirected:
        return "<->"
    return ""


@dataclass(frozen=True)
class PDAG:
    """A partially directed graph over named nodes (e.g. a CPDAG or PC's output).

    Attributes:
        nodes: node names, in order.
        directed: ``(a, b)`` pairs meaning ``a -> b``.
        undirected: ``(a, b)`` pairs meaning ``a -- b`` (stored with ``a`` before ``b`` in ``nodes``).
        bidirected: ``(a, b)`` pairs meaning ``a <-> b`` (conflicting orientations in PC).
    """

    nodes: tuple[str, ...]
    directed: tuple[tuple[str, str], ...] = ()
    undirected: tuple[tuple[str, str], ...] = ()
    bidirected: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        nodes = tuple(_check_name(v, "node name") for v in self.nodes)
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes must be distinct, got {list(nodes)}")
        pos = {v: i for i, v in enumerate(nodes)}
        seen: set[frozenset] = set()
        norm: dict[str, tuple] = {}
        for kind in ("directed", "undirected", "bidirected"):
            out = []
            for e in getattr(self, kind):
                a, b = _edge(e, pos, kind)
                if kind != "directed" and pos[a] > pos[b]:
                    a, b = b, a
                key = frozenset((a, b))
                if key in seen:
                    raise ValueError(f"{kind} edge {a}, {b}: the pair already has an edge (one mark per pair)")
                seen.add(key)
                out.append((a, b))
            norm[kind] = tuple(out)
        object.__setattr__(self, "nodes", nodes)
        for kind, edges in norm.items():
            object.__setattr__(self, kind, edges)

    def skeleton(self) -> set[frozenset]:
        """Adjacencies as a set of ``frozenset({a, b})``."""
        return {frozenset(e) for e in self.directed + self.undirected + self.bidirected}

    def marks(self) -> dict[frozenset, str]:
        """``{frozenset({a, b}): mark}`` for adjacent pairs; mark is ``"a->b"``, ``"a--b"``, ``"a<->b"``
        written in node order (used for SHD)."""
        d, u, bi = set(self.directed), {frozenset(e) for e in self.undirected}, {frozenset(e) for e in self.bidirected}
        out = {}
        for p in self.skeleton():
            a, b = sorted(p, key=self.nodes.index)
            out[p] = a + _pair_mark(d, u, bi, a, b) + b
        return out

    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "directed": [list(e) for e in self.directed],
                "undirected": [list(e) for e in self.undirected], "bidirected": [list(e) for e in self.bidirected]}

    @classmethod
    def from_dict(cls, d: Mapping) -> PDAG:
        return cls(tuple(d["nodes"]), tuple(map(tuple, d.get("directed", ()))),
                   tuple(map(tuple, d.get("undirected", ()))), tuple(map(tuple, d.get("bidirected", ()))))

    def to_dot(self, name: str = "G") -> str:
        """Graphviz DOT text: ``a -> b``; undirected edges ``dir=none``; bidirected ``dir=both``."""
        lines = [f"digraph {_q(name)} {{"] + [f"  {_q(v)};" for v in self.nodes]
        lines += [f"  {_q(a)} -> {_q(b)};" for a, b in self.directed]
        lines += [f"  {_q(a)} -> {_q(b)} [dir=none];" for a, b in self.undirected]
        lines += [f"  {_q(a)} -> {_q(b)} [dir=both];" for a, b in self.bidirected]
        return "\n".join(lines + ["}"]) + "\n"


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _edge(e: Any, pos: Mapping[str, int], what: str = "edge") -> tuple[str, str]:
    if isinstance(e, str) or not isinstance(e, Iterable):
        raise ValueError(f"{what} edges must be (parent, child) pairs of node names, got {e!r}")
    e = tuple(e)
    if len(e) != 2:
        raise ValueError(f"{what} edges must be (parent, child) pairs of node names, got {e!r}")
    a, b = e
    for v in (a, b):
        if v not in pos:
            raise ValueError(f"{what} edge {a!r} -> {b!r} names an unknown node {v!r}; nodes are {list(pos)}")
    if a == b:
        raise ValueError(f"{what} edge {a!r} -> {b!r} is a self loop")
    return a, b


class DAG:
    """A directed acyclic graph over named nodes.

    Args:
        nodes: distinct node names (their order is the variable order everywhere).
        edges: ``(parent, child)`` pairs.

    Raises:
        ValueError: an unknown node, a self loop, a duplicate node or edge, or a cycle
            (``"graph spec is not a DAG: cycle A -> B -> A"``).
    """

    __slots__ = ("nodes", "edges", "_parents", "_children")

    def __init__(self, nodes: Sequence[str], edges: Sequence[tuple[str, str]] = ()) -> None:
        if isinstance(nodes, str):
            raise ValueError(f"nodes must be a sequence of names, got the string {nodes!r}")
        nodes = tuple(_check_name(v, "node name") for v in nodes)
        if len(set(nodes)) != len(nodes):
            dup = sorted({v for v in nodes if nodes.count(v) > 1})
            raise ValueError(f"nodes must be distinct, got duplicates {dup}")
        pos = {v: i for i, v in enumerate(nodes)}
        out: list[tuple[str, str]] = []
        for e in edges:
            a, b = _edge(e, pos)
            if (a, b) in out:
                raise ValueError(f"edge {a} -> {b} is given twice")
            out.append((a, b))
        self.nodes: tuple[str, ...] = nodes
        self.edges: tuple[tuple[str, str], ...] = tuple(out)
        self._parents = {v: tuple(a for a, b in out if b == v) for v in nodes}
        self._children = {v: tuple(b for a, b in out if a == v) for v in nodes}
        cycle = _find_cycle(nodes, self._children)
        if cycle is not None:
            raise ValueError("graph spec is not a DAG: cycle " + " -> ".join(cycle))

    @classmethod
    def parse(cls, spec: str, nodes: Sequence[str] | None = None) -> DAG:
        """Parse ``"A->B, A->C"`` (separators ``,`` ``;`` or newlines; spaces around ``->`` allowed;
        chains ``"A->B->C"``; a bare name adds an isolated node, so ``"A, B, C"`` has no edges).

        Args:
            spec: the edge list.
            nodes: the node set and order. Default: a topological order, ties broken by first
                appearance (so ``"A->C, B->C"`` gives A, B, C). With ``nodes`` given, a name in
                ``spec`` outside it is an error.
        """
        if not isinstance(spec, str):
            raise ValueError(f"graph spec must be a string such as 'A->B, A->C', got {type(spec).__name__}")
        seen: list[str] = []
        edges: list[tuple[str, str]] = []
        for item in _SEP.split(spec):
            if not item.strip():
                continue
            names = _ARROW.split(item.strip())
            if any(not n.strip() for n in names):
                raise ValueError(f"graph spec item {item.strip()!r} must look like 'A->B' or 'A'")
            names = [n.strip() for n in names]
            for n in names:
                if re.search(r"\s|<|-|>", n):
                    raise ValueError(f"graph spec item {item.strip()!r}: node name {n!r} may not contain "
                                     "spaces, '-', '<' or '>'; write edges as 'A->B'")
                if n not in seen:
                    seen.append(n)
            edges += list(zip(names[:-1], names[1:]))
        if nodes is None:
            if not seen:
                raise ValueError(f"graph spec names no node, got {spec!r}")
            return cls(cls(seen, edges).topological_order(), edges)
        else:
            unknown = [n for n in seen if n not in nodes]
            if unknown:
                raise ValueError(f"graph spec names unknown node(s) {unknown}; nodes are {list(nodes)}")
        return cls(nodes, edges)

    def __repr__(self) -> str:
        return f"DAG({self.spec()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DAG) and set(self.nodes) == set(other.nodes) and set(self.edges) == set(other.edges)

    def __hash__(self) -> int:
        return hash((frozenset(self.nodes), frozenset(self.edges)))

    def spec(self) -> str:
        """The edge list as ``parse`` reads it (isolated nodes listed by name)."""
        used = {v for e in self.edges for v in e}
        return ", ".join([f"{a}->{b}" for a, b in self.edges] + [v for v in self.nodes if v not in used])

    def parents(self, node: str) -> tuple[str, ...]:
        """Parents of ``node`` in edge order."""
        if node not in self._parents:
            raise ValueError(f"node must be one of {list(self.nodes)}, got {node!r}")
        return self._parents[node]

    def children(self, node: str) -> tuple[str, ...]:
        """Children of ``node`` in edge order."""
        if node not in self._children:
            raise ValueError(f"node must be one of {list(self.nodes)}, got {node!r}")
        return self._children[node]

    def topological_order(self) -> list[str]:
        """Nodes with every parent before its children (Kahn; ties broken by node order)."""
        indeg = {v: len(self._parents[v]) for v in self.nodes}
        ready = [v for v in self.nodes if indeg[v] == 0]
        order: list[str] = []
        while ready:
            v = ready.pop(0)
            order.append(v)
            for w in self._children[v]:
                indeg[w] -= 1
                if indeg[w] == 0:
                    ready.append(w)
            ready.sort(key=self.nodes.index)
        return order

    def skeleton(self) -> set[frozenset]:
        """Adjacencies as a set of ``frozenset({a, b})``."""
        return {frozenset(e) for e in self.edges}

    def adjacency(self) -> np.ndarray:
        """``(m, m)`` int array, ``A[i, j] = 1`` iff ``nodes[i] -> nodes[j]``."""
        pos = {v: i for i, v in enumerate(self.nodes)}
        A = np.zeros((len(self.nodes), len(self.nodes)), dtype=np.int64)
        for a, b in self.edges:
            A[pos[a], pos[b]] = 1
        return A

    def v_structures(self) -> set[tuple[str, str, str]]:
        """Unshielded colliders ``(a, c, b)``: ``a -> c <- b`` with ``a``, ``b`` not adjacent (``a`` before ``b``)."""
        skel = self.skeleton()
        out = set()
        for c in self.nodes:
            ps = self._parents[c]
            for i, a in enumerate(ps):
                for b in ps[i + 1:]:
                    if frozenset((a, b)) not in skel:
                        a1, b1 = sorted((a, b), key=self.nodes.index)
                        out.add((a1, c, b1))
        return out

    def cpdag(self) -> PDAG:
        """The CPDAG (essential graph) of the Markov equivalence class.

        Keep the edges of v-structures directed, then apply Meek's rules R1–R3 until nothing
        changes (Meek 1995: from a pattern these orient exactly the compelled edges); every edge
        left is undirected.
        """
        skel = self.skeleton()
        directed = {(a, c) for a, c, b in self.v_structures()} | {(b, c) for a, c, b in self.v_structures()}
        undirected = {frozenset(e) for e in self.edges if e not in directed}

        def adj(x: str, y: str) -> bool:
            return frozenset((x, y)) in skel

        changed = True
        while changed:
            changed = False
            for e in sorted(undirected, key=lambda p: sorted(self.nodes.index(v) for v in p)):
                for x, y in (tuple(e), tuple(e)[::-1]):
                    # R1: z -> x -- y, z and y not adjacent  =>  x -> y
                    r1 = any(b == x and not adj(z, y) and z != y for z, b in directed)
                    # R2: x -> z -> y  =>  x -> y
                    r2 = any((x, z) in directed and (z, y) in directed for z in self.nodes)
                    # R3: x -- z1 -> y, x -- z2 -> y, z1 and z2 not adjacent  =>  x -> y
                    zs = [z for z in self.nodes if frozenset((x, z)) in undirected and (z, y) in directed]
                    r3 = any(not adj(z1, z2) for i, z1 in enumerate(zs) for z2 in zs[i + 1:])
                    if r1 or r2 or r3:
                        undirected.discard(e)
                        directed.add((x, y))
                        changed = True
                        break
        order = self.nodes.index

        def ordered(p: frozenset[str]) -> tuple[str, str]:
            a, b = sorted(p, key=order)  # an undirected edge holds exactly two nodes
            return a, b

        return PDAG(self.nodes, tuple(sorted(directed, key=lambda e: (order(e[0]), order(e[1])))),
                    tuple(sorted((ordered(p) for p in undirected),
                                 key=lambda e: (order(e[0]), order(e[1])))))

    def as_pdag(self) -> PDAG:
        """This DAG as a :class:`PDAG` with every edge directed."""
        return PDAG(self.nodes, self.edges)

    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_dict(cls, d: Mapping) -> DAG:
        if not isinstance(d, Mapping) or "nodes" not in d:
            raise ValueError("a DAG dict must have 'nodes' (list of names) and 'edges' (list of [parent, child])")
        return cls(list(d["nodes"]), [tuple(e) for e in d.get("edges", ())])

    def to_dot(self, name: str = "G") -> str:
        """Graphviz DOT text of the DAG."""
        return self.as_pdag().to_dot(name)


def known_graph(name: str) -> DAG:
    """One of :data:`KNOWN_GRAPHS` as a :class:`DAG`."""
    if name not in KNOWN_GRAPHS:
        raise ValueError(f"graph name must be one of {sorted(KNOWN_GRAPHS)}, got {name!r}")
    return DAG.parse(KNOWN_GRAPHS[name])


def _as_pdag(g: Any, what: str) -> PDAG:
    if isinstance(g, PDAG):
        return g
    if isinstance(g, DAG):
        return g.as_pdag()
    if all(hasattr(g, a) for a in ("nodes", "directed", "undirected")):  # e.g. GraphResult
        return PDAG(tuple(g.nodes), tuple(g.directed), tuple(g.undirected), tuple(getattr(g, "bidirected", ())))
    raise ValueError(f"{what} must be a DAG, a PDAG or a GraphResult, got {type(g).__name__}")


def _check_same_nodes(a: PDAG, b: PDAG) -> None:
    if set(a.nodes) != set(b.nodes):
        raise ValueError(f"learned and true graphs must have the same nodes, got {sorted(a.nodes)} "
                         f"and {sorted(b.nodes)}")


def shd(learned: Any, true: DAG | PDAG, *, cpdag: bool = True) -> int:
    """Structural Hamming distance: node pairs whose edge marks differ (see the module docstring).

    Args:
        learned: a :class:`PDAG`, a :class:`DAG` (compared edge by edge as it is) or a
            ``GraphResult``.
        true: the true :class:`DAG` (or a PDAG, used as it is).
        cpdag: compare with the CPDAG of ``true`` (default; what PC can identify) rather than
            with ``true``'s own orientations.
    """
    L = _as_pdag(learned, "learned")
    T = true.cpdag() if (cpdag and isinstance(true, DAG)) else _as_pdag(true, "true")
    _check_same_nodes(L, T)
    # Canonical marks are written in one shared node order so that the two graphs compare.
    order = T.nodes
    L = PDAG(order, L.directed, L.undirected, L.bidirected)
    ml, mt = L.marks(), T.marks()
    return sum(ml.get(p) != mt.get(p) for p in set(ml) | set(mt))


def skeleton_shd(learned: Any, true: Any) -> int:
    """Missing plus extra adjacencies (orientation ignored)."""
    L, T = _as_pdag(learned, "learned"), _as_pdag(true, "true")
    _check_same_nodes(L, T)
    return len(L.skeleton() ^ T.skeleton())
