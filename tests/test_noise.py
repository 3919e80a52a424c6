"""The host noise: Gaussian in distribution, and copy j's noise fixed whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from srtool import noise


def draw(copies: int, shape: tuple[int, ...], seed: int = 0, sigma: float = 1.0,
         clean: np.ndarray | None = None, first: int = 0, purpose: int = noise.ESTIMATION) -> np.ndarray:
    clean = np.zeros(shape, np.float32) if clean is None else clean
    out = np.empty((copies, *shape), np.float32)
    return noise.Gaussian(seed, 0, purpose).fill(out, clean, sigma, first)


def test_values_are_standard_normal():
    # Kolmogorov–Smirnov on 20 independent streams: the p-values must look uniform, not just pass once.
    p_values = [stats.kstest(draw(200, (1, 28, 28), seed).ravel(), "norm").pvalue for seed in range(20)]
    assert stats.kstest(p_values, "uniform").pvalue > 1e-3
    z = draw(5000, (3, 7, 11), seed=99).ravel()  # odd length: the last pair of each copy keeps its cosine
    assert abs(z.mean()) < 5 * (1 / np.sqrt(z.size))
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    tails = (np.abs(z) > 3).sum()  # the tails are there, as often as they should be
    expected = z.size * 2 * stats.norm.sf(3)
    assert abs(tails - expected) < 5 * np.sqrt(expected)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / z.size)


def test_cosine_and_sine_halves_are_independent():
    z = draw(20000, (1, 10, 10), seed=3).reshape(20000, 100)
    cosines, sines = z[:, :50], z[:, 50:]  # the two values of each Box–Muller pair
    for a, b in [(cosines, sines), (cosines ** 2, sines ** 2)]:
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / np.sqrt(a.size)


def test_sigma_and_clean_point():
    clean = np.linspace(0, 1, 49, dtype=np.float32).reshape(1, 7, 7)
    out = draw(4000, (1, 7, 7), seed=5, sigma=0.25, clean=clean)
    assert np.array_equal(out - clean, draw(4000, (1, 7, 7), seed=5, sigma=0.25, clean=clean) - clean)
    z = (out - clean) / 0.25
    assert abs(z.std() - 1) < 0.01 and np.abs(z.mean(axis=0)).max() < 0.1


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 5, 7), (3, 150, 151), (2, noise.SEGMENT + 1)])
def test_copy_j_is_the_same_in_any_batch(shape):
    """Large copies (more than SEGMENT values, odd remainder) included: any split of the copies into
    calls, at any first copy, gives the same values as one call."""
    copies = 7
    whole = draw(copies, shape, seed=11)
    for splits in ([0, 1, 7], [0, 3, 4, 7], [0, 6, 7]):
        pieces = [draw(stop - start, shape, seed=11, first=start) for start, stop in zip(splits, splits[1:])]
        assert np.array_equal(np.concatenate(pieces), whole)


def test_streams_differ_by_seed_index_and_purpose():
    shape = (1, 8, 8)
    base = draw(4, shape, seed=1)
    assert not np.array_equal(base, draw(4, shape, seed=2))
    assert not np.array_equal(base, draw(4, shape, seed=1, purpose=noise.SELECTION))
    other_index = noise.Gaussian(1, 1, noise.ESTIMATION).fill(np.empty((4, *shape), np.float32),
                                                              np.zeros(shape, np.float32), 1.0)
    assert not np.array_equal(base, other_index)
    assert not np.array_equal(base[1:], draw(3, shape, seed=1))  # copies 1.. are not copies 0..


def test_non_contiguous_buffer_is_refused():
    out = np.empty((4, 1, 8, 8), np.float32)[:, :, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        noise.Gaussian(0, 0, noise.ESTIMATION).fill(out, np.zeros((1, 4, 8), np.float32), 1.0)


def reference(seed: int, index: int, purpose: int, copies: int, first: int, values: int, sigma: float) -> np.ndarray:
    """The generator's definition, written out in float64 from the stream's raw 64-bit draws: one draw
    per pair, radius from its top 40 bits, angle from its low 24; per segment cosines then sines."""
    bits = np.random.PCG64DXSM(np.random.SeedSequence(seed, spawn_key=(index, purpose)))
    bits.advance(first * noise.draws_per_copy(values))
    out = np.empty((copies, values))
    for copy in out:
        for start in range(0, values, noise.SEGMENT):
            segment = copy[start:start + noise.SEGMENT]
            pairs = (len(segment) + 1) // 2
            draws = bits.random_raw(pairs)
            k, a = (draws >> np.uint64(24)).astype(np.float64), (draws & np.uint64(2 ** 24 - 1)).astype(np.float64)
            radius = sigma * np.sqrt(-2 * np.log1p(-k / 2 ** 40))
            angle = 2 * np.pi * a / 2 ** 24
            segment[:pairs] = radius * np.cos(angle)
            segment[pairs:] = (radius * np.sin(angle))[:len(segment) - pairs]
    return out


@pytest.mark.parametrize("shape, copies, first", [((1, 5, 7), 3, 2), ((2, 8), 1, 0), ((1, noise.SEGMENT + 3), 2, 1)])
def test_values_are_the_definition(shape, copies, first):
    """Against an independent float64 rendering of the definition (docs/soundness.md): only the float32
    rounding of the radius, the angle, cos and sin separates them, a few ulps of values of about 1."""
    values = int(np.prod(shape))
    got = draw(copies, shape, seed=7, sigma=0.5, first=first).reshape(copies, values)
    want = reference(7, 0, noise.ESTIMATION, copies, first, values, 0.5)
    assert np.abs(got - want).max() < 2e-6


def test_radius_is_cut_at_the_40_bit_grid():
    """The largest radius (k = 2^40 - 1, u = 2^-40) is sqrt(80 ln 2) = 7.447 and the smallest is 0
    (k = 0): extreme draws give finite values, and nothing beyond the stated tail cut."""
    top = np.uint64(((1 << 40) - 1) << 24)
    draws = np.array([top, top | np.uint64(1 << 22), 0, np.uint64(1 << 22)], dtype=np.uint64)
    rows = np.zeros((1, 8), np.float32)
    noise.gaussian_rows(rows, np.zeros(8, np.float32), 1.0, draws)
    cut = np.sqrt(80 * np.log(2))
    # angle 0 and π/2 (a = 2^22 is a quarter turn): cosine half, then sine half
    np.testing.assert_allclose(rows[0], [cut, 0, 0, 0, 0, cut, 0, 0], atol=2e-6)
    assert np.abs(draw(2000, (1, 28, 28), seed=1)).max() <= np.float32(cut)
