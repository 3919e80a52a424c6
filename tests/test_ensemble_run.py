"""Ensembles through the core, the CLI and the API (issue 16): the exact linear reference, consensus,
checks on the members, the shipped ensemble, and the same table at any batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest

import srtool
from srtool import core
from cli_helpers import read, srtool as cli


def without_time(table):
    return table.drop(["time_s"]).to_pylist()


@pytest.fixture
def members(tmp_path, make_linear, prototype_run):
    """Three 10-class linear models on 1×28×28 near the prototype model, and its data."""
    model, data = prototype_run(10)
    rng = np.random.default_rng(4)
    prototypes = np.random.default_rng(0).random((10, 28 * 28)).astype(np.float32)
    base = (prototypes - prototypes.mean(axis=0)).T * 0.5
    weights = [base + rng.normal(0, 0.02, base.shape) for _ in range(3)]
    biases = [rng.normal(0, 0.05, 10) for _ in range(3)]
    paths = [make_linear(w, b, (1, 28, 28), name=f"m{i}.onnx", metadata={"srtool.sigma": 0.25})
             for i, (w, b) in enumerate(zip(weights, biases))]
    return paths, weights, biases, data


def test_mean_ensemble_of_linear_models_is_the_averaged_linear_model(tmp_path, members, make_linear, capsys):
    """Mean of the members' logits = one linear model with the mean weights: identical votes, copy
    for copy, so identical tables (the exact reference of DESIGN §3 carries over)."""
    paths, weights, biases, data = members
    averaged = make_linear(np.mean(weights, axis=0), np.mean(biases, axis=0), (1, 28, 28), name="avg.onnx",
                           metadata={"srtool.sigma": 0.25})
    ensemble, single = tmp_path / "ens.parquet", tmp_path / "avg.parquet"
    common = ["certify", "--images", data, "--n0", 10, "--n", 200, "--quiet"]
    assert cli(*common, *sum((["--model", p] for p in paths), []), "--out", ensemble, capsys=capsys)[0] == 0
    assert cli(*common, "--model", averaged, "--out", single, capsys=capsys)[0] == 0
    (a, config), (b, _) = read(ensemble), read(single)
    assert [r["counts"] for r in a.to_pylist()] == [r["counts"] for r in b.to_pylist()]
    assert [m["model_sha256"] for m in config["members"]] == [core.load_run_models(core.Run(model=p))[0].sha256
                                                              for p in paths]
    assert config["consensus"] is None and config["model_sha256"] == config["members"][0]["model_sha256"]


def test_consensus_runs_and_is_the_same_table_at_any_batch(tmp_path, members, capsys):
    paths, _, _, data = members
    models = sum((["--model", p] for p in paths), [])
    tables = []
    for batch in (7, 100):
        out = tmp_path / f"c{batch}.parquet"
        code, _, err = cli("certify", *models, "--consensus", 2, "--images", data, "--n0", 10, "--n", 200,
                           "--batch", batch, "--patches", 4, "--resize", 32, "--out", out, "--quiet", capsys=capsys)
        assert code == 0, err
        tables.append(read(out))
    assert without_time(tables[0][0]) == without_time(tables[1][0])
    assert tables[0][1]["consensus"] == 2 and len(tables[0][1]["members"]) == 3
    # the copies that ran the third member are counted per row, and the report's forward passes use them
    rows = tables[0][0].to_pylist()
    assert all(0 <= r["escalated"] <= 10 + 200 for r in rows) and any(r["escalated"] for r in rows)
    code, stdout, _ = cli("report", tmp_path / "c7.parquet", "--format", "json", capsys=capsys)
    summary = json.loads(stdout)[0]
    expected = np.mean([((10 + 200) * 2 + r["escalated"]) * 4 for r in rows])  # K=2 always, member 3 when escalated; 4 views
    assert summary["forward_per_input"] == pytest.approx(expected) and "×3 models K=2" in summary["label"]
    # the API with the same members and consensus gives the same rows
    x = np.load(data)["x"][:, None]
    cert = srtool.Smooth(paths, consensus=2, patches=4, resize=32).certify(x, n0=10, n=200)
    assert cert.counts.tolist() == [r["counts"] for r in tables[0][0].to_pylist()]


def test_mismatched_members_and_bad_consensus_are_one_line(tmp_path, members, make_linear, capsys):
    paths, _, _, data = members
    other = make_linear(np.zeros((28 * 28, 3)), np.zeros(3), (1, 28, 28), name="three.onnx")
    out = tmp_path / "r.parquet"
    for args, needle in [(["--model", paths[0], "--model", other], "three.onnx"),
                         (["--model", paths[0], "--model", paths[1], "--consensus", 2], "--consensus"),
                         (["--model", paths[0], "--consensus", 1], "--consensus")]:
        code, _, err = cli("certify", *args, "--images", data, "--out", out, capsys=capsys)
        assert code == 2 and err.count("\n") == 1 and needle in err, err
        assert not out.exists()


def test_shipped_ensemble_runs_with_sequential_and_video_members(tmp_path, capsys):
    out = tmp_path / "shipped.parquet"
    code, _, err = cli("certify", "--ensemble", "--n0", 10, "--n", 300, "--max", 3, "--sequential",
                       "--radii", "0.25", "--out", out, "--quiet", capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert len(config["members"]) >= 3 and config["sigma"] == 0.25 and table.num_rows == 3
    assert cli("certify", "--ensemble", "--model", "m.onnx", capsys=capsys)[0] == 2
    # an ensemble of the video demo model with itself: same shape and classes, so it runs
    video = tmp_path / "video.parquet"
    demo = core.asset(core.DEFAULT_VIDEO_MODEL)
    code, _, err = cli("video", "--model", demo, "--model", demo, "--n0", 3, "--n", 20, "--max", 1,
                       "--out", video, "--quiet", capsys=capsys)
    assert code == 0, err
    assert len(read(video)[1]["members"]) == 2
