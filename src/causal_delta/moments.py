r"""Streaming dependence statistics: moment accumulators that merge exactly across chunks and ranks.

:mod:`causal_delta.dependence` needs every response row in memory. A :class:`MomentAccumulator`
keeps only sums, in float64, from which the same estimators follow:

* count :math:`n`, :math:`\sum_i \Delta y_i` ``(m,)`` and :math:`\sum_i \Delta y_i \Delta y_i^T`
  ``(m, m)`` — so :math:`S = \frac1n \sum \Delta y \Delta y^T` and the paper's
  :math:`\mathrm{Corr} = D^{-1/2} S D^{-1/2}` (or the Pearson one from :math:`S - \mu\mu^T`);
* the online (Poisson) bootstrap (Oza & Russell 2001; Hanley & MacGibbon 2006,
  https://doi.org/10.1016/j.cmpb.2005.11.005): replicate :math:`r` weights row :math:`i` by
  :math:`w_{ri} \sim \mathrm{Poisson}(1)` and keeps :math:`\sum_i w_{ri}`, :math:`\sum_i w_{ri}\Delta y_i`,
  :math:`\sum_i w_{ri}\Delta y_i\Delta y_i^T`. A Poisson(1) count is the large-``n`` limit of the
  multinomial count of the ordinary bootstrap, and unlike it needs no knowledge of ``n``;
  percentile intervals come from the replicates;
* conditioning (Section 6.4 of arXiv 2602.02793): the same sums over the rows with
  :math:`|\Delta y_k| \le t` for each threshold :math:`t` of a sweep fixed in advance
  (:func:`pilot_thresholds` picks them from quantiles of a pilot chunk), with their own
  bootstrap replicates.

Every sum is additive, so :meth:`MomentAccumulator.merge` (and
:meth:`MomentAccumulator.all_reduce` over ``torch.distributed``) of accumulators fed disjoint rows
equals the accumulator of all rows, up to float64 summation order (~1e-16 relative).

Bootstrap weights depend on ``(seed, replicate, index)`` only, where ``index`` is the global
index of the row's resampling unit (the row, or its sample when several probes share one):
:func:`poisson_weights` hashes the three integers with SplitMix64 (Steele, Lea & Flood 2014,
https://doi.org/10.1145/2714064.2660195) to 53 uniform bits and inverts the Poisson(1) CDF.
The result is therefore the same for any chunking and any number of processes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._intervals import bootstrap_interval
from ._poisson import check_seed, poisson_weights
from ._validation import check_positive_int
from .dependence import (
    _STATISTICS,
    BootstrapResult,
    ConditionedEstimate,
    SweepResult,
    _check_dy,
    _check_k,
    correlation_from_moments,
)

__all__ = ["MomentAccumulator", "poisson_weights", "pilot_thresholds", "FORMAT", "VERSION"]

FORMAT = "causal-delta-moments"
VERSION = 1

_F64 = torch.float64
_STEP_ELEMENTS = 1 << 21  # rows per internal step × their features: bounds the buffers (16 MB in float64)


def pilot_thresholds(dy: Tensor, k: int, quantiles: Sequence[float]) -> Tensor:
    """Absolute thresholds on ``|Δy_k|``: the ``quantiles`` of a pilot chunk ``dy`` ``(n, m)``.

    A quantile ``>= 1`` gives ``inf`` (keep every row, not only those below the pilot's largest).
    Linear interpolation as :func:`torch.quantile`, as :func:`causal_delta.dependence.condition`.
    """
    dy = _check_dy(dy, "pilot responses")
    _check_k(k, dy.shape[1])
    qs = [float(q) for q in quantiles]
    if not qs or any(not 0.0 < q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must be a non-empty list of numbers in (0, 1], got {list(quantiles)!r}")
    a = dy[:, k].abs().double()
    return torch.tensor([math.inf if q >= 1.0 else float(torch.quantile(a, q)) for q in qs], dtype=_F64)


class MomentAccumulator:
    r"""Sums of responses from which correlations, bootstrap intervals and conditioning follow.

    Args:
        m: number of features (columns of the responses).
        n_boot: Poisson-bootstrap replicates kept (0: none).
        seed: seed of the bootstrap weights (:func:`poisson_weights`).
        k: conditioning feature, with ``thresholds`` ``(T,)`` absolute thresholds on ``|Δy_k|``
            (``> 0``; ``inf`` keeps every row); ``quantiles``: the pilot quantiles they came from,
            recorded for reports (:func:`pilot_thresholds`).

    Attributes (float64 unless said; ``R = n_boot``, ``T`` thresholds):
        count (int64), total ``(m,)``, outer ``(m, m)``: :math:`n, \sum\Delta y, \sum\Delta y\Delta y^T`;
        boot_count ``(R,)``, boot_total ``(R, m)``, boot_outer ``(R, m, m)``: the weighted sums;
        cond_count (int64) ``(T,)``, cond_total ``(T, m)``, cond_outer ``(T, m, m)`` and
        cond_boot_count ``(T, R)``, cond_boot_total ``(T, R, m)``, cond_boot_outer
        ``(T, R, m, m)``: the same over the rows kept by each threshold.

    Examples:
        >>> import torch
        >>> dy = torch.randn(1000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> a, b = MomentAccumulator(3), MomentAccumulator(3)
        >>> _ = a.update(dy[:400]); _ = b.update(dy[400:], index=400)
        >>> from causal_delta.dependence import correlation
        >>> bool((a.merge(b).correlation() - correlation(dy)).abs().max() < 1e-12)
        True
    """

    _SUMS = ("count", "total", "outer", "boot_count", "boot_total", "boot_outer",
             "cond_count", "cond_total", "cond_outer", "cond_boot_count", "cond_boot_total", "cond_boot_outer")

    def __init__(self, m: int, *, n_boot: int = 0, seed: int = 0, k: int | None = None,
                 thresholds: Sequence[float] | Tensor = (), quantiles: Sequence[float] | Tensor | None = None):
        check_positive_int("m", m)
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
            raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
        self.m, self.n_boot, self.seed = m, n_boot, check_seed(seed)
        thr = torch.as_tensor(thresholds, dtype=_F64).reshape(-1)
        if thr.numel() and k is None:
            raise ValueError("thresholds need the conditioning feature k")
        if k is not None:
            _check_k(k, m)
            if thr.numel() == 0:
                raise ValueError("k needs at least one threshold (absolute, on |dy_k|; inf keeps every row)")
            if torch.isnan(thr).any() or not bool((thr > 0).all()):
                raise ValueError(f"thresholds must be > 0 (inf keeps every row), got {thr.tolist()}")
        self.k, self.thresholds = k, thr
        q = torch.full_like(thr, math.nan) if quantiles is None else torch.as_tensor(quantiles, dtype=_F64).reshape(-1)
        if q.shape != thr.shape:
            raise ValueError(f"quantiles must have one entry per threshold ({thr.numel()}), got {q.numel()}")
        self.quantiles = q
        R, T = n_boot, thr.numel()
        z = lambda *s: torch.zeros(*s, dtype=_F64)  # noqa: E731
        self.count = torch.zeros((), dtype=torch.int64)
        self.total, self.outer = z(m), z(m, m)
        self.boot_count, self.boot_total, self.boot_outer = z(R), z(R, m), z(R, m, m)
        self.cond_count = torch.zeros(T, dtype=torch.int64)
        self.cond_total, self.cond_outer = z(T, m), z(T, m, m)
        self.cond_boot_count, self.cond_boot_total, self.cond_boot_outer = z(T, R), z(T, R, m), z(T, R, m, m)

    # ------------------------------------------------------------------ accumulation

    def update(self, dy: Tensor, index: Tensor | int | None = None) -> MomentAccumulator:
        """Add the rows ``dy`` ``(n, m)`` (any float dtype; summed in float64 on the CPU).

        ``index``: the global index of each row's resampling unit, ``(n,)`` integers — the row
        index, or the sample index when several probes share a sample (then whole samples are
        resampled); an int ``s`` means ``s, s+1, …``; ``None`` continues the row count of this
        accumulator (right for chunks fed in order in one process). Returns ``self``.
        """
        dy = _check_dy(dy).detach().to("cpu", _F64)
        n, m = dy.shape
        if m != self.m:
            raise ValueError(f"responses must have {self.m} columns, got {m}")
        if index is None or isinstance(index, int) and not isinstance(index, bool):
            start = int(self.count) if index is None else index
            if start < 0:
                raise ValueError(f"index must be non-negative, got {index!r}")
            idx = torch.arange(start, start + n)
        else:
            idx = torch.as_tensor(index)
            if idx.shape != (n,) or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
                raise ValueError(f"index must be integers of shape (n,) = ({n},), got {idx.dtype} {tuple(idx.shape)}")
            if n and int(idx.min()) < 0:  # checked before any sum changes
                raise ValueError("index must be non-negative")
        c = 1 + m + m * (m + 1) // 2
        step = max(64, _STEP_ELEMENTS // ((1 + self.thresholds.numel()) * c))
        for s in range(0, n, step):
            self._add(dy[s: s + step], idx[s: s + step])
        return self

    def _add(self, dy: Tensor, idx: Tensor) -> None:
        n, m = dy.shape
        iu = torch.triu_indices(m, m)  # S is symmetric: form and weight the upper triangle only
        pos = torch.zeros(m, m, dtype=torch.int64)
        pos[iu[0], iu[1]] = torch.arange(iu.shape[1])
        pos = torch.maximum(pos, pos.T).flatten()  # entry (i, j) of S -> its place in the triangle
        # Per row: [1, Δy, upper triangle of Δy Δyᵀ]; slot 0 all rows, slot 1 + t the rows that
        # threshold t keeps (|Δy_k| <= t; no slots without conditioning).
        feats = torch.cat([torch.ones(n, 1, dtype=_F64), dy, dy[:, iu[0]] * dy[:, iu[1]]], 1)
        mask = (dy[:, self.k or 0].abs().unsqueeze(0) <= self.thresholds.unsqueeze(1)).to(_F64)
        slots = torch.cat([feats.unsqueeze(0), mask.unsqueeze(2) * feats.unsqueeze(0)], 0)  # (1 + T, n, c)

        def add(count: Tensor, total: Tensor, outer: Tensor, sums: Tensor) -> None:  # sums (..., c)
            count += sums[..., 0].round().to(count.dtype)  # weights are integers: exact
            total += sums[..., 1: 1 + m]
            outer += sums[..., 1 + m:][..., pos].reshape(outer.shape)

        sums = slots.sum(1)
        add(self.count, self.total, self.outer, sums[0])
        add(self.cond_count, self.cond_total, self.cond_outer, sums[1:])
        R = self.n_boot
        if R:
            # Rows of one unit share their weight: sum them per unit first, so the (R, units)
            # weights and products cost 1/P of the rows' when P probes share a sample.
            units, inv = torch.unique(idx, return_inverse=True)
            if units.numel() < n:
                slots = torch.zeros(slots.shape[0], units.numel(), slots.shape[2], dtype=_F64).index_add_(1, inv, slots)
            else:
                slots = slots[:, torch.argsort(inv)]  # distinct units: row order as units are sorted
            S, U, c = slots.shape  # one (R, U) x (U, S·c) product for every slot at once
            boot = (poisson_weights(self.seed, units, R) @ slots.transpose(0, 1).reshape(U, S * c))
            boot = boot.reshape(R, S, c).transpose(0, 1)  # (1 + T, R, c)
            add(self.boot_count, self.boot_total, self.boot_outer, boot[0])
            add(self.cond_boot_count, self.cond_boot_total, self.cond_boot_outer, boot[1:])

    def _config(self) -> tuple:
        return (self.m, self.n_boot, self.seed, self.k, tuple(self.thresholds.tolist()))

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        """Add ``other``'s sums (rows disjoint from this one's) into ``self``; returns ``self``."""
        if not isinstance(other, MomentAccumulator):
            raise ValueError(f"other must be a MomentAccumulator, got {type(other).__name__}")
        if other._config() != self._config():
            raise ValueError("cannot merge accumulators with different (m, n_boot, seed, k, thresholds): "
                             f"{self._config()} vs {other._config()}")
        for name in self._SUMS:
            getattr(self, name).add_(getattr(other, name))
        return self

    def all_reduce(self, group=None) -> MomentAccumulator:
        """Sum every accumulator of the process group into each (``torch.distributed`` all-reduce).

        A no-op when ``torch.distributed`` is not initialised. Ranks must hold accumulators of the
        same configuration (checked: a ``ValueError`` on every rank otherwise); with the NCCL
        backend the sums travel through the current CUDA device. Returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
        cfg = torch.tensor([self.m, self.n_boot, self.seed % 2**52, -1 if self.k is None else self.k,
                            self.thresholds.numel(), float(torch.nan_to_num(self.thresholds, posinf=1e308).sum())],
                           dtype=_F64, device=device)
        lo, hi = cfg.clone(), cfg.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
        if not torch.equal(lo, hi):
            raise ValueError("all_reduce: ranks hold accumulators of different (m, n_boot, seed, k, thresholds)")
        for name in self._SUMS:
            t = getattr(self, name)
            buf = t.to(device) if device is not None else t
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            if buf is not t:
                t.copy_(buf.cpu())
        return self

    # ------------------------------------------------------------------ estimates

    @property
    def n(self) -> int:
        """Rows accumulated."""
        return int(self.count)

    def _need_rows(self, at_least: int = 1) -> None:
        if self.n < at_least:
            raise ValueError(f"the accumulator holds {self.n} rows; at least {at_least} needed")

    def mean(self) -> Tensor:
        r""":math:`\frac1n\sum\Delta y`, ``(m,)``."""
        self._need_rows()
        return self.total / self.n

    def second_moment(self) -> Tensor:
        r"""Uncentred :math:`S = \frac1n \sum \Delta y \Delta y^T`, ``(m, m)`` (as :func:`dependence.second_moment`)."""
        self._need_rows()
        return self.outer / self.n

    def correlation(self, *, centered: bool = False) -> Tensor:
        """As :func:`causal_delta.dependence.correlation` on all rows, ``(m, m)``."""
        return correlation_from_moments(self.second_moment(), self.mean() if centered else None)

    @staticmethod
    def _statistic(count: Tensor, total: Tensor, outer: Tensor, statistic: str) -> Tensor:
        c = count.to(_F64)
        ok = c > 0
        c = torch.where(ok, c, torch.ones_like(c))
        S = outer / c[..., None, None]
        S = torch.where(ok[..., None, None], S, torch.full_like(S, math.nan))
        if statistic == "second_moment":
            return S
        return correlation_from_moments(S, total / c[..., None] if statistic == "centered_corr" else None)

    def _interval(self, est: Tensor, reps: Tensor, statistic: str, level: float) -> BootstrapResult:
        lower, upper = bootstrap_interval(reps, est, level=level, interval="percentile")
        finite = torch.isfinite(reps)
        r0 = torch.where(finite, reps, torch.zeros_like(reps))
        cnt = finite.sum(0).to(_F64)
        mu = r0.sum(0) / cnt.clamp_min(1)
        se = (torch.where(finite, reps - mu, torch.zeros_like(reps)) ** 2).sum(0).div((cnt - 1).clamp_min(1)).sqrt()
        se = torch.where(cnt >= 2, se, torch.full_like(se, math.nan))
        return BootstrapResult(estimate=est, lower=lower, upper=upper, se=se, level=float(level),
                               n_boot=reps.shape[0], seed=self.seed, statistic=statistic, interval="percentile")

    def _replicates(self, n_boot: int | None) -> int:
        if self.n_boot == 0:
            raise ValueError("this accumulator keeps no bootstrap replicates (n_boot=0)")
        if n_boot is None:
            return self.n_boot
        check_positive_int("n_boot", n_boot)
        if n_boot > self.n_boot:
            raise ValueError(f"n_boot must be <= the {self.n_boot} replicates accumulated, got {n_boot}")
        return n_boot

    def bootstrap(self, *, statistic: str = "corr", level: float = 0.95, n_boot: int | None = None) -> BootstrapResult:
        """Percentile interval and SE of every entry from the Poisson-bootstrap replicates.

        ``statistic``: ``"corr"``, ``"centered_corr"`` or ``"second_moment"`` (as
        :func:`causal_delta.dependence.bootstrap`); ``n_boot``: use the first ``n_boot``
        replicates (default all). Replicates are i.i.d., so any prefix is a valid bootstrap.
        """
        if statistic not in _STATISTICS:
            raise ValueError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
        R = self._replicates(n_boot)
        self._need_rows(2)
        est = self._statistic(self.count, self.total, self.outer, statistic)
        reps = self._statistic(self.boot_count[:R], self.boot_total[:R], self.boot_outer[:R], statistic)
        return self._interval(est, reps, statistic, level)

    def _threshold_index(self, threshold: float) -> int:
        if self.k is None:
            raise ValueError("this accumulator has no conditioning feature (k=None)")
        hits = (self.thresholds == float(threshold)).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"threshold must be one of the accumulated thresholds {self.thresholds.tolist()}, "
                             f"got {threshold!r}")
        return int(hits[0])

    def condition(self, threshold: float, *, centered: bool = False, level: float = 0.95,
                  n_boot: int | None = None) -> ConditionedEstimate:
        r"""Correlation of the rows with :math:`|\Delta y_k| \le` ``threshold`` (one of ``thresholds``),
        as :func:`causal_delta.dependence.condition` on all rows (``mask`` is ``None``: no rows are
        held). ``ci`` is the Poisson-bootstrap percentile interval of the kept rows (``None`` when
        no replicates are kept or fewer than 2 rows pass)."""
        j, k = self._threshold_index(threshold), self.k
        assert k is not None  # _threshold_index checked it
        self._need_rows()
        kept = int(self.cond_count[j])
        stat = "centered_corr" if centered else "corr"
        if kept >= 2:
            corr = self._statistic(self.cond_count[j], self.cond_total[j], self.cond_outer[j], stat)
        else:
            corr = torch.full((self.m, self.m), math.nan, dtype=_F64)
        ci = None
        if self.n_boot and kept >= 2:
            R = self._replicates(n_boot)
            reps = self._statistic(self.cond_boot_count[j, :R], self.cond_boot_total[j, :R],
                                   self.cond_boot_outer[j, :R], stat)
            ci = self._interval(corr, reps, stat, level)
        return ConditionedEstimate(k=k, threshold=float(self.thresholds[j]), mask=None, kept=kept,
                                   kept_fraction=kept / self.n, corr=corr, ci=ci)

    def threshold_sweep(self, pair: tuple[int, int], *, thresholds: Sequence[float] | None = None,
                        centered: bool = False, level: float = 0.95, n_boot: int | None = None) -> SweepResult:
        """``Corr[i, j]`` with its interval at each accumulated threshold (as
        :func:`causal_delta.dependence.threshold_sweep`); ``thresholds``: a selection of the
        accumulated ones (default all). ``quantiles`` are the pilot's, NaN when the thresholds
        were given as absolute values."""
        if self.k is None:
            raise ValueError("this accumulator has no conditioning feature (k=None)")
        if len(pair) != 2:
            raise ValueError(f"pair must be two feature indices (i, j), got {pair!r}")
        i, j = (_check_k(p, self.m, "pair") for p in pair)
        chosen = list(range(self.thresholds.numel())) if thresholds is None else [
            self._threshold_index(t) for t in thresholds]
        rows = []
        for t in self.thresholds[chosen].tolist():
            c = self.condition(t, centered=centered, level=level, n_boot=n_boot)
            e = c.ci.entry(i, j) if c.ci is not None else {
                "estimate": float(c.corr[i, j]), "lower": math.nan, "upper": math.nan, "se": math.nan}
            rows.append((t, c.kept, c.kept_fraction, e["estimate"], e["lower"], e["upper"], e["se"]))
        cols = list(zip(*rows))
        f = lambda c: torch.tensor(c, dtype=_F64)  # noqa: E731
        return SweepResult(k=self.k, pair=(i, j), quantiles=self.quantiles[chosen].clone(), thresholds=f(cols[0]),
                           kept=torch.tensor(cols[1]), kept_fraction=f(cols[2]), estimate=f(cols[3]),
                           lower=f(cols[4]), upper=f(cols[5]), se=f(cols[6]), level=float(level))

    # ------------------------------------------------------------------ persistence

    def _state(self) -> dict:
        state = {"format": FORMAT, "version": VERSION, "m": self.m, "n_boot": self.n_boot, "seed": self.seed,
                 "k": -1 if self.k is None else self.k, "thresholds": self.thresholds, "quantiles": self.quantiles}
        state.update({name: getattr(self, name) for name in self._SUMS})
        return state

    def state_dict(self) -> dict:
        """Every sum and the configuration, as tensors and ints (``format``/``version`` included)."""
        return {k: v.clone() if isinstance(v, Tensor) else v for k, v in self._state().items()}

    @classmethod
    def from_state_dict(cls, state) -> MomentAccumulator:
        """Rebuild from :meth:`state_dict` (or the arrays of a saved file); checks format, version, shapes."""
        def scalar(key):
            return np.asarray(state[key]).item()

        try:
            fmt, version = str(scalar("format")), int(scalar("version"))
        except KeyError:
            raise ValueError(f"not a moments state: no 'format' entry ({FORMAT!r} expected)") from None
        if fmt != FORMAT:
            raise ValueError(f"format must be {FORMAT!r}, got {fmt!r}")
        if version != VERSION:
            raise ValueError(f"moments format version {version} is not supported (this code reads version {VERSION})")
        try:
            k = int(scalar("k"))
            acc = cls(int(scalar("m")), n_boot=int(scalar("n_boot")), seed=int(scalar("seed")),
                      k=None if k < 0 else k, thresholds=torch.as_tensor(np.asarray(state["thresholds"])),
                      quantiles=torch.as_tensor(np.asarray(state["quantiles"])))
            for name in cls._SUMS:
                ref = getattr(acc, name)
                val = torch.as_tensor(np.asarray(state[name])).to(ref.dtype)
                if val.shape != ref.shape:
                    raise ValueError(f"moments entry {name!r} must have shape {tuple(ref.shape)}, "
                                     f"got {tuple(val.shape)}")
                ref.copy_(val)
        except KeyError as exc:
            raise ValueError(f"moments state lacks the entry {exc}") from None
        return acc

    def save(self, path: str | Path, **extra) -> Path:
        """Write the state (and ``extra`` arrays, e.g. feature names) to an ``.npz`` file, atomically."""
        from .report import atomic_write_bytes

        # views, not copies: the bootstrap sums can be tens of MB (T·R·m² floats)
        state = {k: (v.numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in self._state().items()}
        clash = sorted(set(extra) & set(state))
        if clash:
            raise ValueError(f"extra arrays must not reuse the accumulator's names {clash}")
        arrays: dict[str, Any] = {**state, **{k: np.asarray(v) for k, v in extra.items()}}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> MomentAccumulator:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"moments file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path} is not a moments .npz file: {exc}") from None
        return cls.from_state_dict(state)

    def __repr__(self) -> str:
        cond = "" if self.k is None else f", k={self.k}, thresholds={self.thresholds.numel()}"
        return f"MomentAccumulator(m={self.m}, n={self.n}, n_boot={self.n_boot}, seed={self.seed}{cond})"
