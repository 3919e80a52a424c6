"""Comparing runs as a paper must (issue 32 §4): intervals, the paired McNemar test and bootstrap,
the envelope over σ, and Cohen/DDS certify logs read beside srtool's own runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from srtool.api import read_results
from srtool.compare import bootstrap_interval, clopper_pearson, mcnemar_exact
from cli_helpers import srtool

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def write_log(path, rows):
    """rows: (label, predict, radius); correct is predict == label, as Cohen's certify.py writes it."""
    lines = [f"{i}\t{label}\t{predict}\t{radius:.3}\t{int(predict == label)}\t0:00:01.250000"
             for i, (label, predict, radius) in enumerate(rows)]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def test_clopper_pearson_matches_tables():
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187086, abs=1e-6) and high == pytest.approx(0.812914, abs=1e-6)
    # the ends have closed forms: (α/2)^(1/n) and 1 − (α/2)^(1/n)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** 0.1), 1.0)


def test_mcnemar_exact_is_the_binomial_tail():
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)  # P[X ≤ 1], X ~ Bin(10, ½), doubled
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 2 ** 5)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_bootstrap_is_seeded_and_resamples_pairs():
    d = np.array([0.0, 0.5, -0.25, 1.0, 0.0, 0.3])
    low, high = bootstrap_interval(d, seed=7, resamples=500)
    # reference: resample the same positions one resample at a time from the same seeded stream
    picks = np.random.default_rng(7).integers(0, len(d), size=(500, len(d)))
    means = sorted(d[row].mean() for row in picks)
    assert low == pytest.approx(np.quantile(means, 0.025)) and high == pytest.approx(np.quantile(means, 0.975))
    assert bootstrap_interval(d, seed=7, resamples=500) == (low, high)
    assert bootstrap_interval(np.full(9, 0.2), seed=1) == (pytest.approx(0.2), pytest.approx(0.2))


@pytest.fixture
def logs(tmp_path):
    # 10 inputs; A certifies inputs 0-5 at radius 0.6, B certifies 0-3 at 0.6 and 4-9 at 0.3
    a = [(1, 1, 0.6)] * 6 + [(1, 0, 0.2)] * 2 + [(1, -1, 0.0)] * 2
    b = [(1, 1, 0.6)] * 4 + [(1, 1, 0.3)] * 6
    return write_log(tmp_path / "a.tsv", a), write_log(tmp_path / "b.tsv", b)


def test_cohen_logs_report_with_intervals(logs, capsys):
    code, stdout, err = srtool("report", *logs, "--radii", "0.25,0.5", "--format", "json", capsys=capsys)
    assert code == 0, err
    a, b = json.loads(stdout)
    assert a["certified"] == {"0.25": 0.6, "0.5": 0.6} and b["certified"] == {"0.25": 1.0, "0.5": 0.4}
    assert a["acr"] == pytest.approx(0.36) and a["abstention"] == pytest.approx(0.2)
    assert a["certified_interval"]["0.25"] == pytest.approx(list(clopper_pearson(6, 10)))
    code, stdout, err = srtool("report", *logs, "--radii", "0.25,0.5", "--ci", capsys=capsys)
    assert code == 0, err
    assert "a (certify log)" in stdout
    low, high = clopper_pearson(6, 10)
    assert f"60.0% [{100 * low:.1f}, {100 * high:.1f}]" in stdout


def test_paired_comparison_cli_and_python(logs, capsys):
    c = read_results(logs[0]).compare(read_results(logs[1]), radii=[0.25, 0.5], seed=3)
    at25, at50 = c["certified"]
    # @0.25: B adds inputs 6-9 (only_b 4, only_a 0); @0.5: A keeps inputs 4-5 that B lost
    assert (at25["only_a"], at25["only_b"], at25["difference"]) == (0, 4, pytest.approx(0.4))
    assert at25["p"] == pytest.approx(2 / 2 ** 4) and at50["p"] == pytest.approx(2 / 2 ** 2)
    assert (at50["only_a"], at50["only_b"]) == (2, 0)
    # ACR: A 6·0.6 / 10 = 0.36; B (4·0.6 + 6·0.3) / 10 = 0.42
    assert c["acr_difference"] == pytest.approx(0.06) and c["pairs"] == 10
    diff = np.array([0.0] * 4 + [-0.3] * 2 + [0.3] * 4)
    assert c["acr_interval"] == pytest.approx(bootstrap_interval(diff, seed=3))
    code, stdout, err = srtool("report", *logs, "--radii", "0.25,0.5", "--compare", "--seed", 3,
                               "--envelope", capsys=capsys)
    assert code == 0, err
    assert "+40.0 (0.125)" in stdout and "-20.0 (0.5)" in stdout and "+0.060" in stdout
    assert "100.0%" in stdout  # the envelope at 0.25 is B's


def test_paired_comparison_refuses_other_inputs(tmp_path, logs, capsys):
    other = write_log(tmp_path / "c.tsv", [(0, 0, 0.6)] * 10)  # same indices, other labels
    code, _, err = srtool("report", logs[0], other, "--compare", capsys=capsys)
    assert code == 2 and "same labels" in err and "Traceback" not in err
    fewer = write_log(tmp_path / "d.tsv", [(1, 1, 0.6)] * 9)
    code, _, err = srtool("report", logs[0], fewer, "--compare", capsys=capsys)
    assert code == 2 and "same inputs" in err


def test_cohen_log_plotted_with_envelope(tmp_path, logs, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    code, _, err = srtool("report", *logs, "--envelope", "--plot", out, capsys=capsys)
    assert code == 0, err
    assert out.stat().st_size > 1000


def test_damaged_cohen_log_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text(HEADER + "0\t1\tx\t0.5\t1\t0:00:01\n")
    code, _, err = srtool("report", bad, capsys=capsys)
    assert code == 2 and "bad.tsv:2" in err and "Traceback" not in err
