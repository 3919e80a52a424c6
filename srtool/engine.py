"""The scheduler of copies that fills every ONNX Runtime call from many inputs (sessions: srtool.session).

A run is a set of small state machines, one per input (pipeline.certify_steps): selection (n0
copies), then the fixed n or the sequential rounds, then its row. Each step asks for a Request:
copies first … first+copies-1 of one of the input's noise streams. The Scheduler keeps inputs in
flight, in input order, while fewer copies wait than the next calls can take (at most
VoteCounter.in_flight inputs, MAX_IN_FLIGHT by default, and IN_FLIGHT_VALUES floats of their noise
points), and fills every ONNX Runtime call with segments (input, purpose, first copy, copies) of
the oldest waiting requests, up to the batch. When a request's copies have all come back its input
takes its next step, and a finished input's row is handed on at once, so rows arrive in the order
inputs finish. A fixed n = 100,000 keeps one input in flight (its copies fill every call); sequential
rounds (100, 150, …), selection (n0 = 100) and small n keep as many in flight as it takes. A call
that would not be full is made only when no other call runs (the end of a run, or of one input).

Copy j of input i keeps its noise from (seed, i, purpose, j) (noise.Gaussian fills a segment at any
offset of any batch), the sampling graph takes per copy what differs between inputs (random patch
positions; with in-graph noise, which clean point), and votes are added up per segment, so the table
does not depend on the batch size, the number of loops or of inputs in flight, nor on which inputs
share a call. Inputs share a call only where they share a plan: videos have one plan per length, so
videos of one length share calls and a call never mixes lengths (their frame indices are one graph
input for the whole call). Every call's votes must be exactly one per copy sent, or the run stops
with one line: a model that returns extra rows would otherwise put more votes than copies in a count.

Several sampling loops run calls side by side on one session, each with its own preallocated batch
buffer: on the CPU one loop per core, each calling ONNX Runtime with a single thread, so every core
draws a batch's noise and then runs that batch. Noise never preempts a multi-threaded ORT operator
(where one descheduled thread stalls the others) and no core waits on another. On CUDA two loops:
one draws noise while the GPU runs the other's batch. Numpy's generators and ORT's Run release the
GIL; the scheduler itself (bookkeeping only) runs in the caller's thread. `calls` and `copies` count
what the session ran, for the results' metadata and `srtool report`.

On CUDA the session runs with IO binding: per loop, one device input buffer and one device votes
buffer per batch shape (the full batch stays bound; the odd sizes of a run's last calls replace each
other); per call only the noisy batch goes up and the int64 votes come down. With
`device_noise_seed` the noise is drawn inside the graph instead (graph.with_device_noise) by a single
loop, so only the clean points of the call's inputs and one input number per copy go up.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import onnx

from . import noise
from .errors import UsageError
from .graph import CLEAN, ESCALATED_COPIES, NOISY, OFFSETS, POINT_OF, VOTES, with_device_noise
from .session import DEVICES, gpu_present, make_session, provider_name, resolve_device, runtime_failure  # noqa: F401
# (re-exported: the engine is where callers made sessions before srtool.session)



def sampling_loops(on_cuda: bool, threads: int, device_noise: bool = False) -> int:
    """How many sampling loops VoteCounter runs: one per core (or `threads`) on the CPU, two on
    CUDA (one draws noise while the GPU runs the other's batch), one with in-graph noise (which
    leaves the host nothing to overlap, and whose generator follows the order of the calls)."""
    return 1 if device_noise else 2 if on_cuda else (threads or cpu_cores())


def cpu_cores() -> int:
    """Cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)



# -- what a call carries -------------------------------------------------------------------------------

MAX_IN_FLIGHT = 256  # inputs in flight at most: enough for sequential rounds of ~100 copies to fill 21k calls
IN_FLIGHT_VALUES = 2**26  # and at most this many float32 values of their noise points (256 MB)


@dataclass(eq=False)
class Source:
    """One input as the calls see it: its noise point, patch positions and plan (videos: one per
    length), and the copies of it that ran the whole ensemble (consensus graphs)."""
    point: np.ndarray
    offsets: np.ndarray
    plan: object
    escalated: int = 0


@dataclass(eq=False)
class Request:
    """Copies first … first+copies-1 of one input's stream (`gaussian`), asked for by its task; the
    scheduler cuts it into segments of calls and adds their votes up in `counts`."""
    source: Source
    gaussian: noise.Gaussian | None  # None only with in-graph (device) noise
    first: int
    copies: int
    sent: int = 0  # copies handed to calls so far
    returned: int = 0  # copies whose votes came back
    counts: np.ndarray | None = None


class VoteCounter:
    """One ONNX Runtime session of a sampling graph; runs calls made of segments of several inputs."""

    def __init__(self, graph: onnx.ModelProto, plan, num_classes: int, batch: int,
                 device: str = "auto", threads: int = 0, values_per_call: int | None = None,
                 io_binding: bool | None = None, device_noise_seed: int | None = None,
                 sigma: float | None = None, session_options: dict | None = None,
                 provider_options: dict | None = None, in_flight: int = MAX_IN_FLIGHT):
        """`graph` is a sampling graph for `plan` (any plan with noise_shape and dense_offsets).

        `threads` is the number of CPU sampling loops (0: one per core); on CUDA it is the ORT
        threads of the operators left on the CPU, and two loops run (one with device noise).
        `values_per_call`, where given, caps the noisy input or model input of the calls in flight
        at about that many floats by running fewer than `batch` copies per call for larger plans
        (long videos). `in_flight` bounds the inputs the scheduler keeps open at once. The counts
        depend on none of these: copy j's noise is fixed (noise.Gaussian).
        """
        self.plan = plan
        self.num_classes = num_classes
        self.batch = batch
        self.values_per_call = values_per_call
        self.in_flight = in_flight
        self.device_noise = device_noise_seed is not None
        if self.device_noise:
            graph = with_device_noise(graph, plan.noise_shape, sigma, device_noise_seed)
        on_cuda = resolve_device(device) == "cuda"
        self.loops = sampling_loops(on_cuda, threads, self.device_noise)
        self.session = make_session(graph, device, threads if on_cuda else 1,
                                    session_options, provider_options)
        self.device = provider_name(self.session)
        if self.device_noise and self.device != "cuda":
            raise UsageError("--noise device needs --device cuda: ONNX Runtime's CPU RandomNormal "
                             "(period 2^31) is not fit for certificates; use --noise host")
        offsets_input = next((i for i in self.session.get_inputs() if i.name == OFFSETS), None)
        self._feeds_offsets = offsets_input is not None
        # Random patch positions differ between inputs: the graph takes them per copy (B, k, 2).
        self._offsets_per_copy = offsets_input is not None and offsets_input.shape[0] == "batch"
        # A consensus graph also says, per copy, whether it ran the whole ensemble: the escalated
        # column of each input, and the forward-pass tally.
        self._outputs = [VOTES] + [o.name for o in self.session.get_outputs() if o.name == ESCALATED_COPIES]
        self.escalated = 0  # copies that ran the whole ensemble, since this counter was made
        self.calls = 0  # ONNX Runtime calls since this counter was made, and the copies they carried
        self.copies = 0
        # IO binding is the CUDA path; `io_binding=True` exercises the same code on the CPU (tests).
        self._binding_device = "cuda" if self.device == "cuda" else "cpu"
        self._use_binding = self.device == "cuda" if io_binding is None else io_binding
        self._bindings: dict[tuple[int, tuple[int, ...]], tuple] = {}  # (loop, batch shape) → binding
        self._buffers: dict[int, np.ndarray] = {}  # loop → its batch buffer, resized when the point's shape changes
        self._pool = ThreadPoolExecutor(max_workers=self.loops, thread_name_prefix="srtool-sampling")
        import onnxruntime as ort

        # close() sets its terminate flag: calls in flight stop at their next operator instead of
        # holding Ctrl-C/SIGTERM for a whole call (seconds per copy for a 2.2 GB UNet)
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self._check_runs()

    @property
    def counts_escalations(self) -> bool:
        """A consensus graph: every call also reports which copies ran the whole ensemble."""
        return ESCALATED_COPIES in self._outputs

    def copies_per_call(self, plan) -> int:
        """Noisy copies per ONNX Runtime call for `plan`: `batch`, or fewer under `values_per_call`."""
        if self.values_per_call is None:
            return self.batch
        per_copy = max(int(np.prod(plan.noise_shape)), plan.views_per_copy * int(np.prod(plan.view_shape)))
        return int(max(1, min(self.batch, self.values_per_call // (per_copy * self.loops))))

    def call_group(self, source: Source) -> tuple:
        """Inputs whose copies may share a call: the same plan (videos: the same length), and the same
        patch positions unless the graph takes them per copy."""
        return (id(source.plan), None if self._offsets_per_copy else source.offsets.tobytes())

    def _buffer(self, loop: int, shape: tuple[int, ...], batch: int) -> np.ndarray:
        buffer = self._buffers.get(loop)
        if buffer is None or buffer.shape[1:] != shape or len(buffer) < batch:
            buffer = self._buffers[loop] = np.empty((batch, *shape), dtype=np.float32)
        return buffer

    def _check_runs(self) -> None:
        """One run on a full batch, so a model that cannot take this plan fails before any work."""
        batch = self.copies_per_call(self.plan)
        point = np.zeros(self.plan.noise_shape, dtype=np.float32)
        request = Request(Source(point, self.plan.dense_offsets, self.plan), None, 0, batch)
        try:
            self.run_call([(request, 0, batch)], 0.0, 0)
        except Exception as error:  # the model's own failure, or a batch too large to allocate
            raise UsageError(f"the model cannot run on this plan (batch {batch}, views {self.plan.patch_hw}): "
                             f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None

    # -- one call ----------------------------------------------------------------------------------
    def run_call(self, segments: list[tuple[Request, int, int]], sigma: float,
                 loop: int) -> tuple[np.ndarray, np.ndarray]:
        """Votes per class (segments × classes) and escalated copies (per segment) of one call.

        Each segment (request, first copy, copies) puts copies first … first+copies-1 of its input's
        stream into the batch, one after the other; all share the call's plan (call_group).
        """
        sizes = np.array([copies for _, _, copies in segments])
        size = int(sizes.sum())
        sources = [request.source for request, _, _ in segments]
        plan = sources[0].plan
        if self._offsets_per_copy:
            offsets = np.repeat(np.stack([s.offsets for s in sources]), sizes, axis=0)
        else:
            offsets = sources[0].offsets
        if self.device_noise:
            feeds = {CLEAN: np.stack([s.point for s in sources]),
                     POINT_OF: np.repeat(np.arange(len(sources), dtype=np.int64), sizes)}
        else:
            noisy = self._buffer(loop, plan.noise_shape, self.copies_per_call(plan))[:size]
            start = 0
            for (request, first, copies), source in zip(segments, sources):
                if request.gaussian is None:  # the start-up probe: the clean (zero) point itself
                    noisy[start:start + copies] = source.point
                else:
                    request.gaussian.fill(noisy[start:start + copies], source.point, sigma, first)
                start += copies
            feeds = {NOISY: noisy}
        if self._feeds_offsets:
            feeds[OFFSETS] = offsets
        try:
            if self._use_binding and not self.device_noise:
                votes, escalated = self._bound_votes(feeds, loop)
            else:
                votes, *escalated = self.session.run(self._outputs, feeds, self._run_options)
        except Exception as error:
            if self._run_options.terminate:  # stopped by close(): nobody waits for these votes
                raise KeyboardInterrupt from None
            failure = runtime_failure(error)
            if failure is None:
                raise
            # the probe passed, but the model fails on some noisy copies: the model's fault, one line
            raise UsageError(f"the model failed on a batch of noisy copies (ONNX Runtime: {failure})") from None
        # Every call, not only the first: a model that returns more (or fewer) rows than it was given
        # would otherwise put more votes than copies into the counts.
        if votes.shape != (size,) or (escalated and escalated[0].shape != (size,)):
            shape = votes.shape if votes.shape != (size,) else escalated[0].shape
            raise UsageError(f"the model returned {'×'.join(map(str, shape)) or 'a scalar'} votes for a call "
                             f"of {size} noisy copies")
        if votes.size and votes.max() >= self.num_classes:
            raise UsageError(f"the model voted for class {int(votes.max())} but declares "
                             f"{self.num_classes} classes")
        # Votes per (segment, class) in one bincount; INVALID_VOTE (-1, non-finite logits) counts for none.
        segment_of = np.repeat(np.arange(len(segments)), sizes)
        width = self.num_classes + 1
        counts = np.bincount(segment_of * width + votes + 1, minlength=len(segments) * width)
        counts = counts.reshape(len(segments), width)[:, 1:]
        flags = np.bincount(segment_of, weights=escalated[0], minlength=len(segments)).astype(np.int64) \
            if escalated else np.zeros(len(segments), dtype=np.int64)
        return counts, flags

    def _bound_votes(self, feeds: dict, loop: int) -> tuple[np.ndarray, list[np.ndarray]]:
        import onnxruntime as ort

        noisy = feeds[NOISY]
        key = (loop, noisy.shape)
        if key not in self._bindings:
            # The full batch of the current point shape stays bound; other sizes (the last calls of a
            # run) and other point shapes (another video length) are freed, so the device buffers
            # stay at most two per loop.
            for old in [k for k in self._bindings
                        if k[0] == loop and (k[1][1:] != noisy.shape[1:] or k[1][0] != self.batch)]:
                del self._bindings[old]
            binding = self.session.io_binding()
            device_input = ort.OrtValue.ortvalue_from_shape_and_type(noisy.shape, np.float32, self._binding_device, 0)
            device_votes = ort.OrtValue.ortvalue_from_shape_and_type((noisy.shape[0],), np.int64,
                                                                    self._binding_device, 0)
            binding.bind_ortvalue_input(NOISY, device_input)
            binding.bind_ortvalue_output(VOTES, device_votes)
            escalated = []  # consensus graphs: one flag per copy, on the host
            if self.counts_escalations:
                escalated.append(ort.OrtValue.ortvalue_from_shape_and_type((noisy.shape[0],), np.bool_, "cpu", 0))
                binding.bind_ortvalue_output(ESCALATED_COPIES, escalated[0])
            self._bindings[key] = (binding, device_input, device_votes, escalated)
        binding, device_input, device_votes, escalated = self._bindings[key]
        device_input.update_inplace(np.ascontiguousarray(noisy))
        if self._feeds_offsets:
            binding.bind_cpu_input(OFFSETS, np.ascontiguousarray(feeds[OFFSETS]))
        self.session.run_with_iobinding(binding, self._run_options)
        # the bound buffers are reused by the next call: copies out
        return device_votes.numpy().copy(), [value.numpy().copy() for value in escalated]

    # -- one input, on its own -----------------------------------------------------------------------
    def votes(self, noisy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The graph's votes on a batch of noisy copies of one input with patch positions `offsets`
        (checks and tools; runs are made of run_call's calls)."""
        feeds = {NOISY: noisy}
        if self._feeds_offsets:
            feeds[OFFSETS] = np.repeat(offsets[None], len(noisy), axis=0) if self._offsets_per_copy else offsets
        return self.session.run([VOTES], feeds)[0]

    def count(self, point: np.ndarray, offsets: np.ndarray, num: int, sigma: float,
              gaussian: noise.Gaussian, plan=None, first_copy: int = 0) -> np.ndarray:
        """Votes per class over noisy copies first_copy … first_copy+num-1 of `gaussian`: point + sigma·z.

        Copies whose logits were not all finite vote for no class (graph.INVALID_VOTE): they are in
        no count, so num - counts.sum() of them were invalid. `plan` is the plan of this input where
        it differs from the counter's (videos: one per length). The same calls as a run's (Scheduler),
        for one request of one input.
        """
        source = Source(point, offsets, plan if plan is not None else self.plan)

        def task():
            counts = yield Request(source, gaussian, first_copy, num)
            return counts

        return next(Scheduler(self, sigma).results(iter([task()])))

    def close(self) -> None:
        self._run_options.terminate = True
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- the scheduler of copies -----------------------------------------------------------------------------

class Scheduler:
    """Fills every ONNX Runtime call with copies of many inputs in flight (the module docstring)."""

    def __init__(self, counter: VoteCounter, sigma: float):
        self.counter = counter
        self.sigma = sigma

    def results(self, tasks: Iterator[Generator]) -> Iterator:
        """Run `tasks` (generators that yield Requests, receive their counts, and return a result),
        admitting them in order while calls need copies; yield each result as its task returns."""
        counter = self.counter
        per_call = counter.copies_per_call(counter.plan)
        wanted = (counter.loops + 1) * per_call  # unsent copies to keep at hand: the next calls, full
        waiting: deque[Request] = deque()  # requests with copies not yet in a call, oldest first
        task_of: dict[Request, Generator] = {}
        running: dict = {}  # future → (loop, segments)
        free_loops = list(range(counter.loops))
        unsent, open_tasks, held_values, exhausted = 0, 0, 0, False

        def advance(task: Generator, counts):
            """Send `counts` to `task`: its next Request (queued), or its result."""
            nonlocal unsent, open_tasks, held_values
            try:
                request = task.send(counts)
                while request.copies == 0:  # nothing to draw: no call would ever answer it
                    request = task.send(np.zeros(counter.num_classes, dtype=np.int64))
            except StopIteration as done:
                return done.value
            request.counts = np.zeros(counter.num_classes, dtype=np.int64)
            if counts is None:  # a new task: count it in flight from its first request on
                open_tasks += 1
                held_values += request.source.point.size
            task_of[request] = task
            waiting.append(request)
            unsent += request.copies
            return None

        try:
            while True:
                while (not exhausted and unsent < wanted and open_tasks < counter.in_flight
                       and held_values < IN_FLIGHT_VALUES):
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                    else:
                        result = advance(task, None)
                        if result is not None:  # no copies needed (an input that cannot be read)
                            yield result
                while free_loops and waiting:
                    segments = self._next_call(waiting, partial=not running)
                    if segments is None:  # rather wait for a running call: it brings more copies
                        break
                    unsent -= sum(copies for _, _, copies in segments)
                    loop = free_loops.pop()
                    future = counter._pool.submit(counter.run_call, segments, self.sigma, loop)
                    running[future] = (loop, segments)
                if not running:
                    return  # nothing waits and nothing runs: every admitted task has returned
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    loop, segments = running.pop(future)
                    free_loops.append(loop)
                    counts, escalated = future.result()
                    counter.calls += 1
                    counter.copies += sum(copies for _, _, copies in segments)
                    counter.escalated += int(escalated.sum())
                    for (request, _, copies), votes, flags in zip(segments, counts, escalated):
                        request.counts += votes
                        request.returned += copies
                        request.source.escalated += int(flags)
                        if request.returned == request.copies:
                            task = task_of.pop(request)
                            result = advance(task, request.counts)
                            if result is not None:
                                open_tasks -= 1
                                held_values -= request.source.point.size
                                yield result
        finally:  # an error or Ctrl-C: no new call starts, and the running ones end before we return
            for future in running:
                future.cancel()
            wait(running)

    def _next_call(self, waiting: deque, partial: bool) -> list[tuple[Request, int, int]] | None:
        """Segments for the next call: copies of the oldest waiting requests that share its plan, up to
        the plan's copies per call. A call that would not be full is made only when `partial`."""
        counter = self.counter
        group = counter.call_group(waiting[0].source)
        per_call = counter.copies_per_call(waiting[0].source.plan)
        chosen, room = [], per_call
        for request in waiting:
            if room == 0:
                break
            if counter.call_group(request.source) == group:
                take = min(room, request.copies - request.sent)
                chosen.append((request, take))
                room -= take
        if room and not partial:
            return None
        segments = []
        for request, take in chosen:
            segments.append((request, request.first + request.sent, take))
            request.sent += take
            if request.sent == request.copies:
                waiting.remove(request)
        return segments
