"""ONNX Runtime sessions: the device, a session of any model (past protobuf's 2 GiB too), and what
an ONNX Runtime failure says. Below the sampling graph and the engine, which both make sessions."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import onnx

from .errors import UsageError

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


# A serialized protobuf message cannot exceed 2 GiB. A graph larger than this (ADM's ImageNet UNet,
# 2.2 GB of float32 weights, in front of a classifier) goes to ONNX Runtime as a file whose weights
# lie beside it, in a private folder that lives as long as the session.
MAX_PROTO_BYTES = 2**31 - 2**26


def make_session(model: onnx.ModelProto | bytes, device: str = "cpu", threads: int = 0,
                 session_options: dict | None = None, provider_options: dict | None = None):
    """An inference session on `device`; fails loudly where CUDA was asked for and is not used.

    `model` is serialized ONNX, or a ModelProto (any size). `session_options` are attributes of
    onnxruntime.SessionOptions set after srtool's own (e.g. graph_optimization_level);
    `provider_options` go to the CUDA provider (e.g. device_id).
    """
    import onnxruntime as ort

    folder = None
    if isinstance(model, onnx.ModelProto):
        model, folder = _serialized_or_spilled(model)

    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if resolve_device(device) == "cuda"
                 else ["CPUExecutionProvider"])
    if provider_options and providers[0] == "CUDAExecutionProvider":
        providers[0] = ("CUDAExecutionProvider", dict(provider_options))
    ort.set_default_logger_severity(4)  # a provider that fails to load logs there, before any session option
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
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as error:  # ORT raises its own exception types with multi-line texts
        raise UsageError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from None
    session.srtool_weights = folder  # a spilled graph's folder goes when the session does
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # ORT falls back to the CPU silently; a user who asked for the GPU must know.
        raise UsageError("--device cuda was requested but ONNX Runtime could not use CUDA "
                         "(no GPU, driver or CUDA libraries); use --device cpu")
    return session


def _serialized_or_spilled(model: onnx.ModelProto) -> tuple[bytes | str, tempfile.TemporaryDirectory | None]:
    """The model as bytes, or past protobuf's 2 GiB as a file in a private folder (_spilled).

    The size is told from the tensors, each measured on its own: protobuf refuses to measure (or
    serialize) a whole message past 2 GiB, and trying costs the time and memory of a serialization."""
    from .model import weight_bytes

    if weight_bytes(model) <= MAX_PROTO_BYTES:
        try:
            return model.SerializeToString(), None
        except ValueError:  # protobuf's EncodeError: the nodes and names took it past the limit after all
            pass
    return _spilled(model)


def _spilled(model: onnx.ModelProto) -> tuple[str, tempfile.TemporaryDirectory]:
    """A graph past protobuf's limit written as model.onnx + weights.bin in a private folder: ORT
    reads the weights from there, and from nowhere else. The weights are moved out of the proto one
    tensor at a time while the graph is written, then read back in, so no second copy of them is
    ever held and the caller's proto ends as it began. Removed with the session (engine.make_session),
    or at exit."""
    from onnx import TensorProto

    from .model import tensors_of

    folder = tempfile.TemporaryDirectory(prefix="srtool-graph-")
    path, weights = os.path.join(folder.name, "model.onnx"), os.path.join(folder.name, "weights.bin")
    moved, failure = [], None
    try:
        with open(weights, "wb") as out:
            for tensor in tensors_of(model):
                if tensor.data_location == TensorProto.EXTERNAL or not tensor.HasField("raw_data") \
                        or tensor.ByteSize() < 1024:
                    continue
                offset, data = out.tell(), tensor.raw_data
                out.write(data)
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(data)))):
                    tensor.external_data.add(key=key, value=value)
                moved.append((tensor, offset, len(data)))
                del data
        with open(path, "wb") as out:
            out.write(model.SerializeToString())
    except OSError as error:  # a full disk, say
        failure = error
    finally:  # the weights go back into the caller's proto, whatever happened
        with open(weights, "rb") if moved else open(os.devnull, "rb") as back:
            for tensor, offset, length in moved:
                back.seek(offset)
                del tensor.external_data[:]
                tensor.ClearField("data_location")
                tensor.raw_data = back.read(length)
    if failure is not None:
        folder.cleanup()
        raise UsageError(f"cannot write the model graph ({sum(length for *_, length in moved) / 2**30:.1f} GB of "
                         f"weights) to {tempfile.gettempdir()}: {failure.strerror}; set TMPDIR to a disk with room")
    return path, folder


def runtime_failure(error: BaseException) -> str | None:
    """The first line of an ONNX Runtime error, else None: its own exception types (from its C++ core),
    or a RuntimeError raised inside its Python package (run_with_iobinding's "Error in execution")."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    inside = frame is not None and f"{os.sep}onnxruntime{os.sep}" in frame.tb_frame.f_code.co_filename
    if type(error).__module__ != "onnxruntime.capi.onnxruntime_pybind11_state" and \
            not (isinstance(error, RuntimeError) and inside):
        return None
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^(Error in execution: )?(\[ONNXRuntimeError\] : \d+ : \w+ : )?", "", text)


def provider_name(session) -> str:
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
