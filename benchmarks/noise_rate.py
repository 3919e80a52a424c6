"""Host noise alone: noisy copies per CPU second of `noise.Gaussian.fill`, by thread CPU time.

Thread CPU time, not wall time, so that other processes on a shared machine slow the figure only
through the caches; the median of 15 rounds. Run from a checkout's root (`python
benchmarks/noise_rate.py`) to measure that checkout's srtool; for a before/after, run it in both.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the srtool of the checkout this runs in
from srtool import noise  # noqa: E402

CASES = [((1, 28, 28), 167), ((1, 28, 28), 1000), ((3, 32, 32), 42), ((3, 224, 224), 4)]


def copies_per_cpu_second(shape: tuple[int, ...], batch: int, rounds: int = 15, calls: int = 30) -> float:
    out = np.empty((batch, *shape), np.float32)
    clean = np.random.default_rng(0).random(shape, dtype=np.float32)
    gaussian = noise.Gaussian(0, 0, noise.ESTIMATION)
    gaussian.fill(out, clean, 0.25, 0)
    seconds = []
    for r in range(rounds):
        start = time.thread_time()
        for call in range(calls):
            gaussian.fill(out, clean, 0.25, (r * calls + call) * batch)
        seconds.append((time.thread_time() - start) / calls)
    return batch / float(np.median(seconds))


if __name__ == "__main__":
    print(f"srtool from {Path(noise.__file__).parent}")
    for shape, batch in CASES:
        print(f"{'x'.join(map(str, shape)):>10} batch {batch:>5}: {copies_per_cpu_second(shape, batch):>10,.0f} copies/s")
