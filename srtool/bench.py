"""Throughput: the bare model on ONNX Runtime against srtool's whole sampling pipeline.

Both are measured in the same process, in turns, as forward passes (views) per second, so their
ratio says what noise, patching, reduction and counting cost on top of the model. With a denoiser
in front (srtool.denoise) the bare denoiser is measured too, in noisy copies per second, and the
pipeline is held to the bare parts run one after the other: 1 / (1/denoiser + views/classifier).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from onnx import helper

from . import noise
from .engine import VoteCounter, make_session, provider_name, resolve_device, sampling_loops
from .graph import sampling_graph
from .model import Model

PAPER_N0, PAPER_N = 100, 100_000
# Calls per sampling loop between two waits for all loops, in the bare model's steps and the
# pipeline's counts alike, so that neither pays more for the slowest loop than the other.
CALLS_PER_LOOP = 8


def rate(step, items_per_call: int, seconds: float, warmup: int = 2) -> float:
    """Items per second of `step()`, after warm-up, over at least `seconds` and three calls."""
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls * items_per_call / (time.perf_counter() - start)


def bare_feeds(model, rows: int, denoising=None) -> dict[str, np.ndarray]:
    """Random inputs for `rows` calls of a bare classifier (`model`), or of the denoising stage's model."""
    batch = np.random.default_rng(0).random
    if denoising is None:
        return {model.input_name: batch((rows, *model.input_shape), dtype=np.float32)}
    feeds = {model.input_name: batch((rows, *model.input_shape), dtype=np.float32)}
    if model.level_input:
        feeds[model.level_input] = np.full((rows, *model.level_shape), denoising.level, np.float32)
    if model.timestep_input:
        feeds[model.timestep_input] = np.full(rows, denoising.timestep_value,
                                              helper.tensor_dtype_to_np_dtype(model.timestep_type))
    return feeds


def raw_model_steps(model, views: int, device: str, threads: int, pool: ThreadPoolExecutor,
                    denoising=None) -> tuple[list[tuple], str]:
    """Steps that run the bare model (or the denoising stage's) on fixed, pre-bound batches of
    `views` inputs, with the forward passes each step makes; and the provider.

    Two layouts, so the pipeline is held to the model's best on this machine: one call at a time on
    every ORT thread, and as many concurrent calls as VoteCounter runs sampling loops, each on one
    ORT thread (on CUDA: two concurrent calls).
    """
    import onnxruntime as ort

    on_cuda = resolve_device(device) == "cuda"
    loops = sampling_loops(on_cuda, threads)
    feeds = bare_feeds(model, views, denoising)
    steps, provider = [], "cpu"
    for intra_op, concurrent in ((threads, 1), (threads if on_cuda else 1, loops)):
        session = make_session(model.proto, device, intra_op)
        provider = provider_name(session)
        bindings = []
        for _ in range(concurrent):
            binding = session.io_binding()
            for name, values in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(values, provider, 0))
            binding.bind_output(model.output_name, provider)
            bindings.append(binding)

        def runs(binding, session=session) -> None:
            for _ in range(CALLS_PER_LOOP):
                session.run_with_iobinding(binding)

        def step(bindings=bindings, runs=runs) -> None:
            for done in [pool.submit(runs, binding) for binding in bindings]:
                done.result()

        steps.append((step, views * concurrent * CALLS_PER_LOOP))
    return steps, provider


def run(model: Model, plan, num_classes: int, batch: int, device: str, threads: int,
        seconds: float, sigma: float = 0.25, noise_mode: str = "host", rounds: int = 3, denoising=None) -> dict:
    """Bare model (and denoiser) and pipeline, measured in turns (`rounds` times, `seconds` each in
    all) so that a shared machine's changing load hits both alike; rates are the medians of the
    rounds, the ratio is theirs."""
    views_per_copy = plan.views_per_copy
    counter = VoteCounter(sampling_graph(model, plan, denoising=denoising), plan, num_classes, batch, device, threads,
                          device_noise_seed=0 if noise_mode == "device" else None, sigma=sigma)
    # A point on the 1/255 grid, as 8-bit images are (the discrete sampler needs it).
    point = (np.random.default_rng(1).integers(0, 256, plan.noise_shape) / np.float32(255)).astype(np.float32)
    offsets = plan.dense_offsets
    gaussian = noise.sampler("discrete" if noise_mode == "discrete" else "gaussian", 0, 0, noise.ESTIMATION)
    # Eight batches per sampling loop and count: like a long certification, where the loops are
    # rarely idle at the start or the end of an input (at n=100,000 and batch 1000, 50 each).
    copies_per_call = min(PAPER_N, CALLS_PER_LOOP * batch * counter.loops)
    with ThreadPoolExecutor(max_workers=counter.loops) as pool:
        raw_steps, provider = raw_model_steps(model, batch * views_per_copy, device, threads, pool)
        denoiser_steps = [] if denoising is None else \
            raw_model_steps(denoising.model, batch, device, threads, pool, denoising)[0]
        raw, denoised, pipeline = [], [], []
        for _ in range(rounds):
            raw.append(max(rate(step, passes, seconds / rounds) for step, passes in raw_steps))
            if denoiser_steps:
                denoised.append(max(rate(step, passes, seconds / rounds) for step, passes in denoiser_steps))
            copies = rate(lambda: counter.count(point, offsets, copies_per_call, sigma, gaussian),
                          copies_per_call, seconds / rounds, warmup=1)
            pipeline.append(copies * views_per_copy)
    counter.close()

    buffer = np.empty((batch, *plan.noise_shape), dtype=np.float32)
    noise_only = rate(lambda: gaussian.fill(buffer, point, sigma), batch, min(seconds, 1.0))
    copies = float(np.median(pipeline)) / views_per_copy
    bare_copies = float(np.median(raw)) / views_per_copy  # noisy copies/s of the bare parts, in a row
    extra = {}
    if denoised:
        denoiser_rate = float(np.median(denoised))
        bare_copies = 1.0 / (1.0 / denoiser_rate + 1.0 / bare_copies)
        extra = {"denoiser": denoising.describe(), "denoiser_copies_per_s": denoiser_rate,
                 "bare_composed_copies_per_s": bare_copies}
    return {
        "model": str(model.path),
        "provider": provider,
        "batch": batch,
        "views_per_copy": views_per_copy,
        "noise": noise_mode,
        "threads": threads,
        "sampling_loops": counter.loops,
        "rounds": rounds,
        "raw_forward_per_s": float(np.median(raw)),
        "pipeline_copies_per_s": copies,
        "pipeline_forward_per_s": copies * views_per_copy,
        # The ratio of the printed medians, so the figures agree; under a changing load a median of
        # per-round ratios could differ from it (0.99 printed beside 10 and 7 fwd/s).
        "ratio": copies / bare_copies,
        "host_noise_copies_per_s": noise_only,
        "projected_s_per_input_n100k": (PAPER_N0 + PAPER_N) / copies,
        **extra,
    }


def run_fill(path: str) -> dict:
    """What a results file says about its run's cost: mean noisy copies (selection and estimation)
    per evaluated input, and the mean copies per ONNX Runtime call it made (None for files written
    before srtool recorded its calls)."""
    from .api import read_results
    from .core import check

    results = read_results(path)
    rows = [row for row in results.table.to_pylist() if row["error"] is None]
    check(rows, f"{path} has no evaluated inputs")
    config = results.config
    calls = config.get("calls")
    return {"file": str(path),
            "copies_per_input": (config.get("n0") or 0) + sum(row["n"] for row in rows) / len(rows),
            "copies_per_call": config["copies"] / calls if calls else None}


def project(measured: dict, result: dict, model: Model, plan, num_classes: int, runtime, seconds: float,
            sigma: float = 0.25, denoising=None) -> dict:
    """The time per input of a measured run (run_fill) on this machine: its copies per input at the
    pipeline's rate, measured again at the run's own copies per call where its calls were less full
    than this measurement's batch (small calls are slower per copy)."""
    rate = result["pipeline_copies_per_s"]
    per_call = measured["copies_per_call"]
    if per_call is not None and per_call < 0.9 * result["batch"]:
        again = run(model, plan, num_classes, max(1, round(per_call)), runtime.device, runtime.threads, seconds,
                    sigma=sigma, noise_mode=runtime.noise, denoising=denoising)
        rate = again["pipeline_copies_per_s"]
    return {**measured, "pipeline_copies_per_s": rate, "projected_s_per_input": measured["copies_per_input"] / rate}
