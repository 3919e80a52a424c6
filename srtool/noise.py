"""Seeded Gaussian noise on the host: float Box–Muller (Gaussian, `--noise host`) and the exact
discretized Gaussian on the 1/255 grid (DiscreteGaussian, the default on grid inputs), one factory (sampler).

Every input gets its own independent streams, derived from (seed, input index) with numpy's
SeedSequence, so an input's noise does not depend on which inputs ran before it, on the batch size,
on the number of workers or on a resume. Separate streams for the selection sample, the estimation
sample and the patch positions keep the n0 and n samples independent (Cohen's CERTIFY needs fresh
samples for the estimate) and make the noise of one stage independent of the other stage's size.

The normals come from the Box–Muller transform, vectorized: for independent uniforms u in (0, 1]
and v in [0, 1), R = sqrt(-2 ln u) and θ = 2πv give two independent N(0, 1) values R·cos θ and
R·sin θ. It has no rejection step, so numpy's SIMD log1p/cos/sin run on whole arrays. The largest
single cost is numpy's bit generator (about 2 ns per 64-bit draw, a function call each), so one
draw feeds one pair: its top 40 bits give the radius, its low 24 bits the angle. Half the draws of
two 53-bit uniforms per pair: 1.3–1.4 times faster in CPU time (benchmarks/RESULTS.md), which
matters because for small models noise is the main cost besides the model.

What the generator guarantees (docs/soundness.md quotes this):
- u = 1 - k·2^-40 with k the draw's top 40 bits, so u lies on a grid of 2^-40 in [2^-40, 1]: the
  radius is the exact Box–Muller radius of a uniform rounded to 40 bits. The CDF of R is the exact
  Rayleigh CDF at every grid point and within 2^-40 of it in between (Kolmogorov distance 2^-40).
  The tail is cut at R = sqrt(80 ln 2) = 7.45: the exact law has mass 2^-40 beyond it per pair,
  so the exact noise of a copy of d values has a pair beyond the cut with probability at most
  ceil(d/2)·2^-40, and no vote probability moves by more through the cut (d = 784: 3.6e-10;
  3×224×224: 6.8e-8; 16×3×112×112: 2.7e-7), against 1 - p_lower ≥ 6.9e-5 for any certificate
  of n = 100,000 copies at α = 0.001.
- θ = a·fl32(2π·2^-24) with a the draw's low 24 bits, one float32 rounding: a grid of 3.7e-7 rad.
  Close to a uniform angle in law, but readable: where x = 0 a pair reaches the model unchanged and
  its angle lies on this grid, which a Gaussian pair's never does, so a crafted model gets false
  certificates (tests/test_float_attack.py). No float sampler is sound against such a model.
- ln u is log1p(-k·2^-40) in float64 (exact argument, accurate near u = 1, the small radii, and
  near u = 0, the tail); σ²·(-2 ln u) is rounded to float32 once, then sqrt, cos and sin run in
  float32 (numpy's SIMD code: within a few float32 ulps), as the noisy input is float32 anyway.
The float sum clean + σz is not the exact Gaussian of the theorem either way (Voráček & Hein 2023).

Copy j of a stream reads a fixed number of draws, ceil(L/2) per segment of L ≤ SEGMENT of its d
values (cosines fill the segment's first ceil(L/2) values, sines the rest). So copy j's noise starts
at a known place in the stream, and PCG64DXSM can jump there: the noise of copy j is a fixed
function of (seed, input index, purpose, j), whatever batch or sampling loop draws it, and loops
draw their batches in parallel. The values can differ in the last float32 bits between machines
whose numpy uses other SIMD code for log1p, cos or sin.

DiscreteGaussian reads the same per-input streams, one 64-bit draw per value, and draws the grid
step j of each pixel from an integer alias table whose weights are the exact probabilities to
2^-64 (DiscreteTable); the noisy value is (x_int + j, clipped) / 255, formed in integers and
divided once, so certificates hold in floating point (docs/soundness.md).

ORT's CPU RandomNormal must never be used for certification: its engine has period 2^31.
"""

from __future__ import annotations

import threading

import numpy as np

SELECTION, ESTIMATION, POSITIONS = 0, 1, 2
SEGMENT = 1 << 16  # part of the noise's definition: changing it changes every seeded result
RADIUS_BITS, ANGLE_BITS = 40, 24  # of each 64-bit draw: the top 40 bits, the low 24 bits
ANGLE_MASK = np.uint64((1 << ANGLE_BITS) - 1)
ANGLE_STEP = np.float32(2.0 * np.pi / (1 << ANGLE_BITS))  # 2π·2^-24 rounded to float32
BLOCK = SEGMENT  # values per vectorized step (whole copies, or one segment): speed only, not values

_scratch = threading.local()  # per-thread work arrays, reused: fresh large arrays cost page faults


def stream(seed: int, index: int, purpose: int) -> np.random.Generator:
    """A generator for one purpose of one input (POSITIONS: random patch positions)."""
    return np.random.Generator(np.random.SFC64(_seed_sequence(seed, index, purpose)))


def _seed_sequence(seed: int, index: int, purpose: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(index, purpose))


class Gaussian:
    """The Gaussian noise of one input for one purpose (SELECTION or ESTIMATION), copy by copy."""

    def __init__(self, seed: int, index: int, purpose: int):
        self._start = np.random.PCG64DXSM(_seed_sequence(seed, index, purpose)).state

    def fill(self, out: np.ndarray, clean: np.ndarray, sigma: float, first_copy: int = 0) -> np.ndarray:
        """Write copies first_copy, first_copy+1, … of clean + sigma·z into the preallocated `out`."""
        if not out.flags.c_contiguous:
            raise ValueError("noise goes into a C-contiguous batch buffer")
        copies = out.reshape(len(out), -1)
        clean = clean.reshape(-1)
        values = copies.shape[1]
        bits = _positioned(self._start, first_copy * draws_per_copy(values))
        if values <= SEGMENT:  # small copies: whole copies in blocks of about BLOCK values, even sizes
            blocks = -(-len(copies) // max(1, BLOCK // values))
            per_block = -(-len(copies) // blocks) if blocks else 1
            for start in range(0, len(copies), per_block):
                rows = copies[start:start + per_block]
                gaussian_rows(rows, clean, sigma, bits.random_raw(len(rows) * ((values + 1) // 2)))
            return out
        for copy in copies:  # large copies (videos): segment by segment
            for start in range(0, values, SEGMENT):
                segment = copy[None, start:start + SEGMENT]
                gaussian_rows(segment, clean[start:start + SEGMENT], sigma,
                              bits.random_raw((segment.shape[1] + 1) // 2))
        return out


def _positioned(start: dict, draws: int) -> np.random.PCG64DXSM:
    """A stream's bit generator (its state at the start), positioned `draws` 64-bit draws later."""
    bit_generator = np.random.PCG64DXSM(0)
    bit_generator.state = start
    bit_generator.advance(draws)
    return bit_generator


def draws_per_copy(values: int) -> int:
    """64-bit draws that one copy of `values` values reads: one per pair, per segment."""
    whole, rest = divmod(values, SEGMENT)
    return whole * (SEGMENT // 2) + (rest + 1) // 2


def gaussian_rows(rows: np.ndarray, clean: np.ndarray, sigma: float, draws: np.ndarray) -> None:
    """rows[i] = clean + sigma · z_i for each row (one segment each), by Box–Muller from `draws`
    (uint64, ceil(length/2) per row, overwritten): draw i's pair fills values i and i + ceil(length/2)."""
    count, length = rows.shape
    pairs = (length + 1) // 2
    log_u, radius, angle = (array[:count * pairs] for array in _work_arrays(count * pairs))

    # θ = a·(2π·2^-24) in float32, a the low 24 bits (exact in float32): one rounding of the product.
    angle_bits = angle.view(np.int32)
    np.bitwise_and(draws, ANGLE_MASK, out=angle_bits, casting="unsafe")
    np.multiply(angle_bits, ANGLE_STEP, out=angle, dtype=np.float32, casting="unsafe")

    # u = 1 - k·2^-40 in [2^-40, 1], k the top 40 bits: ln u = log1p(-k·2^-40), an exact argument.
    np.right_shift(draws, np.uint64(64 - RADIUS_BITS), out=draws)
    np.multiply(draws.view(np.int64), -2.0 ** -RADIUS_BITS, out=log_u)  # k < 2^40: the same as int64
    np.log1p(log_u, out=log_u)
    np.multiply(log_u, -2.0 * sigma * sigma, out=radius, casting="unsafe")
    np.sqrt(radius, out=radius)  # sigma · sqrt(-2 ln u)

    radius, angle = radius.reshape(count, pairs), angle.reshape(count, pairs)
    sines = length - pairs
    np.cos(angle, out=rows[:, :pairs])
    np.sin(angle[:, :sines], out=rows[:, pairs:])
    if sines == pairs:  # even length: both halves times the radius in one call
        rows.reshape(count, 2, pairs)[:] *= radius[:, None, :]
    else:
        rows[:, :pairs] *= radius
        rows[:, pairs:] *= radius[:, :sines]
    rows += clean


def _work_arrays(pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's ln u (float64), radius and angle (float32) arrays, one value per pair."""
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None or len(arrays[0]) < pairs:
        size = max(pairs, BLOCK // 2)
        arrays = (np.empty(size), np.empty(size, np.float32), np.empty(size, np.float32))
        _scratch.arrays = arrays
    return arrays


# -- the exact discretized Gaussian on the 8-bit grid (`--noise discrete`, docs/soundness.md) ------

GRID = 255  # inputs are x_int / 255, x_int in 0..255
TAIL_SIGMAS = 6  # the noisy image is clipped to [-T, 255 + T] grid steps, T = ceil(6·255σ)
CDF_DIGITS = 40  # decimal digits of the CDF behind the thresholds: errors far below 2^-64


class DiscreteTable:
    """An exact sampler of j, the discretized Gaussian in grid steps, from one 64-bit draw each.

    P(j) = Φ((j + ½)/(255σ)) − Φ((j − ½)/(255σ)), with the tails j ≤ −J and j ≥ J lumped into ±J,
    J = 255 + T: every such j takes any pixel 0..255 past the clip bound, so the noisy image after
    the clip is the same as with the exact j. The weights are integers w_j = C_j − C_{j−1} with
    C_j = round(2^64·CDF(j + ½)) from a 40-digit CDF (mpmath), so they sum to 2^64 exactly and
    each P(j) is met within 2^-64. An alias table of 2^b buckets holds them exactly in integers:
    a draw's top b bits pick bucket i, and the draw itself against the bucket's cut picks i or its
    alias, so P(sampled j) = w_j / 2^64 exactly.
    """

    def __init__(self, sigma: float):
        import mpmath

        self.sigma = float(sigma)
        self.tail = int(np.ceil(TAIL_SIGMAS * GRID * self.sigma))  # T
        self.half_width = GRID + self.tail  # J
        size = 2 * self.half_width + 1
        self.bits = max(1, int(size - 1).bit_length())
        buckets = 1 << self.bits
        with mpmath.workdps(CDF_DIGITS):
            scale = mpmath.mpf(GRID) * mpmath.mpf(self.sigma)
            top = mpmath.mpf(2) ** 64
            cumulative = [0] + [int(mpmath.nint(top * mpmath.ncdf((j + mpmath.mpf(0.5)) / scale)))
                                for j in range(-self.half_width, self.half_width)] + [1 << 64]
        self.weights = [b - a for a, b in zip(cumulative, cumulative[1:])]  # w_j for j = -J..J
        self.weights += [0] * (buckets - size)  # empty buckets past the table
        capacity = (1 << 64) >> self.bits
        cut, alias = [capacity] * buckets, list(range(buckets))
        left = list(self.weights)
        small = [i for i in range(buckets) if left[i] < capacity]
        large = [i for i in range(buckets) if left[i] > capacity]
        while small and large:  # Walker/Vose in integers: each bucket gets its own mass and one alias
            s, l = small.pop(), large[-1]
            cut[s], alias[s] = left[s], l
            left[l] -= capacity - left[s]
            if left[l] < capacity:
                large.pop()
                small.append(l)
            elif left[l] == capacity:
                large.pop()
        # One 64-bit word per bucket: the cut (draws whose low 64-b bits lie below it keep the bucket's
        # own j) above b bits of alias. A full bucket is written as cut capacity-1 with itself as
        # alias, so the cut fits in 64-b bits and the last value still picks the bucket's own j.
        self.packed = np.array([(min(cut[i], capacity - 1) << self.bits) | (alias[i] if cut[i] < capacity else i)
                                for i in range(buckets)], dtype=np.uint64)

    def probabilities(self) -> np.ndarray:
        """The probability the table gives each j = -J..J, as float64 (exactly w_j / 2^64, rounded)."""
        return np.array(self.weights[:2 * self.half_width + 1], dtype=np.float64) / 2.0 ** 64

    def sample(self, draws: np.ndarray) -> np.ndarray:
        """j + J (0..2J, int64) for each uint64 draw (at most DISCRETE_BLOCK); `draws` is overwritten."""
        bucket, entry, cut, own = (array[:len(draws)] for array in _discrete_work_arrays())
        np.right_shift(draws, np.uint64(64 - self.bits), out=bucket)
        np.take(self.packed, bucket.view(np.int64), out=entry)
        np.bitwise_and(draws, np.uint64((1 << (64 - self.bits)) - 1), out=draws)  # the draw within its bucket
        np.right_shift(entry, np.uint64(self.bits), out=cut)
        np.less(draws, cut, out=own)
        alias = np.bitwise_and(entry, np.uint64((1 << self.bits) - 1), out=entry).view(np.int64)
        steps = bucket.view(np.int64)
        steps -= alias  # own ? bucket : alias, as alias + own·(bucket - alias)
        steps *= own
        steps += alias
        return steps


DISCRETE_BLOCK = 15_000  # values per step: every array under glibc's 128 KiB mmap threshold


def _discrete_work_arrays() -> tuple[np.ndarray, ...]:
    """This thread's bucket, table entry, cut (uint64) and keep (bool) arrays for DiscreteTable.sample."""
    arrays = getattr(_scratch, "discrete", None)
    if arrays is None:
        arrays = tuple(np.empty(DISCRETE_BLOCK, dtype) for dtype in (np.uint64, np.uint64, np.uint64, bool))
        _scratch.discrete = arrays
    return arrays


_tables: dict[float, DiscreteTable] = {}
_tables_lock = threading.Lock()


def discrete_table(sigma: float) -> DiscreteTable:
    """The table for σ, computed once per process (a few hundred ms of mpmath)."""
    with _tables_lock:
        if sigma not in _tables:
            _tables[sigma] = DiscreteTable(sigma)
        return _tables[sigma]


GRID_TOLERANCE = 1e-4  # in grid steps: float32 k/255 however computed (k·fl(1/255) is 2e-5 off)


def grid_integers(clean: np.ndarray) -> np.ndarray | None:
    """x_int (int32, 0..255) where clean is k/255 as float32 however computed (within GRID_TOLERANCE
    of a grid step), or None when it is off the 1/255 grid. The noisy values are made from x_int
    alone, so which float32 spelling of k/255 the input used does not matter."""
    steps = clean.astype(np.float64) * GRID
    x_int = np.rint(steps)
    if x_int.size and (x_int.min() < 0 or x_int.max() > GRID or np.abs(steps - x_int).max() > GRID_TOLERANCE):
        return None
    return x_int.astype(np.int32)


class DiscreteGaussian:
    """Exact discretized Gaussian noise on the 1/255 grid for one input and purpose, copy by copy.

    The same stream and the same fill() as Gaussian, one 64-bit draw per value (copy j starts at
    draw j·d): the noisy value is clip(x_int + j, -T, 255 + T) / 255, the sum formed in integers
    and divided once in float32, so the model's input is a function of the sum alone.
    """

    def __init__(self, seed: int, index: int, purpose: int):
        self._start = np.random.PCG64DXSM(_seed_sequence(seed, index, purpose)).state  # Gaussian's stream

    def fill(self, out: np.ndarray, clean: np.ndarray, sigma: float, first_copy: int = 0) -> np.ndarray:
        if not out.flags.c_contiguous:
            raise ValueError("noise goes into a C-contiguous batch buffer")
        x_int = grid_integers(clean)
        if x_int is None:
            raise ValueError("--noise discrete needs inputs on the 1/255 grid")
        table = discrete_table(sigma)
        copies = out.reshape(len(out), -1)
        values = copies.shape[1]
        x_shifted = x_int.reshape(-1) - table.half_width  # + (j + J) below gives x_int + j
        bits = _positioned(self._start, first_copy * values)
        # Draws run copy-major, one per value, so blocks may cut copies anywhere; the clean integers
        # repeated past one block's length line up with a block starting at any value of a copy.
        flat, x_repeated = copies.reshape(-1), np.tile(x_shifted, DISCRETE_BLOCK // values + 2)
        for start in range(0, flat.size, DISCRETE_BLOCK):
            rows = flat[start:start + DISCRETE_BLOCK]
            noisy = table.sample(bits.random_raw(rows.size))
            offset = start % values
            noisy += x_repeated[offset:offset + rows.size]
            np.clip(noisy, -table.tail, GRID + table.tail, out=noisy)
            np.divide(noisy, np.float32(GRID), out=rows, dtype=np.float32, casting="unsafe")
        return out


KINDS = ("gaussian", "discrete")


def sampler(kind: str, seed: int, index: int, purpose: int) -> Gaussian | DiscreteGaussian:
    """The noise of one input for one purpose: "gaussian" (float Box–Muller) or "discrete"."""
    if kind == "discrete":
        return DiscreteGaussian(seed, index, purpose)
    if kind != "gaussian":
        raise ValueError(f"unknown noise sampler {kind!r}")
    return Gaussian(seed, index, purpose)
