r"""PC through causal-learn, with any conditional-independence test, and PC on labels.

causal-learn >= 0.1.4.8 (``pip install causal-delta[graph]``) runs the PC algorithm
(``causallearn.search.ConstraintBased.PC.pc``: skeleton search, PC-stable by default, then
unshielded colliders from the separating sets with ``uc_rule=0, uc_priority=2`` and Meek's
rules). We never re-implement PC: :func:`run_pc` plugs a Python CI function into it through
causal-learn's own extension point (a ``CIT_Base`` subclass registered with
``register_ci_test``) and records every test PC asks for.

* :func:`run_pc` — PC with ``ci(x, y, given) -> (statistic, p_value, extra)`` on column indices.
* :func:`pc_labels` — the hypothesis graph from labels (Figure 4 of arXiv 2602.02793): chi-square
  or G-square for discrete (e.g. binary) labels, Fisher-z for continuous ones; the p-value is
  causal-learn's test, the recorded statistic is the partial correlation of the pair given the
  set (least-squares residuals; an effect size to read beside the p-value).

A NaN p-value counts as dependence (PC keeps the edge), which is the conservative choice.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .result import CITestRecord, GraphResult

__all__ = ["run_pc", "pc_labels", "partial_correlation", "LABEL_TESTS", "CITest"]

LABEL_TESTS = ("chisq", "gsq", "fisherz")
_REGISTERED = "causal_delta_ci"

#: A CI test on column indices: ``ci(x, y, given) -> (statistic, p_value, extra_dict)``.
CITest = Callable[[int, int, tuple[int, ...]], tuple[float, float, dict]]


def _causallearn() -> tuple[Any, Any]:
    try:
        from causallearn.search.ConstraintBased.PC import pc
        from causallearn.utils import cit
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("graph search needs causal-learn: pip install causal-delta[graph]") from exc
    # register_ci_test arrived in 0.1.4.2, pc(max_k=...) (our depth) in 0.1.4.8.
    if not hasattr(cit, "register_ci_test") or "max_k" not in inspect.signature(pc).parameters:  # pragma: no cover
        raise ImportError("causal-learn >= 0.1.4.8 is needed (custom CI tests and depth): "
                          "pip install -U 'causal-delta[graph]'")
    return pc, cit


@functools.cache
def _adapter_class() -> type:
    """The ``CIT_Base`` subclass handing each test to the ``ci`` callable it is built with."""
    _, cit = _causallearn()
    base: Any = cit.CIT_Base  # causal-learn ships no stubs; a named Any is a base class mypy accepts

    class CausalDeltaCI(base):
        def __init__(self, data: np.ndarray, ci: Callable | None = None, **kwargs: Any) -> None:
            super().__init__(data, **kwargs)
            if ci is None:
                raise ValueError("the causal_delta CI test needs its ci= callable")
            self.check_cache_method_consistent(_REGISTERED, cit.NO_SPECIFIED_PARAMETERS_MSG)
            self.ci = ci

        def __call__(self, X: Any, Y: Any, condition_set: Any = None) -> float:
            Xs, Ys, S, key = self.get_formatted_XYZ_and_cachekey(X, Y, condition_set)
            if key not in self.pvalue_cache:
                self.pvalue_cache[key] = float(self.ci(Xs[0], Ys[0], tuple(S)))
            return self.pvalue_cache[key]

    cit.register_ci_test(_REGISTERED, CausalDeltaCI)
    return CausalDeltaCI


def _check_names(names: Sequence[str], m: int) -> tuple[str, ...]:
    if isinstance(names, str) or len(names) != m:
        raise ValueError(f"names must be a sequence of {m} variable names (one per column), got {names!r}")
    names = tuple(str(n) for n in names)
    if len(set(names)) != m:
        raise ValueError(f"names must be distinct, got {list(names)}")
    return names


def _check_alpha_depth(alpha: float, depth: int) -> tuple[float, int]:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < -1:
        raise ValueError(f"depth must be an integer >= -1 (-1: unbounded conditioning sets), got {depth!r}")
    return a, depth


def run_pc(
    data: np.ndarray,
    names: Sequence[str],
    ci: CITest,
    *,
    test: str,
    alpha: float = 0.05,
    depth: int = -1,
    stable: bool = True,
    settings: dict | None = None,
    progress: bool = False,
) -> GraphResult:
    """Run causal-learn's PC with the CI test ``ci`` and collect the learned graph and the tests.

    Args:
        data: ``(n, m)`` array handed to causal-learn (it hashes it and checks its shape; the
            test itself is ``ci``).
        names: ``m`` variable names, in column order (the variable order PC uses).
        ci: ``ci(x, y, given) -> (statistic, p_value, extra)`` on column indices, ``x < y``.
        test: the test's name for the record; alpha: significance level; depth: largest
            conditioning set (``-1`` unbounded); stable: PC-stable skeleton search.
        settings: stored in the result as they are.

    Returns:
        :class:`GraphResult` with every test PC ran, in order.
    """
    pc, _ = _causallearn()
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"data must have shape (n, m) with m >= 2 variables, got {data.shape}")
    names = _check_names(names, data.shape[1])
    alpha, depth = _check_alpha_depth(alpha, depth)
    records: list[CITestRecord] = []

    def recorded(x: int, y: int, given: tuple[int, ...]) -> float:
        stat, p, extra = ci(x, y, given)
        records.append(CITestRecord(names[x], names[y], tuple(names[g] for g in given), float(stat), float(p),
                                    dict(extra)))
        return float(p)

    _adapter_class()
    cg = pc(data, alpha=alpha, indep_test=_REGISTERED, stable=stable, uc_rule=0, uc_priority=2,
            show_progress=progress, node_names=list(names), max_k=None if depth < 0 else depth, ci=recorded)
    G = np.asarray(cg.G.graph)
    directed, undirected, bidirected = [], [], []
    m = len(names)
    for i in range(m):
        for j in range(m):
            if G[i, j] == -1 and G[j, i] == 1:  # causal-learn: graph[i, j] = -1, graph[j, i] = 1 is i -> j
                directed.append((names[i], names[j]))
            elif i < j and G[i, j] == -1 and G[j, i] == -1:
                undirected.append((names[i], names[j]))
            elif i < j and G[i, j] == 1 and G[j, i] == 1:
                bidirected.append((names[i], names[j]))
    return GraphResult(names, tuple(directed), tuple(undirected), test, alpha, depth, bool(stable),
                       tuple(bidirected), tuple(records), dict(settings or {}))


def partial_correlation(data: np.ndarray, x: int, y: int, given: Sequence[int]) -> float:
    """Pearson correlation of the least-squares residuals of columns ``x`` and ``y`` on the
    columns ``given`` (and a constant)."""
    n = data.shape[0]
    Z = np.column_stack([np.ones(n)] + [data[:, g] for g in given])
    XY = data[:, [x, y]]
    res = XY - Z @ np.linalg.lstsq(Z, XY, rcond=None)[0]
    den = np.sqrt((res[:, 0] ** 2).sum() * (res[:, 1] ** 2).sum())
    return float((res[:, 0] * res[:, 1]).sum() / den) if den > 0 else float("nan")


def pc_labels(
    data: Any,
    names: Sequence[str],
    *,
    test: str = "chisq",
    alpha: float = 0.05,
    depth: int = -1,
    stable: bool = True,
    progress: bool = False,
) -> GraphResult:
    """The hypothesis graph of labels: PC with a classical CI test (Figure 4 of the paper).

    Args:
        data: ``(n, m)`` labels (numpy array or tensor): integer codes such as 0/1 for
            ``"chisq"`` / ``"gsq"``, real values for ``"fisherz"``.
        names: ``m`` attribute names in column order (the variable order, recorded).
        test: ``"chisq"``, ``"gsq"`` (discrete) or ``"fisherz"`` (continuous, Gaussian).
        alpha, depth, stable: as in :func:`run_pc`.

    Returns:
        :class:`GraphResult`; each record's ``statistic`` is the partial correlation (effect
        size) and ``p_value`` causal-learn's p-value of ``test``.
    """
    if test not in LABEL_TESTS:
        raise ValueError(f"test must be one of {LABEL_TESTS}, got {test!r}")
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    X = np.asarray(data, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 2:
        raise ValueError(f"data must have shape (n, m) with n >= 2 rows and m >= 2 columns, got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("data must be finite, got NaN or inf entries")
    const = [names[j] if j < len(names) else j for j in range(X.shape[1]) if np.ptp(X[:, j]) == 0]
    if const:
        raise ValueError(f"data columns {const} are constant; a CI test cannot use them")
    if test != "fisherz" and not np.array_equal(X, np.round(X)):
        raise ValueError(f"test={test!r} needs discrete labels (integer codes such as 0/1); "
                         "use test='fisherz' for continuous data")
    names = _check_names(names, X.shape[1])
    _, cit = _causallearn()
    builtin = cit.CIT(X, test)

    def ci(x: int, y: int, given: tuple[int, ...]) -> tuple[float, float, dict]:
        return partial_correlation(X, x, y, given), float(builtin(x, y, list(given))), {}

    return run_pc(X, names, ci, test=test, alpha=alpha, depth=depth, stable=stable, progress=progress,
                  settings={"n": int(X.shape[0]), "statistic": "partial correlation (p-value from the test)"})
