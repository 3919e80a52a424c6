"""The Python API (issue 13): the command line's numbers from Python, Cohen's and ART's shapes,
one-line errors shared with the command line, and the examples of docs/python.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

import srtool
from srtool import core
from srtool.errors import UsageError
from cli_helpers import read, srtool as cli

REPO = Path(__file__).resolve().parents[1]


def without_time(table):
    return table.drop(["time_s"]).to_pylist()


@pytest.fixture
def linear(prototype_run):
    return prototype_run(6)


def test_smooth_certify_equals_the_cli_row_for_row(tmp_path, linear, capsys):
    model, data = linear
    out = tmp_path / "cli.parquet"
    assert cli("certify", "--model", model, "--images", data, "--n0", 20, "--n", 300, "--alpha", 0.01,
               "--seed", 3, "--out", out, "--quiet", capsys=capsys)[0] == 0
    rows = read(out)[0].to_pylist()
    x = np.load(data)["x"]  # uint8 N×28×28 as the CLI read it
    with srtool.Smooth(model, sigma=0.25, seed=3) as smooth:
        batch = smooth.certify(x[:, None], n0=20, n=300, alpha=0.01, batch=64)
        one = smooth.certify(x[2][None], n0=20, n=300, alpha=0.01, index=2)
    # ART's habit for a batch: arrays, unpacking to (predictions, radii)
    labels, radii = batch
    assert isinstance(labels, np.ndarray) and labels.shape == (6,)
    assert labels.tolist() == [r["predict"] for r in rows]
    assert radii.tolist() == pytest.approx([r["radius"] for r in rows])
    assert batch.counts.tolist() == [r["counts"] for r in rows]
    # Cohen's habit for one image: a (prediction, radius) pair, with the evidence as attributes
    label, radius = one
    assert (label, radius) == (rows[2]["predict"], pytest.approx(rows[2]["radius"]))
    assert one.p_lower == pytest.approx(rows[2]["p_lower"]) and one.n == 300 and one.radius_factor == 1.0
    assert int(np.sum(one.counts)) == 300 and one.count == rows[2]["count"]


def test_smooth_predict_and_smooth_reduce_equal_the_cli(tmp_path, linear, capsys):
    model, data = linear
    out = tmp_path / "p.parquet"
    assert cli("predict", "--model", model, "--images", data, "--n", 200, "--alpha", 0.05, "--patches", 4,
               "--resize", 32, "--noise-space", "patch", "--out", out, "--quiet", capsys=capsys)[0] == 0
    rows = read(out)[0].to_pylist()
    x = np.load(data)["x"].astype(np.float32) / 255
    smooth = srtool.Smooth(model, patches=4, resize=32, noise_space="patch")
    prediction = smooth.predict(x[:, None], n=200, alpha=0.05)
    assert prediction.label.tolist() == [r["predict"] for r in rows]
    assert prediction.p_value.tolist() == pytest.approx([r["p_value"] for r in rows])
    cert = smooth.certify(x[0][None], n0=10, n=100)
    assert 0 < cert.radius_factor < 0.5  # patch noise: the radius is divided by ‖A‖₂
    smooth.close()


def test_model_from_path_bytes_and_proto_is_the_same_classifier(linear):
    model, data = linear
    x = np.load(data)["x"][:2, None]
    answers = [srtool.Smooth(source, sigma=0.25).certify(x, n0=10, n=100)
               for source in (model, Path(model).read_bytes(), onnx.load(model))]
    assert all(np.array_equal(a.counts, answers[0].counts) for a in answers)
    with pytest.raises(UsageError, match="not an ONNX model"):
        srtool.Smooth(b"not onnx", sigma=0.25)


@pytest.mark.parametrize("python, flags, message, spelled", [
    ({"sigma": -1.0}, ["--sigma", "-1"], "--sigma must be positive", "sigma must be positive"),
    ({"alpha": 1.5}, ["--alpha", "1.5"], "--alpha must lie strictly between 0 and 1",
     "alpha must lie strictly between 0 and 1"),
    ({"seed": -5}, ["--seed", "-5"], "--seed must be an integer from 0 to 2^63-1",
     "seed must be an integer from 0 to 2^63-1"),
    ({"max": -1}, ["--max", "-1"], "--max must be 0 or more", "max must be 0 or more"),
    ({"patches": 0}, ["--patches", "0"], "--patches must be at least 1", "patches must be at least 1"),
    ({"batch": 0}, ["--batch", "0"], "--batch must be a positive integer or 'auto'",
     "batch must be a positive integer or 'auto'"),
    ({"n": 0}, ["--n", "0"], "--n must be at least 1", "n must be at least 1"),
])
def test_bad_arguments_give_the_cli_message_in_keyword_spelling(tmp_path, linear, capsys, python, flags, message,
                                                                 spelled):
    model, data = linear
    out = tmp_path / "r.parquet"
    with pytest.raises(UsageError) as raised:
        srtool.certify(model, images=data, out=out, **python)
    code, _, err = cli("certify", "--model", model, "--images", data, "--out", out, *flags, capsys=capsys)
    assert str(raised.value) == spelled and code == 2 and err.strip() == f"error: {message}"
    assert not out.exists() and not Path(f"{out}.parts").exists()


def test_smooth_rejects_bad_images(linear):
    model, _ = linear
    smooth = srtool.Smooth(model)
    with pytest.raises(UsageError, match="C×H×W"):
        smooth.certify(np.zeros((28, 28), np.float32))
    with pytest.raises(UsageError, match=r"\[0,1\]|outside"):
        smooth.certify(np.full((1, 28, 28), 7.0, np.float32))
    with pytest.raises(UsageError, match="NaN|finite"):
        smooth.certify(np.full((1, 28, 28), np.nan, np.float32))
    with pytest.raises(UsageError, match="unknown argument"):
        srtool.certify(model, images="x.npz", sigmas=0.5)


def test_dataset_api_is_the_cli_run_and_results_summarize(tmp_path, linear, capsys):
    model, data = linear
    a, b = tmp_path / "api.parquet", tmp_path / "cli.parquet"
    results = srtool.certify(model, images=data, n0=10, n=100, seed=1, batch=16, out=a)
    assert cli("certify", "--model", model, "--images", data, "--n0", 10, "--n", 100, "--seed", 1,
               "--out", b, "--quiet", capsys=capsys)[0] == 0
    assert without_time(results.table) == without_time(read(b)[0])
    assert results.config["n"] == 100 and not results.partial
    again = srtool.read_results(a)
    frame = again.to_pandas()
    assert list(frame["index"]) == list(range(6))
    table = frame.to_dict("records")
    assert again.acr() == pytest.approx(np.mean([r["correct"] * r["radius"] for r in table]))
    assert again.certified_accuracy(0.1) == pytest.approx(np.mean([r["correct"] and r["radius"] >= 0.1 for r in table]))
    assert again.summary()["radii"] == [0.125, 0.25, 0.375, 0.5]  # multiples of σ = 0.25


def test_video_api_equals_the_cli(tmp_path, capsys):
    a, b = tmp_path / "api.parquet", tmp_path / "cli.parquet"
    results = srtool.certify(videos=core.asset(core.DEFAULT_VIDEOS), n0=3, n=20, max=2, out=a)
    assert cli("video", "--videos", core.asset(core.DEFAULT_VIDEOS), "--n0", 3, "--n", 20, "--max", 2,
               "--out", b, "--quiet", capsys=capsys)[0] == 0
    assert without_time(results.table) == without_time(read(b)[0])


def test_documentation_examples_run(tmp_path, monkeypatch):
    text = (REPO / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)  # noqa: S102 - our own documentation
