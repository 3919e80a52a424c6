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
from .model import Model, weight_bytes

PAPER_N0, PAPER_N = 100, 100_000
# Calls per sampling loop between two waits for all loops, in the bare model's steps and the
# pipeline's counts alike, so that neither pays more for the slowest loop than the other.
CALLS_PER_LOOP = 8


def readable(rate: float) -> str:
    """A rate as people read it: 45,800 or 261, but 0.163 (an ADM UNet's copies per second), never "0"."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def rate(step, items_per_call: int, seconds: float, warmup: int = 1) -> float:
    """Items per second of `step()`, after warm-up, over `seconds` (at least one call)."""
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls * items_per_call / (time.perf_counter() - start)


def bare_feeds(model, rows: int, denoising=None) -> dict[str, np.ndarray]:
    """Random inputs for `rows` calls of a bare classifier (`model`), or of the denoising stage's model."""
    batch = np.random.default_rng(0).random
    feeds = {model.input_name: batch((rows, *model.input_shape), dtype=np.float32)}
    if denoising is None:
        return feeds
    if model.level_input:
        feeds[model.level_input] = np.full((rows, *model.level_shape), denoising.level, np.float32)
    if model.timestep_input:
        feeds[model.timestep_input] = np.full(rows, denoising.timestep_value,
                                              helper.tensor_dtype_to_np_dtype(model.timestep_type))
    return feeds


# A model larger than this runs the bare measurement in one layout only, so bench holds one session
# of it besides the pipeline's (an ADM UNet is 2.2 GB).
ONE_LAYOUT_BYTES = 256 * 2**20


class BareModel:
    """The bare model (or the denoising stage's), on ONNX Runtime as a user would run it, in two
    layouts so the pipeline is held to the model's best on this machine: one call at a time on every
    ORT thread, and as many concurrent calls as VoteCounter runs sampling loops, each on one ORT
    thread (on CUDA: two concurrent calls). Its sessions are made once and serve every batch size."""

    def __init__(self, model, device: str, threads: int, pool: ThreadPoolExecutor, denoising=None):
        on_cuda = resolve_device(device) == "cuda"
        loops = sampling_loops(on_cuda, threads)
        layouts = [(threads, 1), (threads if on_cuda else 1, loops)]
        if weight_bytes(model.proto) > ONE_LAYOUT_BYTES:
            layouts = layouts[:1]
        self.model, self.device, self.pool, self.denoising = model, device, pool, denoising
        self.layouts = [(make_session(model.proto, device, intra_op), concurrent) for intra_op, concurrent in layouts]
        self.provider = provider_name(self.layouts[0][0])

    def steps(self, rows: int, calls: int) -> list[tuple]:
        """(step, forward passes per step) for each layout, on fixed, pre-bound batches of `rows` inputs;
        a step makes `calls` calls in each of the layout's concurrent loops."""
        import onnxruntime as ort

        feeds = bare_feeds(self.model, rows, self.denoising)
        steps = []
        for session, concurrent in self.layouts:
            bindings = []
            for _ in range(concurrent):
                binding = session.io_binding()
                for name, values in feeds.items():
                    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(values, self.provider, 0))
                binding.bind_output(self.model.output_name, self.provider)
                bindings.append(binding)

            def runs(binding, session=session) -> None:
                for _ in range(calls):
                    session.run_with_iobinding(binding)

            def step(bindings=bindings, runs=runs, feeds=feeds) -> None:  # the bound arrays live as the step does
                for done in [self.pool.submit(runs, binding) for binding in bindings]:
                    done.result()

            steps.append((step, rows * concurrent * calls))
        return steps


def candidate_batches(per_copy_values: int, device: str, fixed: int | None = None) -> list[int]:
    """The batches a sweep tries: powers of 4 from 1 up to about 16 M values per call on the CPU
    (256 M on CUDA), at most 4,096; or only `fixed`."""
    if fixed is not None:
        return [fixed]
    limit = (2**28 if resolve_device(device) == "cuda" else 2**24) // max(1, per_copy_values)
    return [b for b in (1, 4, 16, 64, 256, 1024, 4096) if b == 1 or b <= limit]


class Sweep:
    """Rates of one thing at several batch sizes, measured in rounds within a time budget.

    Each round gives every candidate an equal share of `seconds` / rounds; a candidate whose one call
    would take more than its share (from the rate at the largest batch measured so far) is skipped,
    so a model of seconds per copy is measured at batch 1 only and the sweep keeps to its budget.
    A step makes up to CALLS_PER_LOOP calls per sampling loop (fewer where calls are slow), so that
    waiting for the slowest loop costs the bare model and the pipeline alike and little.
    """

    def __init__(self, name: str, batches: list[int], seconds: float, rounds: int):
        self.name, self.batches, self.rounds = name, batches, rounds
        self.share = seconds / (rounds * len(batches))
        self.rates: dict[int, list[float]] = {b: [] for b in batches}

    def round(self, measure, on_step) -> None:
        """One round: `measure(batch, seconds, calls per loop and step)` → rate, per candidate, smallest first."""
        for batch in self.batches:
            measured = [b for b in self.batches if self.rates[b] and b <= batch]
            call = batch / max(np.median(self.rates[max(measured)]), 1e-12) if measured else None  # seconds, about
            if call is not None and call > self.share and max(measured) < batch:
                on_step(f"{self.name}: batch {batch} skipped (one call would take longer than its share)")
                continue
            calls = 1 if call is None else int(np.clip(self.share / (4 * call), 1, CALLS_PER_LOOP))
            self.rates[batch].append(measure(batch, self.share, calls))
            on_step(f"{self.name}: batch {batch}")

    def best(self) -> tuple[float, int]:
        """(median rate, batch) at the batch with the best median."""
        medians = {b: float(np.median(r)) for b, r in self.rates.items() if r}
        batch = max(medians, key=medians.get)
        return medians[batch], batch

    def medians(self) -> dict[str, float]:
        return {str(b): float(np.median(r)) for b, r in self.rates.items() if r}


def run(model: Model, plan, num_classes: int, batch: int | None, device: str, threads: int,
        seconds: float, sigma: float = 0.25, noise_mode: str = "discrete", rounds: int = 3, denoising=None,
        on_step=lambda done, total, what: None) -> dict:
    """Bare model (and denoiser) and pipeline, each at its best batch: every one is swept over batch
    sizes (the pipeline only at `batch` where one is given) in `rounds` turns that alternate them, so a
    shared machine's changing load hits all alike, within about `seconds` per measurement. Rates are
    medians over the rounds at the best batch; the ratio is the pipeline's best over the bare parts'
    best. `on_step(done, total, what)` reports progress."""
    started = time.perf_counter()
    views_per_copy = plan.views_per_copy
    per_copy = max(int(np.prod(plan.noise_shape)), views_per_copy * int(np.prod(plan.view_shape)))
    pipeline_batches = candidate_batches(per_copy, device, batch)
    device_noise = noise_mode == "device"
    loops = sampling_loops(resolve_device(device) == "cuda", threads, device_noise)
    # A model past ONE_LAYOUT_BYTES (an ADM UNet) is measured one part after the other, in one round:
    # the bare parts' sessions are let go before the composed graph's is made, so bench holds the
    # weights no more often than certify does.
    huge = any(weight_bytes(proto) > ONE_LAYOUT_BYTES
               for proto in [model.proto] + ([denoising.model.proto] if denoising is not None else []))
    counter = None

    def pipeline_counter() -> VoteCounter:
        nonlocal counter
        if counter is None:
            counter = VoteCounter(sampling_graph(model, plan, denoising=denoising), plan, num_classes,
                                  pipeline_batches[0], device, threads, device_noise_seed=0 if device_noise else None,
                                  sigma=sigma)
        return counter

    if not huge:
        pipeline_counter()
    # A point on the 1/255 grid, as 8-bit images are (the discrete sampler needs it).
    point = (np.random.default_rng(1).integers(0, 256, plan.noise_shape) / np.float32(255)).astype(np.float32)
    offsets = plan.dense_offsets
    sampler = noise.sampler("discrete" if noise_mode == "discrete" else "gaussian", 0, 0, noise.ESTIMATION)
    rounds = 1 if huge else max(1, min(rounds, int(seconds // 0.3) or 1))  # tiny budgets: one round
    with ThreadPoolExecutor(max_workers=loops) as pool:
        bare = BareModel(model, device, threads, pool)
        stage = None if denoising is None else BareModel(denoising.model, device, threads, pool, denoising)
        sweeps = [Sweep("bare model", candidate_batches(int(np.prod(plan.view_shape)), device), seconds, rounds),
                  Sweep("pipeline", pipeline_batches, seconds, rounds)]
        if stage is not None:
            sweeps.append(Sweep(f"bare {denoising.model.kind}", candidate_batches(int(np.prod(plan.noise_shape)),
                                                                                  device), seconds, rounds))

        def bare_rate(model_steps):  # forward passes per second, in the better layout
            def measure(rows: int, share: float, calls: int) -> float:
                return max(rate(step, passes, share / 2) for step, passes in model_steps(rows, calls))
            return measure

        def pipeline_rate(copies_per_call: int, share: float, calls: int) -> float:
            if huge:  # the bare parts are measured: their sessions go before the composed one comes
                bare.layouts.clear()
                if stage is not None:
                    stage.layouts.clear()
            counter = pipeline_counter()
            counter.batch = copies_per_call
            # Several batches per sampling loop and count: like a long certification, where the loops
            # are rarely idle at the start or the end of an input.
            copies = min(PAPER_N, calls * copies_per_call * counter.loops)
            return rate(lambda: counter.count(point, offsets, copies, sigma, sampler), copies, share) * views_per_copy

        measures = [bare_rate(lambda rows, calls: bare.steps(rows * views_per_copy, calls)), pipeline_rate]
        if stage is not None:
            measures.append(bare_rate(stage.steps))
        order = [0, 2, 1] if huge and stage is not None else [0, 1] if stage is None else [0, 1, 2]
        total, done = rounds * sum(len(s.batches) for s in sweeps), 0

        def step(what: str) -> None:
            nonlocal done
            done += 1
            on_step(done, total, what)

        for _ in range(rounds):
            for i in order:
                sweeps[i].round(measures[i], step)
    counter.close()

    buffer = np.empty((counter.batch, *plan.noise_shape), dtype=np.float32)
    noise_only = rate(lambda: sampler.fill(buffer, point, sigma), counter.batch, min(seconds, 1.0) / 3)
    (raw, raw_batch), (pipeline, pipeline_batch) = sweeps[0].best(), sweeps[1].best()
    copies = pipeline / views_per_copy
    bare_copies = raw / views_per_copy  # noisy copies/s of the bare parts, in a row
    extra = {}
    if stage is not None:
        denoiser_rate, denoiser_batch = sweeps[2].best()
        bare_copies = 1.0 / (1.0 / denoiser_rate + 1.0 / bare_copies)
        extra = {"denoiser": denoising.describe(), "denoiser_copies_per_s": denoiser_rate,
                 "denoiser_best_batch": denoiser_batch, "bare_composed_copies_per_s": bare_copies}
    return {
        "model": str(model.path),
        "provider": bare.provider,
        "batch": pipeline_batch,  # the pipeline's best
        "raw_best_batch": raw_batch,  # the bare model's best, in noisy copies per call
        "views_per_copy": views_per_copy,
        "noise": noise_mode,
        "threads": threads,
        "sampling_loops": counter.loops,
        "rounds": rounds,
        "raw_forward_per_s": raw,
        "pipeline_copies_per_s": copies,
        "pipeline_forward_per_s": pipeline,
        # Best over best, each the median of its rounds at its best batch: the share of what ONNX
        # Runtime alone does with the model on this machine that the whole pipeline reaches.
        "ratio": copies / bare_copies,
        "sweep": {sweep.name: sweep.medians() for sweep in sweeps},
        "host_noise_copies_per_s": noise_only,
        "projected_s_per_input_n100k": (PAPER_N0 + PAPER_N) / copies,
        "seconds": time.perf_counter() - started,
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
                    sigma=sigma, noise_mode=result["noise"], denoising=denoising)
        rate = again["pipeline_copies_per_s"]
    return {**measured, "pipeline_copies_per_s": rate, "projected_s_per_input": measured["copies_per_input"] / rate}
