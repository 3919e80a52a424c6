"""ONNX Runtime sessions and the vote-counting loop.

`VoteCounter.count` is the hot loop: fill a batch of noisy points, run the sampling graph, add the
votes up. Noise for the next batch is generated on a helper thread while ONNX Runtime runs the
current one (both release the GIL), into two preallocated buffers used in turn. The noise stream is
consumed in the same order as a sequential loop, so the counts do not depend on the overlap.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from . import noise
from .errors import UsageError
from .graph import NOISY, OFFSETS, VOTES

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
                 device: str = "auto", threads: int = 0, values_per_call: int | None = None):
        """`graph` is a sampling graph for `plan` (any plan with noise_shape and dense_offsets).

        `values_per_call`, where given, caps one call at about that many floats of noisy input or
        model input by running fewer than `batch` copies for larger plans (long videos). The counts
        do not depend on it: the noise stream is consumed in the same order whatever the batch.
        """
        self.plan = plan
        self.num_classes = num_classes
        self.batch = batch
        self.values_per_call = values_per_call
        self.session = make_session(graph.SerializeToString(), device, threads)
        self.device = provider_name(self.session)
        self._feeds_offsets = any(i.name == OFFSETS for i in self.session.get_inputs())
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
        probe = np.zeros((batch, *self.plan.noise_shape), dtype=np.float32)
        try:
            votes = self.votes(probe, self.plan.dense_offsets)
        except Exception as error:
            raise UsageError("the model cannot run on this plan "
                             f"(batch {batch}, views {self.plan.patch_hw}): "
                             f"{str(error).splitlines()[0]}") from None
        if votes.shape != (batch,):
            raise UsageError(f"the model returned {votes.shape} votes for a batch of {batch}")

    def votes(self, noisy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        feeds = {NOISY: noisy}
        if self._feeds_offsets:
            feeds[OFFSETS] = offsets
        return self.session.run([VOTES], feeds)[0]

    def count(self, point: np.ndarray, offsets: np.ndarray, num: int, sigma: float,
              rng: np.random.Generator, plan=None) -> np.ndarray:
        """Votes per class over `num` noisy copies point + sigma·z, z drawn from `rng`.

        `plan` is the plan of this input where it differs from the counter's (videos: one per length).
        """
        counts = np.zeros(self.num_classes, dtype=np.int64)
        batch = self.copies_per_call(plan if plan is not None else self.plan)
        buffers = self._buffers_for(point.shape, batch)
        sizes = [min(batch, num - start) for start in range(0, num, batch)]

        def fill(step: int) -> np.ndarray:
            buffer = buffers[step % 2][:sizes[step]]
            return noise.fill_noisy(buffer, point, sigma, rng)

        pending = self._producer.submit(fill, 0) if sizes else None
        for step in range(len(sizes)):
            noisy = pending.result()
            if step + 1 < len(sizes):
                pending = self._producer.submit(fill, step + 1)
            votes = self.votes(noisy, offsets)
            if votes.size and votes.max() >= self.num_classes:
                raise UsageError(f"the model voted for class {int(votes.max())} but declares "
                                 f"{self.num_classes} classes")
            counts += np.bincount(votes, minlength=self.num_classes)
        return counts

    def close(self) -> None:
        self._producer.shutdown(wait=True)
