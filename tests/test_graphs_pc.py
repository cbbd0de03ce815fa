"""PC on labels and PC whose CI test is the JVP estimator (causal_delta.graphs)."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("causallearn", reason="needs causal-learn (the graph extra)")

from causal_delta import dependence
from causal_delta.closed_form import GaussianFlow
from causal_delta.graphs import GraphResult, known_graph, shd, skeleton_shd
from causal_delta.graphs.jvp_pc import (
    ResponseOracle,
    hold_fixed_probes_multi,
    joint_small_mask,
    jvp_ci_test,
    jvp_pc,
)
from causal_delta.graphs.pc import partial_correlation, pc_labels, run_pc

# Edge weights of the linear-Gaussian SCMs (in DAG.edges order). For "five" they are chosen so that
# every d-connected (pair, set) has |partial correlation| >= 0.21 (no near-cancellation of paths).
WEIGHTS = {"five": (1.17, 1.0, 1.19, 0.9, 1.19)}


def scm_factor(name: str) -> np.ndarray:
    r"""``L = (I - B)^{-1}`` (unit noise variances, ``D = I``): ``x = B x + e`` gives ``x = L e``."""
    g = known_graph(name)
    m, pos = len(g.nodes), {v: i for i, v in enumerate(g.nodes)}
    B = np.zeros((m, m))
    for (a, b), w in zip(g.edges, WEIGHTS.get(name, (1.0,) * len(g.edges))):
        B[pos[b], pos[a]] = w
    return np.linalg.inv(np.eye(m) - B)


def exact_responses(name: str, n: int, seed: int) -> torch.Tensor:
    """Exact JVP responses Δy = L z, z ~ N(0, I): the generator's Jacobian of such data is L (up to
    an orthogonal factor, which does not change the law of L z)."""
    rng = np.random.default_rng(seed)
    L = scm_factor(name)
    return torch.from_numpy(rng.standard_normal((n, L.shape[0])) @ L.T)


def binary_labels(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flip = lambda v, p: np.where(rng.random(n) < p, 1 - v, v)  # noqa: E731
    a = (rng.random(n) < 0.5).astype(int)
    if name == "fork":
        cols = [a, flip(a, 0.2), flip(a, 0.25)]
    elif name == "chain":
        b = flip(a, 0.2)
        cols = [a, b, flip(b, 0.2)]
    else:  # collider: C = A or B, noisy
        b = (rng.random(n) < 0.5).astype(int)
        cols = [a, b, flip(a | b, 0.1)]
    return np.column_stack(cols)


@pytest.mark.parametrize("name", ["fork", "collider", "chain"])
@pytest.mark.parametrize("test", ["chisq", "gsq"])
def test_pc_labels_binary(name, test):
    g = known_graph(name)
    r = pc_labels(binary_labels(name, 10_000, 1), g.nodes, test=test, alpha=0.01)
    assert skeleton_shd(r, g) == 0 and shd(r, g) == 0, r.to_dict()
    assert r.test == test and r.alpha == 0.01 and r.depth == -1 and r.order == g.nodes
    assert r.records[0].given == () and all(0 <= rec.p_value <= 1 for rec in r.records)


@pytest.mark.parametrize("name", ["fork", "collider", "chain"])
def test_pc_labels_continuous(name):
    g = known_graph(name)
    r = pc_labels(exact_responses(name, 5_000, 2), g.nodes, test="fisherz")
    assert shd(r, g) == 0, r.to_dict()


def test_pc_labels_depth_and_records():
    g = known_graph("chain")
    r = pc_labels(exact_responses("chain", 5_000, 3).numpy(), g.nodes, test="fisherz", depth=0)
    assert all(rec.given == () for rec in r.records)
    assert skeleton_shd(r, g) == 1  # A ⟂ C | B is never asked at depth 0, so A--C stays
    d = r.to_dict()
    assert d["depth"] == 0 and d["order"] == ["A", "B", "C"] and len(d["records"]) == 3
    assert GraphResult.from_dict(d) == r


def test_partial_correlation_matches_precision_matrix():
    """Two routes: residual correlation vs -P_xy / sqrt(P_xx P_yy) of the inverse covariance."""
    X = exact_responses("five", 3_000, 4).numpy()
    X = X - X.mean(0)
    idx = [0, 3, 1, 2]
    P = np.linalg.inv(np.cov(X[:, idx].T))
    assert partial_correlation(X, 0, 3, [1, 2]) == pytest.approx(-P[0, 1] / math.sqrt(P[0, 0] * P[1, 1]), abs=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(test="kci"), r"test must be one of \('chisq', 'gsq', 'fisherz'\)"),
    (dict(data=np.full((10, 3), 0.5) + np.eye(10, 3)), r"test='chisq' needs discrete labels"),
    (dict(names=["A", "B"]), r"names must be a sequence of 3 variable names"),
    (dict(names=["A", "A", "B"]), r"names must be distinct"),
    (dict(alpha=1.0), r"alpha must lie in \(0, 1\)"),
    (dict(depth=-2), r"depth must be an integer >= -1"),
    (dict(data=np.zeros((10, 3), int)), r"data columns \['A', 'B', 'C'\] are constant"),
    (dict(data=np.zeros(10)), r"data must have shape \(n, m\)"),
    (dict(data=np.array([[0, 1, np.nan], [1, 0, 1]])), r"data must be finite"),
])
def test_pc_labels_errors(kwargs, match):
    args = dict(data=np.eye(10, 3, dtype=int) + np.eye(10, 3, 1, dtype=int), names=["A", "B", "C"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pc_labels(args.pop("data"), args.pop("names"), **args)


@pytest.mark.parametrize("name", ["fork", "collider", "chain", "independent"])
def test_jvp_pc_condition_exact_scm(name):
    g = known_graph(name)
    r = jvp_pc(exact_responses(name, 20_000, 0), g.nodes, alpha=0.01, seed=0)
    assert shd(r, g) == 0, r.to_dict()
    assert r.test == "jvp-condition" and r.settings["quantile"] == 0.05
    kept = {rec.extra["kept"] for rec in r.records if rec.given}
    assert kept <= {1_000}  # quantile 0.05 of 20,000 rows (ties have probability 0)


def test_jvp_pc_condition_five_node():
    """|Z| = 2 needs a smaller kept fraction: at quantile 0.05 the conditioned correlation of
    A, D given {B, C} is ~0.1 (not 0), which keeps a false A--D edge (skeleton SHD 1)."""
    g = known_graph("five")
    dy = exact_responses("five", 20_000, 0)
    r = jvp_pc(dy, g.nodes, alpha=0.01, quantile=0.02, seed=0)
    assert shd(r, g) == 0, r.to_dict()
    loose = jvp_pc(dy, g.nodes, alpha=0.01, quantile=0.05, seed=0)
    assert skeleton_shd(loose, g) <= 1


def test_joint_small_mask():
    dy = exact_responses("five", 4_000, 5)
    for k in range(5):  # |Z| = 1 is dependence.condition
        mask, _ = joint_small_mask(dy, [k], 0.1)
        assert torch.equal(mask, dependence.condition(dy, k, quantile=0.1).mask)
    mask, thr = joint_small_mask(dy, [1, 2], 0.05)
    assert int(mask.sum()) == 200 and math.isfinite(thr)
    rms = dy[:, [1, 2]].pow(2).mean(0).sqrt()
    assert (dy[mask][:, [1, 2]].abs() / rms).max() <= thr + 1e-12
    assert joint_small_mask(dy, [], 0.05)[0].all()
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\]"):
        joint_small_mask(dy, [1], 0.0)
    with pytest.raises(ValueError, match=r"must not be identically zero"):
        joint_small_mask(torch.zeros(10, 3), [1], 0.5)


def test_jvp_ci_test_pvalue_and_se():
    """Independent columns: bootstrap SE ~ 1/sqrt(n) (within 15 %) and p = erfc(|r| / (√2 SE))."""
    n = 4_000
    dy = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r, p, extra = jvp_ci_test(dy, n_boot=400, seed=1)(0, 1, ())
    assert extra["se"] == pytest.approx(1 / math.sqrt(n), rel=0.15)
    assert p == pytest.approx(math.erfc(abs(r) / (math.sqrt(2) * extra["se"])), rel=1e-12)
    assert r == pytest.approx(float(dependence.correlation(dy)[0, 1]), abs=1e-15)
    _, p2, _ = jvp_ci_test(dy, n_boot=400, seed=1)(0, 1, ())
    assert p2 == p  # seeded
    r_small, p_small, _ = jvp_ci_test(dy[:10])(0, 1, ())
    assert math.isnan(p_small)  # fewer than min_rows: NaN, read as dependence by PC


def test_hold_fixed_probes_multi():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, 2, 3, generator=gen, dtype=torch.float64)
    G = torch.randn(6, 2, 2, 3, generator=gen, dtype=torch.float64)
    one = hold_fixed_probes_multi(z, G[:, :1])
    assert torch.allclose(one, dependence.hold_fixed_probes(z, G[:, 0]), atol=1e-12)
    two = hold_fixed_probes_multi(z, G)
    assert (G.flatten(2) @ two.flatten(2).mT).abs().max() < 1e-12  # orthogonal to both gradients
    rep = hold_fixed_probes_multi(z, torch.cat([G, G[:, :1], torch.zeros_like(G[:, :1])], 1))
    assert torch.allclose(rep, two, atol=1e-10)  # dependent / zero gradients change nothing
    assert hold_fixed_probes_multi(z[:, 0], G).shape == z[:, 0].shape
    with pytest.raises(ValueError, match=r"gradients must have shape \(n, K, \*event\)"):
        hold_fixed_probes_multi(z, G[:, 0, 0])
    with pytest.raises(ValueError, match=r"probes must have shape"):
        hold_fixed_probes_multi(z[:3], G)


def gaussian_oracle(name: str, n: int, seed: int) -> ResponseOracle:
    """Closed-form linear flow to N(0, Σ), Σ = L Lᵀ the SCM covariance, identity read-out."""
    L = torch.from_numpy(scm_factor(name))
    m = L.shape[0]
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, m, generator=gen, dtype=torch.float64)
    z = torch.randn(n, 1, m, generator=gen, dtype=torch.float64)
    return ResponseOracle(GaussianFlow(L @ L.T).velocity, x0, z, features=list(range(m)), method="rk4", steps=8,
                          batch_size=n, gradient_batch_size=n)


@pytest.mark.parametrize("name", ["fork", "collider", "chain", "five"])
def test_jvp_pc_hold_fixed_oracle(name):
    # alpha 0.001: at 0.01 one marginal test in ~100 rejects by chance (seen: collider, A ⟂ B, p = 0.007);
    # the held dependences are >= 0.2 at n = 3,000 (SE 0.018), so power is not at stake.
    g = known_graph(name)
    r = jvp_pc(gaussian_oracle(name, 3_000, 0), g.nodes, estimator="hold_fixed", alpha=0.001, seed=0)
    assert shd(r, g) == 0, r.to_dict()
    held = [rec.extra["held_rms_ratio"] for rec in r.records if rec.given]
    assert held and max(held) < 1e-10


def test_hold_fixed_is_partial_correlation():
    """Monte Carlo vs closed form: the held correlation of A, C given B is the partial correlation
    of Σ (within 3 bootstrap SE), for the collider (−0.5) and the chain (0)."""
    for name, (x, y, given) in [("collider", (0, 1, (2,))), ("chain", (0, 2, (1,)))]:
        L = scm_factor(name)
        P = np.linalg.inv(L @ L.T)
        exact = -P[x, y] / math.sqrt(P[x, x] * P[y, y])
        orc = gaussian_oracle(name, 3_000, 1)
        r, _, extra = jvp_ci_test(orc, estimator="hold_fixed", n_boot=300)(x, y, given)
        assert abs(r - exact) < 3 * extra["se"], (name, r, exact, extra)
        held = orc.responses(given)
        assert held[:, list(given)].abs().max() < 1e-12 * held.abs().max()


def test_jvp_pc_errors():
    dy = exact_responses("fork", 100, 0)
    with pytest.raises(ValueError, match=r"estimator='hold_fixed' needs a ResponseOracle"):
        jvp_pc(dy, ["A", "B", "C"], estimator="hold_fixed")
    with pytest.raises(ValueError, match=r"estimator must be one of \('condition', 'hold_fixed'\)"):
        jvp_pc(dy, ["A", "B", "C"], estimator="do")
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\]"):
        jvp_pc(dy, ["A", "B", "C"], quantile=1.5)
    with pytest.raises(ValueError, match=r"groups must have shape \(n,\) = \(100,\)"):
        jvp_pc(dy, ["A", "B", "C"], groups=torch.arange(5))
    with pytest.raises(ValueError, match=r"responses must have shape \(n, m\)"):
        jvp_pc(dy[:, :1], ["A"])
    with pytest.raises(ValueError, match=r"responses must be finite"):
        jvp_pc(dy * float("nan"), ["A", "B", "C"])
    with pytest.raises(ValueError, match=r"names must be a sequence of 3 variable names"):
        jvp_pc(dy, ["A", "B"])
    with pytest.raises(ValueError, match=r"n_boot must be an integer >= 1"):
        jvp_pc(dy, ["A", "B", "C"], n_boot=0)
    with pytest.raises(ValueError, match=r"probes must have shape \(n, P, \*event\) = \(4, P, 3\)"):
        ResponseOracle(lambda x, t: x, torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"gradient_mode must be 'reverse' or 'forward'"):
        ResponseOracle(lambda x, t: x, torch.zeros(4, 3), torch.zeros(4, 1, 3), gradient_mode="fd")
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1"):
        ResponseOracle(lambda x, t: x, torch.zeros(4, 3), torch.zeros(4, 1, 3), batch_size=0)


def test_run_pc_custom_test_and_errors():
    """run_pc hands PC any CI test: an oracle of d-separation in the collider gives its CPDAG."""
    g = known_graph("collider")

    def dsep(x, y, given):  # A ⟂ B marginally only
        indep = {x, y} == {0, 1} and not given
        return 0.0, (1.0 if indep else 0.0), {"oracle": True}

    r = run_pc(np.zeros((10, 3)), g.nodes, dsep, test="d-separation")
    assert shd(r, g) == 0 and r.records[0].extra == {"oracle": True} and r.test == "d-separation"
    with pytest.raises(ValueError, match=r"data must have shape \(n, m\) with m >= 2 variables"):
        run_pc(np.zeros(10), ["A"], dsep, test="x")


@pytest.mark.parametrize("name,x,y,given", [("independent", 0, 1, ()), ("chain", 0, 2, (1,))])
def test_jvp_ci_test_type_one_error(name, x, y, given):
    """Calibration under the null (Monte Carlo, 200 data sets): the rejection rate at alpha = 0.1 is
    within 3 SE of 0.1, marginally and after conditioning (chain A ⟂ C | B, 10 % of 2,000 rows kept)."""
    L = torch.from_numpy(scm_factor(name))
    gen = torch.Generator().manual_seed(7)
    reps, alpha = 200, 0.1
    rejected = 0
    for i in range(reps):
        dy = torch.randn(2_000, L.shape[0], generator=gen, dtype=torch.float64) @ L.T
        _, p, _ = jvp_ci_test(dy, quantile=0.1, n_boot=100, seed=i)(x, y, given)
        rejected += p < alpha
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert abs(rejected / reps - alpha) < 3 * se, rejected / reps
