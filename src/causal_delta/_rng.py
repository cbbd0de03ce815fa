r"""Counter-based random draws: the numbers of sample ``i`` are a function of ``(seed, stream, i)`` only.

Analyses that split their samples over processes or chunks (``jvp``, ``sample`` under
``torchrun``, any ``--batch-size``) must not depend on how the samples are split. A sequential
generator cannot give that (rank 1 would have to replay rank 0's draws); a counter-based one can:
Philox-4x64-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11), as
numpy ships it, maps a 128-bit key and a 256-bit counter to four 64-bit words. Here the key is
``(seed, stream)`` and sample ``i`` owns the counter blocks ``[i·K, (i+1)·K)``, ``K = ⌈w/4⌉`` for
``w`` words per sample, so any contiguous range of samples is one vectorised call and row ``i``
is the same whichever range it is drawn in.

A word becomes a uniform ``u = (⌊word / 2^{11}⌋ + ½) · 2^{-53}`` in ``(0, 1)`` (53 bits, never 0
or 1) and a standard normal ``Φ^{-1}(u)`` (:func:`torch.special.ndtri`, float64); a Rademacher
sign is the word's top bit. Draws are float64 on the CPU; callers cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["STREAMS", "normal", "probes", "rademacher"]

STREAMS = {"x0": 0, "probes": 1}
"""Named streams: the source points ``x0`` of ``sample`` / ``jvp`` and the probe directions."""


def _words(seed: int, stream: str, rows: range, per_row: int):
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}")
    if not isinstance(rows, range) or rows.step != 1 or rows.start < 0:
        raise ValueError(f"rows must be a contiguous range of sample indices >= 0, got {rows!r}")
    blocks = -(-per_row // 4)
    n = len(rows)
    if n == 0 or per_row == 0:
        return np.zeros((n, per_row), dtype=np.uint64)
    gen = np.random.Philox(key=[seed, STREAMS[stream]], counter=rows.start * blocks)
    return gen.random_raw(n * blocks * 4).reshape(n, blocks * 4)[:, :per_row]


def normal(seed: int, stream: str, rows: range, shape: Sequence[int]) -> Tensor:
    """Standard normal draws ``(len(rows), *shape)`` float64; row ``k`` depends on ``(seed, stream, rows[k])`` only.

    Example:
        >>> whole = normal(0, "x0", range(0, 6), (2,))
        >>> torch.equal(whole[4:], normal(0, "x0", range(4, 6), (2,)))
        True
    """
    shape = tuple(int(s) for s in shape)
    raw = _words(seed, stream, rows, math.prod(shape))
    u = torch.from_numpy((raw >> 11).astype("float64"))
    u = (u + 0.5) * 2.0**-53
    return torch.special.ndtri(u).reshape(len(rows), *shape)


def rademacher(seed: int, stream: str, rows: range, shape: Sequence[int]) -> Tensor:
    """Entries ±1 with probability ½ each, ``(len(rows), *shape)`` float64, per index like :func:`normal`."""
    shape = tuple(int(s) for s in shape)
    raw = _words(seed, stream, rows, math.prod(shape))
    bits = torch.from_numpy((raw >> 63).astype("float64"))
    return (2.0 * bits - 1.0).reshape(len(rows), *shape)


def probes(seed: int, rows: range, event_shape: Sequence[int], *, probes: int = 1, kind: str = "gaussian",
           normalize: bool = True) -> Tensor:
    """Probe directions of samples ``rows``: ``(len(rows), probes, *event_shape)`` float64.

    The per-index counterpart of :func:`causal_delta.jvp.make_probes` (same ``kind`` and
    ``normalize`` meaning: Gaussian or Rademacher entries, optionally rescaled to unit norm).
    """
    from ._validation import check_positive_int

    check_positive_int("probes", probes)
    event = tuple(int(s) for s in event_shape)
    if kind == "gaussian":
        z = normal(seed, "probes", rows, (probes, *event))
    elif kind == "rademacher":
        z = rademacher(seed, "probes", rows, (probes, *event))
    else:
        raise ValueError(f"kind must be 'gaussian' or 'rademacher', got {kind!r}")
    if normalize:
        norms = z.flatten(2).norm(dim=2).clamp_min(torch.finfo(z.dtype).tiny)
        z = z / norms.reshape(len(rows), probes, *([1] * len(event)))
    return z
