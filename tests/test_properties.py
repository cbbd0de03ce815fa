"""Property-based tests (hypothesis) for the closed forms and the argument validators.

* Random SPD covariances, weights, times and points out to |x| = 1e5 give finite drifts,
  responsibilities and Jacobians that agree with a 50-digit mpmath evaluation
  (``mp_reference``), to a tolerance set by the problem's own conditioning: how much the
  reference itself moves when ``x`` moves by one ulp.
* Random malformed input gives the library's ``ValueError`` naming the argument, never a NaN.

Seeded (``derandomize=True``) so CI draws the same examples every run.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("hypothesis", reason="property tests need hypothesis (dev extra)")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from causal_delta import dependence
from causal_delta.closed_form import GaussianFlow, GaussianMixture

from mp_reference import gaussian_flow_reference, mixture_reference

F64 = torch.float64
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

times = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))
log_radius = st.floats(-1.0, 5.0)  # |x| from 0.1 to 1e5


def _spd(d: int, g: torch.Generator, jitter: float) -> torch.Tensor:
    B = torch.randn(d, d, generator=g, dtype=F64)
    return B @ B.mT / d + jitter * torch.eye(d, dtype=F64)


def _mixture(K: int, d: int, seed: int, jitter: float, shared: bool) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=F64) + 0.05
    covs = _spd(d, g, jitter).expand(K, d, d) if shared else torch.stack([_spd(d, g, jitter) for _ in range(K)])
    return GaussianMixture(w / w.sum(), 3.0 * torch.randn(K, d, generator=g, dtype=F64), covs,
                           base_mean=torch.randn(d, generator=g, dtype=F64), base_cov=_spd(d, g, 0.5))


def _point(d: int, seed: int, log_r: float) -> torch.Tensor:
    z = torch.randn(d, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return 10.0**log_r * z / z.norm()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _ulp_move(x: torch.Tensor) -> torch.Tensor:
    """``x`` moved by one ulp in every coordinate (alternating directions)."""
    sign = torch.where(torch.arange(x.shape[-1]) % 2 == 0, 1.0, -1.0).to(F64)
    return torch.nextafter(x, sign * math.inf)


def _check_mixture_point(mix: GaussianMixture, x: torch.Tensor, t: float, w: torch.Tensor | None) -> None:
    gam_ref, v_ref, J_ref = mixture_reference(mix, x, t, w)
    gam_p, v_p, J_p = mixture_reference(mix, _ulp_move(x), t, w)
    v, J = mix.velocity_and_jacobian(x, t)
    gam = mix.responsibilities(x, t)
    assert torch.isfinite(v).all() and torch.isfinite(J).all() and torch.isfinite(gam).all()
    assert abs(float(gam.sum()) - 1.0) < 1e-12
    _, jw = mix.forward_jvp(x, t, w if w is not None else torch.ones_like(x))
    if w is not None:
        J = J @ w
    else:
        J_ref_w = J_ref @ torch.ones_like(x)
        assert _rel(jw, J_ref_w) < max(1e-11, 10 * _rel(J_p @ torch.ones_like(x), J_ref_w))
    assert _rel(J, J_ref) < max(1e-11, 10 * _rel(J_p, J_ref)), (_rel(J, J_ref), _rel(J_p, J_ref))
    assert _rel(v, v_ref) < max(1e-12, 10 * _rel(v_p, v_ref)), (_rel(v, v_ref), _rel(v_p, v_ref))
    assert float((gam - gam_ref).abs().max()) < max(1e-12, 10 * float((gam_p - gam_ref).abs().max()))
    if w is not None:
        assert _rel(jw, J_ref) < max(1e-11, 10 * _rel(J_p, J_ref))


@settings(max_examples=40, **SETTINGS)
@given(K=st.integers(1, 3), d=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), t=times,
       log_r=log_radius, jitter=st.floats(0.01, 1.0), shared=st.booleans())
def test_mixture_small_d_matches_50_digits(K, d, seed, t, log_r, jitter, shared):
    mix = _mixture(K, d, seed, jitter, shared)
    _check_mixture_point(mix, _point(d, seed, log_r), t, None)


@settings(max_examples=4, **SETTINGS)
@given(K=st.integers(1, 3), d=st.integers(5, 50), seed=st.integers(0, 2**31 - 1), t=times,
       log_r=log_radius, shared=st.booleans())
def test_mixture_up_to_d50_matches_50_digits(K, d, seed, t, log_r, shared):
    mix = _mixture(K, d, seed, 0.3, shared)
    w = torch.randn(d, generator=torch.Generator().manual_seed(seed + 2), dtype=F64)
    _check_mixture_point(mix, _point(d, seed, log_r), t, w)


@settings(max_examples=10, **SETTINGS)
@given(d=st.integers(1, 50), seed=st.integers(0, 2**31 - 1), t=times, log_r=log_radius,
       jitter=st.floats(0.01, 1.0))
def test_gaussian_flow_matches_50_digits(d, seed, t, log_r, jitter):
    cov = _spd(d, torch.Generator().manual_seed(seed), jitter)
    x = _point(d, seed, log_r)
    v = GaussianFlow(cov).velocity(x, t)
    v_ref = gaussian_flow_reference(cov, x, t)
    assert torch.isfinite(v).all()
    assert _rel(v, v_ref) < max(1e-11, 10 * _rel(gaussian_flow_reference(cov, _ulp_move(x), t), v_ref))


# ------------------------------------------------------------- malformed input
def _valid(K: int, d: int) -> dict:
    return dict(weights=torch.ones(K, dtype=F64) / K, means=torch.zeros(K, d, dtype=F64),
                covs=torch.eye(d, dtype=F64).expand(K, d, d).clone(), base_mean=torch.zeros(d, dtype=F64),
                base_cov=torch.eye(d, dtype=F64))


def _break(kind: str, args: dict, j: int, value: float) -> str:
    """Apply one defect to the constructor arguments; return the name the error must give."""
    K, d = args["means"].shape
    if kind == "negative weight":
        args["weights"] = args["weights"].clone()
        args["weights"][j % K] = -abs(value) - 1e-3
        return "weights"
    if kind == "weights not summing to 1":
        args["weights"] = args["weights"] * (1.0 + abs(value) + 1e-3)
        return "weights"
    if kind.startswith("nan in "):
        name = kind[len("nan in "):]
        arr = args[name].clone()
        arr.view(-1)[j % arr.numel()] = float("nan")
        args[name] = arr
        return rf"{name}(\[\d+\])?"
    if kind == "non-PSD cov":
        c = args["covs"].clone()
        c[j % K] = torch.eye(d, dtype=F64)
        c[j % K, 0, 0] = -abs(value) - 1e-3
        args["covs"] = c
        return rf"covs\[{j % K}\]"
    if kind == "non-PSD base_cov":
        args["base_cov"] = torch.eye(d, dtype=F64) * -(abs(value) + 1e-3)
        return "base_cov"
    if kind == "asymmetric cov":
        c = args["covs"].clone()
        c[j % K, 0, -1] += abs(value) + 0.1 if d > 1 else 0.0
        if d == 1:
            c[j % K] = -1.0  # d = 1 cannot be asymmetric: make it non-PSD instead
        args["covs"] = c
        return rf"covs\[{j % K}\]"
    if kind.startswith("shape of "):
        name = kind[len("shape of "):]
        # means sets d, so a wrong means has one row too many; the others one column too many.
        dim = 0 if name == "means" else -1
        args[name] = torch.cat([args[name], args[name].narrow(dim, 0, 1)], dim=dim)
        return name
    raise AssertionError(kind)


CONSTRUCTOR_DEFECTS = ["negative weight", "weights not summing to 1", "nan in weights", "nan in means",
                       "nan in covs", "nan in base_mean", "nan in base_cov", "non-PSD cov", "non-PSD base_cov",
                       "asymmetric cov", "shape of means", "shape of covs", "shape of base_mean",
                       "shape of base_cov"]


@settings(max_examples=60, **SETTINGS)
@given(kind=st.sampled_from(CONSTRUCTOR_DEFECTS), K=st.integers(1, 3), d=st.integers(1, 5),
       j=st.integers(0, 10), value=st.floats(0.0, 1e6))
def test_malformed_mixture_arguments_raise_naming_them(kind, K, d, j, value):
    args = _valid(K, d)
    name = _break(kind, args, j, value)
    with pytest.raises(ValueError, match=rf"^{name} must"):
        GaussianMixture(**args)


bad_times = st.one_of(st.floats(1.0, 1e6, exclude_min=True), st.floats(-1e6, 0.0, exclude_max=True),
                      st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=40, **SETTINGS)
@given(t=bad_times, per_point=st.booleans(), method=st.sampled_from(["velocity", "jacobian", "forward_jvp",
                                                                     "responsibilities", "score", "flow"]))
def test_time_outside_unit_interval_raises(t, per_point, method):
    mix = GaussianMixture(**_valid(2, 3))
    x = torch.zeros(4, 3, dtype=F64)
    tt = torch.tensor([0.5, 0.5, t, 0.5], dtype=F64) if per_point else t
    call = {"velocity": lambda: mix.velocity(x, tt), "jacobian": lambda: mix.jacobian(x, tt),
            "forward_jvp": lambda: mix.forward_jvp(x, tt, x), "responsibilities": lambda: mix.responsibilities(x, tt),
            "score": lambda: mix.score(x, tt), "flow": lambda: GaussianFlow(torch.eye(3)).velocity(x, tt)}[method]
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\]"):
        call()


@settings(max_examples=40, **SETTINGS)
@given(defect=st.sampled_from(["nan", "inf", "last dim", "no dim"]), j=st.integers(0, 11),
       method=st.sampled_from(["velocity", "jacobian", "forward_jvp", "log_prob", "flow"]))
def test_malformed_points_raise_naming_x(defect, j, method):
    mix = GaussianMixture(**_valid(2, 3))
    x = torch.ones(4, 3, dtype=F64)
    if defect in ("nan", "inf"):
        x.view(-1)[j] = float(defect)
    elif defect == "last dim":
        x = torch.ones(4, 2 + 2 * (j % 2), dtype=F64)
    else:
        x = torch.tensor(1.0, dtype=F64)
    call = {"velocity": lambda: mix.velocity(x, 0.3), "jacobian": lambda: mix.jacobian(x, 0.3),
            "forward_jvp": lambda: mix.forward_jvp(x, 0.3, x), "log_prob": lambda: mix.log_prob(x, 0.3),
            "flow": lambda: GaussianFlow(torch.eye(3)).velocity(x, 0.3)}[method]
    with pytest.raises(ValueError, match=r"^x must (have shape|be finite)"):
        call()


@settings(max_examples=30, **SETTINGS)
@given(defect=st.sampled_from(["nan", "non-PSD", "asymmetric", "shape"]), d=st.integers(1, 6),
       value=st.floats(1e-3, 1e6))
def test_malformed_gaussian_cov_raises_naming_cov(defect, d, value):
    cov = torch.eye(d, dtype=F64)
    if defect == "nan":
        cov[-1, 0] = float("nan")
    elif defect == "non-PSD" or (defect == "asymmetric" and d == 1):
        cov[-1, -1] = -value
    elif defect == "asymmetric":
        cov[0, -1] += value
    else:
        cov = torch.ones(d, d + 1, dtype=F64)
    with pytest.raises(ValueError, match=r"^cov must"):
        GaussianFlow(cov)


@settings(max_examples=30, **SETTINGS)
@given(n=st.integers(1, 30), m=st.integers(1, 4), j=st.integers(0, 200), bad=st.sampled_from([math.nan, math.inf]),
       fn=st.sampled_from(["correlation", "second_moment", "bootstrap", "condition"]))
def test_nonfinite_responses_raise_naming_them(n, m, j, bad, fn):
    dy = torch.randn(n, m, generator=torch.Generator().manual_seed(j), dtype=F64)
    dy.view(-1)[j % dy.numel()] = bad
    call = {"correlation": lambda: dependence.correlation(dy), "second_moment": lambda: dependence.second_moment(dy),
            "bootstrap": lambda: dependence.bootstrap(dy, n_boot=10),
            "condition": lambda: dependence.condition(dy, 0, quantile=0.5)}[fn]
    with pytest.raises(ValueError, match=r"^responses must be finite"):
        call()


@settings(max_examples=20, **SETTINGS)
@given(level=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan)))
def test_bootstrap_level_outside_unit_interval_raises(level):
    with pytest.raises(ValueError, match=r"^level must lie in \(0, 1\)"):
        dependence.bootstrap(torch.ones(10, 2, dtype=F64), n_boot=5, level=level)
