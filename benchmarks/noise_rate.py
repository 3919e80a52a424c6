"""Host noise alone: noisy copies per CPU second of each sampler's `fill`, by thread CPU time; and,
for the shipped model, the model's own CPU time per call, so the share of noise in a sampling loop.

Thread CPU time, not wall time, so that other processes on a shared machine slow the figure only
through the caches; the median of 15 rounds. Run from a checkout's root (`python
benchmarks/noise_rate.py`) to measure that checkout's srtool; for a before/after, run it in both
(a checkout without `noise.sampler` has only the float sampler).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the srtool of the checkout this runs in
from srtool import noise  # noqa: E402

CASES = [((1, 28, 28), 167), ((1, 28, 28), 1000), ((3, 32, 32), 42), ((3, 224, 224), 4)]
SIGMA = 0.25


def samplers() -> dict:
    if not hasattr(noise, "sampler"):
        return {"gaussian": noise.Gaussian(0, 0, noise.ESTIMATION)}
    return {kind: noise.sampler(kind, 0, 0, noise.ESTIMATION) for kind in noise.KINDS}


def seconds_per_call(step, rounds: int = 15, calls: int = 30) -> float:
    step(0)
    seconds = []
    for r in range(rounds):
        start = time.thread_time()
        for call in range(calls):
            step(r * calls + call)
        seconds.append((time.thread_time() - start) / calls)
    return float(np.median(seconds))


def model_seconds_per_call(batch: int) -> float:
    """The shipped model's sampling graph on one ORT thread, one call of `batch` copies."""
    from srtool.engine import make_session
    from srtool.graph import sampling_graph
    from srtool.model import load_model
    from srtool.plan import Plan

    model = load_model(Path(noise.__file__).parent / "assets" / "fmnist_cnn_sigma0.25.onnx")
    plan = Plan(input_shape=(1, 28, 28), patch_hw=(28, 28), resized_hw=(28, 28))
    session = make_session(sampling_graph(model, plan).SerializeToString(), "cpu", 1)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)}
    return seconds_per_call(lambda call: session.run(None, feed), rounds=9, calls=5)


if __name__ == "__main__":
    print(f"srtool from {Path(noise.__file__).parent}")
    noise_at_167 = {}
    for shape, batch in CASES:
        out = np.empty((batch, *shape), np.float32)
        clean = (np.random.default_rng(0).integers(0, 256, shape) / np.float32(255)).astype(np.float32)
        for kind, sampler in samplers().items():
            seconds = seconds_per_call(lambda call: sampler.fill(out, clean, SIGMA, call * batch))
            if (shape, batch) == CASES[0]:
                noise_at_167[kind] = seconds
            print(f"{'x'.join(map(str, shape)):>10} batch {batch:>5} {kind:>9}: {batch / seconds:>10,.0f} copies/s")
    model = model_seconds_per_call(CASES[0][1])
    print(f"shipped model, batch {CASES[0][1]}: {model * 1e3:.2f} ms per call on one thread")
    for kind, seconds in noise_at_167.items():
        print(f"  {kind}: noise {seconds * 1e3:.3f} ms per call, {seconds / (seconds + model):.1%} of a sampling loop")
