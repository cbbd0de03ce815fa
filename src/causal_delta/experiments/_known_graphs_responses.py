"""The responses of ``known-graphs``' flows, split over ranks under ``torchrun``.

Each function computes what one process would, with every per-sample loop going through
:func:`._common.split_rows`: each rank integrates its contiguous block of the samples and the
blocks are gathered in sample order on every rank, so the estimators downstream see the same
tensors whatever the number of processes.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _common as C

__all__ = ["generate", "split_oracle", "image_responses"]


def generate(flow, x0: torch.Tensor, method: str, steps: int) -> torch.Tensor:
    """Samples ``f(x0)`` ``(n, *event)`` by the flow's solver (chosen by its discretisation check)."""
    from ..solvers import integrate

    with torch.no_grad():
        return C.split_rows(lambda a: integrate(flow, a, method=method, steps=steps).x, x0)


def split_oracle(velocity, x0: torch.Tensor, probes: torch.Tensor, **kw: Any):
    """A :class:`causal_delta.graphs.jvp_pc.ResponseOracle` over all ``(x0, probes)`` whose responses
    (plain and held fixed, as JVP-PC asks for them) each rank computes for its block of samples
    under torchrun, gathered in sample order on every rank (the same tensors as in one process).

    Every rank runs the same search on the same gathered responses, so each asks for the same
    held sets in the same order and reaches the same collectives. The rank's own oracle (over its
    block, kept across calls) caches the read-out gradients as the plain one does.
    """
    from ..graphs.jvp_pc import ResponseOracle

    class SplitOracle(ResponseOracle):
        block: ResponseOracle | None = None

        def responses(self, hold=()) -> torch.Tensor:
            key = frozenset(int(k) for k in hold)
            if key not in self._responses:
                n, P = self.probes.shape[:2]

                def rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the same block at every call
                    if self.block is None:
                        self.block = ResponseOracle(velocity, a, b, **kw)
                    return self.block.responses(hold).reshape(len(a), P, -1)

                self._responses[key] = C.split_rows(rows, self.x0, self.probes).reshape(n * P, -1)
            return self._responses[key]

    return SplitOracle(velocity, x0, probes, **kw)


def image_responses(flow, readout, method: str, steps: int, x0: torch.Tensor, z: torch.Tensor, *,
                    hold: int | None = None):
    """``Δy = J_{C∘f}(x0) z`` ``(n, 3)`` with the read-out's outputs ``(n, 3)`` and the samples ``f(x0)``;
    with ``hold = k`` the hold-fixed responses alone (probes orthogonal to ``∇(C_k∘f)``)."""
    from ..dependence import hold_fixed_responses
    from ..jvp import attribute_jvp

    kw = dict(classifier=readout, method=method, steps=steps)
    if hold is not None:
        return hold_fixed_responses(flow, x0, z, hold, batch_size=64, **kw).responses
    res = attribute_jvp(flow, x0, z, **kw)
    return res.responses, res.outputs, res.samples
