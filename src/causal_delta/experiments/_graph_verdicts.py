r"""Verdicts of the JVP dependence estimators on a triple whose causal graph is known.

For a 3-node motif with end points ``i``, ``j`` and middle node ``k`` (fork ``i ← k → j``,
chain ``i → k → j``, collider ``i → k ← j``), the responses ``Δy`` ``(n, m)`` of the
read-out (identity on tabular data, a regression head on images) give:

* the JVP correlation ``Corr[i, j]`` (uncentred, :func:`causal_delta.dependence.correlation`);
* the conditioned one, on the rows with the smallest ``|Δy_k|``
  (:func:`causal_delta.dependence.condition`, ``quantile``);
* the hold-fixed one, probes projected orthogonal to ``∇(C_k∘f)``
  (:func:`causal_delta.dependence.hold_fixed_responses`);

each with a percentile-bootstrap 95 % interval (:func:`causal_delta.dependence.bootstrap`).
The verdict: conditioning on the middle node must *lower* ``|Corr|`` for a fork or a chain and
*raise* it for a collider; it is *separated* when the conditioned and unconditioned intervals do
not overlap. Two robust variants repeat everything: ``robust`` drops the rows whose norm
``‖Δy‖`` exceeds its 99th percentile (trimmed), ``normalised`` uses per-sample normalised
responses ``Δy / ‖Δy‖`` (each row on the unit sphere, so every row weighs the same in the
second moment). The share of the second moment carried by the top 1 % of rows measures how
heavy-tailed the responses are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["EXPECTED", "middle_node", "tail_share", "normalise_rows", "trim_rows", "interval", "triple_verdict",
           "independence_summary"]

EXPECTED = {"fork": "lower", "chain": "lower", "collider": "raise"}
"""What conditioning on the middle node must do to ``|Corr|`` of the two end points."""


def middle_node(dag) -> tuple[str, str, str, str]:
    """``(kind, end_i, end_j, middle)`` of a 3-node DAG with two edges (fork, chain or collider)."""
    nodes = tuple(dag.nodes)
    if len(nodes) != 3 or len(dag.edges) != 2:
        raise ValueError(f"graph must have 3 nodes and 2 edges (a fork, chain or collider), got {dag.spec()}")
    deg = {v: sum(v in e for e in dag.edges) for v in nodes}
    k = next(v for v in nodes if deg[v] == 2)
    i, j = (v for v in nodes if v != k)
    n_par = len(dag.parents(k))
    kind = {0: "fork", 1: "chain", 2: "collider"}[n_par]
    return kind, i, j, k


def tail_share(x: Tensor, fraction: float = 0.01) -> float:
    """Share of ``Σ x²`` carried by the ``fraction`` of rows with the largest ``|x|`` (``x`` ``(n,)``)."""
    v = x.double().pow(2).reshape(-1)
    top = max(1, int(math.ceil(fraction * v.numel())))
    tot = float(v.sum())
    return float(torch.topk(v, top).values.sum()) / tot if tot > 0 else float("nan")


def normalise_rows(dy: Tensor) -> Tensor:
    """``Δy / ‖Δy‖`` per row (rows of norm 0 stay 0)."""
    norm = dy.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, dy / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(dy))


def trim_rows(dy: Tensor, keep: float = 0.99) -> Tensor:
    """Rows of ``dy`` whose norm is at most the ``keep`` quantile of the row norms."""
    norm = dy.norm(dim=1)
    return dy[norm <= torch.quantile(norm, keep)]


def interval(dy: Tensor, i: int, j: int, *, n_boot: int, seed: int) -> dict[str, float]:
    """``{"estimate", "lower", "upper", "se", "n"}`` of the JVP ``Corr[i, j]`` (bootstrap 95 %)."""
    from ..dependence import bootstrap

    b = bootstrap(dy, statistic="corr", n_boot=n_boot, seed=seed)
    return {**b.entry(i, j), "n": int(dy.shape[0])}


def _conditioned(dy: Tensor, i: int, j: int, k: int, *, quantile: float, n_boot: int, seed: int) -> dict:
    from ..dependence import condition

    c = condition(dy, k, quantile=quantile, n_boot=n_boot, seed=seed)
    e = c.ci.entry(i, j) if c.ci is not None else {"estimate": float(c.corr[i, j]), "lower": float("nan"),
                                                   "upper": float("nan"), "se": float("nan")}
    return {**e, "n": c.kept, "kept_fraction": c.kept_fraction, "threshold": c.threshold}


def _separated(a: dict, b: dict) -> bool:
    return bool(a["upper"] < b["lower"] or b["upper"] < a["lower"])


def _right(kind: str, uncond: dict, cond: dict) -> bool:
    if EXPECTED[kind] == "lower":
        return abs(cond["estimate"]) < abs(uncond["estimate"])
    return abs(cond["estimate"]) > abs(uncond["estimate"])


def _block(kind: str, dy: Tensor, hold: Tensor | None, i: int, j: int, k: int, *, quantile: float,
           n_boot: int, seed: int) -> dict[str, Any]:
    jvp = interval(dy, i, j, n_boot=n_boot, seed=seed)
    cond = _conditioned(dy, i, j, k, quantile=quantile, n_boot=n_boot, seed=seed + 1)
    out = {"jvp": jvp, "conditioned": cond,
           "verdict_conditioned": _right(kind, jvp, cond), "separated_conditioned": _separated(jvp, cond)}
    if hold is not None:
        hf = interval(hold, i, j, n_boot=n_boot, seed=seed + 2)
        out.update(hold_fixed=hf, verdict_hold_fixed=_right(kind, jvp, hf), separated_hold_fixed=_separated(jvp, hf))
    return out


def triple_verdict(
    kind: str,
    names: Sequence[str],
    triple: tuple[str, str, str],
    dy: Tensor,
    hold: Tensor | None = None,
    *,
    data: Tensor | None = None,
    quantile: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All estimates and verdicts of one motif (see the module docstring).

    Args:
        kind: ``"fork"``, ``"chain"`` or ``"collider"``.
        names: column names of ``dy``; triple: ``(end_i, end_j, middle)`` names.
        dy: responses ``(n, m)``; hold: hold-fixed responses for the middle node ``(n', m)``.
        data: attribute values ``(N, m)`` for the data correlation and partial correlation.
        quantile: kept fraction when conditioning on small ``|Δy_k|``.

    Returns:
        ``{"kind", "pair", "middle", "expected", "data", "raw", "robust", "normalised", "tail_share_top1pct"}``;
        ``raw``, ``robust`` (trimmed rows) and ``normalised`` each hold ``jvp``, ``conditioned``,
        ``hold_fixed`` intervals with their verdicts and separations.
    """
    from ..graphs.pc import partial_correlation

    if kind not in EXPECTED:
        raise ValueError(f"kind must be one of {sorted(EXPECTED)}, got {kind!r}")
    names = list(names)
    i, j, k = (names.index(v) for v in triple)
    dy = dy.double()
    hold = None if hold is None else hold.double()
    res: dict[str, Any] = {"kind": kind, "pair": [triple[0], triple[1]], "middle": triple[2],
                           "expected": EXPECTED[kind]}
    if data is not None:
        x = np.asarray(data, dtype=np.float64)
        res["data"] = {"corr": partial_correlation(x, i, j, []), "partial_corr": partial_correlation(x, i, j, [k])}
    res["raw"] = _block(kind, dy, hold, i, j, k, quantile=quantile, n_boot=n_boot, seed=seed)
    res["robust"] = _block(kind, trim_rows(dy), None if hold is None else trim_rows(hold), i, j, k,
                           quantile=quantile, n_boot=n_boot, seed=seed)
    res["normalised"] = _block(kind, normalise_rows(dy), None if hold is None else normalise_rows(hold), i, j, k,
                               quantile=quantile, n_boot=n_boot, seed=seed)
    prod = dy[:, i] * dy[:, j]
    res["tail_share_top1pct"] = {triple[0]: tail_share(dy[:, i]), triple[1]: tail_share(dy[:, j]),
                                 triple[2]: tail_share(dy[:, k]), "product": tail_share(prod.abs().sqrt())}
    for key in ("raw", "robust", "normalised"):
        b = res[key]
        b["width_jvp"] = b["jvp"]["upper"] - b["jvp"]["lower"]
    return res


def independence_summary(names: Sequence[str], dy: Tensor, *, data: Tensor | None = None,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every pair's JVP correlation with its interval (and data correlation): for graphs without edges."""
    from ..dependence import bootstrap, correlation

    b = bootstrap(dy.double(), statistic="corr", n_boot=n_boot, seed=seed)
    data_corr = None if data is None else correlation(torch.as_tensor(np.asarray(data, dtype=np.float64)),
                                                      centered=True)
    pairs = []
    m = len(names)
    for i in range(m):
        for j in range(i + 1, m):
            e = b.entry(i, j)
            row = {"pair": [names[i], names[j]], **e, "covers_zero": bool(e["lower"] <= 0.0 <= e["upper"])}
            if data_corr is not None:
                row["data_corr"] = float(data_corr[i, j])
            pairs.append(row)
    return {"pairs": pairs, "max_abs_corr": max(abs(p["estimate"]) for p in pairs),
            "all_cover_zero": all(p["covers_zero"] for p in pairs)}
