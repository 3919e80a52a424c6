"""The scheduler of copies (engine.Scheduler): many inputs per ONNX Runtime call, the same table.

tests/golden/ holds tables made by the engine before the scheduler (one input per call), from
tests/golden/make_golden.py. Every case must come out equal in every column but time_s, whatever
the batch size, the number of sampling loops and the number of inputs in flight.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import onnx
import pytest
from onnx import TensorProto, helper

from cli_helpers import read, srtool
from srtool import engine, noise
from srtool.engine import Request, Scheduler, Source, VoteCounter
from srtool.graph import sampling_graph
from srtool.model import load_model
from srtool.plan import Plan

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402

# (batch, sampling loops, inputs in flight): a batch that splits every input over calls and puts
# several inputs in most calls; one large enough for a whole run in a few calls. RS also runs one
# input at a time at the golden batch (64), with two loops.
LAYOUTS = [(37, 2, 5), (5000, 1, 256)]
ONE_AT_A_TIME = (64, 2, 1)
VIDEO_LAYOUTS = [(16, 2, 5), (60, 1, 256)]  # a video copy is 147 K floats: smaller calls


def layouts(case: str) -> list[tuple[int, int, int]]:
    return VIDEO_LAYOUTS if case == "video" else LAYOUTS + [ONE_AT_A_TIME] * (case == "rs")


def _table(path):
    """The table without its volatile columns, its input paths relative to the shipped assets (the
    golden files were written in another checkout)."""
    table, config = read(path)
    if "path" in table.column_names:
        shipped = [p.split("srtool/assets/")[-1] if p else p for p in table.column("path").to_pylist()]
        table = table.set_column(table.column_names.index("path"), "path", pa.array(shipped, pa.string()))
    return table.drop(list(make_golden.VOLATILE_COLUMNS)), config


@pytest.mark.parametrize("case", list(make_golden.CASES))
def test_golden_tables_at_any_batch_loops_and_inputs_in_flight(case, tmp_path, monkeypatch):
    expected, _ = _table(GOLDEN / f"{case}.parquet")
    for batch, loops, in_flight in layouts(case):
        monkeypatch.setattr(engine, "MAX_IN_FLIGHT", in_flight)
        out = tmp_path / f"{case}-{batch}.parquet"
        code, _, err = srtool(*make_golden.command(case, out, batch, loops))
        assert code == 0, err
        got, config = _table(out)
        assert got.equals(expected), (case, batch, loops, in_flight)
        copies = sum(n + (config["n0"] or 0) for n in got.column("n").to_pylist())
        assert config["copies"] == copies and config["calls"] >= copies / batch
        if in_flight > 1 and batch < 100:  # several inputs share calls: nearly every call is full
            assert config["calls"] <= copies / (0.9 * batch) + in_flight, config["calls"]


@pytest.fixture
def linear_counter(make_linear):
    def make(batch: int, loops: int, in_flight: int, plan=None):
        rng = np.random.default_rng(0)
        model = load_model(make_linear(rng.standard_normal((36, 3)), np.zeros(3), (1, 6, 6)))
        plan = plan or Plan((1, 6, 6), (6, 6), (6, 6))
        return plan, VoteCounter(sampling_graph(model, plan), plan, 3, batch, "cpu", threads=loops,
                                 in_flight=in_flight)
    return make


def test_segments_cover_every_requested_copy_once_in_full_calls(linear_counter):
    """Tasks asking for rounds of odd sizes: every copy of every request goes to exactly one call,
    calls never exceed the batch, at most `in_flight` inputs are open, a call is less than full only
    when no other runs, and each request's counts equal a count of that request alone."""
    plan, counter = linear_counter(batch=50, loops=2, in_flight=4)
    calls, open_inputs = [], set()
    run_call = counter.run_call

    def recording(segments, sigma, loop):
        calls.append([(id(r.source), r.gaussian, first, copies) for r, first, copies in segments])
        return run_call(segments, sigma, loop)

    counter.run_call = recording
    rng = np.random.default_rng(1)
    points = [rng.random((1, 6, 6), dtype=np.float32) for _ in range(9)]
    rounds = [[7, 120, 3], [50], [1, 1, 1, 99], [64, 64], [13], [200, 7], [3, 3], [77], [49, 2]]
    got = {}

    def task(i):
        source = Source(points[i], plan.dense_offsets, plan)
        open_inputs.add(i)
        assert len(open_inputs) <= 4
        gaussian, first = noise.Gaussian(0, i, noise.ESTIMATION), 0
        for size in rounds[i]:
            got[i, first] = (yield Request(source, gaussian, first, size)).copy()
            first += size
        open_inputs.discard(i)
        return i

    finished = list(Scheduler(counter, 0.5).results(task(i) for i in range(9)))
    assert sorted(finished) == list(range(9))
    covered: dict = {}
    for call in calls:
        assert 1 <= sum(copies for *_, copies in call) <= 50
        for source, gaussian, first, copies in call:
            covered.setdefault(gaussian, []).append((first, copies))
    assert counter.calls == len(calls) and counter.copies == sum(map(sum, rounds))
    assert sum(copies for *_, copies in calls[0]) == 50 and len(calls) <= sum(map(sum, rounds)) // 50 + 9
    for spans in covered.values():
        spans.sort()
        assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))  # no gap, no overlap
    counter.run_call = run_call
    for (i, first), counts in got.items():
        size = rounds[i][[sum(rounds[i][:k]) for k in range(len(rounds[i]))].index(first)]
        alone = counter.count(points[i], plan.dense_offsets, size, 0.5, noise.Gaussian(0, i, noise.ESTIMATION),
                              first_copy=first)
        assert np.array_equal(counts, alone) and counts.sum() == size
    counter.close()


def _extra_rows_model(path) -> str:
    """Logits of a 2-class linear model, plus one extra row whenever the batch is 5 (the
    load probe's batches are 3, 2, 1 and 64)."""
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["logits"]),
             helper.make_node("Shape", ["logits"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "one"], ["rows"]),
             helper.make_node("Equal", ["rows", "five"], ["multiple"]),
             helper.make_node("Cast", ["multiple"], ["extra"], to=TensorProto.INT64),
             helper.make_node("Slice", ["logits", "zero", "extra"], ["more"]),
             helper.make_node("Concat", ["logits", "more"], ["out"], axis=0)]
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [16, 2], np.ones(32, np.float32) / 16),
             helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("five", TensorProto.INT64, [1], [5])]
    graph = helper.make_graph(nodes, "extra", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return str(path)


def test_a_model_returning_extra_rows_on_some_calls_stops_the_run_in_one_line(tmp_path, capsys):
    """The load probe passes; a later call of 5 copies gets one vote too many.
    Counts larger than n (a NaN radius) must never reach the table: one line, exit 2."""
    model = _extra_rows_model(tmp_path / "extra.onnx")
    images = tmp_path / "x.npz"
    np.savez(images, x=np.random.default_rng(0).integers(0, 256, (3, 1, 4, 4), dtype=np.uint8), y=np.zeros(3, np.int64))
    out = tmp_path / "run.parquet"
    code, _, err = srtool("certify", "--model", model, "--images", images, "--sigma", "0.5", "--n0", "10",
                          "--n", "15", "--batch", "10", "--out", out, "--quiet", capsys=capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "the model returned 6 votes for a call of 5 noisy copies" in err, err
    assert not out.exists()


def test_calls_and_copies_are_summed_over_an_extension_and_reported(tmp_path, capsys):
    out = tmp_path / "run.parquet"
    base = ["certify", "--n0", "20", "--n", "60", "--batch", "50", "--threads", "1", "--out", out, "--quiet"]
    assert srtool(*base, "--max", "3", capsys=capsys)[0] == 0
    first = read(out)[1]
    assert first["copies"] == 3 * 80 and first["calls"] == 5  # 240 copies in calls of 50
    assert srtool(*base, "--max", "5", capsys=capsys)[0] == 0
    table, config = read(out)
    assert table.num_rows == 5 and config["copies"] == 5 * 80 and config["calls"] == 5 + 4
    code, out_text, _ = srtool("report", out, capsys=capsys)
    assert code == 0 and "copies/call" in out_text and "44 (89%)" in out_text, out_text
    # srtool bench --run projects that run's time per input at the copies per call it ran with
    code, text, err = srtool("bench", "--run", out, "--batch", "100", "--seconds", "0.05", "--threads", "1", "--json",
                             capsys=capsys)
    assert code == 0, err
    run = json.loads(text)["run"]
    assert run["copies_per_call"] == pytest.approx(400 / 9) and run["copies_per_input"] == 80
    assert run["projected_s_per_input"] == pytest.approx(80 / run["pipeline_copies_per_s"])


def test_videos_of_two_lengths_share_calls_by_length_only(tmp_path):
    """Videos have one plan (frame indices) per length: calls mix videos of one length, never two,
    and every row equals that video evaluated on its own."""
    from test_video import mlp_model

    from srtool import video as vid
    from srtool.data import Item
    from srtool.pipeline import Settings, evaluate, evaluate_all

    model = load_model(mlp_model(tmp_path / "mlp.onnx"))
    layout = vid.VideoLayout((3, 8, 8), chunk=4, subvideo=8, stride=4)
    counter = VoteCounter(vid.sampling_graph(model, layout), layout.probe, 3, batch=24, device="cpu", threads=2)
    rng = np.random.default_rng(3)
    items = [Item(i, 0, rng.random((3, frames, 8, 8), dtype=np.float32))
             for i, frames in enumerate([12, 16, 12, 12, 16, 16, 12])]
    settings = Settings(mode="certify", sigma=0.5, alpha=0.01, n0=7, n=30, seed=2)
    lengths, inputs, run_call = [], [], counter.run_call

    def recording(segments, sigma, loop):
        lengths.append({request.source.point.shape[1] for request, _, _ in segments})
        inputs.append(len({id(request.source) for request, _, _ in segments}))
        return run_call(segments, sigma, loop)

    counter.run_call = recording
    rows = sorted(evaluate_all(items, layout, counter, settings), key=lambda row: row["index"])
    counter.run_call = run_call
    assert all(len(call) == 1 for call in lengths)
    # one input per call would take 3 calls each (7; 24 + 6): videos of one length shared calls
    assert max(inputs) > 1 and len(lengths) < 3 * len(items)
    for item, row in zip(items, rows):
        alone = evaluate(item, layout, counter, settings)
        assert {k: v for k, v in row.items() if k != "time_s"} == {k: v for k, v in alone.items() if k != "time_s"}
    counter.close()
