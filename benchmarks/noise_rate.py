"""Host noise alone: noisy copies per CPU second of each sampler's `fill`, by thread CPU time; and,
for the shipped model, the model's own CPU time per call, so the share of noise in a sampling loop.

Thread CPU time, not wall time, so that other processes on a shared machine slow the figure only
through the caches; the median of 15 rounds; also ns per value (per noisy pixel). Run from a
checkout's root (`python benchmarks/noise_rate.py`) to measure that checkout's srtool, with its
discrete sampler's int16 output too (`fill_integers`) where it has one. For a before/after in one
run, `--baseline DIR` also measures the samplers of the srtool/noise.py under DIR (another checkout,
or `git archive REV srtool/noise.py | tar -x -C DIR`), labelled "(baseline)"; a noise.py without
`sampler` has only the float sampler.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the srtool of the checkout this runs in
from srtool import noise  # noqa: E402

CASES = [((1, 28, 28), 167), ((1, 28, 28), 1000), ((3, 32, 32), 42), ((3, 224, 224), 4)]
SIGMA = 0.25


def samplers(module, label: str = "") -> dict:
    """name -> (fill(out, clean, first_copy), the output's dtype) for each sampler of a noise module."""
    if not hasattr(module, "sampler"):
        found = {"gaussian": module.Gaussian(0, 0, module.ESTIMATION)}
    else:
        found = {kind: module.sampler(kind, 0, 0, module.ESTIMATION) for kind in module.KINDS}
    fills = {kind + label: (lambda out, clean, first, s=s: s.fill(out, clean, SIGMA, first), np.float32)
             for kind, s in found.items()}
    if hasattr(found.get("discrete"), "fill_integers"):
        discrete = found["discrete"]
        fills["discrete int16" + label] = (
            lambda out, clean, first: discrete.fill_integers(out, clean, SIGMA, first), np.int16)
    return fills


def load_baseline(root: str):
    spec = importlib.util.spec_from_file_location("baseline_noise", Path(root) / "srtool" / "noise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="root of another checkout (its srtool/noise.py) to measure too")
    args = parser.parse_args()
    print(f"srtool from {Path(noise.__file__).parent}")
    fills = samplers(noise)
    if args.baseline:
        fills |= samplers(load_baseline(args.baseline), " (baseline)")
    noise_at_167 = {}
    for shape, batch in CASES:
        clean = (np.random.default_rng(0).integers(0, 256, shape) / np.float32(255)).astype(np.float32)
        for kind, (fill, dtype) in fills.items():
            out = np.empty((batch, *shape), dtype)
            seconds = seconds_per_call(lambda call: fill(out, clean, call * batch))
            if (shape, batch) == CASES[0]:
                noise_at_167[kind] = seconds
            print(f"{'x'.join(map(str, shape)):>10} batch {batch:>5} {kind:>25}: {batch / seconds:>10,.0f} copies/s,"
                  f" {seconds / out.size * 1e9:5.2f} ns/value")
    model = model_seconds_per_call(CASES[0][1])
    print(f"shipped model, batch {CASES[0][1]}: {model * 1e3:.2f} ms per call on one thread")
    for kind, seconds in noise_at_167.items():
        print(f"  {kind}: noise {seconds * 1e3:.3f} ms per call, {seconds / (seconds + model):.1%} of a sampling loop")
