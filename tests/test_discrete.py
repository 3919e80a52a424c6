"""`--noise discrete`: the exact discretized Gaussian on the 1/255 grid (docs/soundness.md).

The table's integer weights against an independent high-precision CDF, the alias table holding
exactly those weights, the tails lumped where the clip makes them irrelevant, the distribution of
draws (chi-square at a fixed seed), copy j fixed at any batch, the sum formed in integers, the grid
and noise-space checks; and the phenomenon of Voráček & Hein (2023) on a crafted model: the float
sampler certifies a radius past a grid point whose smoothed prediction differs, the discrete one
does not.
"""

from __future__ import annotations

import bisect
import itertools
import mpmath
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from scipy import stats as scipy_stats

import srtool
from srtool import noise
from srtool.errors import UsageError
from cli_helpers import read, srtool as srtool_cli

SIGMAS = [0.12, 0.25, 0.5]


def exact_probability(j: int, table: noise.DiscreteTable) -> mpmath.mpf:
    """P(j) of the lumped law at 60 digits (the table uses 40): the tails ±J take all the mass past them."""
    with mpmath.workdps(60):
        scale = mpmath.mpf(255) * mpmath.mpf(table.sigma)
        upper = mpmath.ncdf((j + mpmath.mpf(0.5)) / scale) if j < table.half_width else mpmath.mpf(1)
        lower = mpmath.ncdf((j - mpmath.mpf(0.5)) / scale) if j > -table.half_width else mpmath.mpf(0)
        return upper - lower


def sampled_weights(table: noise.DiscreteTable) -> list[int]:
    """How many of the 2^64 values of U give each j = -J..J, read off the prefix table and the
    thresholds in integers: a decided prefix gives its whole 2^48 to its bin; an ambiguous one is cut
    at the thresholds inside it, each piece going where `refine` sends its first value."""
    width = 1 << (64 - noise.PREFIX_BITS)
    counts = [0] * (2 * table.half_width + 1)
    thresholds = [int(t) for t in table.thresholds]
    for prefix, decided in enumerate(table.prefix_bins.tolist()):
        if decided != table.AMBIGUOUS:
            counts[decided] += width
            continue
        low, high = prefix * width, (prefix + 1) * width
        cuts = [low] + [t for t in thresholds if low < t < high] + [high]
        for start, stop in zip(cuts, cuts[1:]):
            if start == stop:  # an empty bin (a weight of 0 in the far tail): no U lands there
                continue
            piece = table.refine(np.array([prefix], np.uint64), np.array([start - low], np.uint64))
            assert table.refine(np.array([prefix], np.uint64), np.array([stop - 1 - low], np.uint64)) == piece
            counts[int(piece[0])] += stop - start
    return counts


@pytest.mark.parametrize("sigma", SIGMAS)
def test_integer_weights_are_the_exact_probabilities(sigma):
    table = noise.DiscreteTable(sigma)
    assert table.half_width == 255 + int(np.ceil(6 * 255 * sigma))
    weights = table.weights[:2 * table.half_width + 1]
    assert sum(weights) == 1 << 64 and min(weights) >= 0 and len(table.weights) == len(weights)
    # every 7th j and the lumped ends: within 1 of 2^64·P(j) (two roundings of ½ each)
    for j in [*range(-table.half_width, table.half_width + 1, 7), table.half_width]:
        with mpmath.workdps(60):
            assert abs(weights[j + table.half_width] - exact_probability(j, table) * mpmath.mpf(2) ** 64) <= 1
    # Monotone cumulative thresholds, and the law's symmetry survives the rounding
    assert weights == weights[::-1]


@pytest.mark.parametrize("sigma", [*SIGMAS, 1.0])
def test_prefix_table_and_refinement_hold_exactly_the_weights(sigma):
    table = noise.discrete_table(sigma)
    assert sampled_weights(table) == table.weights
    assert 0 < table.ambiguous_share < 0.03  # the table decides almost every value from 16 bits


def test_copies_past_their_refinement_budget_stay_exact_and_reproducible(monkeypatch):
    """A budget of 0 sends every ambiguous value to its copy's own stream: the law is the same
    (chi-square) and copy j is still the same in any batch."""
    monkeypatch.setattr(noise.DiscreteTable, "refinement_budget", lambda self, values: 0)
    clean = np.full((1, 16, 16), np.float32(128) / np.float32(255))
    whole = draw(60, clean, sigma=1.0, seed=3)
    assert np.array_equal(np.concatenate([draw(25, clean, 1.0, 0, 3), draw(35, clean, 1.0, 25, 3)]), whole)
    check_law(whole, 1.0)


def test_the_lumped_tails_change_no_noisy_image():
    """For every clean pixel 0..255, ±J (and every j past them) land on the clip bounds, so lumping
    the tails into ±J changes no noisy image; one step in, the clip no longer decides."""
    table = noise.discrete_table(0.25)
    x = np.arange(256)
    low, high = -table.tail, 255 + table.tail
    assert (np.clip(x - table.half_width, low, high) == low).all()
    assert (np.clip(x + table.half_width, low, high) == high).all()
    assert (x - table.half_width + 1 > low).any()  # one step in from the lump, the clip no longer decides


def draw(copies: int, clean: np.ndarray, sigma: float = 0.25, first: int = 0, seed: int = 0) -> np.ndarray:
    out = np.empty((copies, *clean.shape), np.float32)
    return noise.sampler("discrete", seed, 0, noise.ESTIMATION).fill(out, clean, sigma, first)


def test_draws_follow_the_law_chi_square():
    """A mid-grey image (no clipping within ±J of 128 matters here): the counts of j against the
    table's probabilities, bins with small expectations pooled; the seed is fixed."""
    clean = np.full((1, 16, 16), np.float32(128) / np.float32(255))
    check_law(draw(400, clean, 0.25), 0.25)


def check_law(noisy: np.ndarray, sigma: float) -> None:
    """Chi-square of the steps j of noisy copies of a mid-grey image against the table's law."""
    j = np.rint(noisy.astype(np.float64) * 255).astype(int).ravel() - 128
    table = noise.discrete_table(sigma)
    expected = table.probabilities() * j.size
    observed = np.bincount(j + table.half_width, minlength=len(expected))
    keep = expected >= 5
    pooled_observed = np.append(observed[keep], observed[~keep].sum())
    pooled_expected = np.append(expected[keep], expected[~keep].sum())
    assert scipy_stats.chisquare(pooled_observed, pooled_expected).pvalue > 1e-3
    assert abs(j.std() / 255 - sigma) < 0.01  # the discretized law's spread is σ's (plus 1/12 step²)


def test_the_sum_is_formed_in_integers_and_divided_once():
    rng = np.random.default_rng(2)
    clean = (rng.integers(0, 256, (3, 5, 5)) / np.float32(255)).astype(np.float32)
    out = draw(50, clean)
    s = np.rint(out.astype(np.float64) * 255)
    assert np.array_equal(out, (s / np.float32(255)).astype(np.float32))  # fl32(s / 255), nothing else
    assert np.array_equal(np.divide(s.astype(np.int32), np.float32(255), dtype=np.float32), out)
    table = noise.discrete_table(0.25)
    assert s.min() >= -table.tail and s.max() <= 255 + table.tail


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 5), (1, noise.BLOCK_VALUES + 3), (2, 101, 3)])
def test_copy_j_is_the_same_in_any_batch(shape):
    clean = (np.random.default_rng(0).integers(0, 256, shape) / np.float32(255)).astype(np.float32)
    whole = draw(7, clean, seed=4)
    for splits in ([0, 1, 7], [0, 3, 4, 7]):
        pieces = [draw(stop - start, clean, first=start, seed=4) for start, stop in zip(splits, splits[1:])]
        assert np.array_equal(np.concatenate(pieces), whole)


def test_off_grid_points_are_refused():
    assert noise.grid_integers(np.array([0.5], np.float32)) is None  # 127.5/255
    assert noise.grid_integers(np.array([1 / 255 + 1e-6], np.float32)) is None  # 2.6e-4 steps off
    assert noise.grid_integers(np.array([-1 / 255], np.float32)) is None
    k = np.arange(256)
    for spelling in (k / np.float32(255), k * np.float32(1 / 255)):  # video frames use the product
        assert noise.grid_integers(spelling.astype(np.float32)).tolist() == list(range(256))
    with pytest.raises(ValueError, match="1/255 grid"):
        draw(2, np.array([[[0.5]]], np.float32))


def reference_copy(clean_int: np.ndarray, sigma: float, copy: int, seed: int = 0, index: int = 0) -> np.ndarray:
    """Copy `copy` of the estimation noise, value by value in Python integers from DiscreteGaussian's
    stated definition: 16-bit lanes of the input's stream, the inverse of the integer CDF built from
    the weights (not the sampler's tables), and the ambiguous values' 48 low bits from the refinement
    stream at copy·B + k."""
    table = noise.discrete_table(sigma)
    d = clean_int.size
    cumulative = list(itertools.accumulate(table.weights))[:-1]  # C_1..C_2J, 2^64 where no U reaches
    width = 1 << 48

    def stream(*key):
        return np.random.PCG64DXSM(np.random.SeedSequence(seed, spawn_key=key))

    primary, refinement = stream(index, noise.ESTIMATION), stream(index, noise.ESTIMATION, 1)
    primary.advance(copy * -(-d // 4))
    budget = table.refinement_budget(d)
    refinement.advance(copy * budget)
    prefix_draws = primary.random_raw(-(-d // 4)).tolist()
    # the budget's draws, then the copy's own stream from its start
    low_draws = refinement.random_raw(budget).tolist() + stream(index, noise.ESTIMATION, 2, copy).random_raw(d).tolist()
    steps, ambiguous = [], 0
    for i, x in enumerate(clean_int.ravel().tolist()):
        prefix = (prefix_draws[i // 4] >> (16 * (i % 4))) & 0xFFFF
        u = prefix * width
        if bisect.bisect_right(cumulative, u) != bisect.bisect_right(cumulative, u + width - 1):
            u += low_draws[ambiguous] >> 16
            ambiguous += 1
        j = bisect.bisect_right(cumulative, u) - table.half_width
        steps.append(min(max(x + j, -table.tail), 255 + table.tail))
    return np.array(steps).reshape(clean_int.shape)


@pytest.mark.parametrize("budget, block", [(None, noise.BLOCK_VALUES), (3, 64)])
def test_copies_follow_the_definition_value_by_value(budget, block, monkeypatch):
    """At the real budget (about 8 ambiguous values of 23 reserved per copy), and with a budget of 3
    and copies cut into pieces of 64 values (so the ranks carry from piece to piece and the copies'
    own streams take over mid-copy)."""
    if budget is not None:
        monkeypatch.setattr(noise.DiscreteTable, "refinement_budget", lambda self, values: budget)
    monkeypatch.setattr(noise, "BLOCK_VALUES", block)
    clean_int = np.random.default_rng(5).integers(0, 256, (3, 10, 10))
    clean = (clean_int / np.float32(255)).astype(np.float32)
    out = draw(4, clean, sigma=1.0, first=3)
    integers = np.stack([reference_copy(clean_int, 1.0, copy) for copy in range(3, 7)])
    assert np.array_equal(out, np.divide(integers, np.float32(255), dtype=np.float32))


def draw_integers(copies: int, clean: np.ndarray, sigma: float, first: int = 0, seed: int = 0) -> np.ndarray:
    out = np.empty((copies, *clean.shape), np.int16)
    return noise.sampler("discrete", seed, 0, noise.ESTIMATION).fill_integers(out, clean, sigma, first)


@pytest.mark.parametrize("budget", [None, 0])
@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_integer_copies_are_the_float_copies_in_grid_steps(sigma, budget, monkeypatch):
    """fill_integers reads the same draws as fill: the same copies, as int16 steps; with a budget of
    0 too (every ambiguous value from its copy's own stream), and in any batch."""
    if budget is not None:
        monkeypatch.setattr(noise.DiscreteTable, "refinement_budget", lambda self, values: budget)
    clean_int = np.random.default_rng(6).integers(0, 256, (3, 17, 9))
    clean_int[0, 0, :2] = 0, 255  # the clip bounds' own pixels
    clean = (clean_int / np.float32(255)).astype(np.float32)
    floats, integers = draw(9, clean, sigma, seed=2), draw_integers(9, clean, sigma, seed=2)
    assert integers.dtype == np.int16
    assert np.array_equal(np.divide(integers, np.float32(255), dtype=np.float32), floats)
    pieces = [draw_integers(4, clean, sigma, 0, 2), draw_integers(5, clean, sigma, 4, 2)]
    assert np.array_equal(np.concatenate(pieces), integers)


def test_integer_copies_refuse_other_types():
    clean = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="int16"):
        noise.sampler("discrete", 0, 0, noise.ESTIMATION).fill_integers(np.empty((2, 1, 2, 2), np.int32), clean, 0.25)


# -- the phenomenon (Voráček & Hein 2023) on a crafted model ------------------------------------------

def grid_probe_model(path) -> str:
    """One pixel v in; class 1 when v·2^24 is an integer, else class 0. Under continuous noise added
    exactly that event has probability 0 at every x, but float32 sums x + z land on the 2^-24 grid
    whenever |x + z| ≥ 0.5 or x = 1 (x's own bits), and rarely near 0: float smoothing turns bits of
    the arithmetic into votes."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["scaled"]),
         helper.make_node("Floor", ["scaled"], ["whole"]),
         helper.make_node("Equal", ["whole", "scaled"], ["on"]),
         helper.make_node("Cast", ["on"], ["e"], to=TensorProto.FLOAT),
         helper.make_node("Reshape", ["e", "shape"], ["e2"]),
         helper.make_node("Sub", ["one", "e2"], ["not_e"]),
         helper.make_node("Concat", ["not_e", "e2"], ["logits"], axis=1)],
        "grid_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [2.0 ** 24]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
         helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def pixel(k: int) -> np.ndarray:
    return np.full((1, 1, 1), np.float32(k) / np.float32(255), np.float32)


def test_float_sampler_certifies_past_a_point_of_another_class(tmp_path):
    """x0 = 1: every float copy votes 1, so Cohen certifies 0.25·Φ⁻¹(0.001^(1/n)) = 0.95 at n = 100,000;
    yet x1 = 26/255, 0.898 away, has smoothed prediction 0 (37% of float copies vote 1). Both from
    srtool's own float sampler and arithmetic: the certificate is false for the float smoothed
    classifier, which is not the one the theorem is about."""
    smooth = srtool.Smooth(grid_probe_model(tmp_path / "probe.onnx"), sigma=0.25, noise="host", threads=1)
    at_x0 = smooth.certify(pixel(255), n=100_000, alpha=0.001)
    at_x1 = smooth.predict(pixel(26), n=10_000, alpha=0.001)
    distance = (255 - 26) / 255
    assert int(at_x0.label) == 1 and float(at_x0.radius) > distance
    assert int(at_x1.label) == 0  # a confident other class inside the certified ball


def test_discrete_sampler_finds_no_such_pair(tmp_path):
    """The same model and x0 with --noise discrete: the radius is smaller (the base classifier now
    sees only grid values, on which the event is a fixed function of the sum), and no grid point
    within it has another confident smoothed prediction."""
    smooth = srtool.Smooth(grid_probe_model(tmp_path / "probe.onnx"), sigma=0.25, noise="discrete", threads=1)
    at_x0 = smooth.certify(pixel(255), n=100_000, alpha=0.001)
    assert int(at_x0.label) == 1
    radius = float(at_x0.radius)
    inside = [k for k in range(256) if (255 - k) / 255 < radius]
    assert 60 < len(inside) < 230  # a real ball: about half the grid, not all of it
    for k in inside:
        label = int(smooth.predict(pixel(k), n=1000, alpha=0.001, index=k).label)
        assert label in (1, -1), f"x1 = {k}/255 is predicted {label} inside the certified ball"


# -- options -----------------------------------------------------------------------------------------

def test_cli_runs_records_and_marks_the_sampler(tmp_path, capsys, prototype_run):
    model, data = prototype_run(4)
    out = tmp_path / "d.parquet"
    code, _, _ = srtool_cli("certify", "--model", model, "--images", data, "--n0", 10, "--n", 50, "--threads", 1,
                            "--noise", "discrete", "--out", out, "--quiet", capsys=capsys)
    assert code == 0
    table, config = read(out)
    assert config["noise"] == "discrete" and config["sampler"]["kind"] == "discrete"
    assert config["sampler"]["clip"] == [-383, 255 + 383] and config["sampler"]["rounded_on_load"] is False
    assert table.column("error").null_count == table.num_rows
    code, report_out, _ = srtool_cli("report", out, capsys=capsys)
    assert code == 0 and "float-noise" not in report_out
    float_out = tmp_path / "f.parquet"
    code, _, err = srtool_cli("certify", "--model", model, "--images", data, "--n0", 10, "--n", 50, "--threads", 1,
                              "--noise", "host", "--out", float_out, "--quiet", capsys=capsys)
    assert code == 0 and "warning: float noise sampler" in err
    assert read(float_out)[1]["sampler"] == {"kind": "float", "radii_hold_in_floating_point": False}
    code, report_out, report_err = srtool_cli("report", out, float_out, capsys=capsys)
    assert code == 0 and report_out.count("float-noise") == 1 and "float-noise:" in report_err


def test_resized_images_are_rounded_to_the_grid(tmp_path, capsys, make_linear):
    """--image-size makes off-grid pixels: they are rounded on load, and the metadata says so."""
    model = make_linear(np.ones((64, 2)) * [1, -1], np.zeros(2), (1, 8, 8), metadata={"srtool.sigma": 0.25})
    x = np.random.default_rng(0).integers(0, 256, (3, 11, 11)).astype(np.uint8)
    np.savez(tmp_path / "x.npz", x=x, y=np.zeros(3, int))
    out = tmp_path / "r.parquet"
    code, _, err = srtool_cli("certify", "--model", model, "--images", tmp_path / "x.npz", "--image-size", 8,
                              "--n0", 10, "--n", 20, "--threads", 1, "--noise", "discrete", "--out", out,
                              "--quiet", capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert config["sampler"]["rounded_on_load"] is True
    assert table.column("error").null_count == table.num_rows  # every resized image reached the sampler


def test_off_grid_data_and_other_noise_spaces_are_one_line_errors(tmp_path, capsys, make_linear):
    model = make_linear(np.ones((64, 2)) * [1, -1], np.zeros(2), (1, 8, 8), metadata={"srtool.sigma": 0.25})
    np.savez(tmp_path / "f.npz", x=np.full((2, 8, 8), 0.3, np.float32), y=np.zeros(2, int))  # 76.5/255
    code, _, err = srtool_cli("certify", "--model", model, "--images", tmp_path / "f.npz", "--n", 20,
                              "--noise", "discrete", "--out", tmp_path / "o.parquet", capsys=capsys)
    assert code == 2 and "1/255 grid" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.parquet").exists()
    np.savez(tmp_path / "u.npz", x=np.zeros((2, 16, 16), np.uint8), y=np.zeros(2, int))
    code, _, err = srtool_cli("certify", "--model", model, "--images", tmp_path / "u.npz", "--n", 20,
                              "--patches", 4, "--patch-size", 8, "--noise-space", "patch", "--noise", "discrete",
                              "--out", tmp_path / "p.parquet", capsys=capsys)
    assert code == 2 and "--noise-space input" in err and len(err.strip().splitlines()) == 1


def test_api_refuses_off_grid_floats(make_linear):
    model = make_linear(np.ones((64, 2)) * [1, -1], np.zeros(2), (1, 8, 8))
    smooth = srtool.Smooth(model, sigma=0.25, noise="discrete", threads=1)
    with pytest.raises(UsageError, match="1/255 grid"):
        smooth.certify(np.full((1, 8, 8), 0.3, np.float32), n0=10, n=20)
    assert smooth.certify(np.full((1, 8, 8), 77, np.uint8), n0=10, n=20).n == 20


def test_grey_video_frames_are_rounded_to_the_grid(tmp_path, capsys):
    """A one-channel video model: srtool makes luma frames (off the grid) and rounds them with
    --noise discrete, so every video is certified and the metadata says the frames were rounded."""
    from test_video import mlp_model, smooth_frames, write_video

    model = mlp_model(tmp_path / "grey.onnx", in_shape=(1, 4, 8, 8), classes=3)
    videos = tmp_path / "videos" / "a"
    for i in range(2):
        write_video(videos / f"v{i}.mp4", smooth_frames(6, 8, 8, seed=i))
    out = tmp_path / "g.parquet"
    code, _, err = srtool_cli("video", "--model", model, "--videos", tmp_path / "videos", "--n0", 10, "--n", 20,
                              "--threads", 1, "--noise", "discrete", "--out", out, "--quiet", capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert config["sampler"]["rounded_on_load"] is True
    assert table.num_rows == 2 and table.column("error").null_count == 2
