"""Loading a user's ONNX classifier and reading what srtool needs to know about it.

The contract (DESIGN §4): float32 NCHW (images) or NCTHW (videos) input in [0,1] pixel units, any
normalization inside the graph, one output of N×classes logits. Optional `srtool.*` metadata props
(`input_shape` "C,H,W", `classes` JSON list, `sigma`) fill in what the graph's shapes leave open.
"""

from __future__ import annotations

import hashlib
import json
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


def _static_dims(value_info) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def read_onnx(source: str | Path | bytes) -> tuple[Path, bytes, onnx.ModelProto, str]:
    """(path, raw bytes, proto with its weights, sha256 of the bytes) of a file or serialized ONNX
    bytes (named `model` in messages and tables); any ONNX model: classifier, denoiser, UNet."""
    if isinstance(source, bytes):
        path, raw = Path("model.onnx"), source
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"model not found: {path}")
        raw = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(raw)
        if not proto.graph.node:
            raise ValueError("no graph")
        if any(init.data_location == TensorProto.EXTERNAL for init in proto.graph.initializer):
            if isinstance(source, bytes):
                raise ValueError("external data")
            proto = onnx.load(str(path))  # pulls the side .data file in beside it
    except Exception:
        what = "the model bytes are not an ONNX model with its weights inside" if isinstance(source, bytes) \
            else f"{path} is not an ONNX model"
        raise UsageError(what) from None
    return path, raw, proto, hashlib.sha256(raw).hexdigest()


def load_model(source: str | Path | bytes) -> Model:
    """A classifier from a file, or from serialized ONNX bytes (named `model` in messages and tables)."""
    path, raw, proto, sha256 = read_onnx(source)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"{path.name}: the model must take exactly one input tensor, it takes {len(inputs)}")
    if not proto.graph.output:
        raise UsageError(f"{path.name}: the model has no output")
    model_input, model_output = inputs[0], proto.graph.output[0]
    if model_input.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UsageError(f"{path.name}: the model input must be float32 (pixels in [0,1])")

    meta = {p.key: p.value for p in proto.metadata_props}
    in_dims = _static_dims(model_input)
    if len(in_dims) not in (4, 5):
        raise UsageError(f"{path.name}: model input has rank {len(in_dims)}; expected N×C×H×W or N×C×T×H×W")
    input_shape = tuple(in_dims[1:]) if all(d is not None for d in in_dims[1:]) else None
    if input_shape is None and "srtool.input_shape" in meta:
        input_shape = tuple(int(v) for v in meta["srtool.input_shape"].split(","))
    out_dims = _static_dims(model_output)
    if len(out_dims) != 2:
        raise UsageError(f"{path.name}: model output has rank {len(out_dims)}; expected N×classes logits")
    classes = json.loads(meta["srtool.classes"]) if "srtool.classes" in meta else None
    num_classes = out_dims[1] or (len(classes) if classes else None)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Model(
        path=path, proto=proto, sha256=sha256,
        input_name=model_input.name, output_name=model_output.name,
        input_shape=input_shape, num_classes=num_classes, classes=classes,
        trained_sigma=float(meta["srtool.sigma"]) if "srtool.sigma" in meta else None,
        opset=opset)


def infer_num_classes(model: Model, session_factory) -> int:
    """Run the bare model once on zeros when its output width is not declared."""
    if model.num_classes is None:
        if model.input_shape is None:
            raise UsageError(f"{model.path.name}: cannot tell the input size; pass --patch-size")
        session = session_factory(model.proto.SerializeToString())
        zeros = np.zeros((1, *model.input_shape), dtype=np.float32)
        model.num_classes = int(session.run([model.output_name], {model.input_name: zeros})[0].shape[1])
    return model.num_classes
