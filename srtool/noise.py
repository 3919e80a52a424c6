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

DiscreteGaussian reads the same per-input streams, 16 bits per value, and draws the grid step j of
each pixel by inverting the integer CDF whose steps are the exact probabilities to 2^-64
(DiscreteTable): a table over the 16-bit prefix decides almost every value, the few ambiguous
prefixes draw 48 more bits from a second stream; the noisy value is (x_int + j, clipped) / 255,
formed in integers and divided once (or kept as int16 grid steps for a device), so certificates
hold in floating point (docs/soundness.md).

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
    """The exact law of j, the discretized Gaussian in grid steps, and its fast exact sampler.

    P(j) = Φ((j + ½)/(255σ)) − Φ((j − ½)/(255σ)), with the tails j ≤ −J and j ≥ J lumped into ±J,
    J = 255 + T: every such j takes any pixel 0..255 past the clip bound, so the noisy image after
    the clip is the same as with the exact j. The weights are integers w_j = C_j − C_{j−1} with
    C_j = round(2^64·CDF(j + ½)) from a 40-digit CDF (mpmath), so they sum to 2^64 exactly and
    each P(j) is met within 2^-64.

    Sampling inverts the integer CDF: a uniform 64-bit U falls in bin k (j = k − J) when
    C_{k−1} ≤ U < C_k, so P(k) = w_k / 2^64 exactly. U is never drawn whole where it need not be:
    its top 16 bits (the prefix) alone decide the bin unless one of the 2J internal thresholds lies
    strictly inside the prefix's interval [p·2^48, (p+1)·2^48). `prefix_bins[p]` is that bin, or
    AMBIGUOUS for the few prefixes a threshold splits (0.4% of the mass at σ = 0.12, 2.6% at σ = 1);
    only those draw U's low 48 bits and search the thresholds (`refine`). Prefix and low bits are
    independent uniform bits, so U is uniform on 0..2^64−1 either way (docs/soundness.md).
    """

    AMBIGUOUS = -1

    def __init__(self, sigma: float):
        import mpmath

        self.sigma = float(sigma)
        self.tail = int(np.ceil(TAIL_SIGMAS * GRID * self.sigma))  # T
        self.half_width = GRID + self.tail  # J
        with mpmath.workdps(CDF_DIGITS):
            scale = mpmath.mpf(GRID) * mpmath.mpf(self.sigma)
            top = mpmath.mpf(2) ** 64
            cumulative = [0] + [int(mpmath.nint(top * mpmath.ncdf((j + mpmath.mpf(0.5)) / scale)))
                                for j in range(-self.half_width, self.half_width)] + [1 << 64]
        self.weights = [b - a for a, b in zip(cumulative, cumulative[1:])]  # w_j for j = -J..J
        # The internal thresholds C_k (k = 1..2J) below 2^64; one that rounds to 2^64 closes bins no
        # 64-bit U reaches. The bin of U is the number of thresholds ≤ U.
        self.thresholds = np.array([c for c in cumulative[1:-1] if c < 1 << 64], dtype=np.uint64)
        starts = np.arange(1 << PREFIX_BITS, dtype=np.uint64) << np.uint64(64 - PREFIX_BITS)
        first = np.searchsorted(self.thresholds, starts, side="right")
        last = np.searchsorted(self.thresholds, starts + np.uint64((1 << (64 - PREFIX_BITS)) - 1), side="right")
        # int16 where every x_int + bin fits (σ up to about 10), so the gathers move half the bytes
        self.dtype = np.int16 if GRID + 2 * self.half_width < 2**15 else np.int32
        self.prefix_bins = np.where(first == last, first, self.AMBIGUOUS).astype(self.dtype)
        self.ambiguous_share = float(np.mean(first != last))  # of the prefixes, each of mass 2^-16
        # clip(x_int + j, -T, 255 + T) / 255 in float32 for every x_int + bin = x_int + j + J: the sum is
        # formed in integers and divided once, here.
        sums = np.clip(np.arange(GRID + 2 * self.half_width + 1) - self.half_width, -self.tail, GRID + self.tail)
        self.noisy_values = np.divide(sums, np.float32(GRID), dtype=np.float32)
        # the same sums as int16 grid steps (fill_integers), where they fit: 255 + T ≤ 32,767, σ ≤ 21
        self.noisy_integers = sums.astype(np.int16) if GRID + self.tail <= np.iinfo(np.int16).max else None

    def probabilities(self) -> np.ndarray:
        """The probability of each j = -J..J, as float64 (exactly w_j / 2^64, rounded)."""
        return np.array(self.weights, dtype=np.float64) / 2.0 ** 64

    def refine(self, prefixes: np.ndarray, low_bits: np.ndarray) -> np.ndarray:
        """The bins of U = prefix·2^48 + low bits (uint64 each, low bits < 2^48): the exact search."""
        whole = (prefixes.astype(np.uint64) << np.uint64(64 - PREFIX_BITS)) | low_bits
        return np.searchsorted(self.thresholds, whole, side="right")

    def refinement_budget(self, values: int) -> int:
        """Refinement draws reserved per copy of `values` values: the expected count of ambiguous values
        and a wide margin (a copy that needs more draws the rest from a stream of its own)."""
        expected = values * self.ambiguous_share
        return int(np.ceil(expected + 4 * np.sqrt(expected) + 4))


PREFIX_BITS = 16  # of U, looked up in a table; part of the noise's definition, as SEGMENT is
BLOCK_VALUES = 1 << 16  # values per vectorized step (whole copies where they fit, else pieces): speed only


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

    Value i of copy c reads 16 bits from the input's stream (the same stream Gaussian reads): lane
    i % 4 of draw c·ceil(d/4) + i // 4, lanes from the low bits up. The ambiguous few (DiscreteTable)
    read their low 48 bits from a second stream of the input: copy c's k-th ambiguous value the top
    48 bits of draw c·B + k, B = refinement_budget(d); past B (rarely), draw k − B of a stream of that
    copy alone. So copy c's noise is a fixed function of (seed, input, purpose, c), whatever batch
    draws it. The noisy value is clip(x_int + j, -T, 255 + T) / 255, the sum formed in integers and
    divided once in float32, so the model's input is a function of the integer sum alone
    (`fill_integers`: the same sums as int16, for a device that divides them itself).
    """

    def __init__(self, seed: int, index: int, purpose: int):
        self._key = (seed, index, purpose)
        self._start = np.random.PCG64DXSM(_seed_sequence(seed, index, purpose)).state  # Gaussian's stream
        self._refinement_start = np.random.PCG64DXSM(_refinement_sequence(seed, index, purpose)).state
        self._integers_of: tuple | None = None  # (clean, its x_int): one attribute, so threads see both or neither

    def fill(self, out: np.ndarray, clean: np.ndarray, sigma: float, first_copy: int = 0) -> np.ndarray:
        """Write copies first_copy, first_copy+1, … of clip(x_int + j, -T, 255 + T) / 255 (float32)."""
        table = discrete_table(sigma)
        return self._draw(out, clean, table, table.noisy_values, first_copy)

    def fill_integers(self, out: np.ndarray, clean: np.ndarray, sigma: float, first_copy: int = 0) -> np.ndarray:
        """The same copies as `fill` (the same draws, the same j) as int16 grid steps clip(x_int + j,
        -T, 255 + T), half the bytes of float32: `fill` is exactly these divided by 255 in float32.
        For a device that adds the noise itself (docs/gpu.md)."""
        if out.dtype != np.int16:
            raise ValueError("fill_integers writes int16 grid steps")
        table = discrete_table(sigma)
        if table.noisy_integers is None:
            raise ValueError(f"σ = {sigma} clips past int16 (fill_integers takes σ up to 21)")
        return self._draw(out, clean, table, table.noisy_integers, first_copy)

    def _draw(self, out: np.ndarray, clean: np.ndarray, table: DiscreteTable, noisy_values: np.ndarray,
              first_copy: int) -> np.ndarray:
        """fill's one pipeline: j drawn, x_int + j + J looked up in `noisy_values` (floats or integers)."""
        if not out.flags.c_contiguous:
            raise ValueError("noise goes into a C-contiguous batch buffer")
        x_int = self._integers(clean, table)
        copies = out.reshape(len(out), -1)
        values = copies.shape[1]
        draws, budget = -(-values // 4), table.refinement_budget(values)
        primary = _positioned(self._start, first_copy * draws)
        refinement = _positioned(self._refinement_start, first_copy * budget)
        per_block = max(1, BLOCK_VALUES // values)
        for start in range(0, len(copies), per_block):
            rows = copies[start:start + per_block]
            low_bits = refinement.random_raw(len(rows) * budget).reshape(len(rows), budget)
            met = np.zeros(len(rows), np.intp)  # ambiguous values met so far in each copy
            # a copy larger than a block goes in pieces of BLOCK_VALUES (a multiple of 4: each piece
            # starts on a draw), so the work arrays stay in the caches: speed only, the same values
            for begin in range(0, values, BLOCK_VALUES):
                length = min(BLOCK_VALUES, values - begin)
                lanes = primary.random_raw(len(rows) * -(-length // 4)).astype("<u8", copy=False).view("<u2")
                prefixes = lanes.reshape(len(rows), -1)[:, :length]
                bins = np.take(table.prefix_bins, prefixes, mode="clip")  # every index is in range: no check
                ambiguous = np.flatnonzero(bins < 0)
                if ambiguous.size:
                    self._refine(table, bins, prefixes, ambiguous, low_bits, met, first_copy + start, budget)
                bins += x_int[begin:begin + length]
                np.take(noisy_values, bins, out=rows[:, begin:begin + length], mode="clip")
        return out

    def _integers(self, clean: np.ndarray, table: DiscreteTable) -> np.ndarray:
        """x_int of `clean` (flat, the table's integer type), kept for the next call with the same
        array: an input's calls all pass its one clean point, and checking the grid costs more than
        the noise."""
        cached = self._integers_of  # the sampling loops fill one input's copies side by side
        if cached is None or cached[0] is not clean or cached[1].dtype != table.dtype:
            x_int = grid_integers(clean)
            if x_int is None:
                raise ValueError("--noise discrete needs inputs on the 1/255 grid")
            cached = self._integers_of = (clean, x_int.reshape(-1).astype(table.dtype))
        return cached[1]

    def _refine(self, table: DiscreteTable, bins, prefixes, ambiguous, low_bits, met, first_copy: int,
                budget: int) -> None:
        """Resolve the ambiguous values (flat indices into `bins`, copy-major) in place; `met` counts
        each copy's ambiguous values in its earlier pieces, and is updated."""
        values = bins.shape[1]
        row = ambiguous // values
        per_row = np.bincount(row, minlength=len(bins))
        rank = np.arange(ambiguous.size) - (np.cumsum(per_row) - per_row)[row] + met[row]  # k: its place in its copy
        met += per_row
        within = rank < budget
        if within.all():  # the usual case: every copy within its budget
            drawn = low_bits[row, rank]
        else:
            drawn = np.empty(ambiguous.size, np.uint64)
            drawn[within] = low_bits[row[within], rank[within]]
            for copy in np.unique(row[~within]):  # past the budget: draw k - B of that copy's own stream
                mine = np.flatnonzero((row == copy) & ~within)
                overflow = np.random.PCG64DXSM(_refinement_sequence(*self._key, first_copy + int(copy)))
                overflow.advance(int(rank[mine[0]]) - budget)
                drawn[mine] = overflow.random_raw(mine.size)
        drawn >>= np.uint64(PREFIX_BITS)  # the top 48 bits
        bins.reshape(-1)[ambiguous] = table.refine(prefixes.reshape(-1)[ambiguous], drawn)


def _refinement_sequence(seed: int, index: int, purpose: int, copy: int | None = None) -> np.random.SeedSequence:
    """The stream of the ambiguous values' low bits, of one input and purpose (or of one copy, past
    its budget): spawn keys that no per-input stream uses."""
    return np.random.SeedSequence(seed, spawn_key=(index, purpose, 1) if copy is None else (index, purpose, 2, copy))


KINDS = ("gaussian", "discrete")


def sampler(kind: str, seed: int, index: int, purpose: int) -> Gaussian | DiscreteGaussian:
    """The noise of one input for one purpose: "gaussian" (float Box–Muller) or "discrete"."""
    if kind == "discrete":
        return DiscreteGaussian(seed, index, purpose)
    if kind != "gaussian":
        raise ValueError(f"unknown noise sampler {kind!r}")
    return Gaussian(seed, index, purpose)
