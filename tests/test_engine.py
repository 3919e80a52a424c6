"""Engine paths that are not the CPU default: IO binding, in-graph noise wiring, `srtool bench`."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from srtool import noise
from srtool.engine import VoteCounter
from srtool.errors import UsageError
from srtool.graph import CLEAN, NOISY, POINT_OF, sampling_graph, with_device_noise
from srtool.model import load_model
from srtool.plan import Plan


@pytest.fixture
def counters(make_linear):
    rng = np.random.default_rng(1)
    model = load_model(make_linear(rng.standard_normal((36, 4)) * 0.3, np.zeros(4), (1, 6, 6)))
    plan = Plan((1, 7, 7), (6, 6), (8, 8), patches=4, sampling="random")
    graph = sampling_graph(model, plan)
    plain = VoteCounter(graph, plan, 4, 48, "cpu")
    bound = VoteCounter(graph, plan, 4, 48, "cpu", io_binding=True)
    yield model, plan, plain, bound
    plain.close()
    bound.close()


def test_io_binding_path_gives_the_same_votes(counters):
    """The CUDA path's IO binding logic (bound buffers per batch shape, votes copied out) on the CPU."""
    _, plan, plain, bound = counters
    point = np.random.default_rng(2).random((1, 7, 7), dtype=np.float32)
    for index in range(3):  # per-input random offsets are fed into the bound session each time
        offsets = plan.offsets(0, index)
        a = plain.count(point, offsets, 130, 0.4, noise.Gaussian(0, index, noise.ESTIMATION))
        b = bound.count(point, offsets, 130, 0.4, noise.Gaussian(0, index, noise.ESTIMATION))
        assert np.array_equal(a, b) and a.sum() == 130 and (a > 0).sum() > 1
    # one binding per (sampling loop, batch shape), bound once and reused across inputs: the full
    # batch, and at most one other size (130 = 48 + 48 + 34) per loop
    assert {shape[0] for _, shape in bound._bindings} == {48, 34}
    assert len(bound._bindings) <= 2 * bound.loops


def test_io_binding_counts_escalated_copies_of_a_consensus_ensemble(make_linear):
    """The consensus graph's second output (copies escalated to the whole ensemble) is bound too: the
    bound path reports the plain path's count, not nothing."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((36, 4)) * 0.3  # members near one model: they mostly, not always, agree
    models = [load_model(make_linear(base + rng.normal(0, 0.1, base.shape), np.zeros(4), (1, 6, 6),
                                     name=f"m{i}.onnx")) for i in range(3)]
    plan = Plan((1, 6, 6), (6, 6), (6, 6), patches=1)
    graph = sampling_graph(models, plan, consensus=2)
    point = rng.random((1, 6, 6), dtype=np.float32)
    counts, escalated = [], []
    for binding in (False, True):
        counter = VoteCounter(graph, plan, 4, 32, "cpu", io_binding=binding)
        counts.append(counter.count(point, plan.offsets(0, 0), 100, 0.5, noise.Gaussian(0, 0, noise.ESTIMATION)))
        escalated.append(counter.escalated)
        counter.close()
    assert np.array_equal(*counts) and escalated[0] == escalated[1] and 0 < escalated[0] < 100


def test_device_noise_graph_wiring(counters):
    """The in-graph noise adds N(0, σ²) to each copy's clean point (a call carries copies of several
    inputs). Checked on the CPU kernel for wiring only; certification with it on the CPU is refused
    (next test)."""
    model, plan, _, _ = counters
    graph = sampling_graph(model, plan)
    graph.graph.output.append(graph.graph.input[0])  # also expose the noisy batch
    wired = with_device_noise(graph, plan.noise_shape, sigma=0.5, seed=3)
    session = ort.InferenceSession(wired.SerializeToString(), providers=["CPUExecutionProvider"])
    points = np.stack([np.full(plan.noise_shape, value, np.float32) for value in (0.25, 0.75)])
    point_of = np.repeat([0, 1], [300, 200])
    votes, noisy = session.run(None, {CLEAN: points, POINT_OF: point_of,
                                      "srtool/offsets": np.repeat(plan.dense_offsets[None], 500, axis=0)})
    assert votes.shape == (500,) and noisy.shape == (500, 1, 7, 7)
    for which, value in enumerate((0.25, 0.75)):
        copies = noisy[point_of == which]
        assert abs(copies.mean() - value) < 0.02 and abs(copies.std() - 0.5) < 0.02
    assert NOISY not in [i.name for i in wired.graph.input]


def test_device_noise_is_refused_on_the_cpu(counters):
    model, plan, _, _ = counters
    with pytest.raises(UsageError, match="--noise device needs --device cuda"):
        VoteCounter(sampling_graph(model, plan), plan, 4, 16, "cpu", device_noise_seed=0, sigma=0.5)


def test_bench_json_schema(make_linear, capsys):
    from srtool.cli import main

    model = make_linear(np.ones((16, 3)), np.zeros(3), (1, 4, 4))
    try:
        main(["bench", "--model", str(model), "--seconds", "0.05", "--batch", "32", "--patches", "4",
              "--resize", "6", "--json"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    expected = {"model": str, "provider": str, "batch": int, "views_per_copy": int, "noise": str,
                "threads": int, "sampling_loops": int, "rounds": int,
                "raw_forward_per_s": float, "pipeline_copies_per_s": float,
                "pipeline_forward_per_s": float, "ratio": float, "host_noise_copies_per_s": float,
                "projected_s_per_input_n100k": float, "raw_best_batch": int, "sweep": dict, "seconds": float}
    assert set(result) == set(expected)
    assert all(isinstance(result[key], kind) for key, kind in expected.items())
    assert result["provider"] == "cpu" and result["views_per_copy"] == 4 and result["batch"] == 32
    assert result["pipeline_forward_per_s"] == pytest.approx(4 * result["pipeline_copies_per_s"])
    assert result["ratio"] > 0 and result["sampling_loops"] >= 1
    # the pipeline at the given batch only; the bare model over a sweep, its best beside
    assert list(result["sweep"]["pipeline"]) == ["32"] and len(result["sweep"]["bare model"]) > 1
    best = max(result["sweep"]["bare model"], key=result["sweep"]["bare model"].get)
    assert result["raw_best_batch"] == int(best) and result["raw_forward_per_s"] == result["sweep"]["bare model"][best]
    assert result["ratio"] == pytest.approx(result["pipeline_forward_per_s"] / result["raw_forward_per_s"])


def test_bench_keeps_to_its_budget_and_prints_small_rates_readably():
    """A sweep skips the batches whose one call would overrun its share, so a slow model is measured at
    small batches only; rates below one copy per second keep their digits."""
    from srtool.bench import Sweep, readable

    sweep = Sweep("slow", [1, 4, 16, 64], seconds=1.0, rounds=1)  # a share of 0.25 s per batch
    measured = []

    def measure(batch, share, calls):
        measured.append((batch, calls))
        return 2.0  # copies per second: a call of 4 takes 2 s
    steps = []
    sweep.round(measure, steps.append)
    assert measured == [(1, 1)] and len(steps) == 4 and "skipped" in steps[-1]
    assert sweep.best() == (2.0, 1)
    assert readable(0.163) == "0.163" and readable(45_812.4) == "45,812" and readable(7.25) == "7.25"


def test_bench_measures_a_huge_pair_one_part_after_the_other(monkeypatch, capsys):
    """Past ONE_LAYOUT_BYTES (an ADM UNet) the bare parts go first, in one round, and their sessions
    are let go before the composed graph's session is made."""
    from srtool import bench
    from srtool.cli import main

    monkeypatch.setattr(bench, "ONE_LAYOUT_BYTES", 0)
    made = []
    original = bench.VoteCounter.__init__

    def counting(self, *args, **kwargs):
        made.append([len(b.layouts) for b in live])
        original(self, *args, **kwargs)
    live = []
    bare_init = bench.BareModel.__init__

    def keep(self, *args, **kwargs):
        bare_init(self, *args, **kwargs)
        live.append(self)
    monkeypatch.setattr(bench.VoteCounter, "__init__", counting)
    monkeypatch.setattr(bench.BareModel, "__init__", keep)
    try:
        main(["bench", "--diffusion", "--seconds", "0.3", "--threads", "1", "--json"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["rounds"] == 1 and result["denoiser_copies_per_s"] > 0 and result["pipeline_copies_per_s"] > 0
    assert made == [[0, 0]]  # the composed graph's session came after both bare models had let theirs go
