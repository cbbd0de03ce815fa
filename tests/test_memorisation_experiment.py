"""`reproduce memorisation`: the paper's two acceptance findings at test scale, and the report schema.

(a) crossing lines x1 = R_180 x0 + 5, σ = 0: the gradient variance at t = ½ exceeds 10× its value
at t = 0.45 and 0.55; (b) random pairs N(0, I) → N(5, I) in d = 50, σ = 0: the flow memorises
(own-pair fraction ≥ 0.95). Sizes chosen from probes on this project's 2-core machine: (a) gave
36× / 38× with these settings (10× / 16× with a 2-layer net; 1.0× with raw t and 1,000 steps).
"""

from __future__ import annotations

import json

from causal_delta.experiments import _common as C
from causal_delta.experiments.memorisation import (
    MemorisationExperimentConfig,
    run_crossing,
    run_memorisation,
    run_random_pairs,
)


def test_crossing_gradient_variance_spikes_at_one_half(tmp_path):
    cfg = MemorisationExperimentConfig(hidden=256, depth=3, time_embed=64, crossing_steps=2000, batch_size=128,
                                       lr=3e-3, crossing_pairs=128, crossing_sigmas=(0.0,), t_grid=(0.45, 0.5, 0.55))
    row = run_crossing(cfg, tmp_path, C.Timer(), progress=False)["0"]
    assert row["peak_over_0.45"] > 10 and row["peak_over_0.55"] > 10, row


def test_random_pairs_are_memorised_at_sigma_0(tmp_path):
    cfg = MemorisationExperimentConfig(hidden=256, depth=3, time_embed=0, steps=600, batch_size=32, lr=3e-3,
                                       pairs_n=32, pairs_sigmas=(0.0,), pairs_independent=False, heldout=32,
                                       solver_steps=20)
    row = run_random_pairs(cfg, tmp_path, C.Timer(), progress=False)["rows"]["0"]
    assert row["own_pair"] >= 0.95 and row["own_over_other"] < 0.2, row


def test_quick_report_schema(tmp_path):
    cfg = MemorisationExperimentConfig.quick(steps=20, crossing_steps=20, hidden=16, pairs_n=12, heldout=12,
                                             mixture_n=12, solver_steps=4)
    report = run_memorisation(cfg, tmp_path, progress=False)
    assert report["quick"] is True and report["experiment"] == "memorisation"
    on_disk = json.loads((tmp_path / "report.json").read_text())
    res = on_disk["results"]
    assert set(res["crossing"]) == {"0", "0.05", "0.5"}
    assert set(res["random_pairs"]["rows"]) == {"0", "0.5", "2", "independent"}
    assert set(res["mixture"]) == {"d3_s0", "d3_s0.05"} and res["mixture"]["d3_s0"]["dim"] == 3
    assert all((tmp_path / f).is_file() for f in report["figures"]) and len(report["figures"]) == 2
    assert "paper" in (tmp_path / "summary.md").read_text()
