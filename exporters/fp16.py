"""Float16 weights for an exported float32 classifier, keeping float32 at the graph boundary.

srtool's model contract is float32 input in [0,1] pixel units and float32 logits (DESIGN §4), so the
converted graph starts with a Cast to float16 and ends with a Cast back: callers see no difference
except precision. Written with plain `onnx` (no onnxconverter-common dependency) because the graphs
the exporters produce are small, flat CNN graphs: every float tensor becomes float16 except the few
operator inputs that ONNX requires to stay float32.

Soundness: randomized-smoothing certificates assume the vote is an exact function of the noisy
input. Floating point already bends that (Voráček & Hein, 2023) and float16 bends it more; the
exporters print a warning and measure the logit error, but no tolerance makes a certificate exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)

# (op_type, input index) that the ONNX spec types as float32/float only, never float16-with-T:
# converting them would produce an invalid graph. Resize/Upsample `scales` are the usual suspects.
_KEEP_FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}

# Control-flow subgraphs would need the same rewrite recursively; none of the supported
# architectures has them, so refuse clearly instead of converting half a model.
_SUBGRAPH_OPS = {"If", "Loop", "Scan"}


class Fp16Error(ValueError):
    pass


def _to_fp16(array: np.ndarray) -> tuple[np.ndarray, int]:
    """Round to float16, clipping (and counting) values beyond its range instead of making inf."""
    clipped = int(np.count_nonzero(np.abs(array) > FP16_MAX))
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16), clipped


def _convert_tensor(tensor: TensorProto) -> int:
    """Rewrite a float32 TensorProto in place as float16; returns how many values were clipped."""
    if tensor.data_type != TensorProto.FLOAT:
        return 0
    half, clipped = _to_fp16(numpy_helper.to_array(tensor))
    tensor.CopyFrom(numpy_helper.from_array(half, tensor.name))
    return clipped


def convert_to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Return (a float16 copy of `model` with float32 inputs/outputs, number of clipped weights)."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph

    if any(n.op_type in _SUBGRAPH_OPS for n in graph.node):
        raise Fp16Error("--fp16 does not handle graphs with control flow (If/Loop/Scan)")

    keep32 = set()
    for node in graph.node:
        for idx, name in enumerate(node.input):
            if (node.op_type, idx) in _KEEP_FLOAT32_INPUTS and name:
                keep32.add(name)

    clipped = 0
    for init in graph.initializer:
        if init.name not in keep32:
            clipped += _convert_tensor(init)
    for node in graph.node:
        if node.op_type == "Constant" and any(o in keep32 for o in node.output):
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                clipped += _convert_tensor(attr.t)
        if node.op_type == "Cast":
            # A cast *to* float32 inside the graph now has to land in float16 like everything else.
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16

    # Boundary: graph inputs/outputs keep their float32 names and types; the float16 graph reads
    # "<input>/fp16" and writes "<output>/fp16", with a Cast on either side.
    head, tail = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = value.name + "/fp16"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        head.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT16,
                                     name=inner + "/cast"))
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = value.name + "/fp16"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = inner
        tail.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT,
                                     name=inner + "/cast"))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)

    # Intermediate types are stale now; drop them and let shape inference recompute them.
    del graph.value_info[:]
    model_copy = onnx.shape_inference.infer_shapes(model_copy, strict_mode=True)
    return model_copy, clipped


def load_as_fp16(path, min_bytes: int = 2**20) -> tuple[onnx.ModelProto, int]:
    """The model file at `path` with its large float32 weights rounded to float16 one tensor at a
    time as they are read from its external data: (model, values clipped). A float32 graph past
    protobuf's 2 GiB (ADM's ImageNet UNet, 2.2 GB in `.onnx.data`) cannot be one message, so
    convert_to_fp16 could not take it whole; its float16 form (1.1 GB) can, and convert_to_fp16
    then converts the rest (small tensors, casts, the boundary). Tensors under `min_bytes` are left
    to it so that its float32-only inputs (Resize scales) keep their type."""
    from pathlib import Path

    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    clipped = 0
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(path.parent))
            tensor.ClearField("data_location")
            del tensor.external_data[:]
        if tensor.data_type == TensorProto.FLOAT and len(tensor.raw_data) >= min_bytes:
            clipped += _convert_tensor(tensor)
    return proto, clipped
