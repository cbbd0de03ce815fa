"""Streaming moment accumulators (causal_delta.moments): exact merges, the online Poisson bootstrap,
conditioning without rows, persistence, and a 2-process gloo all-reduce."""

import math
import socket

import pytest
import torch

from causal_delta import dependence as D
from causal_delta.moments import MomentAccumulator, pilot_thresholds, poisson_weights

F64 = torch.float64
M64 = (1 << 64) - 1


def _splitmix64_reference(x: int) -> int:
    """SplitMix64 finaliser in Python integers (Steele et al. 2014), the independent route."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _poisson_reference(seed: int, r: int, i: int) -> int:
    u = (_splitmix64_reference(_splitmix64_reference(_splitmix64_reference(seed) ^ r) ^ i) >> 11) / 2.0**53
    k, p = 0, math.exp(-1.0)
    cdf = p
    while u >= cdf:  # inverse CDF of Poisson(1)
        k += 1
        p /= k
        cdf += p
    return k


def _data(n=3000, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.3, -0.4, 0.9]], dtype=F64)[:m, :m]
    return torch.randn(n, m, generator=g, dtype=F64) @ A.T


def _config(**kw):
    cfg = dict(n_boot=64, seed=3, k=2, thresholds=[0.3, 0.8, math.inf])
    cfg.update(kw)
    return cfg


def _chunked(dy, bounds, **cfg):
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        parts.append(MomentAccumulator(dy.shape[1], **_config(**cfg)).update(dy[a:b], index=a))
    acc = parts[0]
    for p in reversed(parts[1:]):  # merge order differs from row order on purpose
        acc.merge(p)
    return acc


def _close(a, b, tol=1e-12):
    """Equal to ``tol`` relative to the larger magnitude (NaN in the same places)."""
    assert a.shape == b.shape
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    a, b = torch.nan_to_num(a), torch.nan_to_num(b)
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= tol * scale


def test_poisson_weights_match_a_python_reference_and_have_poisson_moments():
    idx = torch.tensor([0, 1, 2, 7, 12345, 2**40 + 3])
    w = poisson_weights(11, idx, 4)
    ref = torch.tensor([[_poisson_reference(11, r, int(i)) for i in idx] for r in range(4)], dtype=F64)
    assert torch.equal(w, ref)
    # Poisson(1): mean 1, variance 1, P(0) = 1/e; 400,000 draws, each within 3 SE.
    w = poisson_weights(0, torch.arange(100_000), 4).flatten()
    n = w.numel()
    assert abs(float(w.mean()) - 1.0) < 3 * math.sqrt(1.0 / n)
    assert abs(float(w.var()) - 1.0) < 3 * math.sqrt(3.0 / n)  # Var of (K - 1)² is 3 for Poisson(1)
    p0 = float((w == 0).double().mean())
    assert abs(p0 - math.exp(-1)) < 3 * math.sqrt(math.exp(-1) * (1 - math.exp(-1)) / n)
    # Distinct seeds and replicates give (nearly) uncorrelated weights.
    a, b = poisson_weights(0, torch.arange(50_000), 2), poisson_weights(1, torch.arange(50_000), 1)
    assert abs(float(torch.corrcoef(torch.stack([a[0], a[1], b[0]]))[0, 1:].abs().max())) < 3 / math.sqrt(50_000) * 1.5


@pytest.mark.parametrize("split_seed", [0, 1, 2])
def test_merged_random_chunkings_equal_the_all_rows_computation(split_seed):
    dy = _data()
    n = dy.shape[0]
    g = torch.Generator().manual_seed(split_seed)
    cuts = sorted(torch.randperm(n - 1, generator=g)[:7].add(1).tolist())
    merged = _chunked(dy, [0, *cuts, n])
    whole = MomentAccumulator(3, **_config()).update(dy)
    for centered in (False, True):
        _close(merged.correlation(centered=centered), D.correlation(dy, centered=centered))
    _close(merged.second_moment(), D.second_moment(dy))
    assert merged.n == n
    for name in MomentAccumulator._SUMS:  # bootstrap and conditioned sums too: chunking does not matter
        _close(getattr(merged, name).double(), getattr(whole, name).double())
    b1, b2 = merged.bootstrap(), whole.bootstrap()
    for f in ("estimate", "lower", "upper", "se"):
        _close(getattr(b1, f), getattr(b2, f))


def test_conditioned_moments_equal_dependence_condition_on_the_same_rows():
    dy = _data(n=2000)
    thr = pilot_thresholds(dy[:300], 2, [0.2, 0.5, 1.0])
    assert math.isinf(thr[-1]) and float(thr[0]) == float(torch.quantile(dy[:300, 2].abs(), 0.2))
    acc = _chunked(dy, [0, 500, 1311, 2000], thresholds=thr, quantiles=[0.2, 0.5, 1.0])
    for t in thr.tolist():
        for centered in (False, True):
            ref = D.condition(dy, 2, threshold=t, centered=centered)
            got = acc.condition(t, centered=centered)
            assert got.kept == ref.kept and got.kept_fraction == ref.kept_fraction and got.mask is None
            _close(got.corr, ref.corr)
    sweep = acc.threshold_sweep((0, 1))
    assert sweep.kept.tolist() == [D.condition(dy, 2, threshold=t).kept for t in thr.tolist()]
    assert sweep.kept[-1] == 2000 and sweep.quantiles.tolist() == [0.2, 0.5, 1.0]
    assert bool((sweep.lower <= sweep.estimate).all() and (sweep.estimate <= sweep.upper).all())
    # The interval of the kept rows is the bootstrap of those rows: with an infinite threshold
    # it is the unconditioned one.
    full, last = acc.bootstrap(), acc.condition(math.inf).ci
    _close(full.lower, last.lower)


def test_grouped_units_share_their_weight():
    # Several probes per sample: index = sample index resamples whole samples.
    dy = _data(n=600)
    groups = torch.arange(200).repeat_interleave(3)
    acc = MomentAccumulator(3, n_boot=16, seed=5).update(dy[:301], index=groups[:301]).merge(
        MomentAccumulator(3, n_boot=16, seed=5).update(dy[301:], index=groups[301:]))
    w = poisson_weights(5, torch.arange(200), 16)[:, groups]  # (R, n), the same weight within a sample
    _close(acc.boot_outer, torch.einsum("rn,ni,nj->rij", w, dy, dy))
    _close(acc.boot_count, w.sum(1))


def test_poisson_bootstrap_ci_covers_the_true_correlation():
    # Gaussian rows with correlation rho (zero mean: the uncentred correlation is rho); 100
    # independent data sets, 95 % percentile intervals from 200 Poisson replicates each.
    rho, n, reps = 0.5, 400, 100
    g = torch.Generator().manual_seed(2024)
    covered, se = 0, 0.0
    for r in range(reps):
        z = torch.randn(n, 2, generator=g, dtype=F64)
        dy = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], 1)
        b = MomentAccumulator(2, n_boot=200, seed=r).update(dy).bootstrap()
        covered += float(b.lower[0, 1]) <= rho <= float(b.upper[0, 1])
        se += float(b.se[0, 1]) / reps
    assert covered >= 90, covered  # 93 of 100 when written
    # The bootstrap SE against the asymptotic one, (1 - rho²) / sqrt(n) (0.0373 vs 0.0375 when written).
    assert abs(se - (1 - rho**2) / math.sqrt(n)) < 0.1 * (1 - rho**2) / math.sqrt(n)


def test_state_dict_and_file_round_trip(tmp_path):
    dy = _data(n=500)
    acc = MomentAccumulator(3, **_config()).update(dy)
    back = MomentAccumulator.from_state_dict(acc.state_dict())
    path = acc.save(tmp_path / "m.npz", names=["a", "b", "c"])
    loaded = MomentAccumulator.load(path)
    for other in (back, loaded):
        assert other._config() == acc._config()
        for name in MomentAccumulator._SUMS:
            assert torch.equal(getattr(other, name), getattr(acc, name))
    # Continuing after a reload numbers rows on from the count, as without the reload.
    more = _data(n=200, seed=1)
    _close(loaded.update(more).boot_outer, acc.update(more).boot_outer)


def test_all_reduce_is_a_no_op_in_one_process():
    acc = MomentAccumulator(3, n_boot=4).update(_data(n=50))
    before = acc.outer.clone()
    assert acc.all_reduce() is acc and torch.equal(acc.outer, before)


def test_bad_input_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="m must be an integer >= 1"):
        MomentAccumulator(0)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 0"):
        MomentAccumulator(2, n_boot=-1)
    with pytest.raises(ValueError, match="thresholds need the conditioning feature k"):
        MomentAccumulator(2, thresholds=[1.0])
    with pytest.raises(ValueError, match=r"thresholds must be > 0"):
        MomentAccumulator(2, k=0, thresholds=[0.0])
    with pytest.raises(ValueError, match=r"k must be an integer feature index in \[0, 2\)"):
        MomentAccumulator(2, k=2, thresholds=[1.0])
    with pytest.raises(ValueError, match="seed must be an integer in"):
        MomentAccumulator(2, seed=-1)
    acc = MomentAccumulator(2, n_boot=3)
    with pytest.raises(ValueError, match="responses must have 2 columns, got 3"):
        acc.update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"index must be integers of shape \(n,\) = \(4,\)"):
        acc.update(torch.zeros(4, 2), index=torch.arange(3))
    with pytest.raises(ValueError, match="index must be non-negative"):
        acc.update(torch.zeros(4, 2), index=torch.tensor([0, 1, -2, 3]))
    with pytest.raises(ValueError, match="responses must be finite"):
        acc.update(torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(ValueError, match="holds 0 rows"):
        acc.correlation()
    with pytest.raises(ValueError, match="cannot merge accumulators with different"):
        acc.merge(MomentAccumulator(2, n_boot=3, seed=1))
    acc.update(torch.randn(10, 2, dtype=F64))
    with pytest.raises(ValueError, match="n_boot must be <= the 3 replicates"):
        acc.bootstrap(n_boot=4)
    with pytest.raises(ValueError, match="no conditioning feature"):
        acc.condition(1.0)
    with pytest.raises(ValueError, match="keeps no bootstrap replicates"):
        MomentAccumulator(2).update(torch.randn(5, 2)).bootstrap()
    with pytest.raises(ValueError, match=r"threshold must be one of the accumulated thresholds \[0.5\]"):
        MomentAccumulator(2, k=0, thresholds=[0.5]).update(torch.randn(5, 2)).condition(0.4)
    with pytest.raises(ValueError, match=r"quantiles must be a non-empty list of numbers in \(0, 1\]"):
        pilot_thresholds(torch.randn(5, 2), 0, [0.0])
    state = acc.state_dict()
    with pytest.raises(ValueError, match="moments format version 9 is not supported"):
        MomentAccumulator.from_state_dict({**state, "version": 9})
    with pytest.raises(ValueError, match="format must be 'causal-delta-moments'"):
        MomentAccumulator.from_state_dict({**state, "format": "other"})
    with pytest.raises(ValueError, match=r"moments entry 'outer' must have shape \(2, 2\)"):
        MomentAccumulator.from_state_dict({**state, "outer": torch.zeros(3, 3)})
    with pytest.raises(FileNotFoundError, match="moments file not found"):
        MomentAccumulator.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="extra arrays must not reuse"):
        acc.save(tmp_path / "x.npz", count=1)


# ---------------------------------------------------------------------- two processes, gloo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dy = _data()
        acc = MomentAccumulator(3, **_config())
        for s in range(rank * 250, dy.shape[0], 250 * world):  # interleaved chunks of the global rows
            acc.update(dy[s: s + 250], index=s)
        acc.all_reduce()
        if rank == 1:
            acc.save(out)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_all_reduce_equals_one_process(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    out = str(tmp_path / "rank1.npz")
    # fork where there is one: the children need not import torch again (seconds each on a loaded machine)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_rank_main, args=(2, _free_port(), out), nprocs=2, join=True, start_method=method)
    reduced = MomentAccumulator.load(out)
    whole = MomentAccumulator(3, **_config()).update(_data())
    for name in MomentAccumulator._SUMS:
        _close(getattr(reduced, name).double(), getattr(whole, name).double())
    _close(reduced.bootstrap().lower, whole.bootstrap().lower)
