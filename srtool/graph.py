"""The sampling graph: one ONNX graph per (model, plan) mapping a batch of noisy points to votes.

    noisy (B, *noise_shape) ─┬─ [resize] ─ [k crops at `offsets`] ─┐
                             └─ (patch space: already k patches) ───┴─ (B·k, C, P, P)
      → the user's model → logits (B·k, classes) → (B, k, classes) → [softmax] → mean|max over k
      → argmax → votes (B,) int64

Keeping crops, model and reduction in one graph means the host never touches logits in the hot
loop, and on a GPU only the votes cross the bus. Patch positions are a graph input, so random
per-input positions reuse the same session.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .model import Model
from .plan import Plan
from .resize import resize_nodes

NOISY = "srtool/noisy"
OFFSETS = "srtool/offsets"
VOTES = "srtool/votes"
MIN_OPSET = 13  # Unsqueeze/Resize/Softmax with today's signatures


def _const(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


class Builder:
    """Collects nodes and constants under the `srtool/` prefix, so they never clash with the model's."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"srtool/{hint}{self._count}"

    def const(self, values: list[int]) -> str:
        tensor = _const(self.name("c"), values)
        self.inits.append(tensor)
        return tensor.name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def with_axes(self, op: str, data: str, axes: list[int], output: str | None = None, **attrs) -> str:
        """Ops whose `axes` moved from an attribute to an input (Unsqueeze at 13, Reduce* at 18)."""
        moved_at = 13 if op == "Unsqueeze" else 18
        if self.opset >= moved_at:
            return self.node(op, [data, self.const(axes)], output, **attrs)
        return self.node(op, [data], output, axes=axes, **attrs)


def _crops(b: Builder, image: str, plan: Plan) -> str:
    """The k crops of `image` (B, C, R, R) stacked as (B, k, C, P, P), positions from OFFSETS."""
    ph, pw = plan.patch_hw
    size = b.const([ph, pw])
    spatial_axes = b.const([2, 3])
    views = []
    for i in range(plan.patches):
        start = b.node("Gather", [OFFSETS, b.const([i])], axis=0)  # (1, 2)
        start = b.node("Reshape", [start, b.const([2])])
        end = b.node("Add", [start, size])
        crop = b.node("Slice", [image, start, end, spatial_axes])
        views.append(b.with_axes("Unsqueeze", crop, [1]))
    return b.node("Concat", views, axis=1) if len(views) > 1 else views[0]


def assemble(model: Model, inputs: list, head, views: int, reduce: str, chunks: int = 1) -> onnx.ModelProto:
    """Splice `model` between a head and the vote tail; shared by the image and video graphs.

    `head(builder, model_input)` adds the nodes that turn the graph inputs into the model's input
    batch, ordered copy-major: copy 0's views (each of `chunks` chunks), then copy 1's, and so on.
    The tail averages the logits of a view's chunks (the video base classifier; images have one
    chunk), reduces over the `views` views per copy (mean of logits, or max of softmax), and votes.
    `views` and `chunks` are ints, or the names of 1-element int64 tensors that the head computes
    (videos: both depend on the video's length, so one graph serves every length).
    """
    opset = max(model.opset, MIN_OPSET)
    proto = model.proto
    if model.opset < MIN_OPSET:
        proto = onnx.version_converter.convert_version(proto, MIN_OPSET)
    b = Builder(opset)
    head(b, model.input_name)
    head_nodes, b.nodes = b.nodes, []

    def dim(value) -> str:  # a count known now, or a tensor the head computes at run time
        return b.const([value]) if isinstance(value, int) else value

    logits = model.output_name
    width = b.node("Shape", [logits])
    classes = b.node("Slice", [width, b.const([1]), b.const([2])])
    if chunks != 1:
        shape = b.node("Concat", [b.const([-1]), dim(chunks), classes], axis=0)
        logits = b.with_axes("ReduceMean", b.node("Reshape", [logits, shape]), [1], keepdims=0)
    shape = b.node("Concat", [b.const([-1]), dim(views), classes], axis=0)
    per_view = b.node("Reshape", [logits, shape])
    if reduce == "max":
        per_view = b.node("Softmax", [per_view], axis=-1)
        reduced = b.with_axes("ReduceMax", per_view, [1], keepdims=0)
    else:
        reduced = b.with_axes("ReduceMean", per_view, [1], keepdims=0)
    b.node("ArgMax", [reduced], VOTES, axis=1, keepdims=0)

    graph = proto.graph
    merged = helper.make_graph(
        head_nodes + list(graph.node) + b.nodes,
        f"srtool_sampling_{reduce}_{views}",
        inputs,
        [helper.make_tensor_value_info(VOTES, TensorProto.INT64, ["batch"])],
        initializer=list(graph.initializer) + b.inits,
    )  # the model's value_info is left out: it may pin a batch size that no longer holds
    merged.sparse_initializer.extend(graph.sparse_initializer)
    opsets = [o for o in proto.opset_import if o.domain not in ("", "ai.onnx")]
    opsets.append(helper.make_opsetid("", opset))
    out = helper.make_model(merged, opset_imports=opsets,
                            ir_version=max(proto.ir_version, helper.find_min_ir_version_for([opsets[-1]])))
    out.functions.extend(proto.functions)
    return out


def sampling_graph(model: Model, plan: Plan) -> onnx.ModelProto:
    """The image graph: noisy points in the plan's noise space → k views → model → votes."""
    c = plan.input_shape[0]
    ph, pw = plan.patch_hw
    inputs = [helper.make_tensor_value_info(NOISY, TensorProto.FLOAT, ["batch", *plan.noise_shape])]
    if plan.noise_space != "patch" and plan.crops:
        inputs.append(helper.make_tensor_value_info(OFFSETS, TensorProto.INT64, [plan.patches, 2]))

    def head(b: Builder, model_input: str) -> None:
        if plan.noise_space == "patch":  # (B, k, C, P, P): the host already cut the patches
            b.node("Reshape", [NOISY, b.const([-1, c, ph, pw])], model_input)
            return
        image = NOISY
        if plan.noise_space == "input" and plan.has_resize:
            nodes, inits = resize_nodes(NOISY, "srtool/resized", plan.resized_hw, "srtool/resize/")
            b.nodes += nodes
            b.inits += inits
            image = "srtool/resized"
        if plan.crops:
            b.node("Reshape", [_crops(b, image, plan), b.const([-1, c, ph, pw])], model_input)
        else:
            b.node("Identity", [image], model_input)

    return assemble(model, inputs, head, plan.patches, plan.reduce)


CLEAN = "srtool/clean"
COPIES = "srtool/copies"


def with_device_noise(graph: onnx.ModelProto, noise_shape: tuple[int, ...], sigma: float,
                      seed: int) -> onnx.ModelProto:
    """The sampling graph drawing its own noise: clean point (1, *S) and copy shape [B, *S] in.

    Only for the CUDA execution provider (its RandomNormalLike uses a Philox generator). ORT's CPU
    kernel uses std::default_random_engine (period 2^31) and must never feed a certificate; the
    engine refuses it. The generator is seeded once per session, so the noise depends on the seed
    and on the order of the calls: a run is reproducible from its start, not across a resume.
    """
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    g = out.graph
    kept = [i for i in g.input if i.name != NOISY]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(CLEAN, TensorProto.FLOAT, [1, *noise_shape]),
                    helper.make_tensor_value_info(COPIES, TensorProto.INT64, [1 + len(noise_shape)])] + kept)
    nodes = [
        helper.make_node("Expand", [CLEAN, COPIES], ["srtool/expanded"]),
        helper.make_node("RandomNormalLike", ["srtool/expanded"], ["srtool/z"], mean=0.0,
                         scale=float(sigma), seed=float(seed)),
        helper.make_node("Add", ["srtool/expanded", "srtool/z"], [NOISY]),
    ]
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    return out
