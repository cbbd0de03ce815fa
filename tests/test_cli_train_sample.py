from __future__ import annotations

import numpy as np
import pytest

from causal_delta.cli import main


def test_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "gaussian", "--steps", "6", "--batch-size", "16", "--out", str(run),
                 "--model-args", '{"hidden": 16, "depth": 2}', "--checkpoint-every", "3",
                 "--ema-decay", "0.9", "--no-progress", "--device", "cpu"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    out = tmp_path / "s.npy"
    png = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(run), "-n", "40", "--steps", "4", "--solver", "midpoint",
                 "--out", str(out), "--png", str(png), "--device", "cpu"]) == 0
    x = np.load(out)
    assert x.shape == (40, 2) and np.isfinite(x).all()
    assert png.stat().st_size > 0
    # resume continues to more steps
    assert main(["train", "--data", "gaussian", "--steps", "8", "--batch-size", "16", "--out", str(run),
                 "--model-args", '{"hidden": 16, "depth": 2}', "--checkpoint-every", "3",
                 "--ema-decay", "0.9", "--no-progress", "--resume", "--device", "cpu"]) == 0
    assert "trained 2 more steps to step 8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["train", "--sigma", "-1"], "sigma"), (["train", "--steps", "0"], "steps"),
     (["train", "--preset", "nope"], "preset"), (["train", "--data", "missing.npy"], "missing.npy"),
     (["train", "--data-args", "[1]"], "--data-args"),
     (["sample", "--checkpoint", "no/such/dir"], "no/such/dir"),
     (["sample", "--checkpoint", ".", "--steps", "0"], "steps")],
)
def test_bad_input_one_line(tmp_path, capsys, argv, match):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "r"), "--no-progress"]
    if "--data-args" in argv:  # a value of the wrong type is an argparse error: usage, then one error line
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument --data-args: expected a JSON object" in err, err
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
