"""Throughput: the bare model on ONNX Runtime against srtool's whole sampling pipeline.

Both are measured in the same process on the same session options, as forward passes (views) per
second, so their ratio says what noise, patching, reduction and counting cost on top of the model.
"""

from __future__ import annotations

import time

import numpy as np

from . import noise
from .engine import VoteCounter, make_session, provider_name
from .graph import sampling_graph
from .model import Model

PAPER_N0, PAPER_N = 100, 100_000


def rate(step, items_per_call: int, seconds: float, warmup: int = 2) -> float:
    """Items per second of `step()`, after warm-up, over at least `seconds` and three calls."""
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls * items_per_call / (time.perf_counter() - start)


def raw_model_rate(model: Model, views: int, device: str, threads: int, seconds: float) -> tuple[float, str]:
    """Forward passes per second of the bare model on a fixed, pre-bound batch of `views` inputs."""
    import onnxruntime as ort

    session = make_session(model.proto.SerializeToString(), device, threads)
    provider = provider_name(session)
    batch = np.random.default_rng(0).random((views, *model.input_shape), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_ortvalue_input(model.input_name, ort.OrtValue.ortvalue_from_numpy(batch, provider, 0))
    binding.bind_output(model.output_name, provider)
    return rate(lambda: session.run_with_iobinding(binding), views, seconds), provider


def run(model: Model, plan, num_classes: int, batch: int, device: str, threads: int,
        seconds: float, sigma: float = 0.25, noise_mode: str = "host") -> dict:
    views_per_copy = plan.views_per_copy
    raw, provider = raw_model_rate(model, batch * views_per_copy, device, threads, seconds)
    counter = VoteCounter(sampling_graph(model, plan), plan, num_classes, batch, device, threads,
                          device_noise_seed=0 if noise_mode == "device" else None, sigma=sigma)
    point = np.random.default_rng(1).random(plan.noise_shape, dtype=np.float32)
    offsets = plan.dense_offsets
    rng = noise.stream(0, 0, noise.ESTIMATION)
    copies_per_call = 4 * batch  # several batches per call, so the noise overlap is exercised
    copies = rate(lambda: counter.count(point, offsets, copies_per_call, sigma, rng), copies_per_call, seconds)
    counter.close()

    buffer = np.empty((batch, *plan.noise_shape), dtype=np.float32)
    noise_only = rate(lambda: noise.fill_noisy(buffer, point, sigma, rng), batch, min(seconds, 1.0))
    return {
        "model": str(model.path),
        "provider": provider,
        "batch": batch,
        "views_per_copy": views_per_copy,
        "noise": noise_mode,
        "threads": threads,
        "raw_forward_per_s": raw,
        "pipeline_copies_per_s": copies,
        "pipeline_forward_per_s": copies * views_per_copy,
        "ratio": copies * views_per_copy / raw,
        "host_noise_copies_per_s": noise_only,
        "projected_s_per_input_n100k": (PAPER_N0 + PAPER_N) / copies,
    }
