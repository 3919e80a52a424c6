"""Loading a user's ONNX classifier and reading what srtool needs to know about it.

The contract (DESIGN §4): float32 NCHW (images) or NCTHW (videos) input in [0,1] pixel units, any
normalization inside the graph, one output of N×classes logits. Optional `srtool.*` metadata props
(`input_shape` "C,H,W", `classes` JSON list, `sigma`) fill in what the graph's shapes leave open.

A model is someone else's file, so everything srtool reads from it is checked here, once, with a
one-line UsageError: the metadata (well-formed, and agreeing with the graph), the opset, the input
and output types. Tensors kept in external files are read in here from the model's own folder and
nowhere else, so the bytes handed to ONNX Runtime refer to no file at all (ORT would resolve a
relative location against the working directory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .errors import UsageError


@dataclass
class Model:
    path: Path
    proto: onnx.ModelProto
    sha256: str
    input_name: str
    output_name: str
    input_shape: tuple[int, ...] | None  # without the batch axis; None where unknown
    num_classes: int | None
    classes: list[str] | None
    trained_sigma: float | None
    opset: int

    @property
    def name(self) -> str:
        return self.path.stem


def static_dims(value_info) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


# Largest model input srtool accepts, in values per copy (float32: 1 GiB): a real video model takes
# about 2·10^7 (3×128×224×224); past this a declared shape is hostile or a mistake, and the first run on
# zeros would exhaust memory.
MAX_INPUT_VALUES = 2**28


def _graph_tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _nodes_tensors(graph.node)


def _nodes_tensors(nodes):
    for node in nodes:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes):
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        for sparse in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []:
            yield from (sparse.values, sparse.indices)
        for sparse in attr.sparse_tensors:
            yield from (sparse.values, sparse.indices)
        for graph in [attr.g] if attr.HasField("g") else []:
            yield from _graph_tensors(graph)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def tensors_of(proto: onnx.ModelProto):
    """Every TensorProto anywhere in the model, where ONNX Runtime could look for external data:
    the main graph and its subgraphs, local functions (their nodes and default attributes) and the
    training graphs."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _nodes_tensors(function.node)
        yield from _attribute_tensors(function.attribute_proto)
    for training in proto.training_info:
        yield from _graph_tensors(training.initialization)
        yield from _graph_tensors(training.algorithm)


def weight_bytes(proto: onnx.ModelProto) -> int:
    """The bytes of every tensor in the model, each measured on its own (protobuf refuses to measure a
    whole message past 2 GiB)."""
    return sum(tensor.ByteSize() for tensor in tensors_of(proto))


def _inline_external_data(proto: onnx.ModelProto, path: Path | None, digest) -> None:
    """Read every tensor kept in an external file into the model, from the model's own folder only;
    each tensor's bytes also go into `digest` (the model's sha256), so new weights are a new model.

    ONNX Runtime is handed the model as bytes (or, past protobuf's 2 GiB, as a file srtool writes
    in a private folder: engine.make_session), so it would resolve a relative location against the
    working directory (and an absolute one anywhere): every reference is resolved here instead, and
    none is left for ONNX Runtime. A location must name a file inside the folder of the model file
    (after following links); anything else refuses the model. `path` None: the model came as bytes,
    which have no folder, so any external reference is refused.
    """
    folder = path.resolve().parent if path is not None else None
    where = f"{path.name}" if path is not None else "the model bytes"
    for tensor in tensors_of(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        named = f"tensor {tensor.name!r}" if tensor.name else "a tensor"
        if folder is None:
            raise UsageError(f"{where}: {named} keeps its data in an external file ({location!r}); a model "
                             "given as bytes must hold all its data (pass the model's file path instead)")
        target = Path(os.path.realpath(folder / location)) if location and "\0" not in location else None
        inside = target is not None and not Path(location).is_absolute() and target.is_relative_to(folder)
        if not inside or not target.is_file():
            raise UsageError(f"{where}: {named} keeps its data in {location!r}, which is not a file in the "
                             f"model's folder ({folder}); srtool reads external data from there only")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise UsageError(f"{where}: {named} has an external data offset or length that is not a "
                             "whole number") from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise UsageError(f"{where}: {named} asks for bytes past the end of {location!r} "
                             f"(offset {offset}, length {length}, the file has {size})")
        length = size - offset if length is None else length
        with open(target, "rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(length)
        digest.update(tensor.raw_data)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _metadata(meta: dict, key: str, parse, expected: str, name: str):
    """A metadata value parsed by `parse` (which raises ValueError or TypeError on a bad value)."""
    if key not in meta:
        return None
    try:
        return parse(meta[key])
    except (ValueError, TypeError):
        shown = meta[key] if len(meta[key]) <= 40 else meta[key][:40] + "…"
        raise UsageError(f"{name}: metadata {key} is {shown!r}, not {expected}") from None


def _classes(text: str) -> list[str]:
    classes = json.loads(text)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("not a list of names")
    return classes


def _shape(text: str) -> tuple[int, ...]:
    dims = tuple(int(v) for v in text.split(","))  # int() takes " 3" but neither "3.5" nor "x"
    if not all(d >= 1 for d in dims):
        raise ValueError("not positive")
    return dims


def _sigma(text: str) -> float:
    sigma = float(text)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError("not a positive number")
    return sigma


def read_onnx(source: str | Path | bytes) -> tuple[Path, bytes, onnx.ModelProto, str]:
    """(path, raw bytes, proto with its external data read in, sha256 of both) of a file or of
    serialized ONNX bytes (named `model` in messages and tables); any ONNX model: classifier,
    denoiser, UNet."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, raw = Path("model.onnx"), bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"model not found: {path}")
        raw = path.read_bytes()
    from_bytes = not isinstance(source, (str, Path))
    try:
        proto = onnx.load_model_from_string(raw)
        if not proto.graph.node:
            raise ValueError("no graph")
    except Exception:
        what = "the model bytes are not an ONNX model" if from_bytes else f"{path} is not an ONNX model"
        raise UsageError(what) from None
    digest = hashlib.sha256(raw)
    _inline_external_data(proto, None if from_bytes else path, digest)
    return path, raw, proto, digest.hexdigest()


def load_model(source: str | Path | bytes) -> Model:
    """A classifier from a file, or from serialized ONNX bytes (named `model` in messages and tables)."""
    path, raw, proto, sha256 = read_onnx(source)
    name = path.name
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"{name}: the model must take exactly one input tensor, it takes {len(inputs)}")
    if not proto.graph.output:
        raise UsageError(f"{name}: the model has no output")
    model_input, model_output = inputs[0], proto.graph.output[0]
    if model_input.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UsageError(f"{name}: the model input must be float32 (pixels in [0,1])")

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opset <= newest:
        raise UsageError(f"{name}: the model imports ONNX opset {opset}; srtool can run opsets 1 to {newest}")

    meta = {p.key: p.value for p in proto.metadata_props}
    in_dims = static_dims(model_input)
    if len(in_dims) not in (4, 5):
        raise UsageError(f"{name}: model input has rank {len(in_dims)}; expected N×C×H×W or N×C×T×H×W")
    input_shape = tuple(in_dims[1:]) if all(d is not None for d in in_dims[1:]) else None
    declared = _metadata(meta, "srtool.input_shape", _shape, "positive whole numbers \"C,H,W\"", name)
    if declared is not None:
        if len(declared) != len(in_dims) - 1:
            raise UsageError(f"{name}: metadata srtool.input_shape has {len(declared)} sizes, but the model "
                             f"input has {len(in_dims) - 1} besides the batch axis")
        if any(d is not None and d != m for d, m in zip(in_dims[1:], declared)):
            raise UsageError(f"{name}: metadata srtool.input_shape {'×'.join(map(str, declared))} disagrees "
                             f"with the model input's sizes {'×'.join(str(d or '?') for d in in_dims[1:])}")
        input_shape = declared
    if input_shape is not None and math.prod(input_shape) > MAX_INPUT_VALUES:
        raise UsageError(f"{name}: the model input {'×'.join(map(str, input_shape))} has more than "
                         f"{MAX_INPUT_VALUES:,} values per copy")
    out_type = model_output.type.tensor_type.elem_type
    if out_type and out_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
        known = {value: key.lower() for key, value in TensorProto.DataType.items()}
        raise UsageError(f"{name}: the model output holds {known.get(out_type, f'data type {out_type}')}, not "
                         "floating-point logits")
    out_dims = static_dims(model_output)
    if len(out_dims) != 2:
        raise UsageError(f"{name}: model output has rank {len(out_dims)}; expected N×classes logits")
    classes = _metadata(meta, "srtool.classes", _classes, "a JSON list of class names", name)
    if classes is not None and out_dims[1] is not None and len(classes) != out_dims[1]:
        raise UsageError(f"{name}: metadata srtool.classes names {len(classes)} classes, but the model "
                         f"outputs {out_dims[1]}")
    return Model(
        path=path, proto=proto, sha256=sha256,
        input_name=model_input.name, output_name=model_output.name,
        input_shape=input_shape, num_classes=out_dims[1], classes=classes,
        trained_sigma=_metadata(meta, "srtool.sigma", _sigma, "a positive number", name),
        opset=opset)


def infer_num_classes(model: Model, session_factory) -> int:
    """Run the bare model once on zeros when its output width is not declared.

    Where it has `srtool.classes` the run checks them too: a model that names fewer classes than it
    outputs would vote past its names in the middle of a run. Only a model whose input size is not
    known either is taken at its names' word.
    """
    if model.num_classes is None:
        if model.input_shape is None and model.classes is not None:
            model.num_classes = len(model.classes)
            return model.num_classes
        if model.input_shape is None:
            raise UsageError(f"{model.path.name}: cannot tell the input size; pass --patch-size")
        session = session_factory(model.proto)
        zeros = np.zeros((1, *model.input_shape), dtype=np.float32)
        try:
            logits = session.run([model.output_name], {model.input_name: zeros})[0]
        except Exception as error:  # ONNX Runtime's own exception types
            raise UsageError(f"{model.path.name}: the model cannot run on one input of "
                             f"{'×'.join(map(str, model.input_shape))}: {str(error).splitlines()[0]}") from None
        if getattr(logits, "ndim", 0) != 2 or logits.shape[1] < 1:
            raise UsageError(f"{model.path.name}: the model returned {getattr(logits, 'shape', '?')} for one "
                             "input; expected 1×classes logits")
        model.num_classes = int(logits.shape[1])
    if model.classes is not None and len(model.classes) != model.num_classes:
        raise UsageError(f"{model.path.name}: metadata srtool.classes names {len(model.classes)} classes, "
                         f"but the model outputs {model.num_classes}")
    return model.num_classes
