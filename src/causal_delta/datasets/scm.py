r"""Structural causal models (SCMs) over a known DAG: data whose causal graph is known.

Every node ``j`` of the DAG is generated in topological order from its parents ``pa(j)``:

.. math::

    r_j = s \sum_{p \in pa(j)} w_{pj}\, h_{pj}(x_p) + \varepsilon_j, \qquad
    x_j = (r_j - \mu_j) / \sigma_j,

with ``s`` the ``strength``, weights ``w_{pj} = ±U(0.75, 1.25)`` and per-edge mechanisms
``h_{pj}`` drawn from the seed, noises ``ε_j`` of zero mean and unit variance, and ``μ_j``,
``σ_j`` the mean and standard deviation of ``r_j`` (estimated once, at construction, on a
fixed Monte-Carlo reference sample of ``n_reference`` rows drawn from the seed), so every
output has mean ≈ 0 and variance ≈ 1.

Mechanisms (each monotone, so a causal edge carries a clear linear correlation even for
skewed inputs): ``linear`` ``x``; ``tanh`` ``1.5 tanh(x)``; ``softplus`` ``2 softplus(x) - 1.4``;
``quadratic`` the signed square ``x + 0.35 x |x|``; ``mixed`` draws one of the non-linear ones
per edge.
Noises (zero mean, unit variance): ``gaussian``; ``laplace`` (scale ``1/√2``); ``uniform`` on
``[-√3, √3]``; ``gamma`` (shape 2, ``(G - 2)/√2``, skewed); ``mixed`` draws one per node.

Helper: :func:`partial_correlations_given_rest` (inverse covariance matrix), the independent
check of :func:`causal_delta.graphs.pc.partial_correlation` (regression residuals) in the tests.

Registered as the data source ``"scm"``, so
``causal-delta train --data scm --data-args '{"graph": "fork", "seed": 0}'`` trains on it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_positive_int
from . import SamplerSource

__all__ = [
    "MECHANISMS",
    "NOISES",
    "SCM",
    "resolve_graph",
    "partial_correlations_given_rest",
    "scm_source",
]

MECHANISMS = ("mixed", "linear", "tanh", "softplus", "quadratic")
NOISES = ("mixed", "gaussian", "laplace", "uniform", "gamma")
_NONLINEAR = ("tanh", "softplus", "quadratic")
_PURE_NOISES = ("laplace", "uniform", "gamma")


def _mechanism(kind: str, x: Tensor) -> Tensor:
    if kind == "linear":
        return x
    if kind == "tanh":
        return 1.5 * torch.tanh(x)
    if kind == "softplus":
        return 2.0 * torch.nn.functional.softplus(x) - 1.4
    if kind == "quadratic":
        return x + 0.35 * x * x.abs()  # monotone: x + 0.35 x^2 would fold back for x < -1.43
    raise ValueError(f"mechanism must be one of {MECHANISMS}, got {kind!r}")  # pragma: no cover


def _noise(kind: str, n: int, generator: torch.Generator | None) -> Tensor:
    """``(n,)`` float64 draws of zero mean and unit variance (inverse-CDF, so ``generator`` is the only randomness)."""
    if kind == "gaussian":
        return torch.randn(n, generator=generator, dtype=torch.float64)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if kind == "uniform":
        return math.sqrt(3.0) * (2.0 * u - 1.0)
    if kind == "laplace":
        # inverse CDF of Laplace(0, b), b = 1/sqrt(2) (variance 2 b^2 = 1)
        v = u - 0.5
        return -torch.sign(v) * torch.log1p(-2.0 * v.abs()) / math.sqrt(2.0)
    if kind == "gamma":
        # Gamma(2, 1) = sum of two Exp(1) draws: mean 2, variance 2
        u2 = torch.rand(n, generator=generator, dtype=torch.float64)
        g = -torch.log1p(-u) - torch.log1p(-u2)
        return (g - 2.0) / math.sqrt(2.0)
    raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")  # pragma: no cover


def resolve_graph(graph: Any):
    """A :class:`causal_delta.graphs.DAG` from a DAG, a name of ``KNOWN_GRAPHS`` or a spec ``"A->B, A->C"``.

    Raises:
        ValueError: unknown name (the message lists the known ones), a spec that does not
            parse or is not a DAG (``"graph spec is not a DAG"``).
    """
    from ..graphs import DAG, KNOWN_GRAPHS, known_graph

    if isinstance(graph, DAG):
        return graph
    if not isinstance(graph, str) or not graph.strip():
        raise ValueError(f"graph must be one of {sorted(KNOWN_GRAPHS)} or a spec like 'A->B, A->C', got {graph!r}")
    if graph in KNOWN_GRAPHS:
        return known_graph(graph)
    if "->" not in graph:
        raise ValueError(f"graph must be one of {sorted(KNOWN_GRAPHS)} or a spec like 'A->B, A->C', got {graph!r}")
    return DAG.parse(graph)


class SCM:
    """A non-linear, non-Gaussian structural causal model over a DAG (see the module docstring).

    Arguments:
        graph: a ``DAG``, a name of ``causal_delta.graphs.KNOWN_GRAPHS`` or a spec ``"A->B, A->C"``.
        mechanism: one of :data:`MECHANISMS`.
        noise: one of :data:`NOISES`.
        strength: ``s`` > 0, the scale of the parents' contribution against unit-variance noise.
        seed: draws the weights, the per-edge mechanisms / per-node noises of ``"mixed"`` and the
            reference sample of the standardisation.
        n_reference: rows of the Monte-Carlo reference sample for ``μ_j``, ``σ_j``.

    Attributes:
        names: node names in the column order of :meth:`sample` (the DAG's node order).
        parents: ``{node: (parent, ...)}``; weights: ``{(parent, node): w}``;
        mechanisms: ``{(parent, node): kind}``; noises: ``{node: kind}``;
        shift, scale: ``{node: μ_j}``, ``{node: σ_j}``.
    """

    def __init__(self, graph: Any = "fork", *, mechanism: str = "mixed", noise: str = "mixed",
                 strength: float = 1.0, seed: int = 0, n_reference: int = 200_000) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
                math.isfinite(strength) and strength > 0):
            raise ValueError(f"strength must be a finite number > 0, got {strength!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        check_positive_int("n_reference", n_reference)
        self.graph = resolve_graph(graph)
        self.names = tuple(self.graph.nodes)
        self.order = tuple(self.graph.topological_order())
        self.parents = {v: tuple(self.graph.parents(v)) for v in self.names}
        self.mechanism, self.noise, self.strength, self.seed = mechanism, noise, float(strength), seed
        gen = torch.Generator().manual_seed(seed)
        self.weights: dict[tuple[str, str], float] = {}
        self.mechanisms: dict[tuple[str, str], str] = {}
        self.noises: dict[str, str] = {}
        for v in self.order:
            pick = int(torch.randint(0, len(_PURE_NOISES), (1,), generator=gen))
            self.noises[v] = _PURE_NOISES[pick] if noise == "mixed" else noise
            for p in self.parents[v]:
                sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.5 else -1.0
                mag = 0.75 + 0.5 * float(torch.rand(1, generator=gen))
                pick = int(torch.randint(0, len(_NONLINEAR), (1,), generator=gen))
                self.weights[(p, v)] = sign * mag
                self.mechanisms[(p, v)] = _NONLINEAR[pick] if mechanism == "mixed" else mechanism
        self.shift = {v: 0.0 for v in self.names}
        self.scale = {v: 1.0 for v in self.names}
        raw = self._raw(n_reference, torch.Generator().manual_seed(10_007 + seed), standardize_as_you_go=True)
        del raw

    def _raw(self, n: int, generator: torch.Generator | None, *, standardize_as_you_go: bool = False) -> dict:
        values: dict[str, Tensor] = {}
        for v in self.order:
            r = _noise(self.noises[v], n, generator)
            for p in self.parents[v]:
                r = r + self.strength * self.weights[(p, v)] * _mechanism(self.mechanisms[(p, v)], values[p])
            if standardize_as_you_go:  # construction: estimate μ_j, σ_j on the reference sample
                self.shift[v] = float(r.mean())
                self.scale[v] = float(r.std()) if n > 1 else 1.0
            values[v] = (r - self.shift[v]) / self.scale[v]
        return values

    @property
    def dim(self) -> int:
        """Number of variables ``m``."""
        return len(self.names)

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """``(n, m)`` draws, columns in the order of :attr:`names` (only ``generator`` is used for randomness)."""
        check_positive_int("n", n)
        values = self._raw(n, generator)
        return torch.stack([values[v] for v in self.names], dim=1).to(dtype)

    def index(self, node: str) -> int:
        """Column of ``node``; ValueError naming the known nodes otherwise."""
        if node not in self.names:
            raise ValueError(f"node must be one of {list(self.names)}, got {node!r}")
        return self.names.index(node)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description of the model (weights, mechanisms, noises, standardisation)."""
        return {
            "nodes": list(self.names),
            "edges": [[p, v] for v in self.order for p in self.parents[v]],
            "strength": self.strength, "seed": self.seed, "mechanism": self.mechanism, "noise": self.noise,
            "weights": {f"{p}->{v}": w for (p, v), w in self.weights.items()},
            "mechanisms": {f"{p}->{v}": k for (p, v), k in self.mechanisms.items()},
            "noises": dict(self.noises),
            "shift": dict(self.shift), "scale": dict(self.scale),
        }


def _as_2d(x: Any, name: str = "x") -> Tensor:
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n, m) with n >= 3, m >= 2, got {tuple(x.shape)}")
    return x


def partial_correlations_given_rest(x: Any) -> Tensor:
    r"""Partial correlation of every pair given *all other* columns, ``(m, m)`` (diagonal 1).

    Inverse-covariance route: with :math:`\Omega = \Sigma^{-1}`,
    :math:`\rho_{ij\cdot\mathrm{rest}} = -\Omega_{ij}/\sqrt{\Omega_{ii}\Omega_{jj}}`.
    """
    x = _as_2d(x)
    xc = x - x.mean(0)
    omega = torch.linalg.inv(xc.T @ xc / (x.shape[0] - 1))
    d = omega.diagonal().sqrt()
    p = -omega / d[:, None] / d[None, :]
    p.fill_diagonal_(1.0)
    return p


def scm_source(graph: Any = "fork", *, seed: int = 0, mechanism: str = "mixed", noise: str = "mixed",
               strength: float = 1.0, n_reference: int = 200_000) -> SamplerSource:
    """Data source ``"scm"``: rows of :class:`SCM` ``(n, m)`` float32; the model is ``source.scm``.

    The SCM (weights, mechanisms, standardisation) is fixed by ``seed``; the rows come from
    the generator passed to ``sample``. ``source.names`` lists the columns.
    """
    scm = SCM(graph, mechanism=mechanism, noise=noise, strength=strength, seed=seed, n_reference=n_reference)
    return SamplerSource(lambda n, g: scm.sample(n, g, dtype=torch.float32), (scm.dim,), name="scm",
                         scm=scm, names=scm.names)
