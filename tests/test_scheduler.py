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
import onnx
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from cli_helpers import read, srtool
from srtool import engine, noise
from srtool.engine import Request, Scheduler, Source, VoteCounter
from srtool.errors import UsageError
from srtool.graph import sampling_graph
from srtool.model import load_model
from srtool.plan import Plan

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402

# (batch, sampling loops, inputs in flight): a batch that splits every input over calls and puts
# several inputs in most calls; one large enough for a whole run in a few calls; one input at a time.
LAYOUTS = [(37, 2, 5), (5000, 1, 256), (64, 2, 1)]
VIDEO_LAYOUTS = [(7, 2, 5), (300, 1, 256)]  # a video copy is 3×48×32×32 floats: smaller calls


def _table(path):
    table, config = read(path)
    return table.drop(list(make_golden.VOLATILE_COLUMNS)), config


@pytest.mark.parametrize("case", list(make_golden.CASES))
def test_golden_tables_at_any_batch_loops_and_inputs_in_flight(case, tmp_path, monkeypatch):
    expected, _ = _table(GOLDEN / f"{case}.parquet")
    for batch, loops, in_flight in VIDEO_LAYOUTS if case == "video" else LAYOUTS:
        if case == "sequential_grid" and batch == 64:
            continue  # one input at a time is the golden run itself; keep the file quick
        monkeypatch.setattr(engine, "MAX_IN_FLIGHT", in_flight)
        out = tmp_path / f"{case}-{batch}.parquet"
        code, _, err = srtool(*make_golden.command(case, out, batch, loops))
        assert code == 0, err
        got, config = _table(out)
        assert got.equals(expected), (case, batch, loops, in_flight)
        copies = sum(n + (config["n0"] or 0) for n in got.column("n").to_pylist())
        assert config["copies"] == copies and config["calls"] >= copies / batch
        if in_flight > 1 and batch < 100:  # several inputs share calls: every call but the last few is full
            assert config["calls"] <= copies // batch + in_flight + 2, config["calls"]
