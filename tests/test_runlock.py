"""The output lock and the writability check (``causal_delta._runlock``)."""

from __future__ import annotations

import argparse
import importlib
import os

import pytest

from causal_delta import cli
from causal_delta._runlock import LOCK_NAME, OutputInUseError, check_writable, output_lock


def test_lock_is_exclusive_names_the_holder_and_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    with output_lock(out) as lock_file:
        assert lock_file == out / LOCK_NAME and lock_file.read_text().strip() == str(os.getpid())
        # flock locks belong to an open file, so a second claim fails even in the same process
        with pytest.raises(OutputInUseError, match=rf"output folder {out} is in use by another causal-delta "
                                                   rf"process \(PID {os.getpid()}\)"):
            with output_lock(out):
                pass
        (out / "result.txt").write_text("kept")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]  # the lock file is gone
    with output_lock(out):  # free again
        pass


def test_folders_created_for_nothing_are_removed(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            raise RuntimeError("the command failed before writing")
    assert not (tmp_path / "new").exists()


def test_file_outputs_lock_beside_the_file(tmp_path):
    target = tmp_path / "samples.npy"
    with output_lock(target, kind="file") as lock_file:
        assert lock_file == tmp_path / ".samples.npy.lock"
        with pytest.raises(OutputInUseError, match="output file"):
            with output_lock(target, kind="file"):
                pass
        with output_lock(tmp_path / "other.npy", kind="file"):  # another file in the folder is free
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("make", "kind", "match"), [
    (lambda t: (t / "f").write_text("x") and t / "f", "folder", r"--out .*f exists and is not a folder"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "sub", "folder", r"f is a file, not a folder"),
    (lambda t: t, "file", r"is a folder; expected a file name"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "x.npy", "file", r"f exists and is not a folder"),
])
def test_unusable_outputs_are_refused_before_any_work(tmp_path, make, kind, match):
    with pytest.raises(OSError, match=match):
        check_writable(make(tmp_path), kind=kind)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=r"--out .*ro/run cannot be written"):
            check_writable(ro / "run")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_with_an_out_option_declares_its_outputs(name):
    # cli.main locks what outputs(args) returns; a command that writes without declaring it
    # would run unlocked and unchecked.
    mod = importlib.import_module(f"causal_delta.commands.{cli.COMMANDS[name]}")
    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    if any("--out" in a.option_strings for a in parser._actions):
        assert callable(getattr(mod, "outputs", None)), f"causal-delta {name} writes --out but has no outputs(args)"


def test_quiet_forward_ad_silences_only_the_jit_script_warning():
    import warnings

    from causal_delta._compat import quiet_forward_ad

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_forward_ad():
            warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
            warnings.warn("something else", FutureWarning)
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
    messages = [str(w.message) for w in caught]
    assert messages == ["something else", "`torch.jit.script` is deprecated. Please switch to `torch.compile`"]
