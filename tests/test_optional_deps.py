"""matplotlib and tqdm are optional for library users; figures never switch the user's backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from causal_delta._progress import TQDM_MISSING, progress_bar


def _run(code: str) -> str:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_library_leaves_matplotlib_alone(tmp_path):
    # one subprocess (one torch import): the library does not import matplotlib, and its
    # figures neither switch the user's backend nor register with pyplot
    pytest.importorskip("matplotlib", reason="figures need matplotlib (the cli extra)")
    png = tmp_path / "f.png"
    code = ("import sys, causal_delta.solvers, causal_delta.jvp, causal_delta.likelihood, causal_delta.dependence, "
            "causal_delta.training, causal_delta.report, causal_delta.closed_form; "
            "print('matplotlib' in sys.modules); import matplotlib; matplotlib.use('svg'); "
            "from causal_delta.report import new_figure, save_figure; "
            "fig, axes = new_figure(1, 2, figsize=(3, 2), squeeze=False); axes[0, 1].plot([0, 1]); "
            f"save_figure(fig, {str(png)!r}); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    assert _run(code).splitlines() == ["False", "svg False"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_without_tqdm_warns_and_carries_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import of tqdm.auto raises ImportError
    with pytest.warns(RuntimeWarning, match="progress bars need tqdm"):
        assert list(progress_bar(range(3), desc="x")) == [0, 1, 2]
    with pytest.warns(RuntimeWarning, match="pip install tqdm"):
        bar = progress_bar(total=5, desc="manual")
    bar.update(2)
    bar.set_postfix(loss=1.0)
    bar.close()
    assert "causal-delta[cli]" in TQDM_MISSING
