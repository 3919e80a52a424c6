"""What every exporter shares: checkpoint loading, the in-graph input transform, ONNX export with
embedded weights, srtool metadata, float16 conversion and the torch-vs-ONNX-Runtime parity check.

The scripts (`smoothing`, `mars`, `factory`) only decide *which* network to build and how its input
was normalized at training time; everything after that is `export_and_verify` here, so the three
families are exported, described and verified the same way.

Exit codes: 0 exported and verified; 1 parity check failed (nothing written unless --force);
2 bad input (file, checkpoint layout, architecture, arguments), reported in one line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from exporters.fp16 import Fp16Error, convert_to_fp16

# Key prefixes the common training wrappers leave on state-dict keys: Sequential(normalize, net),
# DataParallel, both, or none. Tried in this order after the architecture's own prefix.
KNOWN_PREFIXES = ("1.module.", "1.", "module.", "model.", "")

# ---- tolerances of the parity check ---------------------------------------------------------
# Both sides compute the same float32 network, but with different kernels (ATen/oneDNN vs MLAS),
# different summation orders and, after the exporter's optimizer, batch norm folded into the
# convolutions. Each layer then differs by a few float32 roundings, ~sqrt(K)·2^-24 ≈ 1e-5 relative
# at worst for K ≈ 5000-term dot products, and a residual network adds rather than multiplies
# them. Measured with random weights and batch-norm statistics: ≤ 5e-7 of the largest |logit| on
# all five architectures. A real export defect (a skipped layer, wrong padding or stride, wrong
# normalization) moves logits by O(their scale), so 1e-3 of the largest |logit| leaves >1000x
# headroom over rounding and still catches every such bug.
FP32_RTOL = 1e-3
# float16 keeps 11 significant bits: every weight moves by up to 2^-11 ≈ 4.9e-4 relative, and on a
# GPU the activations are re-rounded after every layer, so logit errors of ~1e-3 of the scale are
# normal. Measured on CPU (where ONNX Runtime computes float16 graphs in float32 behind inserted
# Casts, so mostly the weight rounding shows): ≤ 5.3e-4. 1e-2 leaves ~20x headroom for that and
# for fp16 arithmetic, and still flags a broken conversion (overflow to inf, a mis-typed tensor).
FP16_RTOL = 1e-2
# A floor for networks whose logits are all ~0 (relative error is meaningless there).
ATOL = 1e-5


class ExportError(Exception):
    """A problem with the user's input, reported as one line with exit code 2."""


def info(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---- checkpoints ----------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (PyTorch >= 1.6) or a pickle stream (older, e.g. the 2019
    smoothing checkpoints); pickle protocol 2+ starts with the PROTO opcode 0x80."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> object:
    """torch.load on CPU, refusing arbitrary pickled code unless the user trusts the file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no such checkpoint file: {path}")
    try:
        # weights_only=True unpickles tensors and plain containers only: a downloaded checkpoint
        # cannot run code on this machine (the same reason DESIGN §6 bans plain pickle.load).
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises a zoo of types for non-checkpoints
        text = str(exc)
        blocked = re.search(r"GLOBAL ([\w.]+)", text)
        if blocked and "can still be loaded" in text and _looks_like_torch_file(path):
            raise ExportError(
                f"{path} pickles {blocked.group(1)} besides tensors, which a safe load refuses; if "
                f"you trust its source, pass --trust-checkpoint (this runs code from the file)") from None
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        if "Weights only load failed" in first:  # torch's generic preamble says nothing here
            first = next((l.strip() for l in text.splitlines() if "Unsupported" in l), "unreadable")
        raise ExportError(f"{path} is not a PyTorch checkpoint (torch.load: {first})") from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_checkpoint(obj: object, path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, the rest of the checkpoint dict) from {'state_dict': ..., ...} or a bare state dict."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
        if _is_state_dict(obj):
            return dict(obj), {}
        keys = ", ".join(map(repr, list(obj)[:6]))
        raise ExportError(f"{path} is not a model checkpoint: a dict with keys [{keys}] and no "
                          f"'state_dict' of tensors")
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), {}
    raise ExportError(f"{path} is not a model checkpoint: it holds a {type(obj).__name__}, "
                      f"expected a dict with 'state_dict'")


def _examples(names: Sequence[str], count: int = 4) -> str:
    shown = ", ".join(list(names)[:count])
    return shown + (", ..." if len(names) > count else "")


def strip_prefix(state_dict: dict, expected: set[str], preferred: str) -> tuple[str, dict]:
    """Pick the key prefix that explains most checkpoint keys (the original one on ties)."""
    best, best_hits = preferred, -1
    for prefix in (preferred, *[p for p in KNOWN_PREFIXES if p != preferred]):
        hits = sum(1 for k in state_dict if k.startswith(prefix) and k[len(prefix):] in expected)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best, {k[len(best):]: v for k, v in state_dict.items() if k.startswith(best)}


def fit_state_dict(model: nn.Module, state_dict: dict, prefix: str, what: str) -> None:
    """Load `state_dict` into `model`, or raise a one-line error naming missing/unexpected keys.

    `num_batches_tracked` may be absent (checkpoints from PyTorch < 0.4.1) and does not affect
    inference, so only that key is forgiven; everything else must match exactly.
    """
    target = model.state_dict()
    used, stripped = strip_prefix(state_dict, set(target), prefix)
    missing = [k for k in target if k not in stripped and not k.endswith("num_batches_tracked")]
    unexpected = [used + k for k in stripped if k not in target]
    unexpected += [k for k in state_dict if not k.startswith(used)]
    if missing or unexpected:
        raise ExportError(
            f"checkpoint keys do not fit {what} (key prefix '{prefix}'): "
            f"{len(missing)} missing (e.g. {_examples([prefix + k for k in missing]) or '-'}); "
            f"{len(unexpected)} unexpected (e.g. {_examples(unexpected) or '-'})")
    shapes = [f"{k}: checkpoint {list(stripped[k].shape)} vs model {list(target[k].shape)}"
              for k in stripped if stripped[k].shape != target[k].shape]
    if shapes:
        raise ExportError(f"checkpoint does not fit {what}: {len(shapes)} tensors have other "
                          f"shapes, e.g. {_examples(shapes, 2)}")
    if used != prefix:
        info(f"note: checkpoint keys carry prefix '{used}' instead of the original '{prefix}'; "
             f"they fit {what} all the same")
    for k in target:
        stripped.setdefault(k, target[k])  # only num_batches_tracked can be missing here
    model.load_state_dict(stripped, strict=True)


def parse_sigma(path: str | os.PathLike) -> float | None:
    """Training noise level from paths such as models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar."""
    found = re.findall(r"(?:noise|sigma)[_=-]?(\d*\.\d+|\d+)(?![\d.])", str(path))
    return float(found[-1]) if found else None


# Class-name lists shipped with the exporters, by the name --classes takes (exporters/classes/NAME.txt).
# imagenet: the 1000 ILSVRC-2012 classes in the usual order (sorted synset ids, as an ImageFolder of
# the synset folders numbers them), one short name each; the two names WordNet uses twice are told
# apart ("crane (bird)", "crane (machine)"; "maillot", "tank suit").
SHIPPED_CLASSES = Path(__file__).resolve().parent / "classes"


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names from a JSON list, or one name a line (a leading index, as in UCF101's
    classInd.txt "1 ApplyEyeMakeup", is dropped); or a shipped list by name (`imagenet`)."""
    shipped = SHIPPED_CLASSES / f"{path}.txt"
    if not Path(path).exists() and Path(path).name == str(path) and shipped.is_file():
        return shipped.read_text().splitlines()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ExportError(f"cannot read class names from {path}: {exc.strerror}") from None
    try:
        names = json.loads(text)
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
    except json.JSONDecodeError:
        pass
    names = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        names.append(" ".join(parts[1:]) if len(parts) > 1 and parts[0].isdigit() else line.strip())
    if not names:
        raise ExportError(f"{path} holds no class names")
    return names


def parse_floats(text: str, what: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ExportError(f"{what} must be comma-separated numbers, got '{text}'") from None
    if count is not None and len(values) != count:
        raise ExportError(f"{what} needs {count} values (one per channel), got {len(values)}")
    return values


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ExportError(f"--input-shape must be C,H,W or C,T,H,W integers, got '{text}'") from None
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ExportError(f"--input-shape must be C,H,W or C,T,H,W, got '{text}'")
    return shape


def factory_name(spec: str) -> str:
    """The --factory spec as the model's srtool.arch records it: a file by its name, not its path
    (which would tell where the exporting machine keeps it, and differ between machines)."""
    module_name, _, attr = spec.rpartition(":")
    return f"{Path(module_name).name}:{attr}" if module_name.endswith(".py") else spec


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """'package.module:callable' (importable from the current directory) or 'path/file.py:callable';
    the callable may be an attribute path, as `module:Class.method` (a classmethod or staticmethod)."""
    if ":" not in spec:
        raise ExportError(f"--factory must look like package.module:callable, got '{spec}'")
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ExportError(f"--factory must look like package.module:callable (or module:Class.method), "
                          f"got '{spec}'")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ExportError(f"--factory file not found: {file}")
            loaded = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` would, for the user's own package
            module = importlib.import_module(module_name)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot import '{module_name}' for --factory: "
                          f"{type(exc).__name__}: {exc}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise ExportError(f"--factory: '{module_name}' has no callable '{attr}'")
    return factory


# ---- the graph --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocess:
    """y = (x·scale − mean) / std per channel, applied inside the exported graph.

    srtool samples noise in [0,1] pixel units (DESIGN §4), so whatever the network was trained on
    (standardized pixels, mean-centred pixels, 0-255 pixels) must be reproduced by the graph itself.
    """
    kind: str                          # "normalize", "center", "none", or a family-specific name
    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def describe(self) -> str:
        steps = []
        if self.scale != 1.0:
            steps.append(f"x*{self.scale:g}")
        if self.mean is not None:
            steps.append(f"- mean {list(self.mean)}")
        if self.std is not None and any(s != 1.0 for s in self.std):
            steps.append(f"/ std {list(self.std)}")
        return f"{self.kind} ({' '.join(steps) if steps else 'identity'})"

    def as_json(self) -> str:
        return json.dumps({"scale": self.scale, "mean": self.mean and list(self.mean),
                           "std": self.std and list(self.std)})


class InputTransform(nn.Module):
    def __init__(self, pre: Preprocess, rank: int):
        super().__init__()
        view = (1, -1) + (1,) * (rank - 2)  # broadcast over N and the spatial (and time) axes
        self.scale = pre.scale
        # Non-persistent buffers: they end up in the graph but never in a state dict.
        self.register_buffer("mean", None if pre.mean is None else
                             torch.tensor(pre.mean, dtype=torch.float32).view(view), persistent=False)
        has_std = pre.std is not None and any(s != 1.0 for s in pre.std)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(view)
                             if has_std else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same order of operations as the original input layers, so torch and ONNX agree.
        if self.scale != 1.0:
            x = x * self.scale
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x


class WithPreprocess(nn.Module):
    """The exported module: [0,1] pixels in, logits out."""

    def __init__(self, net: nn.Module, pre: Preprocess, rank: int):
        super().__init__()
        self.preprocess = InputTransform(pre, rank)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


EXPORT_BATCH = 2  # torch.export specializes size-1 dims, so trace with 2 and mark the axis dynamic


def export_onnx(model: nn.Module, input_shape: Sequence[int], opset: int) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) into memory, batch axis dynamic, weights inside the proto.

    In torch 2.13 the default exporter writes weights to a side `<f>.data` file (external_data=True);
    here nothing is written by torch at all: the proto comes back in memory with its initializers
    and `save_model` writes one self-contained file.
    """
    example = torch.rand(EXPORT_BATCH, *input_shape)
    # verbose=False stops the stage-by-stage progress lines; the exporter also logs that
    # torchvision's ops are unavailable and raises API deprecation notices. None of that is about
    # the model being exported, so it is silenced to keep the report readable (UserWarnings, which
    # can be about the model, still show).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        try:
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, external_data=False, verbose=False,
                opset_version=opset, input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True)
        except Exception as exc:  # torch.export's errors are long; the first line names the op
            raise export_failure(exc) from exc
    proto = program.model_proto
    # The exporter tags values with debugging metadata (source node names); srtool.* keys are ours.
    del proto.metadata_props[:]
    return proto


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_contract(proto: onnx.ModelProto, input_shape: Sequence[int]) -> None:
    """onnx.checker plus the parts of srtool's model contract the checker cannot know about."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"the exported graph fails onnx.checker: {first}") from exc
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError("exported graph does not take exactly one float32 input")
    dims = inputs[0].type.tensor_type.shape.dim
    if dims[0].HasField("dim_value"):
        raise ExportError("exported graph has a fixed batch size; the model's forward must not "
                          "hard-code the batch dimension (e.g. x.view(1, -1))")
    if [d.dim_value for d in dims[1:]] != list(input_shape):
        raise ExportError(f"exported input shape {[d.dim_value for d in dims[1:]]} != {list(input_shape)}")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ExportError("exported graph refers to external weight data")


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    if proto.ByteSize() >= 2**31:
        raise ExportError("the model is over 2 GB, the protobuf limit for a single .onnx file")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


# ---- parity -------------------------------------------------------------------------------------

@dataclass
class Parity:
    label: str
    batch: int
    max_abs: float
    scale: float        # largest |logit| of the torch reference
    tol: float
    agree: int          # inputs whose argmax matches
    excused: int        # disagreements on near-ties (torch's own margin below 2·tol)

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tol and self.agree + self.excused == self.batch

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        rel = self.max_abs / self.scale if self.scale else float("nan")
        tie = f", {self.excused} near-tie" if self.excused else ""
        return (f"parity {self.label}: max |logit diff| {self.max_abs:.3g} "
                f"({rel:.2g} of max |logit| {self.scale:.3g}; tolerance {self.tol:.3g}), "
                f"argmax agreement {self.agree}/{self.batch}{tie} -> {verdict}")


def torch_reference(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(inputs)).float().numpy()


def onnx_logits(proto_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # imported late: only the parity check needs a runtime

    options = ort.SessionOptions()
    options.log_severity_level = 3  # float16 graphs on CPU log a note for every inserted Cast
    session = ort.InferenceSession(proto_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs})[0]


def compare(label: str, reference: np.ndarray, got: np.ndarray, rtol: float) -> Parity:
    scale = float(np.abs(reference).max())
    tol = max(rtol * scale, ATOL)
    max_abs = float(np.abs(reference - got).max()) if np.isfinite(got).all() else float("inf")
    ref_top, got_top = reference.argmax(1), got.argmax(1)
    rows = np.arange(len(reference))
    # A flip is only excusable when torch itself barely separates the two classes: both logits may
    # each move by tol, so a margin below 2·tol can legitimately reorder them.
    margin = reference[rows, ref_top] - reference[rows, got_top]
    agree = int((ref_top == got_top).sum())
    excused = int(((ref_top != got_top) & (margin <= 2 * tol)).sum())
    return Parity(label, len(reference), max_abs, scale, tol, agree, excused)


# ---- the pipeline -------------------------------------------------------------------------------

@dataclass
class Job:
    model: nn.Module                 # WithPreprocess(...) in eval mode
    input_shape: tuple[int, ...]
    out: Path
    metadata: dict[str, str] = field(default_factory=dict)
    fp16: bool = False
    opset: int = 20
    parity_batch: int = 3
    seed: int = 0
    force: bool = False


def export_and_verify(job: Job) -> int:
    model = job.model.eval()
    info(f"exporting to ONNX (opset {job.opset}, dynamic batch axis, input N,"
         f"{','.join(map(str, job.input_shape))} float32 in [0,1]) ...")
    proto = export_onnx(model, job.input_shape, job.opset)
    meta = dict(job.metadata)
    meta["srtool.input_shape"] = ",".join(map(str, job.input_shape))
    meta["srtool.precision"] = "float16" if job.fp16 else "float32"
    set_metadata(proto, meta)
    check_contract(proto, job.input_shape)

    # Random [0,1] pixels: the input range the certifier feeds (before noise) and a batch size
    # other than the traced one, so the dynamic batch axis is exercised too.
    rng = np.random.default_rng(job.seed)
    inputs = rng.random((job.parity_batch, *job.input_shape), dtype=np.float32)
    reference = torch_reference(model, inputs)
    results = [compare("float32", reference, onnx_logits(proto.SerializeToString(), inputs),
                       FP32_RTOL)]
    info(results[-1].line())

    if job.fp16:
        warn("--fp16: float16 weights change the classifier, and floating-point error can in "
             "principle break the soundness of randomized-smoothing certificates (DESIGN §3, "
             "Voráček & Hein 2023); certify with the float32 model when the guarantee matters")
        try:
            proto, clipped = convert_to_fp16(proto)
        except Fp16Error as exc:
            raise ExportError(str(exc)) from None
        except Exception as exc:  # e.g. shape inference rejecting an op in a user's model
            raise ExportError(f"float16 conversion failed: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        if clipped:
            warn(f"{clipped} weights exceed the float16 range and were clipped to ±65504")
        check_contract(proto, job.input_shape)
        results.append(compare("float16", reference,
                               onnx_logits(proto.SerializeToString(), inputs), FP16_RTOL))
        info(results[-1].line())

    if not all(r.ok for r in results) and not job.force:
        print(f"error: parity check failed; {job.out} not written (--force writes it anyway)",
              file=sys.stderr)
        return 1
    save_model(proto, job.out)
    size = job.out.stat().st_size / 2**20
    info(f"wrote {job.out} ({size:.1f} MiB, weights embedded; onnx.checker passed)")
    return 0 if all(r.ok for r in results) else 1


# ---- command line -------------------------------------------------------------------------------

def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", type=Path,
                        help="output .onnx file (default: derived from the architecture)")
    parser.add_argument("--classes", type=Path,
                        help="class names: a JSON list or one name a line (classInd.txt works), or "
                             "'imagenet' for ImageNet's 1000 (shipped in exporters/classes/)")
    parser.add_argument("--sigma", type=float,
                        help="training noise level to record (default: parsed from 'noise_X' in "
                             "the checkpoint path)")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 weights, float32 input/output (smaller, faster on GPUs; "
                             "see the soundness warning it prints)")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset (default: 20)")
    parser.add_argument("--parity-batch", type=int, default=3,
                        help="random inputs for the torch vs ONNX Runtime check (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that pickle arbitrary objects (runs their code!)")
    parser.add_argument("--force", action="store_true",
                        help="write the model even if the parity check fails (exit code stays 1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def resolve_sigma(given: float | None, checkpoint: Path | None) -> float | None:
    """--sigma, else 'noise_X' from the checkpoint path; said out loud because srtool uses it as
    the default noise level."""
    sigma = given if given is not None else (parse_sigma(checkpoint) if checkpoint else None)
    source = "--sigma" if given is not None else "the checkpoint path"
    info(f"training sigma: {sigma} (from {source})" if sigma is not None else
         "training sigma: unknown (pass --sigma to record it)")
    return sigma


def base_metadata(arch: str, normalize: str, num_classes: int, classes: list[str] | None,
                  sigma: float | None, checkpoint: Path | None, pre: Preprocess) -> dict[str, str]:
    meta = {"srtool.arch": arch, "srtool.normalize": normalize,
            "srtool.preprocess": pre.as_json(), "srtool.num_classes": str(num_classes)}
    if classes is not None:
        if len(classes) != num_classes:
            raise ExportError(f"{len(classes)} class names for a model with {num_classes} outputs")
        meta["srtool.classes"] = json.dumps(classes)
    if sigma is not None:
        meta["srtool.sigma"] = f"{sigma:g}"
    if checkpoint is not None:
        meta["srtool.source_sha256"] = sha256_file(checkpoint)
    return meta


# How the running command is spelled in usage lines: `srtool export NAME` sets it (srtool/cli.py).
COMMAND: str | None = None


def program_name(module: str) -> str:
    return COMMAND or f"python -m exporters.{module}"


def export_failure(exc: BaseException) -> "ExportError":
    """torch.onnx.export's failure in one line: the outer error (often a PassError that says only
    which pass failed) and, where it wraps one, the innermost cause, which says what went wrong."""
    def first(error: BaseException) -> str:
        return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"

    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    cause = f" (caused by {first(root)})" if root is not exc else ""
    return ExportError(f"torch.onnx.export failed: {first(exc)}{cause} (--debug shows the traceback)")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's main, turning ExportError into 'error: ...' and exit code 2 (no traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except ExportError as exc:
        if "--debug" in args:  # the traceback too, but the same exit code
            import traceback
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
