"""Plans, operator norms and the sampling graph against direct computations."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from srtool import noise
from srtool.engine import VoteCounter
from srtool.errors import UsageError
from srtool.graph import sampling_graph
from srtool.model import load_model
from srtool.plan import Plan
from srtool.resize import Resizer, resize_matrix, resize_norm, stacked_crop_norm


def dense_crop_operator(src, dst, patch, offsets):
    """A = [P_1 U; …; P_k U] as a dense matrix, U probed through OpenCV (not srtool)."""
    def one_d(a, b):
        return np.stack([cv2.resize(np.eye(a)[:, [j]], (1, b), interpolation=cv2.INTER_LINEAR)[:, 0]
                         for j in range(a)], axis=1)
    u = np.kron(one_d(src[0], dst[0]), one_d(src[1], dst[1]))
    pixels = np.arange(dst[0] * dst[1]).reshape(dst)
    rows = [pixels[t:t + patch[0], l:l + patch[1]].ravel() for t, l in offsets]  # P_i picks rows of U
    return u, np.vstack([u[r] for r in rows])


@pytest.mark.parametrize("src,dst", [((5, 5), (7, 7)), ((6, 4), (9, 6)), ((8, 8), (8, 8)), ((9, 9), (6, 6))])
def test_resize_matrix_matches_opencv_and_is_separable(src, dst):
    x = np.random.default_rng(0).random((1, 1, *src)).astype(np.float32)
    resized = Resizer(dst)(x)[0, 0]
    via_matrices = resize_matrix(src[0], dst[0]) @ x[0, 0] @ resize_matrix(src[1], dst[1]).T
    assert np.allclose(resized, via_matrices, atol=1e-5)
    if dst[0] >= src[0]:  # OpenCV's INTER_LINEAR is the same half-pixel bilinear when enlarging
        expected = cv2.resize(x[0, 0], (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        assert np.allclose(resized, expected, atol=1e-5)


@pytest.mark.parametrize("src,dst", [((5, 5), (7, 7)), ((6, 4), (9, 6)), ((12, 12), (14, 14))])
def test_resize_norm_equals_dense_svd(src, dst):
    u, _ = dense_crop_operator(src, dst, dst, [(0, 0)])
    assert resize_norm(src, dst) == pytest.approx(np.linalg.norm(u, 2), rel=3e-6)
    assert resize_norm(src, dst) >= np.linalg.norm(u, 2)


LAYOUTS = [
    ((6, 6), (8, 8), (5, 5), [(0, 0), (0, 3), (3, 0), (3, 3)]),  # dense grid
    ((6, 6), (8, 8), (5, 5), [(0, 0), (2, 1), (3, 3)]),  # random-like, not a grid
    ((6, 6), (6, 6), (4, 4), [(0, 0), (1, 2), (2, 2), (2, 2)]),  # no resize, repeated position
    ((5, 7), (7, 10), (6, 6), [(0, 0), (0, 4), (1, 0), (1, 4)]),  # non-square grid
    ((24, 24), (28, 28), (20, 20), [(1, 3), (7, 0), (4, 8), (0, 0), (8, 8)]),  # Lanczos path (> 400 px)
]


@pytest.mark.parametrize("src,dst,patch,offsets", LAYOUTS)
def test_stacked_crop_norm_equals_dense_svd(src, dst, patch, offsets):
    _, a = dense_crop_operator(src, dst, patch, offsets)
    exact = np.sqrt(np.linalg.eigvalsh(a.T @ a)[-1])  # ‖A‖₂ by a dense solve
    computed = stacked_crop_norm(src, dst, patch, np.array(offsets))
    assert computed >= exact * (1 - 1e-9)  # never undershoots (that would overclaim)
    assert computed == pytest.approx(exact, rel=3e-6)


def test_dense_layout_and_random_positions():
    plan = Plan((3, 32, 32), (32, 32), (36, 36), patches=4)
    assert plan.dense_offsets.tolist() == [[0, 0], [0, 4], [4, 0], [4, 4]]
    nine = Plan((1, 10, 10), (6, 6), (10, 10), patches=9)
    assert sorted({t for t, _ in nine.dense_offsets}) == [0, 2, 4]
    assert Plan((1, 10, 10), (6, 6), (10, 10), patches=1).dense_offsets.tolist() == [[2, 2]]
    random = Plan((1, 10, 10), (6, 6), (10, 10), patches=5, sampling="random", noise_space="patch")
    first, again, other = random.offsets(0, 3), random.offsets(0, 3), random.offsets(0, 4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() <= 4
    assert random.radius_factor_varies and random.describe()["radius_factor"] is None


def test_paper_plan_factors():
    cifar = dict(input_shape=(3, 32, 32), patch_hw=(32, 32), resized_hw=(36, 36), patches=4)
    assert Plan(**cifar).radius_factor(Plan(**cifar).dense_offsets) == 1.0
    resized = Plan(**cifar, noise_space="resized")
    assert resized.radius_factor(resized.dense_offsets) == pytest.approx(1 / resize_norm((32, 32), (36, 36)))
    imagenet = Plan((3, 256, 256), (224, 224), (256, 256), patches=16, noise_space="patch")
    assert imagenet.radius_factor(imagenet.dense_offsets) == pytest.approx(1 / 4)  # 16 cover the centre


def test_bad_plans_are_usage_errors():
    with pytest.raises(UsageError, match="larger than"):
        Plan((1, 28, 28), (32, 32), (28, 28))
    with pytest.raises(UsageError):
        Plan((1, 28, 28), (28, 28), (28, 28), patches=0)


def reference_votes(weights, bias, plan: Plan, noisy: np.ndarray, offsets) -> np.ndarray:
    """What the sampling graph must compute, with OpenCV resizes and numpy crops."""
    ph, pw = plan.patch_hw
    votes = []
    for copy in noisy:
        if plan.noise_space == "patch":
            views = list(copy)
        else:
            image = copy
            if plan.noise_space == "input" and plan.has_resize:
                image = np.stack([cv2.resize(ch, plan.resized_hw[::-1], interpolation=cv2.INTER_LINEAR)
                                  for ch in copy])
            views = [image[:, t:t + ph, l:l + pw] for t, l in offsets]
        logits = np.stack([v.ravel() @ weights + bias for v in views])
        if plan.reduce == "max":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            reduced = (e / e.sum(axis=1, keepdims=True)).max(axis=0)
        else:
            reduced = logits.mean(axis=0)
        votes.append(int(np.argmax(reduced)))
    return np.array(votes)


@pytest.mark.parametrize("space", ["input", "resized", "patch"])
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("sampling", ["dense", "random"])
def test_sampling_graph_votes_equal_direct_computation(make_linear, space, reduce, sampling):
    rng = np.random.default_rng(5)
    weights, bias = rng.standard_normal((2 * 6 * 6, 5)), rng.standard_normal(5)
    model = load_model(make_linear(weights, bias, (2, 6, 6)))
    plan = Plan((2, 7, 7), (6, 6), (9, 9), patches=4, reduce=reduce, noise_space=space, sampling=sampling)
    counter = VoteCounter(sampling_graph(model, plan), plan, 5, batch=32, device="cpu")
    offsets = plan.offsets(seed=1, index=2)
    x = rng.random((2, 7, 7)).astype(np.float32)
    point = plan.noise_point(x, offsets)
    noisy = noise.Gaussian(5, 0, noise.ESTIMATION).fill(np.empty((32, *plan.noise_shape), np.float32), point, 0.3)
    assert np.array_equal(counter.votes(noisy, offsets), reference_votes(weights, bias, plan, noisy, offsets))
    counter.close()


def test_parallel_sampling_loops_equal_a_plain_sequential_loop(make_linear):
    """The loops draw batches in parallel; copy j must get the same noise as in a one-batch-at-a-time
    loop, whatever the number of loops or the batch size."""
    rng = np.random.default_rng(9)
    weights, bias = rng.standard_normal((28 * 28, 10)) * 0.05, np.zeros(10)
    model = load_model(make_linear(weights, bias, (1, 28, 28)))
    plan = Plan((1, 28, 28), (28, 28), (32, 32), patches=4, reduce="max")
    point = rng.random((1, 28, 28)).astype(np.float32)
    offsets = plan.dense_offsets
    sequential = np.zeros(10, dtype=np.int64)
    gaussian = noise.Gaussian(4, 0, noise.ESTIMATION)
    for first in range(0, 1000, 64):
        size = min(64, 1000 - first)
        noisy = gaussian.fill(np.empty((size, *plan.noise_shape), np.float32), point, 0.5, first)
        sequential += np.bincount(reference_votes(weights, bias, plan, noisy, offsets), minlength=10)
    assert sequential.sum() == 1000 and (sequential > 0).sum() > 2
    for batch, threads in [(64, 2), (300, 3), (1000, 1), (7, 4)]:
        counter = VoteCounter(sampling_graph(model, plan), plan, 10, batch=batch, device="cpu", threads=threads)
        assert counter.loops == threads
        assert np.array_equal(counter.count(point, offsets, 1000, 0.5, noise.Gaussian(4, 0, noise.ESTIMATION)),
                              sequential), (batch, threads)
        counter.close()


def test_cuda_requested_without_gpu_fails_loudly(make_linear):
    from srtool.engine import gpu_present, make_session

    if gpu_present():
        pytest.skip("a GPU is present")
    model = load_model(make_linear(np.ones((4, 2)), np.zeros(2), (1, 2, 2)))
    with pytest.raises(UsageError, match="cuda"):
        make_session(model.proto.SerializeToString(), device="cuda")
    assert make_session(model.proto.SerializeToString(), device="auto").get_providers()[0] == "CPUExecutionProvider"
