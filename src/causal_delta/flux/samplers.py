r"""Samplers for stationary fields: Langevin and annealed Euler–Maruyama.

Langevin (arXiv 2605.07319): Euler–Maruyama for ``dx = f dt + √2 dW`` with step ``h = η/2``,

.. math:: x_{k+1} = x_k + \tfrac{η}{2} f(x_k) + \sqrt{η}\, ξ_k, \qquad ξ_k \sim N(0, I).

Annealed (Song & Ermon 2019): for a noise-conditional field ``f(x, σ)`` and levels
``σ_1 > … > σ_L``, ``steps_per_level`` Langevin steps at each level with step
``η_l = η (σ_l / σ_L)²``; the field is called as ``field(x, σ_l)`` with ``σ_l`` a (B,) tensor
(a time-free field ignores it, and the run is Langevin with a decreasing step).

Both return a :class:`SampleResult` with the number of field evaluations ``nfe``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_positive_int

__all__ = ["SampleResult", "langevin", "annealed_langevin"]


@dataclass
class SampleResult:
    """Samples ``x`` (B, d) and ``nfe``, the number of field evaluations (batched calls)."""

    x: Tensor
    nfe: int


def _bar(n: int, desc: str, enabled: bool):
    if not enabled:
        return range(n)
    try:
        from .._progress import progress_bar as tqdm  # tqdm is optional
    except ImportError:  # pragma: no cover
        return range(n)
    return tqdm(range(n), desc=desc, leave=False, dynamic_ncols=True)


def _check_eta(eta: float) -> float:
    if not (isinstance(eta, (int, float)) and 0 < float(eta) < float("inf")):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    return float(eta)


@torch.no_grad()
def langevin(field: Callable[[Tensor], Tensor], x: Tensor, *, steps: int = 1000, eta: float = 0.1,
             generator: torch.Generator | None = None, progress: bool = False,
             rows: range | None = None) -> SampleResult:
    """Run ``steps`` Langevin steps ``x ← x + (η/2) f(x) + √η ξ`` from ``x`` (B, d).

    ``rows`` (a contiguous ``range`` of row indices of ``x``) runs only those chains, returning
    ``(len(rows), d)``: the noise ``ξ`` is still drawn for all ``B`` rows at every step and
    sliced, so a block's chains equal the same rows of the full run (how the ``flux``
    experiment splits its chains over ``torchrun`` ranks, :func:`causal_delta.distributed.map_rows`).
    """
    check_positive_int("steps", steps)
    eta = _check_eta(eta)
    sq = eta**0.5
    shape = x.shape
    if rows is not None:
        if not isinstance(rows, range) or rows.step != 1 or not 0 <= rows.start <= rows.stop <= shape[0]:
            raise ValueError(f"rows must be a contiguous range within [0, {shape[0]}], got {rows!r}")
        x = x[rows.start:rows.stop]
    block = slice(None) if rows is None else slice(rows.start, rows.stop)
    for _ in _bar(steps, "langevin", progress):
        noise = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)[block]
        x = torch.add(x + sq * noise, field(x), alpha=0.5 * eta)
    return SampleResult(x, steps)


@torch.no_grad()
def annealed_langevin(field: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Sequence[float], *,
                      steps_per_level: int = 100, eta: float = 0.01, generator: torch.Generator | None = None,
                      progress: bool = False) -> SampleResult:
    """Annealed Euler–Maruyama over decreasing ``sigmas``; ``η_l = η (σ_l/σ_L)²`` (module docstring)."""
    check_positive_int("steps_per_level", steps_per_level)
    eta = _check_eta(eta)
    levels = [float(s) for s in sigmas]
    if not levels or any(not s > 0 for s in levels) or any(a < b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"sigmas must be a non-empty decreasing sequence of numbers > 0, got {sigmas!r}")
    nfe = 0
    for s in _bar(len(levels), "annealed langevin", progress):
        level = levels[s]
        step = eta * (level / levels[-1]) ** 2
        sl = torch.full((x.shape[0],), level, dtype=x.dtype, device=x.device)
        for _ in range(steps_per_level):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = torch.add(x + step**0.5 * noise, field(x, sl), alpha=0.5 * step)
            nfe += 1
    return SampleResult(x, nfe)
