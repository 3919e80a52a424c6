"""Sequential CERTIFY through the pipeline (issue 12): sound at the grid's thresholds on the exact
linear reference, a prefix of the fixed run's copies, the same table at any batch size or number of
sampling loops, and the fixed run's decision when the budget allows a single checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, norm

from srtool import stats
from srtool.data import Item
from srtool.engine import VoteCounter
from srtool.graph import sampling_graph
from srtool.model import load_model
from srtool.pipeline import Settings, evaluate
from srtool.plan import Plan
from cli_helpers import read, srtool

ALPHA = 0.05
SIGMA = 0.5
SIDE = 6
TRIALS = 150


def without(table, *columns):
    return table.drop(["time_s", *columns]).to_pylist()


def linear_two_class(make_linear):
    """f(x) = class 0 where w·x + b > 0, else 1: its smoothed classifier is exact (DESIGN §3)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal(SIDE * SIDE)
    bias = 0.1
    path = make_linear(np.stack([w / 2, -w / 2], axis=1), np.array([bias / 2, -bias / 2]), (1, SIDE, SIDE))
    return path, w, bias


def place(w, bias, distance, rng):
    """An input at signed distance `distance` from the plane w·x + b = 0 (positive: class 0)."""
    unit = w / np.linalg.norm(w)
    base = rng.uniform(0.3, 0.7, SIDE * SIDE)
    base -= unit * (w @ base + bias) / np.linalg.norm(w)
    return (base + distance * unit).reshape(1, SIDE, SIDE).astype(np.float32)


@pytest.mark.parametrize("radii, method", [((0.25, 0.5, 0.75), "union"), ((0.25, 0.5), "staged"), (None, "union")])
def test_inputs_on_the_thresholds_are_not_overclaimed(make_linear, radii, method):
    """p_A exactly Φ(r/σ) for a grid radius r (the hardest case for a stopping rule): a certificate
    above the true distance may happen in at most alpha's share of the trials (binomial slack)."""
    path, w, bias = linear_two_class(make_linear)
    plan = Plan((1, SIDE, SIDE), (SIDE, SIDE), (SIDE, SIDE))
    counter = VoteCounter(sampling_graph(load_model(path), plan), plan, 2, batch=500, device="cpu", threads=1)
    settings = Settings("certify", SIGMA, ALPHA, 20, 3000, seed=11, sequential=True, radii=radii,
                        sequential_method=method)
    rng = np.random.default_rng(3)
    grid = radii or (0.25, 0.5, 0.75)
    false = certified = 0
    copies = []
    for trial in range(TRIALS):
        truth = grid[trial % len(grid)]
        x = place(w, bias, truth, rng)
        assert norm.cdf(truth / SIGMA) == pytest.approx(norm.cdf((w @ x.ravel() + bias) / np.linalg.norm(w) / SIGMA), abs=1e-5)
        row = evaluate(Item(trial, 0, x), plan, counter, settings)
        copies.append(row["n"])
        if row["predict"] != stats.ABSTAIN:
            certified += 1
            false += row["predict"] != 0 or row["radius"] > truth * (1 + 1e-5)
    counter.close()
    assert certified >= TRIALS // 3, "too few certificates for the test to mean anything"
    assert false <= binom.ppf(1 - 1e-6, TRIALS, ALPHA)
    assert min(copies) < 3000 or radii is None  # the grid lets some inputs stop early


def test_fixed_run_decision_when_the_budget_allows_one_checkpoint(tmp_path, prototype_run, capsys):
    model, data = prototype_run(8)
    fixed, sequential = tmp_path / "fixed.parquet", tmp_path / "seq.parquet"
    common = ["certify", "--model", model, "--images", data, "--n0", 10, "--n", 120, "--quiet"]
    assert srtool(*common, "--out", fixed, capsys=capsys)[0] == 0
    assert srtool(*common, "--sequential", "--out", sequential, capsys=capsys)[0] == 0
    table, config = read(sequential)
    assert config["sequential"] == {"budget": 120, "radii": None, "tolerance": 0.02, "method": "union"}
    assert set(table.column("stop").to_pylist()) <= {"budget", "tolerance", "abstain"}
    assert without(table, "stop") == without(read(fixed)[0])


def test_sequential_table_is_a_prefix_of_the_fixed_stream_at_any_batch(tmp_path, prototype_run, capsys):
    model, data = prototype_run(10)
    common = ["certify", "--model", model, "--images", data, "--n0", 10, "--n", 4000, "--sequential",
              "--radii", "0.1,0.3,0.6", "--quiet"]
    tables = []
    for batch, threads in ((7, 1), (64, 2), (1000, 1)):
        out = tmp_path / f"b{batch}.parquet"
        assert srtool(*common, "--batch", batch, "--threads", threads, "--out", out, capsys=capsys)[0] == 0
        tables.append(without(read(out)[0]))
    assert tables[0] == tables[1] == tables[2]
    rows = tables[0]
    assert any(r["n"] < 4000 for r in rows) and all(r["n"] <= 4000 for r in rows)
    assert all(sum(r["counts"]) + r["invalid"] == r["n"] for r in rows)
    # the copies drawn are the fixed run's first copies: a fixed run of that many gives the same counts
    first = rows[0]
    out = tmp_path / "fixed.parquet"
    assert srtool("certify", "--model", model, "--images", data, "--n0", 10, "--n", first["n"], "--max", 1,
                  "--out", out, "--quiet", capsys=capsys)[0] == 0
    assert read(out)[0].to_pylist()[0]["counts"] == first["counts"]


def test_sequential_video_and_python_api(tmp_path, capsys):
    import srtool as api
    from srtool import core

    out = tmp_path / "v.parquet"
    assert srtool("video", "--n0", 3, "--n", 300, "--max", 2, "--sequential", "--radii", "0.1",
                  "--out", out, "--quiet", capsys=capsys)[0] == 0
    rows = read(out)[0].to_pylist()
    assert all(r["stop"] in ("certified", "futile", "budget") for r in rows)
    x = np.load(core.asset(core.DEFAULT_IMAGES))["x"][:3, None]
    cert = api.Smooth(api.shipped(), sigma=0.25).certify(x, n0=50, n=20_000, sequential=True, radii=[0.25, 0.5])
    assert cert.n.max() <= 20_000 and cert.n.min() < 20_000 and set(cert.stop) <= {"certified", "futile", "budget"}


def test_sequential_options_are_checked(tmp_path, prototype_run, capsys):
    model, data = prototype_run(2)
    base = ["--model", model, "--images", data, "--out", tmp_path / "r.parquet"]
    for args, message in [(["certify", "--radii", "0.5"], "apply to --sequential runs"),
                          (["predict", "--sequential"], "No such option"),
                          (["certify", "--sequential", "--radii", "-1"], "--radii must be"),
                          (["certify", "--sequential", "--tolerance", "0"], "--tolerance must be positive")]:
        code, _, err = srtool(*args, *base, capsys=capsys)
        assert code == 2 and message in err, err
