"""Bad inputs and faults, tried on the CLI as a user would (``python -m causal_delta.cli``).

For each case: exit status 2 (130 for Ctrl-C), one line on stderr naming the argument or
file, no traceback, and nothing written earlier lost. Runs are tiny (a 16-unit MLP on the 2-D
Gaussian, a few steps); subprocesses use one torch thread, like the in-process runs, so a run
continued in-process after a subprocess is stopped is comparable bit for bit.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from causal_delta import cli
from causal_delta.checkpoint import list_checkpoints, load_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "CAUSAL_DELTA_DEBUG"} | {"OMP_NUM_THREADS": "1"}
TINY = ["--model-args", '{"hidden": 16, "depth": 2}', "--batch-size", "16", "--no-progress", "--device", "cpu"]


def base_argv(steps: int = 4) -> list[str]:
    return ["train", *TINY, "--lr-schedule", "cosine", "--steps", str(steps), "--checkpoint-every", "2"]


BASE = base_argv()
"""A finished 4-step run with checkpoints at steps 2 and 4 (the ``base`` fixture)."""
LONG = ["train", *TINY, "--steps", "150", "--checkpoint-every", "5"]
"""A run long enough to be stopped while it trains."""


def cli_run(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "causal_delta.cli", *argv], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)


def cli_start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "causal_delta.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def one_error_line(proc, *names: str, status: int = 2) -> str:
    """Check the exit status and that stderr is one line, no traceback, naming each of ``names``."""
    err = proc.stderr.strip()
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("causal-delta "), err
    for name in names:
        assert name in err, (name, err)
    return err


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (what a failed run must leave untouched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def final_state(run: Path):
    ckpt = load_checkpoint(run)
    return ckpt.step, [float(x) for x in ckpt.train_state["losses"]], ckpt.model_state


def assert_same_run(a: Path, b: Path) -> None:
    step_a, losses_a, model_a = final_state(a)
    step_b, losses_b, model_b = final_state(b)
    assert step_a == step_b and losses_a == losses_b  # exact, every step
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    pointer = run / "checkpoints" / "latest"
    end = time.monotonic() + timeout
    while not pointer.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.02)


def _train_in_process(run: Path, argv: list[str]) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1) and the suite's tests
    try:
        assert cli.main([*argv, "--out", str(run)]) == 0
    finally:
        torch.set_num_threads(before)
    return run


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _train_in_process(tmp_path_factory.mktemp("base") / "run", BASE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted ``LONG`` run, in-process."""
    return _train_in_process(tmp_path_factory.mktemp("reference") / "run", LONG)


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        locked = tmp_path / "readonly"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "run"
    # root writes through chmod; a kernel file system refuses new folders even to root
    probe = Path("/sys/causal-delta-probe")
    try:
        probe.mkdir()
    except OSError:
        return probe / "run"
    probe.rmdir()
    pytest.skip("running as root and /sys is writable: no unwritable folder to try")


# ------------------------------------------------------------------------------ the table


def _csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "table.csv"
    path.write_text(text)
    return str(path)


CASES = {
    # id: (argv builder (tmp_path, base copy) -> argv, words the message must hold)
    "out-is-a-file": (lambda t, b: ["train", *TINY, "--out", str(t / "afile")], ["afile", "not a folder"]),
    "out-under-a-file": (lambda t, b: ["train", *TINY, "--out", str(t / "afile" / "run")],
                         ["afile", "is a file"]),
    "jvp-out-is-a-file": (lambda t, b: ["jvp", "--checkpoint", str(b), "--features", "0", "--out",
                                        str(t / "afile")], ["--out", "afile"]),
    "sample-out-is-a-folder": (lambda t, b: ["sample", "--checkpoint", str(b), "--out", str(t)],
                               ["--out", "is a folder"]),
    "out-not-writable": (lambda t, b: ["train", *TINY, "--out", str(_unwritable(t))],
                         ["--out", "cannot be written"]),
    "unknown-data-argument": (lambda t, b: ["train", *TINY, "--data-args", '{"rhoo": 0.55}', "--out",
                                            str(t / "new")],
                              ["unknown data argument 'rhoo' for data source 'gaussian'; valid: cov, mean, rho, dim"]),
    "csv-text-column": (lambda t, b: ["train", *TINY, "--data", _csv(t, "a,b,c\n1,2,3\n4,abc,6\n"),
                                      "--out", str(t / "new")],
                        ["table.csv", "row 3, column 2 ('b') could not be read as a number: 'abc'"]),
    "csv-empty": (lambda t, b: ["train", *TINY, "--data", _csv(t, ""), "--out", str(t / "new")],
                  ["table.csv", "is empty"]),
    "resume-below-checkpoint": (lambda t, b: [*base_argv(3), "--resume", "--out", str(b)],
                                ["steps 3 is below the checkpoint's step 4"]),
    "resume-cosine-new-total": (lambda t, b: [*base_argv(6), "--resume", "--out", str(b)],
                                ["steps 6 differs from the run's total of 4 steps", "--extend"]),
    "extend-without-resume": (lambda t, b: [*BASE, "--extend", "--out", str(t / "new")], ["--extend"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault_table(case, tmp_path, base):
    build, words = CASES[case]
    (tmp_path / "afile").write_text("keep me\n")
    run = tmp_path / "copy"
    shutil.copytree(base, run)
    argv = build(tmp_path, run)
    before = snapshot(tmp_path)
    proc = cli_run(*argv)
    one_error_line(proc, *words)
    assert snapshot(tmp_path) == before  # nothing lost, nothing half-written, no folder left behind


def test_diverging_loss_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = cli_run("train", *TINY, "--lr", "1e4", "--grad-clip", "0", "--steps", "30", "--checkpoint-every", "2",
                   "--out", str(run))
    one_error_line(proc, "diverged", "at step 3", "checkpoint at step 2 is kept", "--lr", "--grad-clip")
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert load_checkpoint(run).step == 2  # intact and loadable


def test_two_writers_the_second_stops_at_once(tmp_path):
    run = tmp_path / "run"
    first = cli_start(*LONG, "--out", str(run))
    try:
        wait_for_checkpoint(run, first)
        start = time.perf_counter()
        second = cli_run(*LONG, "--out", str(run))
        seconds = time.perf_counter() - start
    finally:
        first.kill()
        first.communicate()
    one_error_line(second, f"output folder {run} is in use by another causal-delta process (PID {first.pid})")
    assert seconds < 20  # it stops before importing torch; the bound only allows for a loaded machine


def test_sigkill_then_resume_is_bit_exact(tmp_path, reference):
    run = tmp_path / "run"
    proc = cli_start(*LONG, "--out", str(run))
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(run).step
    assert 0 < killed_at < 150
    # The dead process's lock went with it: the resume takes the folder at once.
    assert cli.main([*LONG, "--out", str(run), "--resume"]) == 0
    assert_same_run(run, reference)


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path, reference):
    run = tmp_path / "run"
    proc = cli_start(*LONG, "--out", str(run))
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    line = one_error_line(SimpleNamespace(returncode=proc.returncode, stderr=err), status=130)
    m = re.fullmatch(r"causal-delta train: interrupted at step (\d+); the checkpoint at step (\d+) is intact "
                     r"\((.+)\); resume with: (.+)", line)
    assert m, line
    step, ckpt_step = int(m[1]), int(m[2])
    assert ckpt_step % 5 == 0 and 0 < ckpt_step <= step < 150
    assert load_checkpoint(m[3]).step == ckpt_step
    resume = shlex.split(m[4])
    assert resume[0] == "causal-delta" and resume[-1] == "--resume"
    assert cli.main(resume[1:]) == 0  # the printed command, as given
    assert_same_run(run, reference)


def test_disk_full_mid_checkpoint_keeps_the_previous_one(tmp_path, base, monkeypatch, capsys):
    import causal_delta.checkpoint as C

    real_write = C._write

    def write_until_full(path: Path, data: bytes) -> None:
        if "step-00000004" in str(path) and path.name == "state.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    run = tmp_path / "run"
    monkeypatch.setattr(C, "_write", write_until_full)
    assert cli.main([*BASE, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "step-00000004" in err and "No space left on device" in err, err
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written dir
    assert load_checkpoint(run).step == 2
    monkeypatch.undo()
    assert cli.main([*BASE, "--out", str(run), "--resume"]) == 0  # the folder is free again
    assert_same_run(run, base)
    capsys.readouterr()
    assert cli.main([*BASE, "--out", str(run), "--resume"]) == 0
    assert "nothing to train: the checkpoint is already at step 4" in capsys.readouterr().out


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "afile").write_text("x")
    argv = ["train", "--out", str(tmp_path / "afile")]
    for proc in (cli_run(*argv, "--debug"), cli_run(*argv, env=ENV | {"CAUSAL_DELTA_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "NotADirectoryError" in proc.stderr


def test_a_quick_run_prints_no_warning(tmp_path, base):
    # A quick command, then torch.func.jvp in the same process: the jvp command's forward mode
    # loaded torch's forward-AD module with its torch.jit.script FutureWarning silenced, and
    # stderr holds nothing at all. (The CLI also runs every command with that one warning
    # filtered; see test_runlock.py::test_quiet_forward_ad_silences_only_the_jit_script_warning.)
    code = ("import sys, torch; from causal_delta import cli; rc = cli.main(sys.argv[1:]); x = torch.ones(2); "
            "torch.func.jvp(torch.sin, (x,), (x,)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "jvp", "--checkpoint", str(base), "--features", "0,1",
                           "-n", "8", "--steps", "2", "--out", str(tmp_path / "j")],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("wrote ") and proc.stdout.count("\n") == 1, proc.stdout
    # Left to torch, that first forward-mode call prints the warning (the control).
    control = subprocess.run([sys.executable, "-c", "import torch; x = torch.ones(2); "
                              "torch.func.jvp(torch.sin, (x,), (x,))"], capture_output=True, text=True, env=ENV)
    assert "FutureWarning" in control.stderr, "torch no longer warns: causal_delta._compat can go"


def test_disk_full_while_writing_a_report_names_the_file(tmp_path, monkeypatch, capsys, base):
    import causal_delta.report as R

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "jvp"
    out.mkdir()
    (out / "report.json").write_text("earlier report\n")
    monkeypatch.setattr(R.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    rc = cli.main(["jvp", "--checkpoint", str(base), "--features", "0", "-n", "4", "--steps", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert f"could not write {out / 'report.json'}: No space left on device" in err
    assert (out / "report.json").read_text() == "earlier report\n"  # the earlier output is kept
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
