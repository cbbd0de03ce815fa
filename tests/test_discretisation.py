"""Discretisation check and step chooser on the closed-form Gaussian flow (known flow map).

For ``v(x, t) = A(t) x`` every one-step method is linear: a step is ``x <- M_i x`` with a matrix
``M_i`` (Euler: ``I + h A(t_i)``), so the discretised generator's Jacobian is the product of the
``M_i`` — an independent route to the statistic the check computes through the JVP code. As
steps -> infinity the Jacobian is ``Σ^{1/2}`` (MATH.md §2), so paired responses ``Σ^{1/2} z`` give
the converged correlation.
"""

import pytest
import torch

from causal_delta.closed_form import GaussianFlow
from causal_delta.dependence import correlation
from causal_delta.discretisation import choose_steps, discretisation_check
from causal_delta.solvers import NFE_PER_STEP

RHO = 0.55


@pytest.fixture(scope="module")
def case():
    flow = GaussianFlow(torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    z = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    exact = float(correlation(z @ flow.flow_jacobian(1.0).T)[0, 1])  # paired, steps -> infinity
    return flow, x0, z, exact


def _euler_jacobian(flow, steps):
    """Product of the Euler step matrices I + h A(t_i) (A symmetric), the discretised Jacobian."""
    h = 1.0 / steps
    J = torch.eye(2, dtype=torch.float64)
    for i in range(steps):
        J = (torch.eye(2, dtype=torch.float64) + h * flow.A(i * h)) @ J
    return J


def test_euler_with_too_few_steps_is_flagged(case):
    flow, x0, z, _ = case
    chk = discretisation_check(flow.velocity, x0, z, method="euler", steps=4, subsample=400, n_boot=200)
    assert chk.verdict == "not converged" and not chk.converged
    assert (chk.steps, chk.coarse_steps, chk.nfe, chk.samples, chk.entries) == (4, 2, 4, 400, 2)
    # the fine and coarse statistics by another route: the product of Euler step matrices
    sub = z[:400]
    assert float(chk.fine[0, 1]) == pytest.approx(float(correlation(sub @ _euler_jacobian(flow, 4).T)[0, 1]), abs=1e-10)
    coarse, fine = correlation(sub @ _euler_jacobian(flow, 2).T), correlation(z @ _euler_jacobian(flow, 4).T)
    assert float(chk.coarse[0, 1]) == pytest.approx(float(coarse[0, 1]), abs=1e-10)
    assert float(chk.estimate[0, 1]) == pytest.approx(float(fine[0, 1]), abs=1e-10)
    assert chk.ratio > 1 and chk.max_abs_diff == pytest.approx(abs(float(chk.diff[0, 1])))
    assert chk.max_abs_diff > chk.se_at_worst == pytest.approx(float(chk.se[0, 1]))
    # the SE is the bootstrap SE of a correlation of 2000 rows: (1 - ρ²)/sqrt(n) ≈ 0.016
    assert 0.01 < chk.se_at_worst < 0.025
    assert "not converged" in chk.message() and ">" in chk.message()
    d = chk.to_dict()
    assert d["converged"] is False and d["worst"] == [0, 1] and len(d["diff"]) == 2


def test_rk4_with_enough_steps_passes_and_matches_the_flow_map(case):
    flow, x0, z, exact = case
    chk = discretisation_check(flow.velocity, x0, z, method="rk4", steps=8, subsample=400, n_boot=200)
    assert chk.converged and chk.ratio <= 1 and chk.nfe == 32
    est = float(chk.estimate[0, 1])
    assert abs(est - exact) < chk.se_at_worst / 100  # discretisation error far below the noise
    assert abs(est - RHO) < 3 * chk.se_at_worst  # and the noise is what the SE says
    # responses given: the same check without recomputing the full run
    from causal_delta.jvp import attribute_jvp

    resp = attribute_jvp(flow.velocity, x0, z, method="rk4", steps=8).responses
    again = discretisation_check(flow.velocity, x0, z, method="rk4", steps=8, subsample=400, n_boot=200,
                                 responses=resp)
    assert torch.allclose(again.diff, chk.diff, atol=1e-12) and torch.equal(again.se, chk.se)


def test_chooser_picks_a_count_within_the_se_of_the_closed_form(case):
    flow, x0, z, exact = case
    choice = choose_steps(flow.velocity, x0, z, methods=("rk4", "midpoint", "euler"), start=2, max_steps=64,
                          subsample=400, n_boot=200)
    assert choice.passed and choice.check.converged
    assert choice.nfe == choice.check.nfe and choice.steps == choice.check.steps
    est = float(choice.check.estimate[0, 1])
    assert abs(est - exact) <= choice.check.se_at_worst
    # every earlier count of every solver failed, and no passing solver was cheaper
    for t in choice.trials.values():
        assert all(c["verdict"] == "not converged" for c in t["checks"][:-1])
        if t["stopped"] == "passed":
            assert t["checks"][-1]["nfe"] >= choice.nfe
    assert choice.trials["rk4"]["checks"][0]["verdict"] == "not converged"  # 2 RK4 steps are too few
    assert choice.to_dict()["check"]["converged"] is True


def test_chooser_reports_failure_at_the_cap(case):
    flow, x0, z, _ = case
    choice = choose_steps(flow.velocity, x0, z, methods=("euler",), start=2, max_steps=3, subsample=400, n_boot=50)
    assert not choice.passed and choice.steps == 2 and choice.trials["euler"]["stopped"] == "cap"


def test_probes_per_sample_dopri5_and_one_feature(case):
    flow, x0, z, _ = case
    zz = torch.randn(200, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    chk = discretisation_check(flow.velocity, x0[:200], zz, method="dopri5", subsample=50, n_boot=50)
    assert chk.rows == 150 and chk.samples == 50 and chk.converged
    assert chk.coarse_steps == -(-chk.steps // 2)
    one = discretisation_check(flow.velocity, x0[:50], z[:50], features=[0], method="rk4", steps=4, n_boot=20)
    assert one.verdict == "no off-diagonal entries" and one.worst is None and "no off-diagonal" in one.message()


def test_errors(case):
    flow, x0, z, _ = case
    with pytest.raises(ValueError, match="steps must be >= 2"):
        discretisation_check(flow.velocity, x0, z, method="euler", steps=1)
    with pytest.raises(ValueError, match="at least 2 source points"):
        discretisation_check(flow.velocity, x0[:1], z[:1], steps=4)
    with pytest.raises(ValueError, match="subsample must be an integer >= 1"):
        discretisation_check(flow.velocity, x0, z, steps=4, subsample=0)
    with pytest.raises(ValueError, match="method must be one of"):
        discretisation_check(flow.velocity, x0, z, method="heun", steps=4)
    with pytest.raises(ValueError, match=r"responses must have shape \(n·P, m\) = \(2000, 2\)"):
        discretisation_check(flow.velocity, x0, z, steps=4, responses=torch.zeros(10, 2))
    with pytest.raises(ValueError, match=r"probes must have shape"):
        discretisation_check(flow.velocity, x0, z[:, :1], steps=4)
    with pytest.raises(ValueError, match=r"start must be an integer in \[2, max_steps=8\]"):
        choose_steps(flow.velocity, x0, z, start=16, max_steps=8)
    with pytest.raises(ValueError, match="methods must be a non-empty sequence"):
        choose_steps(flow.velocity, x0, z, methods=("heun",))
    with pytest.raises(ValueError, match="chooses 'steps' itself"):
        choose_steps(flow.velocity, x0, z, steps=4)


def test_chooser_integrates_all_samples_only_for_the_se_and_the_chosen_check(case):
    """Trials after the first run on the paired subsample with the first trial's SE; the chosen steps
    get one full check, equal to calling the check there directly."""
    flow, x0, z, _ = case
    rows = []

    def velocity(x, t):
        rows.append(x.shape[0])
        return flow.velocity(x, t)

    n, k = x0.shape[0], 400
    choice = choose_steps(velocity, x0, z, methods=("rk4", "midpoint", "euler"), start=2, max_steps=64,
                          subsample=k, n_boot=200)
    trials = [(m, c["steps"]) for m, t in choice.trials.items() for c in t["checks"]]
    assert len(trials) >= 3

    def solve(rows_, method, steps):  # velocity rows of one solve of rows_ samples
        return rows_ * NFE_PER_STEP[method] * steps

    expected = sum(solve(k, m, -(-N // 2)) + solve(n if i == 0 else k, m, N) for i, (m, N) in enumerate(trials))
    expected += solve(n, choice.method, choice.steps) + solve(k, choice.method, -(-choice.steps // 2))
    assert sum(rows) == expected
    direct = discretisation_check(flow.velocity, x0, z, method=choice.method, steps=choice.steps, subsample=k,
                                  n_boot=200)
    torch.testing.assert_close(choice.check.estimate, direct.estimate, rtol=0, atol=0)
    torch.testing.assert_close(choice.check.se, direct.se, rtol=0, atol=0)
    assert choice.check.verdict == direct.verdict and choice.passed == direct.converged


def test_chooser_verifies_a_passing_trial_on_all_samples_and_falls_back_to_the_next(monkeypatch):
    """A trial can pass on the first trial's SE and fail its full check (its own SE): the next
    cheapest passing trial is then checked, and chosen when it passes."""
    import causal_delta.discretisation as D

    calls = []

    def fake(velocity, x0, probes, *, method, grid, se=None, **kw):
        steps = grid.numel() - 1
        calls.append((method, steps, se is None))
        trial_ratio = {("rk4", 2): 3.0, ("midpoint", 2): 0.5, ("euler", 2): 0.9}[(method, steps)]
        ratio = 1.2 if (method, steps) == ("euler", 2) and se is None else trial_ratio  # fails on its own SE
        z = torch.zeros(2, 2)
        return D.DiscretisationCheck(method=method, steps=steps, coarse_steps=1, nfe=D.NFE_PER_STEP[method] * steps,
                                     samples=2, rows=2, estimate=z, se=z, fine=z, coarse=z, diff=z, entries=1,
                                     worst=(0, 1), max_abs_diff=0.0, se_at_worst=1.0, ratio=ratio, n_boot=1,
                                     verdict="converged" if ratio <= 1 else "not converged")

    monkeypatch.setattr(D, "discretisation_check", fake)
    choice = D.choose_steps(None, torch.zeros(4, 2), torch.zeros(4, 2), start=2, max_steps=2)
    assert (choice.method, choice.steps, choice.passed) == ("midpoint", 2, True)
    # trials: rk4 (all samples, the SE), midpoint, euler on the subsample; full checks: euler (fails), midpoint
    assert calls == [("rk4", 2, True), ("midpoint", 2, False), ("euler", 2, False), ("euler", 2, True),
                     ("midpoint", 2, True)]
