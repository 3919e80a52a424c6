"""The command line end to end: runs, results contract, resume after a real kill, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_helpers import read, srtool

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ["index", "label", "predict", "radius", "correct", "p_lower", "count", "n", "counts", "time_s"]
REQUIRED_CONFIG = ["sigma", "alpha", "n0", "n", "patches", "reduce", "noise_space", "radius_factor",
                   "seed", "model_sha256", "version", "device"]


@pytest.fixture
def fmnist_like(prototype_run):
    """A 10-class linear model on 1×28×28 and 12 labelled images it classifies fairly well."""
    return prototype_run(12)


def without_time(table):
    return table.drop(["time_s"]).to_pylist()


def test_certify_writes_the_results_contract(tmp_path, fmnist_like, capsys):
    model, data = fmnist_like
    out = tmp_path / "run.parquet"
    code, stdout, err = srtool("certify", "--model", model, "--images", data, "--n0", 20, "--n", 200,
                               "--alpha", 0.01, "--out", out, capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert all(name in table.column_names for name in CONTRACT)
    assert all(key in config for key in REQUIRED_CONFIG)
    assert config["sigma"] == 0.25 and config["n"] == 200 and config["radius_factor"] == 1.0
    assert table.column("index").to_pylist() == list(range(12))
    rows = table.to_pylist()
    assert all(sum(r["counts"]) == 200 and r["count"] == r["counts"][r["predict"]] for r in rows if r["predict"] >= 0)
    assert sum(r["correct"] for r in rows) >= 9  # the model is good on its own prototypes
    assert "acc" in stdout and not Path(f"{out}.parts").exists()


def test_same_seed_same_table_and_skip_max(tmp_path, fmnist_like, capsys):
    model, data = fmnist_like
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    common = ["--model", model, "--images", data, "--n0", 10, "--n", 100, "--quiet"]
    assert srtool("certify", *common, "--out", a, "--batch", 7, capsys=capsys)[0] == 0
    assert srtool("certify", *common, "--out", b, "--batch", 64, capsys=capsys)[0] == 0
    assert without_time(read(a)[0]) == without_time(read(b)[0])
    c = tmp_path / "c.parquet"
    assert srtool("certify", *common, "--out", c, "--skip", 3, "--max", 10, capsys=capsys)[0] == 0
    assert read(c)[0].column("index").to_pylist() == [0, 3, 6, 9]
    assert without_time(read(c)[0]) == [r for r in without_time(read(a)[0]) if r["index"] in (0, 3, 6, 9)]


def test_predict_and_smooth_reduce_runs(tmp_path, fmnist_like, capsys):
    model, data = fmnist_like
    out = tmp_path / "p.parquet"
    code, _, err = srtool("predict", "--model", model, "--images", data, "--n", 100, "--alpha", 0.05,
                          "--out", out, "--quiet", capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert config["command"] == "predict" and config["n0"] is None
    assert all(r["p_value"] is not None and r["radius"] is None for r in table.to_pylist())
    sr = tmp_path / "sr.parquet"
    code, _, err = srtool("certify", "--model", model, "--images", data, "--n0", 10, "--n", 100, "--resize", 32,
                          "--patches", 4, "--reduce", "max", "--noise-space", "patch", "--out", sr, "--quiet",
                          capsys=capsys)
    assert code == 0, err
    table, config = read(sr)
    assert config["patches"] == 4 and config["resize"] == [32, 32] and 0 < config["radius_factor"] < 0.5
    assert all(r["radius_factor"] == config["radius_factor"] for r in table.to_pylist())


def test_report_formats_and_plot(tmp_path, fmnist_like, capsys):
    model, data = fmnist_like
    runs = []
    for name, extra in [("rs", []), ("mean", ["--patches", 4, "--resize", 32])]:
        out = tmp_path / f"{name}.parquet"
        assert srtool("certify", "--model", model, "--images", data, "--n0", 10, "--n", 100, "--out", out,
                      "--quiet", *extra, capsys=capsys)[0] == 0
        runs.append(out)
    code, stdout, _ = srtool("report", *runs, "--format", "json", "--radii", "0.1,0.2", capsys=capsys)
    summaries = json.loads(stdout)
    assert code == 0 and [s["method"] for s in summaries] == ["RS", "Smooth-Mean k=4"]
    table = read(runs[0])[0].to_pylist()
    assert summaries[0]["certified"]["0.1"] == pytest.approx(np.mean([r["correct"] and r["radius"] >= 0.1 for r in table]))
    assert summaries[0]["acr"] == pytest.approx(np.mean([r["correct"] * r["radius"] for r in table]))
    code, stdout, _ = srtool("report", runs[0], "--format", "cohen-tsv", capsys=capsys)
    lines = stdout.strip().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"] and len(lines) == 13
    code, stdout, _ = srtool("report", *runs, "--format", "markdown", "--plot", tmp_path / "c.png", capsys=capsys)
    assert code == 0 and stdout.startswith("| run |") and (tmp_path / "c.png").stat().st_size > 10_000


def test_unreadable_image_is_a_row_not_a_crash(tmp_path, make_linear, capsys):
    model = make_linear(np.ones((16, 2)), np.array([0.0, 1.0]), (1, 4, 4), metadata={"srtool.sigma": 0.5})
    folder = tmp_path / "imgs"
    folder.mkdir()
    import cv2
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(folder / name), np.full((4, 4), 200, np.uint8))
    (folder / "b.png").write_bytes(b"garbage")
    out = tmp_path / "r.parquet"
    code, _, err = srtool("certify", "--model", model, "--images", folder, "--n0", 5, "--n", 20, "--out", out,
                          "--quiet", capsys=capsys)
    # every row is saved, and the exit code and one line say that an input failed, and where to look
    assert code == 2 and err.count("\n") == 1 and "1 of 3 inputs could not be evaluated" in err, err
    assert f"srtool show {out} --errors" in err
    rows = read(out)[0].to_pylist()
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert rows[1]["path"].endswith("b.png") and rows[1]["predict"] == -1


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_is_one_line_and_touches_nothing(tmp_path, fmnist_like, make_linear, capsys):
    model, data = fmnist_like
    out = tmp_path / "out" / "r.parquet"
    base = ["certify", "--model", model, "--images", data, "--n0", 5, "--n", 10, "--out", out, "--quiet"]

    def replace(option, value):
        args = list(base)
        if option in args:
            args[args.index(option) + 1] = value
            return args
        return args + [option, value]

    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello")
    wrong_rank = make_linear(np.ones((4, 2)), np.zeros(2), (4,), name="flat.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (replace("--model", tmp_path / "missing.onnx"), "model not found"),
        (replace("--model", not_onnx), "not an ONNX model"),
        (replace("--model", wrong_rank), "rank"),
        (replace("--images", empty), "no images"),
        (replace("--images", tmp_path / "nope"), "not found"),
        (replace("--sigma", 0), "--sigma"),
        (replace("--sigma", -1), "--sigma"),
        (replace("--alpha", 1.5), "--alpha"),
        (replace("--alpha", 0), "--alpha"),
        (replace("--n", 0), "--n "),
        (replace("--n0", 0), "--n0"),
        (replace("--batch", "many"), "--batch"),
        (base + ["--patch-size", 40], "does not fit the model"),
        (base + ["--image-size", 32], "--image-size 28"),
        (base + ["--image-size", 24, "--patches", 4], "larger than"),
    ]
    for args, needle in cases:
        code, _, err = srtool(*args, capsys=capsys)
        one_line_error(code, err, needle)
        assert not out.exists() and not Path(f"{out}.parts").exists(), args


def test_results_file_that_is_not_ours_or_differs(tmp_path, fmnist_like, capsys):
    model, data = fmnist_like
    foreign = tmp_path / "foreign.parquet"
    foreign.write_text("not parquet")
    base = ["certify", "--model", model, "--images", data, "--n0", 5, "--n", 20, "--quiet"]
    one_line_error(*srtool(*base, "--out", foreign, capsys=capsys)[::2], "not a Parquet file")
    one_line_error(*srtool(*base, "--out", foreign, "--overwrite", capsys=capsys)[::2], "not a Parquet file")
    assert foreign.read_text() == "not parquet"
    import pyarrow as pa
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), other)
    one_line_error(*srtool(*base, "--out", other, capsys=capsys)[::2], "not an srtool results file")
    ours = tmp_path / "ours.parquet"
    assert srtool(*base, "--out", ours, capsys=capsys)[0] == 0
    before = ours.read_bytes()
    one_line_error(*srtool(*base, "--out", ours, "--sigma", 0.5, capsys=capsys)[::2], "different configuration", "sigma")
    assert ours.read_bytes() == before
    assert srtool(*base, "--out", ours, "--sigma", 0.5, "--overwrite", capsys=capsys)[0] == 0
    assert read(ours)[1]["sigma"] == 0.5


def test_finished_run_is_extended_not_recomputed(tmp_path, fmnist_like, capsys):
    model, data = fmnist_like
    out, full = tmp_path / "r.parquet", tmp_path / "full.parquet"
    base = ["certify", "--model", model, "--images", data, "--n0", 5, "--n", 50, "--quiet"]
    assert srtool(*base, "--out", out, "--max", 5, capsys=capsys)[0] == 0
    first = read(out)[0].to_pylist()
    assert srtool(*base, "--out", out, capsys=capsys)[0] == 0
    assert read(out)[0].to_pylist()[:5] == first  # kept as they were, timings included
    assert srtool(*base, "--out", full, capsys=capsys)[0] == 0
    assert without_time(read(out)[0]) == without_time(read(full)[0])


def _spawn(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "srtool", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_part(parts: Path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(parts.glob("part-*.parquet")):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no part was written")


@pytest.mark.parametrize("how, extra", [(signal.SIGKILL, []), (signal.SIGINT, []),
                                        (signal.SIGKILL, ["--sequential", "--tolerance", "0.001"])])
def test_resume_after_a_real_kill_equals_an_uninterrupted_run(tmp_path, fmnist_like, how, extra):
    model, data = fmnist_like
    big = tmp_path / "big.npz"
    archive = np.load(data)
    np.savez(big, x=np.concatenate([archive["x"]] * 8), y=np.concatenate([archive["y"]] * 8))  # 96 inputs
    out, reference = tmp_path / "r.parquet", tmp_path / "ref.parquet"
    args = ["certify", "--model", model, "--images", big, "--n0", 50, "--n", 8000, "--batch", 1000,
            "--threads", 1, "--quiet", *extra]
    process = _spawn(args + ["--out", out])
    _wait_for_part(Path(f"{out}.parts"), process)
    process.send_signal(how)
    process.wait(timeout=60)
    assert not out.exists(), "the run finished before it was interrupted; make it longer"
    assert process.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL)
    from srtool.results import read_results
    done = read_results(out)[0].num_rows  # an interrupted run is readable as it stands
    assert 0 < done < 96
    resumed = subprocess.run([sys.executable, "-m", "srtool", *map(str, args), "--out", out], cwd=REPO,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert srtool(*args, "--out", reference) == (0, "", "")
    assert without_time(read(out)[0]) == without_time(read(reference)[0])
    assert read(out)[0].column("index").to_pylist() == list(range(96))


def test_shipped_default_model_and_sample(tmp_path, capsys):
    """The README's main job, with small n: shipped model, shipped sample, the summary printed."""
    out = tmp_path / "default.parquet"
    code, stdout, err = srtool("certify", "--n0", 20, "--n", 200, "--max", 40, "--out", out, capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert table.num_rows == 40 and config["sigma"] == 0.25 and config["classes"][0] == "T-shirt/top"
    assert np.mean(table.column("correct").to_pylist()) >= 0.6
    assert "ACR" in stdout
