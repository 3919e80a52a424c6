"""Ensembles, K-consensus and non-finite logits in the sampling graph, against direct computations.

The graphs run on ONNX Runtime exactly as the engine feeds them (NOISY and OFFSETS by name). The
references cut the views with numpy/OpenCV, run each bare member on them (or multiply by its
weights) and reduce in numpy.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from srtool import noise, video as vid
from srtool.engine import VoteCounter
from srtool.errors import UsageError
from srtool.graph import ESCALATED, INVALID_VOTE, NOISY, OFFSETS, VOTES, check_members, sampling_graph
from srtool.model import load_model
from srtool.plan import Plan

from conftest import linear_onnx

OPSET = 17


def _session(model_bytes: bytes):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_graph(graph: onnx.ModelProto, noisy: np.ndarray, offsets: np.ndarray | None = None) -> dict:
    """All outputs of a sampling graph, fed the way the engine feeds it."""
    session = _session(graph.SerializeToString())
    feeds = {NOISY: np.ascontiguousarray(noisy, dtype=np.float32)}
    if any(i.name == OFFSETS for i in session.get_inputs()):
        feeds[OFFSETS] = offsets
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _save(path: Path, nodes, inits, in_shape, classes: int, opset: int = OPSET, props: dict | None = None,
          sparse=(), functions=(), domains=()) -> Path:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits,
                              sparse_initializer=list(sparse))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions),
                              ir_version=helper.find_min_ir_version_for(opsets[:1]))
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, in_shape, classes: int, seed: int, jitter: int | None = None,
               opset: int = OPSET) -> Path:
    """Conv → Relu → flatten as torch exports it (Reshape to [N, -1], which ORT refuses for N = 0) → Gemm.

    With `jitter`, the weights of `seed` moved a little by those of seed `jitter`: a model that mostly
    agrees with the one of `seed`.
    """
    rng = np.random.default_rng(seed)
    c = in_shape[0]
    features = 3 * int(np.prod(in_shape[1:]))
    arrays = [rng.normal(size=(3, c, *[3] * (len(in_shape) - 1))), rng.normal(size=3),
              rng.normal(size=(classes, features)) / np.sqrt(features) * 2, rng.normal(size=classes) * 0.3]
    if jitter is not None:
        moved = np.random.default_rng(jitter)
        arrays = [a + 0.3 * moved.normal(size=a.shape) * a.std() for a in arrays]
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for a, name in zip(arrays, ["w", "cb", "fc", "fb"])]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[1] * (2 * (len(in_shape) - 1))),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus_one"], ["flat_shape"], axis=0),
             helper.make_node("Reshape", ["r", "flat_shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fb"], ["y"], transB=1)]
    return _save(path, nodes, inits, in_shape, classes, opset)


def fancy_linear(path: Path, weights: np.ndarray, bias: np.ndarray, in_shape, factor: float) -> Path:
    """factor·(flatten(x) @ weights) + bias, spelled with an If branch that reads outer values, a local
    function `local.Scale` (same name, other factor, in every such model) and a sparse bias."""
    then = helper.make_graph([helper.make_node("MatMul", ["flat", "W"], ["then_out"])], "then", [],
                             [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["flat"], ["else_out"])], "else", [],
                              [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    scale = helper.make_function(
        "local", "Scale", ["X"], ["Y"],
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(factor, np.float32))),
         helper.make_node("Mul", ["X", "k"], ["Y"])],
        [helper.make_opsetid("", OPSET)])
    values = numpy_helper.from_array(bias.astype(np.float32), "b")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.arange(len(bias), dtype=np.int64), "b_at"),
                                       [len(bias)])
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("If", ["yes"], ["xw"], then_branch=then, else_branch=other, name="branch"),
             helper.make_node("Scale", ["xw"], ["scaled"], domain="local", name="scale"),
             helper.make_node("Add", ["scaled", "b"], ["y"], name="add")]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "W"), numpy_helper.from_array(np.array(True), "yes")]
    return _save(path, nodes, inits, in_shape, weights.shape[1], sparse=[sparse], functions=[scale], domains=["local"])


# -- references ---------------------------------------------------------------------------------------

def image_views(plan: Plan, copy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The k views (k, C, P, P) of one noisy copy, cut with OpenCV and numpy."""
    if plan.noise_space == "patch":
        return copy
    image = copy
    if plan.noise_space == "input" and plan.has_resize:
        image = np.stack([cv2.resize(ch, plan.resized_hw[::-1], interpolation=cv2.INTER_LINEAR) for ch in copy])
    ph, pw = plan.patch_hw
    return np.stack([image[:, t:t + ph, l:l + pw] for t, l in offsets])


def bare_logits(path: Path, views: np.ndarray) -> np.ndarray:
    """The bare member's logits on a stack of views."""
    return _session(Path(path).read_bytes()).run(None, {"x": np.ascontiguousarray(views, dtype=np.float32)})[0]


def scores_of(logits: np.ndarray, reduce: str) -> np.ndarray:
    """(..., classes) logits → what the reduction takes: the logits (mean) or their softmax (max)."""
    if reduce == "mean":
        return logits
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def vote_of(scores: np.ndarray, reduce: str) -> np.ndarray:
    """(copies, n, classes) scores → votes, INVALID_VOTE for a copy with any non-finite score."""
    with np.errstate(invalid="ignore", over="ignore"):
        reduced = scores.max(axis=1) if reduce == "max" else scores.mean(axis=1)
    bad = ~np.isfinite(scores).all(axis=(1, 2)) | ~np.isfinite(reduced).all(axis=1)
    return np.where(bad, INVALID_VOTE, np.argmax(np.nan_to_num(reduced), axis=1))


def member_scores(paths, plan: Plan, noisy: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Per member: its scores (copies, k, classes) on every copy."""
    views = np.stack([image_views(plan, copy, offsets) for copy in noisy])  # (B, k, C, P, P)
    b, k = views.shape[:2]
    return [scores_of(bare_logits(p, views.reshape(b * k, *views.shape[2:])).reshape(b, k, -1), plan.reduce)
            for p in paths]


def consensus_reference(scores: list[np.ndarray], k: int, reduce: str) -> tuple[np.ndarray, int]:
    """K-consensus from the members' scores: the agreed vote, or the whole ensemble's; and E."""
    votes = [vote_of(s, reduce) for s in scores[:k]]
    agree = np.all([v == votes[0] for v in votes], axis=0)
    full = vote_of(np.concatenate(scores, axis=1), reduce)
    return np.where(agree, votes[0], full), int((~agree).sum())


def noisy_copies(plan: Plan, count: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    offsets = plan.offsets(seed=seed, index=0)
    point = plan.noise_point(rng.random(plan.input_shape).astype(np.float32), offsets)
    noisy = noise.Gaussian(seed, 0, noise.ESTIMATION).fill(np.empty((count, *plan.noise_shape), np.float32),
                                                          point, sigma)
    return noisy, offsets


# -- ensembles ----------------------------------------------------------------------------------------

PLANS = {
    "patches-resize": lambda reduce: Plan((2, 7, 7), (6, 6), (9, 9), patches=4, reduce=reduce),
    "patch-space": lambda reduce: Plan((2, 7, 7), (6, 6), (8, 8), patches=3, reduce=reduce, noise_space="patch",
                                       sampling="random"),
    "whole": lambda reduce: Plan((2, 6, 6), (6, 6), (6, 6), reduce=reduce),
}


@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("layout", list(PLANS))
def test_ensemble_votes_equal_the_members_reduced_together(tmp_path, reduce, layout):
    plan = PLANS[layout](reduce)
    rng = np.random.default_rng(3)
    d = 2 * 6 * 6
    paths = [Path(linear_onnx(rng.normal(size=(d, 4)) * 0.3, rng.normal(size=4), (2, 6, 6), tmp_path / "a.onnx")),
             conv_model(tmp_path / "b.onnx", (2, 6, 6), 4, seed=1),
             Path(linear_onnx(rng.normal(size=(d, 4)) * 0.3, rng.normal(size=4), (2, 6, 6), tmp_path / "c.onnx",
                              opset=11))]  # converted up to the ensemble's opset 17
    models = [load_model(p) for p in paths]
    noisy, offsets = noisy_copies(plan, 64, 0.5, seed=7)
    graph = sampling_graph(models, plan)
    onnx.checker.check_model(graph, full_check=True)
    got = run_graph(graph, noisy, offsets)
    scores = member_scores(paths, plan, noisy, offsets)
    expected = vote_of(np.concatenate(scores, axis=1), plan.reduce)
    assert list(got) == [VOTES]  # no ESCALATED without consensus
    assert np.array_equal(got[VOTES], expected)
    alone = vote_of(scores[0], plan.reduce)
    assert len(set(expected.tolist())) > 1 and not np.array_equal(alone, expected)  # not trivially one member


def test_linear_ensemble_is_the_linear_model_with_averaged_weights(tmp_path):
    """Smooth-Mean over members and views of linear models is exactly one linear model: the reference."""
    rng = np.random.default_rng(4)
    plan = Plan((1, 7, 7), (6, 6), (9, 9), patches=4, reduce="mean")
    weights = [rng.normal(size=(36, 5)) for _ in range(3)]
    biases = [rng.normal(size=5) for _ in range(3)]
    members = [load_model(linear_onnx(w, b, (1, 6, 6), tmp_path / f"m{i}.onnx"))
               for i, (w, b) in enumerate(zip(weights, biases))]
    mean_w, mean_b = np.mean(weights, axis=0), np.mean(biases, axis=0)
    averaged = load_model(linear_onnx(mean_w, mean_b, (1, 6, 6), tmp_path / "mean.onnx"))
    noisy, offsets = noisy_copies(plan, 200, 1.0, seed=2)
    got = run_graph(sampling_graph(members, plan), noisy, offsets)[VOTES]
    assert np.array_equal(got, run_graph(sampling_graph(averaged, plan), noisy, offsets)[VOTES])
    views = np.stack([image_views(plan, copy, offsets) for copy in noisy]).reshape(200, 4, 36)
    direct = np.argmax((views @ mean_w + mean_b).mean(axis=1), axis=1)
    assert np.array_equal(got, direct)


def test_members_with_subgraphs_functions_and_sparse_weights_never_clash(tmp_path):
    """Two members with the same value names, If branches reading outer values, the same local function
    name with different bodies, and sparse initializers: each keeps its own."""
    rng = np.random.default_rng(6)
    plan = Plan((1, 5, 5), (4, 4), (5, 5), patches=2, reduce="mean")
    weights = [rng.normal(size=(16, 3)) for _ in range(2)]
    biases = [rng.normal(size=3) for _ in range(2)]
    factors = [2.0, -3.0]
    paths = [fancy_linear(tmp_path / f"f{i}.onnx", w, b, (1, 4, 4), f)
             for i, (w, b, f) in enumerate(zip(weights, biases, factors))]
    models = [load_model(p) for p in paths]
    graph = sampling_graph(models, plan)
    assert sorted(f.name for f in graph.functions) == ["m1_Scale", "m2_Scale"]
    noisy, offsets = noisy_copies(plan, 100, 0.8, seed=3)
    views = np.stack([image_views(plan, copy, offsets) for copy in noisy]).reshape(100, 2, 16)
    logits = sum(f * (views @ w) + b for w, b, f in zip(weights, biases, factors)) / 2
    assert np.array_equal(run_graph(graph, noisy, offsets)[VOTES], np.argmax(logits.mean(axis=1), axis=1))


# -- members that do not agree --------------------------------------------------------------------------

def test_mismatched_members_are_usage_errors_naming_the_member(tmp_path):
    w = np.ones((16, 3))
    base = load_model(linear_onnx(w, np.zeros(3), (1, 4, 4), tmp_path / "base.onnx",
                                  {"srtool.classes": '["a", "b", "c"]'}))
    undeclared = load_model(linear_onnx(w, np.zeros(3), (1, 4, 4), tmp_path / "plain.onnx"))
    check_members([base, undeclared, base])  # names left open are not held against a member
    cases = {
        "shape.onnx": (linear_onnx(np.ones((25, 3)), np.zeros(3), (1, 5, 5), tmp_path / "shape.onnx"), "input shape 1×5×5"),
        "classes.onnx": (linear_onnx(np.ones((16, 4)), np.zeros(4), (1, 4, 4), tmp_path / "classes.onnx"),
                         "number of classes 4"),
        "names.onnx": (linear_onnx(w, np.zeros(3), (1, 4, 4), tmp_path / "names.onnx",
                                   {"srtool.classes": '["a", "x", "c"]'}), "class 1 named 'x'"),
        "video.onnx": (linear_onnx(np.ones((32, 3)), np.zeros(3), (1, 2, 4, 4), tmp_path / "video.onnx"),
                       "input rank 5"),
    }
    for name, (path, says) in cases.items():
        with pytest.raises(UsageError, match=f"member 3 \\({name}\\) has {says}.*member 1 \\(base.onnx\\)"):
            check_members([base, undeclared, load_model(path)])
        with pytest.raises(UsageError, match=f"member 3 \\({name}\\)"):
            sampling_graph([base, undeclared, load_model(path)], Plan((1, 4, 4), (4, 4), (4, 4)))


def test_consensus_needs_at_least_two_and_fewer_than_all_members(tmp_path):
    models = [load_model(linear_onnx(np.ones((16, 3)), np.zeros(3), (1, 4, 4), tmp_path / f"m{i}.onnx"))
              for i in range(3)]
    plan = Plan((1, 4, 4), (4, 4), (4, 4))
    for k in (1, 3, 4):
        with pytest.raises(UsageError, match="--consensus"):
            sampling_graph(models, plan, consensus=k)
    assert len(sampling_graph(models, plan, consensus=0).graph.output) == 1  # 0: off


# -- K-consensus ----------------------------------------------------------------------------------------

def _roll_classes(path: Path, out: Path) -> Path:
    """The same model with its classes renamed c → c+1: its vote always differs from the original's."""
    proto = onnx.load(str(path))
    node = helper.make_node("Gather", ["y_orig", "perm"], ["y"], axis=1)
    for n in proto.graph.node:
        n.output[:] = ["y_orig" if o == "y" else o for o in n.output]
    proto.graph.node.append(node)
    classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    proto.graph.initializer.append(numpy_helper.from_array(np.roll(np.arange(classes), 1).astype(np.int64), "perm"))
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_consensus_votes_agreed_class_or_full_ensemble(tmp_path, reduce):
    plan = Plan((2, 7, 7), (6, 6), (9, 9), patches=4, reduce=reduce)
    rng = np.random.default_rng(8)
    shape = (2, 6, 6)
    first = conv_model(tmp_path / "first.onnx", shape, 3, seed=11)
    paths = {
        "some": [first, conv_model(tmp_path / "second.onnx", shape, 3, seed=11, jitter=12),
                 Path(linear_onnx(rng.normal(size=(72, 3)), rng.normal(size=3), shape, tmp_path / "third.onnx")),
                 conv_model(tmp_path / "fourth.onnx", shape, 3, seed=14)],
        "none": [first, first, conv_model(tmp_path / "fourth.onnx", shape, 3, seed=14)],
        "all": [first, _roll_classes(first, tmp_path / "rolled.onnx"), conv_model(tmp_path / "fourth.onnx", shape, 3, seed=14)],
    }
    noisy, offsets = noisy_copies(plan, 80, 0.5, seed=5)
    for case, members in paths.items():
        graph = sampling_graph([load_model(p) for p in members], plan, consensus=2)
        onnx.checker.check_model(graph, full_check=True)  # the If branch reads outer values legally
        got = run_graph(graph, noisy, offsets)
        expected, escalated = consensus_reference(member_scores(members, plan, noisy, offsets), 2, reduce)
        assert np.array_equal(got[VOTES], expected), case
        assert got[ESCALATED].shape == (1,) and got[ESCALATED].dtype == np.int64
        assert int(got[ESCALATED][0]) == escalated, case
        assert escalated == {"none": 0, "all": 80}.get(case, escalated)
        if case == "some":
            assert 0 < escalated < 80
            full = vote_of(np.concatenate(member_scores(members, plan, noisy, offsets), axis=1), reduce)
            assert not np.array_equal(got[VOTES], full)  # agreed copies keep the agreed class


def test_consensus_graph_runs_in_the_vote_counter_with_and_without_io_binding(tmp_path):
    plan = Plan((1, 6, 6), (6, 6), (6, 6))
    paths = [conv_model(tmp_path / f"m{i}.onnx", (1, 6, 6), 3, seed=i) for i in range(3)]
    graph = sampling_graph([load_model(p) for p in paths], plan, consensus=2)
    point = np.full(plan.noise_shape, 0.5, np.float32)
    counts = []
    for binding in (False, True):
        counter = VoteCounter(graph, plan, 3, batch=16, device="cpu", threads=1, io_binding=binding)
        counts.append(counter.count(point, plan.dense_offsets, 50, 0.5, noise.Gaussian(0, 0, noise.ESTIMATION)))
        counter.close()
    assert np.array_equal(*counts) and counts[0].sum() == 50


# -- videos ---------------------------------------------------------------------------------------------

def video_reference(paths, plan, noisy: np.ndarray, reduce: str) -> list[np.ndarray]:
    """Per member: scores (copies, k, classes), each view's logits averaged over its chunks."""
    c, m, h, w = plan.view_shape
    k, chunks = plan.index.shape[:2]
    if plan.noise_space == "input":  # (B, C, T, H, W) → (B, k, chunks, C, m, H, W)
        views = noisy[:, :, plan.index].transpose(0, 2, 3, 1, 4, 5, 6)
    else:
        views = noisy.reshape(len(noisy), k, chunks, c, m, h, w)
    flat = views.reshape(-1, c, m, h, w)
    return [scores_of(bare_logits(p, flat).reshape(len(noisy), k, chunks, -1).mean(axis=2), reduce) for p in paths]


@pytest.mark.parametrize("reduce,space,consensus", [("mean", "input", None), ("max", "patch", None),
                                                    ("mean", "input", 2)])
def test_video_ensemble(tmp_path, reduce, space, consensus):
    shape = (3, 4, 6, 6)  # C, m, H, W of one chunk
    paths = [conv_model(tmp_path / f"v{i}.onnx", shape, 3, seed=20 + i) for i in range(3 if consensus else 2)]
    layout = vid.VideoLayout((3, 6, 6), chunk=4, subvideo=8, stride=3, reduce=reduce, noise_space=space)
    graph = vid.sampling_graph([load_model(p) for p in paths], layout, consensus=consensus)
    onnx.checker.check_model(graph, full_check=True)
    rng = np.random.default_rng(2)
    seen = set()
    for frames in (14, 11):  # two lengths through one graph
        plan = layout.plan(frames)
        point = plan.noise_point(rng.uniform(size=(3, frames, 6, 6)).astype(np.float32), plan.index)
        noisy = (point + rng.normal(size=(24, *point.shape))).astype(np.float32)
        got = run_graph(graph, noisy, plan.index)
        scores = video_reference(paths, plan, noisy, reduce)
        if consensus:
            expected, escalated = consensus_reference(scores, consensus, reduce)
            assert int(got[ESCALATED][0]) == escalated
        else:
            expected = vote_of(np.concatenate(scores, axis=1), reduce)
        assert np.array_equal(got[VOTES], expected)
        seen |= set(expected.tolist())
    assert len(seen) > 1


# -- non-finite logits ----------------------------------------------------------------------------------

def log_linear(path: Path, weights: np.ndarray, bias: np.ndarray, in_shape) -> Path:
    """flatten(x) @ weights + bias + log(first value of x) in every class: the same votes as the linear
    model where that value is positive, NaN logits where it is negative, -inf where it is 0."""
    starts, ends = numpy_helper.from_array(np.array([0], np.int64), "s"), numpy_helper.from_array(np.array([1], np.int64), "e")
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["linear"]),
             helper.make_node("Slice", ["flat", "s", "e", "one"], ["first"]),
             helper.make_node("Log", ["first"], ["log"]),
             helper.make_node("Add", ["linear", "log"], ["y"])]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32), "b"),
             starts, ends, one]
    return _save(path, nodes, inits, in_shape, weights.shape[1])


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_non_finite_logits_vote_for_no_class(tmp_path, reduce):
    rng = np.random.default_rng(9)
    plan = Plan((1, 4, 4), (4, 4), (4, 4), reduce=reduce)
    weights, bias = rng.normal(size=(16, 3)), rng.normal(size=3)
    path = log_linear(tmp_path / "log.onnx", weights, bias, (1, 4, 4))
    noisy = rng.uniform(0.1, 1, size=(40, 1, 4, 4)).astype(np.float32)
    noisy[0:5, 0, 0, 0] = -0.5  # log < 0: NaN logits
    noisy[5:8, 0, 0, 0] = 0.0  # log 0: -inf in every class
    noisy[8, 0, 2, 2] = np.nan  # a NaN pixel
    noisy[9, 0, 1, 1] = np.inf  # an infinite pixel: ±inf logits
    noisy[10] = 3e38  # finite pixels whose logits overflow
    got = run_graph(sampling_graph(load_model(path), plan), noisy)[VOTES]
    assert np.array_equal(got[:11], np.full(11, INVALID_VOTE))
    flat = noisy[11:].reshape(-1, 16).astype(np.float64)
    assert np.array_equal(got[11:], np.argmax(flat @ weights + bias, axis=1))  # finite copies unchanged
    assert len(set(got[11:].tolist())) > 1


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_one_non_finite_view_or_member_invalidates_the_copy(tmp_path, reduce):
    """With patches, ensembles and consensus, any view of any member deciding the vote counts."""
    rng = np.random.default_rng(10)
    plan = Plan((1, 6, 6), (4, 4), (6, 6), patches=4, reduce=reduce)  # views at the 4 corners
    shape = (1, 4, 4)
    log_path = log_linear(tmp_path / "log.onnx", rng.normal(size=(16, 3)), rng.normal(size=3), shape)
    paths = [Path(linear_onnx(rng.normal(size=(16, 3)), rng.normal(size=3), shape, tmp_path / "lin.onnx")), log_path]
    noisy, offsets = noisy_copies(plan, 60, 0.3, seed=1)
    for t, l in offsets:  # every view's first value (the log member's log) positive ...
        noisy[:, 0, t, l] = np.abs(noisy[:, 0, t, l]) + 0.1
    noisy[:20, 0, 0, 0] *= -1  # ... but in copies 0-19 that of the view at (0, 0): its logits are NaN
    scores = member_scores(paths, plan, noisy, offsets)
    single = run_graph(sampling_graph(load_model(log_path), plan), noisy, offsets)[VOTES]
    assert np.array_equal(single, vote_of(scores[1], reduce)) and (single[:20] == INVALID_VOTE).all()
    assert (single[20:] >= 0).all()
    ensemble = run_graph(sampling_graph([load_model(p) for p in paths], plan), noisy, offsets)[VOTES]
    assert np.array_equal(ensemble, vote_of(np.concatenate(scores, axis=1), reduce))
    assert (ensemble[:20] == INVALID_VOTE).all() and (ensemble[20:] >= 0).all()
    # Consensus: the log member among the first K, then as a member only the disagreeing copies reach.
    third = Path(linear_onnx(rng.normal(size=(16, 3)), rng.normal(size=3), shape, tmp_path / "third.onnx"))
    for members in ([paths[0], log_path, third], [paths[0], third, log_path]):
        scores = member_scores(members, plan, noisy, offsets)
        got = run_graph(sampling_graph([load_model(p) for p in members], plan, consensus=2), noisy, offsets)
        expected, escalated = consensus_reference(scores, 2, reduce)
        assert np.array_equal(got[VOTES], expected) and int(got[ESCALATED][0]) == escalated
        assert (INVALID_VOTE in expected[:20]) and (expected[20:] >= 0).all()
