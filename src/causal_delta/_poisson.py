r"""Counter-based Poisson(1) weights for the online bootstrap (:mod:`causal_delta.moments`).

Weight of unit ``i`` in replicate ``r``: :math:`F^{-1}(u)`, :math:`F` the Poisson(1) CDF, ``u`` 53
bits of a SplitMix64 hash (Steele, Lea & Flood 2014, https://doi.org/10.1145/2714064.2660195) of
``(seed, r, i)`` — no generator state, so any chunk of units on any process draws the same
weights as one pass over all of them.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ._validation import check_positive_int

__all__ = ["poisson_weights", "check_seed"]

_F64 = torch.float64
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)  # SplitMix64 constants as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors; multiplication wraps modulo 2⁶⁴ as in C."""
    x = x + _GAMMA
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is an integer in ``[0, 2⁶³)``, else raise ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < (1 << 63):
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


def poisson_weights(seed: int, index: Tensor, n_boot: int) -> Tensor:
    r"""Poisson(1) bootstrap weights ``(n_boot, n)`` float64 of the units ``index`` ``(n,)``.

    :math:`w_{ri} = F^{-1}(u_{ri})` with :math:`F` the Poisson(1) CDF and
    :math:`u_{ri} = \lfloor h / 2^{11} \rfloor / 2^{53}`,
    :math:`h = \mathrm{sm}(\mathrm{sm}(\mathrm{sm}(\mathrm{seed}) \oplus r) \oplus i)`, ``sm`` the
    SplitMix64 finaliser — a function of ``(seed, r, index_i)`` only, whatever the chunk.

    Args:
        seed: integer in ``[0, 2⁶³)``; index: non-negative integer indices ``(n,)``;
        n_boot: replicates.
    """
    check_seed(seed)
    check_positive_int("n_boot", n_boot)
    index = torch.as_tensor(index)
    if index.ndim != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"index must be a 1-D integer tensor, got {index.dtype} of shape {tuple(index.shape)}")
    if index.numel() and int(index.min()) < 0:
        raise ValueError("index must be non-negative")
    idx = index.to(torch.int64).cpu()
    keys = _splitmix64(_splitmix64(torch.tensor([seed], dtype=torch.int64)) ^ torch.arange(n_boot))
    h = _splitmix64(keys.unsqueeze(1) ^ idx.unsqueeze(0))
    u = _shr(h, 11).to(_F64) * 2.0**-53
    return torch.searchsorted(_poisson_cdf(), u, right=True).to(_F64)


@functools.lru_cache(maxsize=1)
def _poisson_cdf() -> Tensor:
    """``P(K <= k)`` for ``K ~ Poisson(1)``, ``k = 0..24`` (the tail beyond is below 1e-25)."""
    return torch.tensor([math.exp(-1.0) * sum(1.0 / math.factorial(j) for j in range(k + 1)) for k in range(25)],
                        dtype=_F64)
