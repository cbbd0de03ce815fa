"""DAG specs, CPDAGs and structural Hamming distances (causal_delta.graphs.dag)."""

import itertools

import numpy as np
import pytest

from causal_delta.graphs import DAG, KNOWN_GRAPHS, PDAG, CITestRecord, GraphResult, known_graph, shd, skeleton_shd


def test_parse_forms_agree():
    a = DAG.parse("A->B, A->C")
    assert DAG.parse("A -> B; A -> C") == a
    assert DAG.parse("A->B\nA->C") == a
    assert DAG.parse("A->B->C") == DAG.parse("A->B, B->C")
    assert a.nodes == ("A", "B", "C")
    assert known_graph("collider").nodes == ("A", "B", "C")  # topological, ties by first appearance
    ind = DAG.parse("A, B, C")
    assert ind.edges == () and ind.nodes == ("A", "B", "C")
    assert DAG.parse("", nodes=["X", "Y"]).nodes == ("X", "Y")
    assert DAG.parse("B->A", nodes=["A", "B"]).nodes == ("A", "B")


@pytest.mark.parametrize("spec,nodes,match", [
    ("A->B, B->A", None, r"graph spec is not a DAG: cycle A -> B -> A"),
    ("A->B, B->C, C->A", None, r"graph spec is not a DAG: cycle A -> B -> C -> A"),
    ("A->A", None, r"self loop"),
    ("A->B, A->B", None, r"edge A -> B is given twice"),
    ("A->D", ["A", "B"], r"unknown node\(s\) \['D'\]"),
    ("A->", None, r"must look like 'A->B' or 'A'"),
    ("A <- B", None, r"may not contain spaces"),
    ("", None, r"names no node"),
])
def test_parse_errors(spec, nodes, match):
    with pytest.raises(ValueError, match=match):
        DAG.parse(spec, nodes=nodes)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"unknown node 'C'"):
        DAG(["A", "B"], [("A", "C")])
    with pytest.raises(ValueError, match=r"nodes must be distinct, got duplicates \['A'\]"):
        DAG(["A", "A"])
    with pytest.raises(ValueError, match=r"\(parent, child\) pairs"):
        DAG(["A", "B"], ["AB"])
    with pytest.raises(ValueError, match=r"node name must be a non-empty string"):
        DAG([" A"])
    with pytest.raises(ValueError, match=r"nodes must be a sequence of names"):
        DAG("AB")
    with pytest.raises(ValueError, match=r"graph spec must be a string"):
        DAG.parse(["A->B"])
    with pytest.raises(ValueError, match=r"graph name must be one of"):
        known_graph("diamond")
    with pytest.raises(ValueError, match=r"node must be one of"):
        known_graph("fork").parents("Z")
    with pytest.raises(ValueError, match=r"'nodes'"):
        DAG.from_dict({"edges": []})


def test_structure_queries():
    g = known_graph("five")
    assert g.parents("D") == ("B", "C") and g.children("A") == ("B", "C")
    order = g.topological_order()
    assert all(order.index(a) < order.index(b) for a, b in g.edges)
    A = g.adjacency()
    assert A.shape == (5, 5) and A.sum() == 5 and A[0, 1] == 1 and A[1, 0] == 0
    assert g.skeleton() == {frozenset(e) for e in [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D"), ("D", "E")]}
    assert g.v_structures() == {("B", "D", "C")}
    assert DAG.from_dict(g.to_dict()) == g
    dot = g.to_dot("five")
    assert dot.startswith('digraph "five" {') and '"D" -> "E";' in dot
    assert set(KNOWN_GRAPHS) == {"fork", "collider", "chain", "independent", "five"}


def test_cpdag_of_known_graphs():
    c = known_graph("collider").cpdag()
    assert set(c.directed) == {("A", "C"), ("B", "C")} and c.undirected == ()
    for name in ("fork", "chain"):
        c = known_graph(name).cpdag()
        assert c.directed == () and len(c.undirected) == 2
    c = known_graph("five").cpdag()
    assert set(c.directed) == {("B", "D"), ("C", "D"), ("D", "E")}  # D->E by Meek R1
    assert set(c.undirected) == {("A", "B"), ("A", "C")}


def _random_dag(rng, m, p):
    order = list(rng.permutation(m))
    names = [f"X{i}" for i in range(m)]
    edges = [(names[order[i]], names[order[j]]) for i, j in itertools.combinations(range(m), 2) if rng.random() < p]
    return DAG(names, edges)


def _to_causallearn(g: PDAG):
    from causallearn.graph.Edge import Edge
    from causallearn.graph.Endpoint import Endpoint
    from causallearn.graph.GeneralGraph import GeneralGraph
    from causallearn.graph.GraphNode import GraphNode

    nodes = {v: GraphNode(v) for v in g.nodes}
    G = GeneralGraph(list(nodes.values()))
    for a, b in g.directed:
        G.add_edge(Edge(nodes[a], nodes[b], Endpoint.TAIL, Endpoint.ARROW))
    for a, b in g.undirected:
        G.add_edge(Edge(nodes[a], nodes[b], Endpoint.TAIL, Endpoint.TAIL))
    return G


def test_cpdag_and_shd_match_causallearn():
    """Independent route: causal-learn's dag2cpdag and SHD on random DAGs."""
    pytest.importorskip("causallearn", reason="needs causal-learn (the graph extra)")
    from causallearn.graph.SHD import SHD
    from causallearn.utils.DAG2CPDAG import dag2cpdag

    rng = np.random.default_rng(0)
    dags = [_random_dag(rng, int(rng.integers(3, 8)), float(rng.uniform(0.2, 0.7))) for _ in range(40)]
    for g in dags:
        ref = dag2cpdag(_to_causallearn(g.as_pdag()))
        mine = _to_causallearn(g.cpdag())
        assert SHD(ref, mine).get_shd() == 0, g
    for g, h in zip(dags[:-1], dags[1:]):
        if set(g.nodes) != set(h.nodes):
            continue
        ours = shd(h.cpdag(), g)
        theirs = SHD(_to_causallearn(g.cpdag()), _to_causallearn(h.cpdag())).get_shd()
        assert ours == theirs


def test_shd_conventions():
    fork, chain, col = known_graph("fork"), known_graph("chain"), known_graph("collider")
    assert shd(fork.cpdag(), fork) == 0 and shd(chain.cpdag(), fork) == 2  # skeletons A-B,A-C vs A-B,B-C
    assert shd(fork, fork) == 2  # a DAG compared with its CPDAG: both edges over-oriented
    assert shd(fork, fork, cpdag=False) == 0
    # learned: A--C, B--C (skeleton right, v-structure missed) vs the collider's A->C<-B
    learned = PDAG(("A", "B", "C"), (), (("A", "C"), ("B", "C")))
    assert shd(learned, col) == 2 and skeleton_shd(learned, col) == 0
    rev = PDAG(("A", "B", "C"), (("C", "A"), ("B", "C")))
    assert shd(rev, col) == 1
    extra = PDAG(("C", "B", "A"), (("A", "C"), ("B", "C")), (("A", "B"),))  # node order differs
    assert shd(extra, col) == 1 and skeleton_shd(extra, col) == 1
    with pytest.raises(ValueError, match=r"same nodes"):
        shd(PDAG(("A", "B")), col)
    with pytest.raises(ValueError, match=r"learned must be a DAG, a PDAG or a GraphResult"):
        shd("A->B", col)
    with pytest.raises(ValueError, match=r"the pair already has an edge"):
        PDAG(("A", "B"), (("A", "B"),), (("B", "A"),))


def test_graph_result_round_trip():
    r = GraphResult(("A", "B", "C"), (("A", "C"), ("B", "C")), (), "fisherz", 0.05, -1,
                    records=(CITestRecord("A", "B", (), 0.1, 0.9), CITestRecord("A", "B", ("C",), 5.0, 1e-4)),
                    settings={"n": 100})
    d = r.to_dict()
    assert d["order"] == ["A", "B", "C"] and d["records"][1]["given"] == ["C"]
    assert GraphResult.from_dict(d) == r
    assert shd(r, known_graph("collider")) == 0
    assert '"A" -> "C";' in r.to_dot()


def test_edge_differences_and_plot(tmp_path):
    from causal_delta.graphs import plot_graphs
    from causal_delta.graphs.result import edge_differences

    g = known_graph("five")
    learned = PDAG(g.nodes, (("A", "D"), ("B", "D"), ("C", "D")), (("A", "B"), ("A", "C"), ("D", "E")))
    diff = edge_differences(learned, g.cpdag())
    assert diff == [{"pair": ["A", "D"], "a": "A->D", "b": ""}, {"pair": ["D", "E"], "a": "D--E", "b": "D->E"}]
    assert len(diff) == shd(learned, g)
    assert edge_differences(g.cpdag(), g.cpdag()) == []
    path = plot_graphs([("learned", learned), ("true", g)], tmp_path / "g.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"graphs must have the same nodes"):
        edge_differences(learned, known_graph("fork"))
    with pytest.raises(ValueError, match=r"every panel must have the same nodes"):
        plot_graphs([("a", learned), ("b", known_graph("fork"))], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"panels must hold at least one"):
        plot_graphs([], tmp_path / "x.png")
