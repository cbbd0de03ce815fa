"""Tables from files: numbers or a clear refusal, header names carried into the reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from causal_delta import cli
from causal_delta.datasets import load_data_source
from causal_delta.datasets.tabular import read_csv


def _csv(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_header_names_and_values(tmp_path):
    path = _csv(tmp_path, "\ufeffheight, weight\n1.5,2\n\n-3e-1,4\n")  # BOM, spaces, a blank line
    table, names = read_csv(path)
    assert names == ["height", "weight"] and table.dtype == np.float64
    np.testing.assert_array_equal(table, [[1.5, 2.0], [-0.3, 4.0]])
    src = load_data_source(str(path))
    assert src.feature_names == ("height", "weight")
    assert src.describe()["feature_names"] == ["height", "weight"]
    assert src.describe()["cast"].startswith("float64 -> float32")  # the cast is stated
    assert read_csv(_csv(tmp_path, "1,2\n3,4\n", "n.csv"))[1] is None  # no header
    one_column = read_csv(_csv(tmp_path, "x\n1\n2\n", "c.csv"))[0]
    assert one_column.shape == (2, 1)


def test_float32_tables_are_not_cast(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((3, 2), dtype=np.float32))
    assert "cast" not in load_data_source(str(tmp_path / "t.npy")).describe()
    np.save(tmp_path / "d.npy", np.ones((3, 2)))
    assert load_data_source(str(tmp_path / "d.npy")).describe()["cast"].startswith("float64 -> float32")


@pytest.mark.parametrize(("text", "match"), [
    ("a,b,c\n1,2,3\n4,abc,6\n", r"t.csv: row 3, column 2 \('b'\) could not be read as a number: 'abc'"),
    ("1,2\n3,x\n", r"t.csv: row 2, column 2 could not be read as a number: 'x'"),
    ("a,b\n1,\n", r"row 2, column 2 \('b'\) could not be read as a number: ''"),
    ("a,b\n1,nan\n", r"row 2, column 2 \('b'\) is not a finite number: 'nan'"),
    ("a,b\n1,2\n3\n", r"row 3 has 1 columns, expected 2"),
    ("", r"data file .*t.csv is empty"),
    ("\n\n", r"data file .*t.csv is empty"),
    ("a,b\n", r"t.csv has a header row but no data rows"),
])
def test_cells_that_are_not_numbers_are_named(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_data_source(str(_csv(tmp_path, text)))


def test_unknown_arguments_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data argument 'rhoo' for data source 'gaussian'; "
                                         r"valid: cov, mean, rho, dim"):
        load_data_source("gaussian", rhoo=0.5)
    with pytest.raises(ValueError, match=r"unknown data argument 'standardise' for data file .*; valid: standardize"):
        load_data_source(str(_csv(tmp_path, "1,2\n")), standardise=True)
    with pytest.raises(ValueError, match=r"data source 'gaussian' with arguments"):
        load_data_source("gaussian", rho="high")  # a value of the wrong type


def test_header_names_reach_the_jvp_report(tmp_path):
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{a:.6f},{b:.6f}" for a, b in rng.normal(size=(30, 2)))
    data = _csv(tmp_path, "income,age\n" + rows + "\n")
    run, out = tmp_path / "run", tmp_path / "jvp"
    assert cli.main(["train", "--data", str(data), "--steps", "2", "--batch-size", "8", "--no-progress",
                     "--model-args", '{"hidden": 8, "depth": 1}', "--out", str(run)]) == 0
    assert cli.main(["jvp", "--checkpoint", str(run), "--features", "1,0", "-n", "6", "--steps", "2",
                     "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["names"] == ["age", "income"]
    assert rep["data"]["feature_names"] == ["income", "age"] and rep["data"]["cast"].startswith("float64 -> float32")
    assert np.load(out / "responses.npz")["names"].tolist() == ["age", "income"]


def test_feature_labels():
    # header names; other tables (synthetic 2-D data included) x0, x1, ...; images "pixel i"
    from causal_delta.commands.jvp import feature_labels

    assert feature_labels([1], (2,), ["a", "b"]) == ["b"]
    assert feature_labels([0, 1], (2,)) == ["x0", "x1"]
    assert feature_labels([5], (1, 4, 4)) == ["pixel 5"]


def test_integer_tables_are_not_pixels(tmp_path):
    """An integer .npy table keeps its values; only 4-D integer arrays (or images=True) are pixels."""
    import torch

    table = np.array([[0, 3, 255], [1, 7, 1999]], dtype=np.int64)
    np.save(tmp_path / "counts.npy", table)
    src = load_data_source(str(tmp_path / "counts.npy"))
    assert src.event_shape == (3,)
    torch.testing.assert_close(src.data, torch.tensor(table, dtype=torch.float32))  # not divided by 127.5
    np.save(tmp_path / "small.npy", table[:, :2].astype(np.uint8))
    torch.testing.assert_close(load_data_source(str(tmp_path / "small.npy")).data,
                               torch.tensor(table[:, :2], dtype=torch.float32))
    # the user says the table holds pixels: scaled to [-1, 1]
    scaled = load_data_source(str(tmp_path / "small.npy"), images=True).data
    torch.testing.assert_close(scaled, torch.tensor(table[:, :2], dtype=torch.float32) / 127.5 - 1)
    pixels = np.array([0, 255, 51, 204], dtype=np.uint8).reshape(1, 1, 2, 2).repeat(2, 0)
    np.save(tmp_path / "images.npy", pixels)
    img = load_data_source(str(tmp_path / "images.npy")).data
    assert img.shape == (2, 1, 2, 2) and img.min() == -1.0 and img.max() == 1.0
    torch.testing.assert_close(load_data_source(str(tmp_path / "images.npy"), images=False).data,
                               torch.from_numpy(pixels).float())
    with pytest.raises(ValueError, match="images must be True, False or None"):
        load_data_source(str(tmp_path / "counts.npy"), images="yes")


def test_standardize_records_shift_and_scale(tmp_path):
    x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]], dtype=np.float32)
    np.save(tmp_path / "t.npy", x)
    assert load_data_source(str(tmp_path / "t.npy")).shift is None  # not standardised: nothing recorded
    src = load_data_source(str(tmp_path / "t.npy"), standardize=True)
    np.testing.assert_allclose(src.shift.numpy(), x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(src.scale.numpy(), x.std(0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(src.data.numpy() * src.scale.numpy() + src.shift.numpy(), x, rtol=1e-5)


def test_sampler_source_describe_reports_the_truth_it_has():
    import torch

    from causal_delta.datasets import SamplerSource

    rep = load_data_source("gaussian", rho=0.3, mean=[1.0, -2.0]).describe()
    assert rep["mean"] == [1.0, -2.0] and rep["corr"][0][1] == pytest.approx(0.3)
    # a covariance without a mean (this crashed once): cov and corr, no mean
    rep = SamplerSource(lambda n, g=None: torch.zeros(n, 2), (2,), cov=4.0 * torch.eye(2)).describe()
    assert "mean" not in rep and rep["cov"] == [[4.0, 0.0], [0.0, 4.0]] and rep["corr"] == [[1.0, 0.0], [0.0, 1.0]]
