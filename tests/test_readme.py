"""The README's library example runs and prints what it says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    torch.manual_seed(0)
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    off_diag = float(re.findall(r"[-+]?\d*\.\d+", out)[1])
    assert abs(off_diag - 0.55) < 0.03


def test_readme_quick_start_matches_ci():
    readme = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    install = re.search(r"```bash\n(pip install .*?)\n```", readme).group(1)
    assert install.split(" && ")[0] in ci and "causal-delta mixture --out runs/mixture" in ci
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci


def _workflow_commands() -> list[list[str]]:
    """The `causal-delta ...` commands of the README's "The workflow" block, one argv each."""
    import shlex

    block = re.search(r"## The workflow.*?```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    text = block.replace("\\\n", " ")
    return [shlex.split(line.strip())[1:] for line in text.splitlines() if line.strip().startswith("causal-delta ")]


def _shrink(argv: list[str], root) -> list[str]:
    """The same command at test size: fewer steps, samples and replicates, output under root."""
    small = {"--steps": "40", "-n": "300", "--n-boot": "100"}
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in small and i + 1 < len(argv):
            out += [a, small[a]]
            i += 2
            continue
        out.append(a.replace("runs/", f"{root}/runs/"))
        i += 1
    if out[0] == "train":
        out.append("--no-progress")
    if out[0] == "dependence" and "--n-boot" not in out:
        out += ["--n-boot", "100"]
    return out


def test_readme_workflow_runs_and_dependence_prints_the_truth(tmp_path):
    # The README's own commands, in order, as subprocesses (sizes shrunk so the test is quick).
    import os
    import subprocess
    import sys

    commands = _workflow_commands()
    assert [c[0] for c in commands] == ["train", "sample", "jvp", "dependence"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in commands:
        proc = subprocess.run([sys.executable, "-m", "causal_delta.cli", *_shrink(argv, tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # The table: header with the interval and the truth, then one row per pair.
    assert lines[0].split()[:2] == ["pair", "estimate"] and "(bca)" in lines[0] and lines[0].endswith("truth")
    row = re.search(r"~ .*?\s+([-0-9.]+)\s+\[([-0-9.]+), ([-0-9.]+)\]\s+(\d+)\s+([-0-9.]+)( \*)?$", lines[2])
    assert row, lines
    estimate, lo, hi, n, truth = (float(v) for v in row.groups()[:5])
    rho = float(re.search(r'"rho": ([0-9.]+)', " ".join(commands[0])).group(1))
    assert truth == rho and n == 300 and lo <= estimate <= hi
    assert (row.group(6) is not None) == (not lo <= rho <= hi)  # a missed truth is flagged and explained
