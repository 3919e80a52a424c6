"""Video certification: reading, sub-video layout, the sampling graph, soundness, CLI and bad inputs.

Videos are written with OpenCV (mp4v) and read back through the real decord path. Models are tiny
ONNX graphs built with onnx.helper, so the whole file runs in well under two minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import binom, norm

from srtool import noise, video as vid
from srtool.cli import main
from srtool.data import Item
from srtool.engine import VoteCounter, make_session
from srtool.errors import InputError, UsageError
from srtool.model import load_model
from srtool.pipeline import Settings, evaluate

ASSETS = Path(__file__).resolve().parents[1] / "srtool" / "assets"


# -- helpers -----------------------------------------------------------------------------------------

def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """RGB uint8 (T, H, W, 3) → mp4v file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def smooth_frames(count: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth coloured frames (codecs keep them close to the original)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((count, h, w, 3), dtype=np.uint8)
    for t in range(count):
        a, b, c = rng.uniform(0.2, 0.8, size=3)
        out[t, ..., 0] = 255 * np.clip(a + 0.2 * xx, 0, 1)
        out[t, ..., 1] = 255 * np.clip(b + 0.2 * yy, 0, 1)
        out[t, ..., 2] = 255 * c
    return out


def save_model(path: Path, nodes, inits, in_shape, classes: int, props: dict | None = None) -> Path:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def mlp_model(path: Path, in_shape=(3, 4, 8, 8), classes: int = 3, seed: int = 0) -> Path:
    """A non-linear random model (Flatten → Gemm → Tanh → Gemm), so chunk averaging matters."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(in_shape))
    w1 = numpy_helper.from_array((rng.normal(size=(size, 16)) / np.sqrt(size) * 3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, classes)).astype(np.float32), "w2")
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w1"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]), helper.make_node("Gemm", ["t", "w2"], ["y"])]
    return save_model(path, nodes, [w1, w2], in_shape, classes, {"srtool.sigma": "0.25"})


def linear_model(path: Path, weights: np.ndarray, bias: np.ndarray, in_shape) -> Path:
    """logits = flatten(x) @ weights + bias; weights (D, classes)."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w", "b"], ["y"])]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    return save_model(path, nodes, inits, in_shape, weights.shape[1])


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


# -- reading -----------------------------------------------------------------------------------------

def test_decord_roundtrip_rgb_and_mars_fit(tmp_path):
    frames = smooth_frames(20, 48, 64)
    frames[3] = [200, 30, 30]  # a red frame must read back red: decord is RGB, OpenCV writes BGR
    path = write_video(tmp_path / "a.mp4", frames)
    raw = vid.read_video(str(path), None)
    assert raw.shape == (3, 20, 48, 64) and raw.dtype == np.float32
    assert 0 <= raw.min() and raw.max() <= 1
    assert np.abs(raw.transpose(1, 2, 3, 0) * 255 - frames).mean() < 6  # mp4v is lossy, but close
    red = raw[:, 3].mean(axis=(1, 2))
    assert red[0] > 0.7 and red[1] < 0.2 and red[2] < 0.2

    fitted = vid.read_video(str(path), (32, 32))
    assert fitted.shape == (3, 20, 32, 32)
    # MARS: shorter side 48 → 32, longer 64 → int(32·64/48) = 42, centre crop from round(10/2) = 5.
    decoded = np.rint(raw.transpose(1, 2, 3, 0) * 255).astype(np.uint8)
    expected = np.stack([cv2.resize(f, (42, 32), interpolation=cv2.INTER_AREA)[:, 5:37] for f in decoded])
    assert np.abs(fitted.transpose(1, 2, 3, 0) * 255 - expected).max() <= 1


def test_fit_frames_many_channels_and_portrait():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(20, 30, 20, 3), dtype=np.uint8)  # portrait
    out = vid.fit_frames(frames, (16, 16))
    # width binds: 20 → 16, height int(30·16/20) = 24, crop top round(8/2) = 4
    expected = np.stack([cv2.resize(f, (16, 24), interpolation=cv2.INTER_AREA)[4:20] for f in frames])
    assert out.shape == (20, 16, 16, 3) and np.array_equal(out, expected)
    assert np.array_equal(vid.fit_frames(frames[:, :16, :16], (16, 16)), frames[:, :16, :16])  # no resize needed
    up = vid.fit_frames(frames[:, :8, :12], (16, 16))  # enlarging: height 8 → 16, width 24, crop 4
    expected = np.stack([cv2.resize(f, (24, 16), interpolation=cv2.INTER_LINEAR)[:, 4:20] for f in frames[:, :8, :12]])
    assert np.array_equal(up, expected)


def test_decord_width_bug_falls_back_to_opencv(tmp_path):
    # decord 0.6 cannot copy out frames 48 px wide ("The size must exactly match"); OpenCV reads them.
    frames = smooth_frames(6, 32, 48, seed=3)
    path = write_video(tmp_path / "w48.mp4", frames)
    video = vid.read_video(str(path), None)
    assert video.shape == (3, 6, 32, 48)
    assert np.abs(video.transpose(1, 2, 3, 0) * 255 - frames).mean() < 6


# -- layout ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [16, 17, 31, 48, 50, 100])
def test_whole_video_layout(frames):
    layout = vid.VideoLayout((3, 8, 8), chunk=16)
    index = layout.frame_index(frames)
    assert index.shape == (1, frames // 16, 16)  # MARS: non-overlapping chunks, trailing frames unused
    assert np.array_equal(index.ravel(), np.arange(frames // 16 * 16))


@pytest.mark.parametrize("frames,t,m,s", [(64, 32, 16, 16), (50, 32, 16, 8), (100, 64, 16, 32),
                                          (32, 32, 8, 5), (47, 16, 8, 3), (300, 64, 16, 32)])
def test_subvideo_layout(frames, t, m, s):
    layout = vid.VideoLayout((3, 8, 8), chunk=m, subvideo=t, stride=s)
    index = layout.frame_index(frames)
    k = (frames - t) // s + 1
    assert index.shape == (k, t // m, m)
    for i in range(k):  # sub-video i is frames i·S … i·S + t − 1, split into t/m chunks in order
        assert np.array_equal(index[i].ravel(), np.arange(i * s, i * s + t))
    assert index.max() < frames
    plan = layout.plan(frames)
    coverage = np.bincount(index.ravel(), minlength=frames)
    assert coverage.max() == min(k, -(-t // s))  # overlap: at most ceil(t/S) sub-videos per frame
    assert plan.radius_factor(index) == 1.0
    patch = vid.VideoLayout((3, 8, 8), chunk=m, subvideo=t, stride=s, noise_space="patch").plan(frames)
    assert patch.radius_factor(index) == pytest.approx(1 / np.sqrt(coverage.max()))
    assert plan.columns == {"frames": frames, "subvideos": k}
    assert layout.plan(frames) is plan  # one plan per length, cached


def test_patch_factor_is_the_exact_operator_norm():
    layout = vid.VideoLayout((1, 1, 1), chunk=2, subvideo=6, stride=2, noise_space="patch")
    plan = layout.plan(11)
    rows = plan.index.ravel()
    a = np.zeros((rows.size, 11))
    a[np.arange(rows.size), rows] = 1  # A stacks the temporal crops of a 1-pixel video
    assert plan.radius_factor(plan.index) == pytest.approx(1 / np.linalg.norm(a, 2), rel=1e-12)


def test_default_stride_short_videos_and_loop():
    layout = vid.VideoLayout((3, 8, 8), chunk=8, subvideo=32)
    assert layout.step == 16
    with pytest.raises(InputError, match="fewer than one sub-video") as caught:
        layout.frame_index(20)
    assert caught.value.columns == {"frames": 20, "subvideos": 0}
    looped = vid.VideoLayout((3, 8, 8), chunk=8, subvideo=32, short="loop").frame_index(20)
    assert looped.shape == (1, 4, 8) and np.array_equal(looped.ravel(), np.arange(32) % 20)
    whole = vid.VideoLayout((3, 8, 8), chunk=16, short="loop").frame_index(5)
    assert np.array_equal(whole.ravel(), np.arange(16) % 5)
    with pytest.raises(InputError, match="fewer than one chunk"):
        vid.VideoLayout((3, 8, 8), chunk=16).frame_index(15)
    with pytest.raises(UsageError):
        vid.VideoLayout((3, 8, 8), chunk=16, subvideo=24)  # not a multiple of the chunk
    with pytest.raises(UsageError):
        vid.VideoLayout((3, 8, 8), chunk=16, stride=4)  # stride without sub-videos


# -- sampling graph ----------------------------------------------------------------------------------

def _direct_votes(model_path: Path, noisy: np.ndarray, plan, reduce: str) -> np.ndarray:
    """Votes computed the slow way: the bare model on every chunk, chunk mean, reduce, argmax."""
    session = make_session(model_path.read_bytes(), "cpu")
    c, m, h, w = plan.view_shape
    k, chunks = plan.index.shape[:2]
    votes = []
    for copy in noisy:
        if plan.noise_space == "input":
            views = np.stack([[copy[:, plan.index[i, j]] for j in range(chunks)] for i in range(k)])
        else:
            views = copy.reshape(k, chunks, c, m, h, w)
        per_view = []
        for i in range(k):
            logits = session.run(None, {"x": np.ascontiguousarray(views[i], dtype=np.float32)})[0]
            per_view.append(logits.mean(axis=0))  # the base classifier averages its chunks
        per_view = np.array(per_view)
        if reduce == "max":
            soft = np.exp(per_view - per_view.max(axis=1, keepdims=True))
            reduced = (soft / soft.sum(axis=1, keepdims=True)).max(axis=0)
        else:
            reduced = per_view.mean(axis=0)
        votes.append(int(np.argmax(reduced)))
    return np.array(votes)


@pytest.mark.parametrize("subvideo,stride,reduce,space", [
    (None, None, "mean", "input"), (8, 3, "mean", "input"), (8, 5, "max", "input"),
    (12, 4, "mean", "patch"), (8, 2, "max", "patch")])
def test_graph_votes_equal_direct_per_chunk_computation(tmp_path, subvideo, stride, reduce, space):
    model = load_model(mlp_model(tmp_path / "mlp.onnx"))
    layout = vid.VideoLayout((3, 8, 8), chunk=4, subvideo=subvideo, stride=stride, reduce=reduce, noise_space=space)
    graph = vid.sampling_graph(model, layout)
    counter = VoteCounter(graph, layout.probe, 3, batch=6, device="cpu")
    rng = np.random.default_rng(1)
    seen = set()
    for frames in (21, 13):  # two lengths through the same graph and session
        plan = layout.plan(frames)
        video = rng.uniform(size=(3, frames, 8, 8)).astype(np.float32)
        point = plan.noise_point(video, plan.index)
        noisy = (point + rng.normal(size=(16, *point.shape))).astype(np.float32)
        got = counter.votes(noisy, plan.index)
        assert np.array_equal(got, _direct_votes(tmp_path / "mlp.onnx", noisy, plan, reduce))
        seen |= set(got.tolist())
    assert len(seen) > 1  # the comparison is not trivially constant
    counter.close()


def test_counts_do_not_depend_on_batch_or_length_cap(tmp_path):
    model = load_model(mlp_model(tmp_path / "mlp.onnx"))
    layout = vid.VideoLayout((3, 8, 8), chunk=4, subvideo=8, stride=2)
    graph = vid.sampling_graph(model, layout)
    plan = layout.plan(30)
    video = np.random.default_rng(2).uniform(size=(3, 30, 8, 8)).astype(np.float32)
    results = []
    per_copy = 12 * 2 * (3 * 4 * 8 * 8)  # 12 sub-videos × 2 chunks of model input per noisy copy
    for batch, cap, loops in ((7, None, 1), (100, None, 2), (100, per_copy, 1), (100, 2 * per_copy, 2)):
        counter = VoteCounter(graph, layout.probe, 3, batch=batch, device="cpu", threads=loops,
                              values_per_call=cap)
        if cap:  # the cap bounds the model input of the calls in flight (one per loop):
            # per loop, one copy of the long video, 12 of a short one
            assert counter.copies_per_call(plan) == 1
            assert counter.copies_per_call(layout.probe) == 12
        results.append(counter.count(plan.noise_point(video, plan.index), plan.index, 50, 0.5,
                                     noise.Gaussian(0, 0, noise.ESTIMATION), plan=plan))
        counter.close()
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_io_binding_keeps_device_buffers_of_the_current_length_only(tmp_path):
    """Bound buffers are per (loop, batch shape); a data set of many video lengths must not pile
    them up (on CUDA each holds device memory)."""
    model = load_model(mlp_model(tmp_path / "mlp.onnx"))
    layout = vid.VideoLayout((3, 8, 8), chunk=4, subvideo=8, stride=2)
    graph = vid.sampling_graph(model, layout)
    plain = VoteCounter(graph, layout.probe, 3, batch=16, device="cpu")
    bound = VoteCounter(graph, layout.probe, 3, batch=16, device="cpu", io_binding=True)
    for frames in (30, 20):
        plan = layout.plan(frames)
        video = np.random.default_rng(frames).uniform(size=(3, frames, 8, 8)).astype(np.float32)
        point = plan.noise_point(video, plan.index)
        counts = [counter.count(point, plan.index, 40, 0.5, noise.Gaussian(0, 0, noise.ESTIMATION), plan=plan)
                  for counter in (plain, bound)]
        assert np.array_equal(*counts) and counts[0].sum() == 40
        assert bound._bindings and all(shape[1:] == point.shape for _, shape in bound._bindings)
    plain.close()
    bound.close()


# -- soundness: the exact linear reference -----------------------------------------------------------

LIN_SHAPE = (1, 2, 2, 2)  # C, m, H, W of one chunk


def _linear_setup(tmp_path, space: str, concentrated: bool = False):
    """A two-class linear chunk model and a sub-video layout on 10-frame 2×2 videos (k = 4, 2 chunks)."""
    rng = np.random.default_rng(5)
    d = int(np.prod(LIN_SHAPE))
    if concentrated:  # all weight on one pixel of the chunk's first frame: worst case for patch noise
        diff = np.zeros(d)
        diff[0] = 1.0
    else:
        diff = rng.normal(size=d)
    weights = np.stack([diff / 2, -diff / 2], axis=1)
    model = load_model(linear_model(tmp_path / f"lin-{space}.onnx", weights, np.zeros(2), LIN_SHAPE))
    layout = vid.VideoLayout((1, 2, 2), chunk=2, subvideo=4, stride=2, noise_space=space)
    plan = layout.plan(10)
    return model, layout, plan, diff


def _reduced_linear(plan, diff):
    """The reduced classifier is linear: logit difference = u·x (input space) or v·(A x) (patch space)."""
    k, chunks, m = plan.index.shape
    frames = plan.frames
    per_chunk = diff.reshape(LIN_SHAPE)  # (C, m, H, W) weights of the class-0 minus class-1 logit
    u = np.zeros((1, frames, 2, 2))
    for i in range(k):
        for j in range(chunks):
            for f in range(m):
                u[:, plan.index[i, j, f]] += per_chunk[:, f] / (k * chunks)
    v = np.tile(per_chunk[None], (k * chunks, 1, 1, 1, 1)) / (k * chunks)  # weights on the stacked chunks
    return u, v


@pytest.mark.parametrize("space", ["input", "patch"])
def test_linear_vote_frequency_is_exact(tmp_path, space):
    model, layout, plan, diff = _linear_setup(tmp_path, space)
    u, v = _reduced_linear(plan, diff)
    counter = VoteCounter(vid.sampling_graph(model, layout), layout.probe, 2, batch=1000, device="cpu")
    sigma = 0.5
    x = np.random.default_rng(8).uniform(size=plan.input_shape)
    x = x - (np.sum(u * x) - 0.3 * sigma * np.linalg.norm(u)) * u / np.sum(u * u)  # margin 0.3σ‖u‖
    point = plan.noise_point(x.astype(np.float32), plan.index)
    margin = float(np.sum(u * x)) if space == "input" else float(np.sum(v * point))
    scale = np.linalg.norm(u) if space == "input" else np.linalg.norm(v)
    p = norm.cdf(margin / (sigma * scale))
    n = 4000
    counts = counter.count(point, plan.index, n, sigma, noise.Gaussian(3, 0, noise.ESTIMATION), plan=plan)
    counter.close()
    assert abs(counts[0] / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def _violations(tmp_path, space: str, concentrated: bool, trials: int, drop_factor: bool = False) -> int:
    model, layout, plan, diff = _linear_setup(tmp_path, space, concentrated)
    u, _ = _reduced_linear(plan, diff)
    counter = VoteCounter(vid.sampling_graph(model, layout), layout.probe, 2, batch=200, device="cpu")
    sigma, alpha = 0.5, 0.05
    settings = Settings(mode="certify", sigma=sigma, alpha=alpha, n0=10, n=100, seed=11)
    rng = np.random.default_rng(12)
    unit = u / np.linalg.norm(u)
    bad = 0
    for trial in range(trials):
        # A point at a known l2 distance from the decision boundary of the (exact) smoothed classifier.
        distance = rng.uniform(0.2, 1.2) * sigma
        x = rng.uniform(size=plan.input_shape)
        x = x - np.sum(unit * x) * unit + distance * unit  # u·x = distance·‖u‖ > 0: class 0
        row = evaluate(Item(trial, 0, x.astype(np.float32)), layout, counter, settings)
        radius = row["radius"] / (row["radius_factor"] if drop_factor else 1.0)
        bad += bool(row["predict"] == 0 and radius > distance)
    counter.close()
    return bad


@pytest.mark.parametrize("space,concentrated", [("input", False), ("patch", False), ("patch", True)])
def test_linear_reference_radii_are_sound(tmp_path, space, concentrated):
    trials, alpha = 1000, 0.05
    bad = _violations(tmp_path, space, concentrated, trials)
    # At most alpha of the certificates may overclaim, plus binomial slack (deterministic seeds:
    # 43, 11 and 11 of 1000 here, against a bound of 68).
    assert bad <= binom.ppf(0.999, trials, alpha)


def test_patch_noise_without_the_factor_overclaims(tmp_path):
    # The control that shows the test above has teeth: dropping 1/‖A‖₂ = 1/√2 overclaims often.
    trials = 300
    bad = _violations(tmp_path, "patch", True, trials, drop_factor=True)
    assert bad > binom.ppf(0.999, trials, 0.05)


# -- data layouts and bad inputs ---------------------------------------------------------------------

def test_ucf101_layout(tmp_path):
    root = tmp_path / "UCF-101"
    for name in ("ApplyEyeMakeup", "HandstandPushups", "YoYo"):
        write_video(root / name / f"v_{name}_g01_c01.mp4", smooth_frames(4, 32, 32))
    write_video(root / "YoYo" / "v_YoYo_g02_c01.mp4", smooth_frames(4, 32, 32))
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    (lists / "testlist01.txt").write_text("HandStandPushups/v_HandstandPushups_g01_c01.mp4\n"
                                          "YoYo/v_YoYo_g01_c01.mp4\nYoYo/v_YoYo_g09_c01.mp4\n")
    dataset = vid.open_videos(root)
    assert dataset.labels == [1, 2, 2] and dataset.class_names == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert dataset.split.endswith("testlist01.txt")
    dataset.frame_hw = (32, 32)
    assert dataset[0].error is None and dataset[0].image.shape == (3, 4, 32, 32)
    assert dataset[2].error == "file not found"  # listed but missing: one error row, not a failed run
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.mp4 1\n")
    assert vid.open_videos(root, split="trainlist01.txt").labels == [0]


def test_flat_folder_with_labels_csv(tmp_path):
    write_video(tmp_path / "v" / "b.mp4", smooth_frames(3, 32, 32))
    write_video(tmp_path / "v" / "a.mp4", smooth_frames(3, 32, 32))
    (tmp_path / "labels.csv").write_text("filename,label\na.mp4,4\n")
    dataset = vid.open_videos(tmp_path / "v", tmp_path / "labels.csv")
    assert [Path(p).name for p in dataset.paths] == ["a.mp4", "b.mp4"] and dataset.labels == [4, -1]
    with pytest.raises(UsageError, match="videos not found"):
        vid.open_videos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no videos found"):
        vid.open_videos(tmp_path / "empty")
    (tmp_path / "v" / "up").mkdir()  # class folders carry their own labels: a CSV would be ignored
    with pytest.raises(UsageError, match="--labels names the labels of a flat folder"):
        vid.open_videos(tmp_path / "v", tmp_path / "labels.csv")


def test_align_labels_to_the_model_classes(tmp_path):
    for name in ("up", "left", "right"):
        write_video(tmp_path / "v" / name / "a.mp4", smooth_frames(2, 32, 32))
    dataset = vid.open_videos(tmp_path / "v")
    assert dataset.class_names == ["left", "right", "up"] and dataset.labels == [0, 1, 2]
    vid.align_labels(dataset, ["right", "left", "up", "down"])
    assert dataset.labels == [1, 0, 2] and dataset.class_names == ["right", "left", "up", "down"]
    other = vid.open_videos(tmp_path / "v")
    vid.align_labels(other, ["cat", "dog"])  # folders are not the model's classes: left as they are
    assert other.labels == [0, 1, 2]


def test_bad_videos_become_error_rows(tmp_path, capfd):
    model = mlp_model(tmp_path / "mlp.onnx")
    folder = tmp_path / "videos"
    write_video(folder / "good.mp4", smooth_frames(12, 32, 32))
    write_video(folder / "short.mp4", smooth_frames(3, 32, 32))
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    writer = cv2.VideoWriter(str(folder / "noframes.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (32, 32))
    writer.release()
    out = tmp_path / "r.parquet"
    args = ["video", "--model", str(model), "--videos", str(folder), "--n", "20", "--n0", "4", "--quiet",
            "--out", str(out)]
    assert run_cli(args) == 2  # every row saved; the exit code and one line say 4 inputs failed
    # decord's and FFmpeg's own C-level messages stay out of the terminal; the row has the reason
    err = capfd.readouterr().err
    assert "ERROR opening" not in err and "4 of 5 inputs could not be evaluated" in err
    rows = {Path(r["path"]).name: r for r in pq.read_table(out).to_pylist()}
    assert rows["good.mp4"]["error"] is None and rows["good.mp4"]["frames"] == 12
    assert rows["good.mp4"]["subvideos"] == 1 and sum(rows["good.mp4"]["counts"]) == 20
    assert "fewer than one chunk" in rows["short.mp4"]["error"] and rows["short.mp4"]["frames"] == 3
    assert rows["empty.mp4"]["error"] == "empty file (0 bytes)"
    assert rows["corrupt.mp4"]["error"].startswith("unreadable")
    assert rows["noframes.mp4"]["error"] is not None
    assert all(r["predict"] == -1 for name, r in rows.items() if name != "good.mp4")
    # --short loop: the short video is read cyclically (MARS's LoopPadding), and the row says how many frames it had
    assert run_cli(args + ["--short", "loop", "--overwrite"]) == 2  # the 3 damaged files remain errors
    rows = {Path(r["path"]).name: r for r in pq.read_table(out).to_pylist()}
    assert rows["short.mp4"]["error"] is None and rows["short.mp4"]["frames"] == 3
    # a folder that does not exist: one clear line, exit code 2, nothing written
    capfd.readouterr()
    assert run_cli(["video", "--model", str(model), "--videos", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "videos not found" in capfd.readouterr().err
    assert run_cli(["video", "--model", str(model), "--videos", str(folder), "--subvideo", "6", "--quiet",
                    "--out", str(tmp_path / "x.parquet")]) == 2  # 6 is not a multiple of the 4-frame chunk


def test_model_with_112_frames_runs_and_fits_frames(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["x"], ["r"], axes=[2, 3, 4], keepdims=0),  # opset 17: attribute
             helper.make_node("Gemm", ["r", "w"], ["y"])]
    model = save_model(tmp_path / "big.onnx", nodes, [w], (3, 16, 112, 112), 5, {"srtool.sigma": "0.5"})
    write_video(tmp_path / "v" / "clip.mp4", smooth_frames(40, 128, 160))
    for extra in ([], ["--subvideo", "32", "--stride", "8", "--reduce", "max"]):
        out = tmp_path / f"big{len(extra)}.parquet"
        assert run_cli(["video", "--model", str(model), "--videos", str(tmp_path / "v"), "--n", "8", "--n0", "2",
                        "--quiet", "--out", str(out), *extra]) == 0
        row = pq.read_table(out).to_pylist()[0]
        assert row["error"] is None and row["frames"] == 40
        assert row["subvideos"] == (1 if not extra else 2)


# -- the shipped demo through the CLI ----------------------------------------------------------------

def test_cli_demo_certify_resume_predict_and_report(tmp_path, capsys):
    assert (ASSETS / "video_demo_sigma0.25.onnx").is_file(), "the shipped demo model is missing"
    out = tmp_path / "demo.parquet"
    base = ["video", "--n", "30", "--n0", "5", "--out", str(out), "--quiet"]
    assert run_cli(base + ["--max", "2"]) == 0
    assert run_cli(base + ["--max", "4"]) == 0  # resumes: only videos 2 and 3 are new
    table = pq.read_table(out)
    rows = table.to_pylist()
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert all(r["error"] is None and r["frames"] == 48 and r["subvideos"] == 1 for r in rows)
    config = json.loads(table.schema.metadata[b"srtool"])
    assert config["kind"] == "video" and config["subvideo"] is None and config["chunk"] == 16
    # class folders are numbered as the model's srtool.classes, not by sorted folder name
    assert all(r["label"] == config["classes"].index(Path(r["path"]).parent.name) for r in rows)
    assert config["classes"][:2] == ["right", "left"] and rows[0]["label"] == 4  # clockwise/clockwise_0.mp4
    assert config["n0"] == 5 and config["model_sha256"]

    reduce_out = tmp_path / "mean.parquet"
    assert run_cli(["video", "--n", "30", "--n0", "5", "--max", "2", "--subvideo", "32", "--stride", "8",
                    "--out", str(reduce_out), "--quiet"]) == 0
    assert [r["subvideos"] for r in pq.read_table(reduce_out).to_pylist()] == [3, 3]

    predict_out = tmp_path / "predict.parquet"
    assert run_cli(["video", "--predict", "--n", "30", "--max", "2", "--out", str(predict_out), "--quiet"]) == 0
    assert all(r["p_value"] is not None for r in pq.read_table(predict_out).to_pylist())

    capsys.readouterr()
    assert run_cli(["report", str(out), str(reduce_out), "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "RS-16 video" in text and "Smooth-Mean-32,16 s=8" in text
