"""ONNX Runtime sessions and the vote-counting loop.

`VoteCounter.count` is the hot loop: fill a batch of noisy points, run the sampling graph, add the
votes up. Noise for the next batch is generated on a helper thread while ONNX Runtime runs the
current one (both release the GIL), into two preallocated buffers used in turn. The noise stream is
consumed in the same order as a sequential loop, so the counts do not depend on the overlap.

On CUDA the session runs with IO binding: one device input buffer and one device votes buffer per
batch shape (the full batch, and the remainders such as the n0 stage), bound once; per call only
the noisy batch goes up and the int64 votes come down. With `device_noise_seed` the noise is drawn
inside the graph instead (graph.with_device_noise), so nothing but the clean point goes up.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from . import noise
from .errors import UsageError
from .graph import CLEAN, COPIES, NOISY, OFFSETS, VOTES, with_device_noise

DEVICES = ("auto", "cpu", "cuda")


def gpu_present() -> bool:
    """A cheap look for an NVIDIA driver, so CPU-only machines never try (and log) a CUDA start."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def make_session(model_bytes: bytes, device: str = "cpu", threads: int = 0):
    """An inference session on `device`; fails loudly where CUDA was asked for and is not used."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}")
    use_cuda = device == "cuda" or (device == "auto" and gpu_present()
                                    and "CUDAExecutionProvider" in ort.get_available_providers())
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda
                 else ["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
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


class VoteCounter:
    """Counts the votes of the reduced base classifier on noisy copies of one noise point."""

    def __init__(self, graph: onnx.ModelProto, plan, num_classes: int, batch: int,
                 device: str = "auto", threads: int = 0, values_per_call: int | None = None,
                 io_binding: bool | None = None, device_noise_seed: int | None = None,
                 sigma: float | None = None):
        """`graph` is a sampling graph for `plan` (any plan with noise_shape and dense_offsets).

        `values_per_call`, where given, caps one call at about that many floats of noisy input or
        model input by running fewer than `batch` copies for larger plans (long videos). The counts
        do not depend on it: the noise stream is consumed in the same order whatever the batch.
        """
        self.plan = plan
        self.num_classes = num_classes
        self.batch = batch
        self.values_per_call = values_per_call
        self.device_noise = device_noise_seed is not None
        if self.device_noise:
            graph = with_device_noise(graph, plan.noise_shape, sigma, device_noise_seed)
        self.session = make_session(graph.SerializeToString(), device, threads)
        self.device = provider_name(self.session)
        if self.device_noise and self.device != "cuda":
            raise UsageError("--noise device needs --device cuda: ONNX Runtime's CPU RandomNormal "
                             "(period 2^31) is not fit for certificates; use --noise host")
        self._feeds_offsets = any(i.name == OFFSETS for i in self.session.get_inputs())
        # IO binding is the CUDA path; `io_binding=True` exercises the same code on the CPU (tests).
        self._binding_device = "cuda" if self.device == "cuda" else "cpu"
        self._use_binding = self.device == "cuda" if io_binding is None else io_binding
        self._bindings: dict[tuple[int, ...], tuple] = {}
        self._buffers: list[np.ndarray] = []  # sized on first use, again when the point's shape changes
        self._producer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srtool-noise")
        self._check_runs()

    def copies_per_call(self, plan) -> int:
        """Noisy copies per ONNX Runtime call for `plan`: `batch`, or fewer under `values_per_call`."""
        if self.values_per_call is None:
            return self.batch
        per_copy = max(int(np.prod(plan.noise_shape)), plan.views_per_copy * int(np.prod(plan.view_shape)))
        return int(max(1, min(self.batch, self.values_per_call // per_copy)))

    def _buffers_for(self, shape: tuple[int, ...], batch: int) -> list[np.ndarray]:
        if not self._buffers or self._buffers[0].shape != (batch, *shape):
            self._buffers = [np.empty((batch, *shape), dtype=np.float32) for _ in range(2)]
        return self._buffers

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

    def votes(self, noisy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        if self._use_binding:
            return self._bound_votes(noisy, offsets)
        feeds = {NOISY: noisy}
        if self._feeds_offsets:
            feeds[OFFSETS] = offsets
        return self.session.run([VOTES], feeds)[0]

    def _device_noise_votes(self, point: np.ndarray, copies: int, offsets: np.ndarray) -> np.ndarray:
        feeds = {CLEAN: point[None], COPIES: np.array([copies, *point.shape], dtype=np.int64)}
        if self._feeds_offsets:
            feeds[OFFSETS] = offsets
        return self.session.run([VOTES], feeds)[0]

    def _bound_votes(self, noisy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        if noisy.shape not in self._bindings:  # a fixed set of shapes per run: bind each once
            binding = self.session.io_binding()
            device_input = ort.OrtValue.ortvalue_from_shape_and_type(noisy.shape, np.float32, self._binding_device, 0)
            device_votes = ort.OrtValue.ortvalue_from_shape_and_type((noisy.shape[0],), np.int64,
                                                                    self._binding_device, 0)
            binding.bind_ortvalue_input(NOISY, device_input)
            binding.bind_ortvalue_output(VOTES, device_votes)
            self._bindings[noisy.shape] = (binding, device_input, device_votes)
        binding, device_input, device_votes = self._bindings[noisy.shape]
        device_input.update_inplace(np.ascontiguousarray(noisy))
        if self._feeds_offsets:
            binding.bind_cpu_input(OFFSETS, np.ascontiguousarray(offsets))
        self.session.run_with_iobinding(binding)
        return device_votes.numpy().copy()  # the bound buffer is reused by the next call

    def count(self, point: np.ndarray, offsets: np.ndarray, num: int, sigma: float,
              rng: np.random.Generator, plan=None) -> np.ndarray:
        """Votes per class over `num` noisy copies point + sigma·z, z drawn from `rng`.

        `plan` is the plan of this input where it differs from the counter's (videos: one per length).
        """
        counts = np.zeros(self.num_classes, dtype=np.int64)
        batch = self.copies_per_call(plan if plan is not None else self.plan)
        sizes = [min(batch, num - start) for start in range(0, num, batch)]
        if self.device_noise:  # the graph draws the noise; `rng` and the host buffers are unused
            for size in sizes:
                counts += self._tally(self._device_noise_votes(point, size, offsets))
            return counts
        buffers = self._buffers_for(point.shape, batch)

        def fill(step: int) -> np.ndarray:
            buffer = buffers[step % 2][:sizes[step]]
            return noise.fill_noisy(buffer, point, sigma, rng)

        pending = self._producer.submit(fill, 0) if sizes else None
        for step in range(len(sizes)):
            noisy = pending.result()
            if step + 1 < len(sizes):
                pending = self._producer.submit(fill, step + 1)
            counts += self._tally(self.votes(noisy, offsets))
        return counts

    def _tally(self, votes: np.ndarray) -> np.ndarray:
        if votes.size and votes.max() >= self.num_classes:
            raise UsageError(f"the model voted for class {int(votes.max())} but declares "
                             f"{self.num_classes} classes")
        return np.bincount(votes, minlength=self.num_classes)

    def close(self) -> None:
        self._producer.shutdown(wait=True)
