"""Results people can read (issue 13): labelled-only accuracy, runs without labels, σ-scaled radii,
partial runs marked, runs told apart, and `srtool show` with class names."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from srtool.results import ResultsWriter
from cli_helpers import read, srtool

CLASSES = ["cat", "dog"]


@pytest.fixture
def photos(tmp_path, make_linear):
    """A 2-class model with class names and a flat folder of 4 photos, 2 of them labelled."""
    w = np.zeros((16, 2))
    w[:, 0] = 1.0
    model = make_linear(w, np.array([0.0, 8.0]), (1, 4, 4),
                        metadata={"srtool.sigma": 0.25, "srtool.classes": json.dumps(CLASSES)})
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, value in [("a.png", 250), ("b.png", 5), ("c.png", 250), ("d.png", 5)]:
        cv2.imwrite(str(folder / name), np.full((4, 4), value, np.uint8))
    (tmp_path / "labels.csv").write_text("a.png,0\nb.png,0\n")  # b is labelled wrong on purpose
    return model, folder, tmp_path / "labels.csv"


def test_accuracy_counts_labelled_inputs_only(tmp_path, photos, capsys):
    model, folder, labels = photos
    out = tmp_path / "r.parquet"
    code, stdout, err = srtool("certify", "--model", model, "--images", folder, "--labels", labels, "--n0", 20,
                               "--n", 200, "--out", out, capsys=capsys)
    assert code == 0, err
    # a small run says what each photo got, by class name
    assert "a.png" in stdout and "cat" in stdout and "dog" in stdout
    code, stdout, _ = srtool("report", out, "--format", "json", capsys=capsys)
    summary = json.loads(stdout)[0]
    assert summary["labelled"] == 2 and summary["unlabelled"] == 2 and summary["accuracy"] == 0.5
    assert summary["radii"] == [0.125, 0.25, 0.375, 0.5]  # 0.5σ … 2σ at σ = 0.25


def test_a_run_without_labels_shows_predictions_not_zero_accuracy(tmp_path, photos, capsys):
    model, folder, _ = photos
    out = tmp_path / "r.parquet"
    assert srtool("certify", "--model", model, "--images", folder, "--n0", 20, "--n", 200, "--out", out,
                  "--quiet", capsys=capsys)[0] == 0
    code, stdout, _ = srtool("report", out, "--format", "json", capsys=capsys)
    summary = json.loads(stdout)[0]
    assert summary["labelled"] == 0 and summary["accuracy"] != summary["accuracy"]  # NaN: no accuracy
    assert summary["mean_radius"] > 0
    code, stdout, _ = srtool("report", out, capsys=capsys)
    assert "0.0%" not in stdout.split("\n")[1].split()[3]  # the acc column says "-", not 0%
    code, stdout, _ = srtool("show", out, "--format", "csv", capsys=capsys)
    lines = stdout.strip().splitlines()
    assert lines[0] == "input,label,predict,radius,p_lower,error" and len(lines) == 5
    assert [line.split(",")[2] for line in lines[1:]] == ["cat", "dog", "cat", "dog"]
    code, stdout, _ = srtool("show", out, "--format", "json", capsys=capsys)
    assert [row["predict"] for row in json.loads(stdout)] == ["cat", "dog", "cat", "dog"]


def test_partial_runs_are_marked_and_same_named_runs_told_apart(tmp_path, photos, capsys):
    model, folder, _ = photos
    a, b = tmp_path / "first.parquet", tmp_path / "second.parquet"
    for out in (a, b):
        assert srtool("certify", "--model", model, "--images", folder, "--n0", 10, "--n", 50, "--out", out,
                      "--quiet", capsys=capsys)[0] == 0
    table, config = read(a)
    partial = tmp_path / "partial.parquet"
    writer = ResultsWriter(partial, config)
    for row in table.to_pylist()[:2]:
        writer.add(row)
    writer.flush()
    writer.close()  # interrupted: parts only
    code, stdout, _ = srtool("report", a, b, partial, "--format", "json", capsys=capsys)
    summaries = json.loads(stdout)
    assert [s["partial"] for s in summaries] == [False, False, True]
    assert len({s["label"] for s in summaries}) == 3 and "[first]" in summaries[0]["label"]
    code, stdout, err = srtool("show", partial, capsys=capsys)
    assert code == 0 and "partial run" in err and "2 inputs so far" in err


def test_show_errors_lists_only_the_failed_inputs(tmp_path, photos, capsys):
    model, folder, _ = photos
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "r.parquet"
    code, _, err = srtool("certify", "--model", model, "--images", folder, "--n0", 10, "--n", 50, "--out", out,
                          "--quiet", capsys=capsys)
    assert code == 2 and "1 of 5 inputs could not be evaluated" in err
    code, stdout, _ = srtool("show", out, "--errors", "--format", "csv", capsys=capsys)
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and "broken.png" in lines[1] and "unreadable" in lines[1]
