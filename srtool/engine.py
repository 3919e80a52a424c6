"""ONNX Runtime sessions and the vote-counting loop.

`VoteCounter.count` is the hot loop: fill a batch of noisy points, run the sampling graph, add the
votes up. Several sampling loops run side by side on one session, each with its own preallocated
batch buffer: on the CPU one loop per core, each calling ONNX Runtime with a single thread, so every
core draws a batch's noise and then runs that batch. Noise never preempts a multi-threaded ORT
operator (where one descheduled thread stalls the others) and no core waits on another. On CUDA two
loops: one draws noise while the GPU runs the other's batch. Numpy's generators and ORT's Run release
the GIL. Copy j's noise is fixed by (seed, input, purpose, j) (noise.Gaussian), so the counts do not
depend on the number of loops, the batch size or the timing.

On CUDA the session runs with IO binding: per loop, one device input buffer and one device votes
buffer per batch shape (the full batch and the shrinking last calls of an input, the same few
shapes for every input), bound once; per call only the noisy batch goes up and the int64 votes
come down. With `device_noise_seed` the noise is drawn inside the graph instead
(graph.with_device_noise) by a single loop, so nothing but the clean point goes up.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from . import noise
from .errors import UsageError
from .graph import CLEAN, COPIES, ESCALATED, NOISY, OFFSETS, VOTES, with_device_noise

DEVICES = ("auto", "cpu", "cuda")


def gpu_present() -> bool:
    """A cheap look for an NVIDIA driver, so CPU-only machines never try (and log) a CUDA start."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for a --device value ('auto' takes CUDA where a GPU and ORT's CUDA EP are there)."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}")
    if device == "auto":
        usable = gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers()
        return "cuda" if usable else "cpu"
    return device


def make_session(model_bytes: bytes, device: str = "cpu", threads: int = 0,
                 session_options: dict | None = None, provider_options: dict | None = None):
    """An inference session on `device`; fails loudly where CUDA was asked for and is not used.

    `session_options` are attributes of onnxruntime.SessionOptions set after srtool's own (e.g.
    graph_optimization_level); `provider_options` go to the CUDA provider (e.g. device_id).
    """
    import onnxruntime as ort

    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if resolve_device(device) == "cuda"
                 else ["CPUExecutionProvider"])
    if provider_options and providers[0] == "CUDAExecutionProvider":
        providers[0] = ("CUDAExecutionProvider", dict(provider_options))
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: ORT's errors reach the user as srtool's one line, not twice
    options.intra_op_num_threads = threads
    for name, value in (session_options or {}).items():
        if not hasattr(options, name):
            raise UsageError(f"onnxruntime.SessionOptions has no option {name!r}")
        try:
            setattr(options, name, value)
        except (TypeError, ValueError) as error:
            raise UsageError(f"session option {name}={value!r}: {str(error).splitlines()[0]}") from None
    try:
        session = ort.InferenceSession(model_bytes, options, providers=providers)
    except Exception as error:  # ORT raises its own exception types with multi-line texts
        raise UsageError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from None
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # ORT falls back to the CPU silently; a user who asked for the GPU must know.
        raise UsageError("--device cuda was requested but ONNX Runtime could not use CUDA "
                         "(no GPU, driver or CUDA libraries); use --device cpu")
    return session


def provider_name(session) -> str:
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def call_sizes(num: int, per_call: int, loops: int) -> Iterator[tuple[int, int]]:
    """(first copy, copies) of each call for `num` copies: full calls while there is plenty of work,
    then shrinking ones (a share of what is left, at least per_call/8), so that the sampling loops
    finish an input together instead of one running a last full batch while the others wait.
    A generator: a huge --n costs nothing until its calls are drawn."""
    smallest = max(1, min(per_call, num) // 8)
    first = 0
    while first < num:
        left = num - first
        size = min(left, per_call, max(smallest, -(-left // loops)))
        yield first, size
        first += size


def sampling_loops(on_cuda: bool, threads: int, device_noise: bool = False) -> int:
    """How many sampling loops VoteCounter runs: one per core (or `threads`) on the CPU, two on
    CUDA (one draws noise while the GPU runs the other's batch), one with in-graph noise (which
    leaves the host nothing to overlap, and whose generator follows the order of the calls)."""
    return 1 if device_noise else 2 if on_cuda else (threads or cpu_cores())


def cpu_cores() -> int:
    """Cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class VoteCounter:
    """Counts the votes of the reduced base classifier on noisy copies of one noise point."""

    def __init__(self, graph: onnx.ModelProto, plan, num_classes: int, batch: int,
                 device: str = "auto", threads: int = 0, values_per_call: int | None = None,
                 io_binding: bool | None = None, device_noise_seed: int | None = None,
                 sigma: float | None = None, session_options: dict | None = None,
                 provider_options: dict | None = None):
        """`graph` is a sampling graph for `plan` (any plan with noise_shape and dense_offsets).

        `threads` is the number of CPU sampling loops (0: one per core); on CUDA it is the ORT
        threads of the operators left on the CPU, and two loops run (one with device noise).
        `values_per_call`, where given, caps the noisy input or model input of the calls in flight
        at about that many floats by running fewer than `batch` copies per call for larger plans
        (long videos). The counts depend on neither: copy j's noise is fixed (noise.Gaussian).
        """
        self.plan = plan
        self.num_classes = num_classes
        self.batch = batch
        self.values_per_call = values_per_call
        self.device_noise = device_noise_seed is not None
        if self.device_noise:
            graph = with_device_noise(graph, plan.noise_shape, sigma, device_noise_seed)
        on_cuda = resolve_device(device) == "cuda"
        self.loops = sampling_loops(on_cuda, threads, self.device_noise)
        self.session = make_session(graph.SerializeToString(), device, threads if on_cuda else 1,
                                    session_options, provider_options)
        self.device = provider_name(self.session)
        if self.device_noise and self.device != "cuda":
            raise UsageError("--noise device needs --device cuda: ONNX Runtime's CPU RandomNormal "
                             "(period 2^31) is not fit for certificates; use --noise host")
        self._feeds_offsets = any(i.name == OFFSETS for i in self.session.get_inputs())
        # An ensemble with consensus says how many copies went past its first K members; counted
        # here (not under IO binding, which fetches the votes only) for the forward-pass tally.
        self._outputs = [VOTES] + [o.name for o in self.session.get_outputs() if o.name == ESCALATED]
        self.escalated = 0  # copies that ran the whole ensemble, since this counter was made
        self._escalated_lock = threading.Lock()
        # IO binding is the CUDA path; `io_binding=True` exercises the same code on the CPU (tests).
        self._binding_device = "cuda" if self.device == "cuda" else "cpu"
        self._use_binding = self.device == "cuda" if io_binding is None else io_binding
        self._bindings: dict[tuple[int, tuple[int, ...]], tuple] = {}  # (loop, batch shape) → binding
        self._buffers: dict[int, np.ndarray] = {}  # loop → its batch buffer, resized when the point's shape changes
        self._pool = ThreadPoolExecutor(max_workers=self.loops, thread_name_prefix="srtool-sampling")
        self._check_runs()
        self.escalated = 0  # the probe batch above is not a copy of any input

    @property
    def counts_escalations(self) -> bool:
        """A consensus graph: every call also reports the copies that ran the whole ensemble."""
        return ESCALATED in self._outputs

    def copies_per_call(self, plan) -> int:
        """Noisy copies per ONNX Runtime call for `plan`: `batch`, or fewer under `values_per_call`."""
        if self.values_per_call is None:
            return self.batch
        per_copy = max(int(np.prod(plan.noise_shape)), plan.views_per_copy * int(np.prod(plan.view_shape)))
        return int(max(1, min(self.batch, self.values_per_call // (per_copy * self.loops))))

    def _buffer(self, loop: int, shape: tuple[int, ...], batch: int) -> np.ndarray:
        buffer = self._buffers.get(loop)
        if buffer is None or buffer.shape[1:] != shape or len(buffer) < batch:
            buffer = self._buffers[loop] = np.empty((batch, *shape), dtype=np.float32)
        return buffer

    def _check_runs(self) -> None:
        """One run on a full batch, so a model that cannot take this plan fails before any work."""
        batch = self.copies_per_call(self.plan)
        try:
            if self.device_noise:
                point = np.zeros(self.plan.noise_shape, dtype=np.float32)
                votes = self._device_noise_votes(point, batch, self.plan.dense_offsets)
            else:
                probe = np.zeros((batch, *self.plan.noise_shape), dtype=np.float32)
                votes = self.votes(probe, self.plan.dense_offsets)
        except Exception as error:
            raise UsageError("the model cannot run on this plan "
                             f"(batch {batch}, views {self.plan.patch_hw}): "
                             f"{str(error).splitlines()[0]}") from None
        if votes.shape != (batch,):
            raise UsageError(f"the model returned {votes.shape} votes for a batch of {batch}")

    def votes(self, noisy: np.ndarray, offsets: np.ndarray, loop: int = 0) -> np.ndarray:
        if self._use_binding:
            return self._bound_votes(noisy, offsets, loop)
        feeds = {NOISY: noisy}
        if self._feeds_offsets:
            feeds[OFFSETS] = offsets
        votes, *escalated = self.session.run(self._outputs, feeds)
        self._add_escalated(escalated)
        return votes

    def _add_escalated(self, escalated: list[np.ndarray]) -> None:
        """Add a consensus call's ESCALATED output (absent for other graphs) to the copies escalated."""
        if escalated:
            with self._escalated_lock:
                self.escalated += int(escalated[0].sum())

    def _device_noise_votes(self, point: np.ndarray, copies: int, offsets: np.ndarray) -> np.ndarray:
        feeds = {CLEAN: point[None], COPIES: np.array([copies, *point.shape], dtype=np.int64)}
        if self._feeds_offsets:
            feeds[OFFSETS] = offsets
        votes, *escalated = self.session.run(self._outputs, feeds)
        self._add_escalated(escalated)
        return votes

    def _bound_votes(self, noisy: np.ndarray, offsets: np.ndarray, loop: int) -> np.ndarray:
        import onnxruntime as ort

        key = (loop, noisy.shape)
        if key not in self._bindings:  # a fixed set of shapes per run: bind each once per loop
            binding = self.session.io_binding()
            device_input = ort.OrtValue.ortvalue_from_shape_and_type(noisy.shape, np.float32, self._binding_device, 0)
            device_votes = ort.OrtValue.ortvalue_from_shape_and_type((noisy.shape[0],), np.int64,
                                                                    self._binding_device, 0)
            binding.bind_ortvalue_input(NOISY, device_input)
            binding.bind_ortvalue_output(VOTES, device_votes)
            escalated = []  # consensus graphs: the one-number count, on the host
            if self.counts_escalations:
                escalated.append(ort.OrtValue.ortvalue_from_shape_and_type((1,), np.int64, "cpu", 0))
                binding.bind_ortvalue_output(ESCALATED, escalated[0])
            self._bindings[key] = (binding, device_input, device_votes, escalated)
        binding, device_input, device_votes, escalated = self._bindings[key]
        device_input.update_inplace(np.ascontiguousarray(noisy))
        if self._feeds_offsets:
            binding.bind_cpu_input(OFFSETS, np.ascontiguousarray(offsets))
        self.session.run_with_iobinding(binding)
        self._add_escalated([value.numpy() for value in escalated])
        return device_votes.numpy().copy()  # the bound buffer is reused by the next call

    def count(self, point: np.ndarray, offsets: np.ndarray, num: int, sigma: float,
              gaussian: noise.Gaussian, plan=None, first_copy: int = 0) -> np.ndarray:
        """Votes per class over noisy copies first_copy … first_copy+num-1 of `gaussian`: point + sigma·z.

        Copies whose logits were not all finite vote for no class (graph.INVALID_VOTE): they are in
        no count, so num - counts.sum() of them were invalid. `plan` is the plan of this input where
        it differs from the counter's (videos: one per length). A sequential run counts a prefix of
        the copies in rounds, each round starting at `first_copy`.
        """
        per_call = self.copies_per_call(plan if plan is not None else self.plan)
        batches = iter((first_copy + first, size) for first, size in call_sizes(num, per_call, self.loops))
        for key in [key for key in self._bindings if key[1][1:] != point.shape]:
            del self._bindings[key]  # another video length: free its device buffers
        lock, stop = threading.Lock(), threading.Event()

        def sample(loop: int) -> np.ndarray:
            counts = np.zeros(self.num_classes, dtype=np.int64)
            try:
                while True:
                    with lock:
                        first, size = (None, 0) if stop.is_set() else next(batches, (None, 0))
                    if first is None:
                        return counts
                    if self.device_noise:
                        votes = self._device_noise_votes(point, size, offsets)
                    else:
                        noisy = gaussian.fill(self._buffer(loop, point.shape, per_call)[:size], point, sigma, first)
                        votes = self.votes(noisy, offsets, loop)
                    counts += self._tally(votes)
            except BaseException:
                stop.set()
                raise

        loops = [self._pool.submit(sample, loop) for loop in range(self.loops)]
        try:
            return sum((done.result() for done in loops), np.zeros(self.num_classes, dtype=np.int64))
        except BaseException:  # an error in a loop, or Ctrl-C here: the other loops stop after their batch
            stop.set()
            raise

    def _tally(self, votes: np.ndarray) -> np.ndarray:
        """Votes per class; INVALID_VOTE (-1, non-finite logits) counts for none."""
        if votes.size and votes.max() >= self.num_classes:
            raise UsageError(f"the model voted for class {int(votes.max())} but declares "
                             f"{self.num_classes} classes")
        return np.bincount(votes + 1, minlength=self.num_classes + 1)[1:]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
