"""The sampling graph: one ONNX graph per (models, plan) mapping a batch of noisy points to votes.

    noisy (B, *noise_shape) ─┬─ [denoiser] ─ [resize] ─ [k crops at `offsets`] ─┐
                             └─ (patch space: already k patches) ──────────────────┴─ model input (B·k, C, P, P)
      → each member m1 … mM of the ensemble (one model: M = 1) → logits (B·k, classes) each
      → (B, k, classes) each → [softmax] → scores (B, M·k, classes) → mean|max over the M·k
      → argmax → votes (B,) int64; INVALID_VOTE (-1) for a copy with a score that is not finite

Videos feed every chunk of every view and average a view's chunk logits before the reduction.

With K-consensus (Horváth et al. 2022) members K+1 … M run only on the copies the first K disagree on:

    model input → m1 … mK → each member's own vote (B,) ─ all K equal → the agreed vote
                                                         └ not (E copies) → those copies' rows
      → mK+1 … mM → scores of all M members on those copies → mean|max → vote, scattered back
    ESCALATED: a second output, [E]; ESCALATED_COPIES: a third, [B] bool, which copies they are

Keeping crops, models and reduction in one graph means the host never touches logits in the hot
loop, and on a GPU only the votes cross the bus. Patch positions are a graph input, so random
per-input positions reuse the same session; random ones come per copy (B, k, 2), since one call
carries copies of several inputs (engine.Scheduler).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, version_converter

from .denoise import Denoising
from .errors import UsageError
from .model import Model
from .per_copy import check_classifier, check_denoiser
from .plan import Plan
from .resize import resize_nodes

NOISY = "srtool/noisy"
OFFSETS = "srtool/offsets"
VOTES = "srtool/votes"
# Consensus graphs only: int64 [1], how many copies of the call went to the full ensemble, so a
# caller can count forward passes (B·K + E·(M−K) per view). Fetch it by name; VOTES alone is enough.
ESCALATED = "srtool/escalated"
ESCALATED_COPIES = "srtool/escalated_copies"  # consensus graphs: bool [B], the copies counted in ESCALATED
MODEL_INPUT = "srtool/model_input"  # the one model-input batch every member reads
INVALID_VOTE = -1  # a copy whose scores are not all finite votes for no class
MIN_OPSET = 13  # Unsqueeze/Resize/Softmax/IsNaN with today's signatures
_END = 2**62  # "to the end" for Slice


def _const(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


class Builder:
    """Collects nodes and constants under the `srtool/` prefix, so they never clash with the model's,
    and the parts of the member models that are spliced in (each under its own `m<i>/` prefix)."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.sparse_inits: list[onnx.SparseTensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.domains: dict[str, int] = {}  # custom opset domains the members import → version
        self.ir_version = 0
        self.invalid: list[str] = []  # (B,) bool per copy from the head: a stage whose output is not finite
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"srtool/{hint}{self._count}"

    def const(self, values: list[int]) -> str:
        tensor = _const(self.name("c"), values)
        self.inits.append(tensor)
        return tensor.name

    def scalar(self, value: float) -> str:
        """A float32 scalar, which broadcasts against any tensor."""
        tensor = helper.make_tensor(self.name("f"), TensorProto.FLOAT, [], [value])
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
    """The k crops of `image` (B, C, R, R) stacked as (B, k, C, P, P), positions from OFFSETS.

    Dense positions are one (k, 2) input for every copy, cut with Slice. Random positions differ
    between inputs, and a call carries copies of several inputs: OFFSETS is then (B, k, 2), one set
    per copy, and the crops are gathered by flat pixel index (the same pixels, copied).
    """
    ph, pw = plan.patch_hw
    if plan.sampling == "random":
        return _crops_per_copy(b, image, plan)
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


def _crops_per_copy(b: Builder, image: str, plan: Plan) -> str:
    """The crops of each copy at its own positions: OFFSETS (B, k, 2) → (B, k, C, P, P)."""
    c, k = plan.input_shape[0], plan.patches
    ph, pw = plan.patch_hw
    width = plan.resized_hw[1]
    tops = b.node("Slice", [OFFSETS, b.const([0]), b.const([1]), b.const([2])])  # (B, k, 1)
    lefts = b.node("Slice", [OFFSETS, b.const([1]), b.const([2]), b.const([2])])
    rows = b.node("Add", [tops, b.const(list(range(ph)))])  # (B, k, P)
    cols = b.node("Add", [lefts, b.const(list(range(pw)))])
    rows = b.node("Mul", [b.with_axes("Unsqueeze", rows, [3]), b.const([width])])  # (B, k, P, 1)
    flat = b.node("Add", [rows, b.with_axes("Unsqueeze", cols, [2])])  # (B, k, P, P): pixel numbers
    batch = b.node("Slice", [b.node("Shape", [image]), b.const([0]), b.const([1])])
    flat = b.node("Reshape", [flat, b.node("Concat", [batch, b.const([1, k * ph * pw])], axis=0)])
    flat = b.node("Expand", [flat, b.node("Concat", [batch, b.const([c, k * ph * pw])], axis=0)])
    pixels = b.node("Reshape", [image, b.const([0, c, -1])])  # (B, C, R·R)
    crops = b.node("GatherElements", [pixels, flat], axis=2)  # (B, C, k·P·P)
    crops = b.node("Reshape", [crops, b.const([0, c, k, ph, pw])])
    return b.node("Transpose", [crops], perm=[0, 2, 1, 3, 4])


# -- ensemble members ---------------------------------------------------------------------------------

def _input_rank(model: Model) -> int:
    graph_input = next(i for i in model.proto.graph.input if i.name == model.input_name)
    return len(graph_input.type.tensor_type.shape.dim)


def check_members(models: list[Model]) -> None:
    """Refuse an ensemble whose members do not classify the same inputs into the same classes.

    Every member reads the same model-input batch and their scores are reduced class by class, so
    they must agree on the input (its rank, and its shape where declared), the number of classes and
    the class names where declared. A value a member leaves open is not held against it: the
    engine's first run of the graph catches a real mismatch there. The error names the first member
    that disagrees with an earlier one.
    """
    if not models:
        raise UsageError("no model given")
    facts = {  # fact → how to read it (None: not declared)
        "input rank": _input_rank,
        "input shape": lambda m: "×".join(map(str, m.input_shape)) if m.input_shape else None,
        "number of classes": lambda m: m.num_classes,
        "class names": lambda m: list(m.classes) if m.classes else None,
    }
    for fact, read in facts.items():
        first = None  # (position, model, value) of the first member declaring this fact
        for position, model in enumerate(models, 1):
            value = read(model)
            if value is None:
                continue
            if first is None:
                first = (position, model, value)
            elif value != first[2]:
                shown = value, first[2]
                if fact == "class names":  # a thousand names help nobody: show where they part
                    at = next((i for i, (a, b) in enumerate(zip(*shown)) if a != b), min(map(len, shown)))
                    fact = f"class {at} named"
                    shown = tuple(repr(names[at]) if at < len(names) else "nothing" for names in shown)
                raise UsageError(
                    f"ensemble member {position} ({model.path.name}) has {fact} {shown[0]}, but member "
                    f"{first[0]} ({first[1].path.name}) has {shown[1]}: the models of an ensemble must agree")


def _at_opset(model: Model, opset: int) -> onnx.ModelProto:
    """A copy of the member's model at the graph's opset (older members are converted up to it)."""
    if model.opset >= opset:
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        return proto
    try:
        return version_converter.convert_version(model.proto, opset)
    except Exception as error:  # the converter lacks adapters for some ops and versions
        raise UsageError(f"{model.path.name}: cannot convert from ONNX opset {model.opset} to {opset} "
                         f"(the newest of the ensemble, at least {MIN_OPSET}): "
                         f"{str(error).splitlines()[0]}") from None


def _all_nodes(nodes):
    """`nodes` and the nodes of their subgraphs (If branches, Loop and Scan bodies), recursively."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            for graph in ([attr.g] if attr.HasField("g") else attr.graphs):
                yield from _all_nodes(graph.node)


def _rename(graph: onnx.GraphProto, name, prefix: str) -> None:
    """Rename every value and initializer of `graph` and of all its subgraphs, prefix its nodes' names.

    A subgraph reads values of its enclosing graphs by name, so one renaming must cover every scope
    at once; ONNX forbids a subgraph to reuse an outer name, so it never merges two values.
    """
    for tensor in graph.initializer:
        tensor.name = name(tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = name(sparse.values.name)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = name(info.name)
    for note in graph.quantization_annotation:
        note.tensor_name = name(note.tensor_name)
    for node in graph.node:
        node.input[:] = [name(value) for value in node.input]
        node.output[:] = [name(value) for value in node.output]
        node.name = prefix + node.name if node.name else ""
        for attr in node.attribute:
            for subgraph in ([attr.g] if attr.HasField("g") else attr.graphs):
                _rename(subgraph, name, prefix)


def _splice(b: Builder, proto: onnx.ModelProto, tag: str, feeds: dict[str, str], output: str) -> str:
    """Add a model's graph (`proto`, consumed) to `b`, its inputs read from `feeds` (model input name →
    value of `b`); the name its `output` gets.

    Everything the model names gets the prefix `<tag>/`, its local functions the prefix `<tag>_`:
    two members exported by the same tool share names like `input.1` or `Conv_0`.
    """
    prefix = f"{tag}/"

    def name(value: str) -> str:  # "" is an omitted optional input, not a name
        return feeds.get(value) or (prefix + value if value else value)

    functions = {(f.domain, f.name): f"{tag}_{f.name}" for f in proto.functions}
    _rename(proto.graph, name, prefix)
    bodies = [node for function in proto.functions for node in function.node]
    for node in [*_all_nodes(proto.graph.node), *_all_nodes(bodies)]:
        node.op_type = functions.get((node.domain, node.op_type), node.op_type)
    for function in proto.functions:  # the names inside a function body are its own scope: kept
        function.name = functions[(function.domain, function.name)]

    b.nodes += proto.graph.node
    b.inits += proto.graph.initializer
    b.sparse_inits += proto.graph.sparse_initializer
    b.functions += proto.functions
    for opset in proto.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            b.domains[opset.domain] = max(opset.version, b.domains.get(opset.domain, 0))
    b.ir_version = max(b.ir_version, proto.ir_version)
    return name(output)


# -- the denoiser stage (srtool.denoise) ------------------------------------------------------------

def _per_copy(b: Builder, batch_of: str, value: float, dims: tuple[int, ...], elem_type: int) -> str:
    """`value` as a (B, *dims) tensor of `elem_type`, B the batch of `batch_of`."""
    batch = b.node("Slice", [b.node("Shape", [batch_of]), b.const([0]), b.const([1])])
    shape = b.node("Concat", [batch, b.const(list(dims))], axis=0) if dims else batch
    filled = b.node("Expand", [b.node("Reshape", [b.scalar(value), b.const([1] * (1 + len(dims)))]), shape])
    return filled if elem_type == TensorProto.FLOAT else b.node("Cast", [filled], to=elem_type)


def _denoise(b: Builder, stage: Denoising, noisy: str) -> str:
    """Noisy copies (B, C, H, W) in [0,1] units → the denoiser's estimate of the clean image, [0,1] units.

    A Gaussian denoiser is applied as it is (a non-blind one is fed its noise level). A diffusion UNet
    runs once at the stage's step t*: x_t = √ᾱ·(2y − 1), x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ clamped to
    [−1, 1], returned as (x̂₀ + 1)/2 (srtool.denoise says why x_t has exactly the step's noise).
    A copy whose denoised image is not finite (NaN or ±inf from the denoiser, or from ε̂) is invalid,
    whatever a later clip or the classifier would make of it: its flag goes to `b.invalid`.
    """
    model = stage.model
    proto = _at_opset(model, b.opset)
    feeds = {model.input_name: noisy}
    if model.kind == "denoiser":
        if model.level_input:
            feeds[model.level_input] = _per_copy(b, noisy, stage.level, model.level_shape, TensorProto.FLOAT)
        denoised = _splice(b, proto, "d", feeds, model.output_name)
        b.invalid.append(_not_finite(b, denoised, [1, 2, 3]))
        return denoised
    signal, noise_scale = stage.coefficients()
    x_t = b.node("Mul", [b.node("Sub", [b.node("Mul", [noisy, b.scalar(2.0)]), b.scalar(1.0)]), b.scalar(signal)])
    feeds[model.input_name] = x_t
    feeds[model.timestep_input] = _per_copy(b, noisy, stage.timestep_value, (), model.timestep_type)
    eps = _splice(b, proto, "d", feeds, model.output_name)
    if model.learn_sigma:  # ε̂ is the first C channels, the variance the rest
        eps = b.node("Slice", [eps, b.const([0]), b.const([model.input_shape[0]]), b.const([1])])
    x0 = b.node("Div", [b.node("Sub", [x_t, b.node("Mul", [eps, b.scalar(noise_scale)])]), b.scalar(signal)])
    b.invalid.append(_not_finite(b, x0, [1, 2, 3]))  # before the clip, which would make +inf ε̂ a black image
    x0 = b.node("Clip", [x0, b.scalar(-1.0), b.scalar(1.0)])
    return b.node("Mul", [b.node("Add", [x0, b.scalar(1.0)]), b.scalar(0.5)])


# -- the tail: scores, reduction, vote ----------------------------------------------------------------

def _scores(b: Builder, logits: str, views: int | str, chunks: int | str, reduce: str) -> str:
    """One member's logits (rows, classes), copy-major → its scores per view (copies, views, classes).

    A view's chunk logits are averaged first (the video base classifier; images have one chunk).
    The score is the logit itself for the mean reduction, the softmax of the view for max.
    """
    def dim(value) -> str:  # a count known now, or a tensor the head computes at run time
        return b.const([value]) if isinstance(value, int) else value

    classes = b.node("Slice", [b.node("Shape", [logits]), b.const([1]), b.const([2])])
    if chunks != 1:
        shape = b.node("Concat", [b.const([-1]), dim(chunks), classes], axis=0)
        logits = b.with_axes("ReduceMean", b.node("Reshape", [logits, shape]), [1], keepdims=0)
    shape = b.node("Concat", [b.const([-1]), dim(views), classes], axis=0)
    per_view = b.node("Reshape", [logits, shape])
    return b.node("Softmax", [per_view], axis=-1) if reduce == "max" else per_view


def _not_finite(b: Builder, values: str, axes: list[int]) -> str:
    """True for a copy with a NaN or ±inf among `values` (reduced over `axes`)."""
    flags = b.node("Or", [b.node("IsNaN", [values]), b.node("IsInf", [values])])
    flags = b.node("Cast", [flags], to=TensorProto.UINT8)  # ReduceMax takes no bool before opset 20
    return b.node("Cast", [b.with_axes("ReduceMax", flags, axes, keepdims=0)], to=TensorProto.BOOL)


def _vote(b: Builder, scores: list[str], reduce: str, output: str | None = None) -> str:
    """Scores (copies, n, classes) of one or more members → one vote per copy (int64).

    The vote is the argmax of the mean or max over all n (member, view) pairs. ArgMax over NaN
    returns 0, so a NaN pixel or an overflowing model would vote for class 0 and could be certified:
    a copy with a score that is not finite votes INVALID_VOTE instead. Both the scores going in and
    the reduced ones are checked, because ORT's ReduceMax skips NaN (one NaN view would simply
    drop out of a max) and a mean of finite logits can still overflow to inf.
    """
    scores = b.node("Concat", scores, axis=1) if len(scores) > 1 else scores[0]
    reduced = b.with_axes("ReduceMax" if reduce == "max" else "ReduceMean", scores, [1], keepdims=0)
    best = b.node("ArgMax", [reduced], axis=1, keepdims=0)
    bad = b.node("Or", [_not_finite(b, scores, [1, 2]), _not_finite(b, reduced, [1])])
    return b.node("Where", [bad, b.const([INVALID_VOTE]), best], output)


def _consensus_votes(b: Builder, k: int, members: int, member_scores, reduce: str, output: str) -> None:
    """VOTES and ESCALATED of K-consensus: members after the k-th run only where the first k disagree.

    An agreed copy votes the agreed class (also INVALID_VOTE, when all k found non-finite scores);
    any other copy votes what the whole ensemble's reduced scores say. Either way the vote is a
    fixed function of the noisy copy, which is all a certificate needs.
    """
    first = [member_scores(i, MODEL_INPUT) for i in range(k)]
    votes = [_vote(b, [scores], reduce) for scores in first]
    agree = b.node("Equal", [votes[0], votes[1]])
    for vote in votes[2:]:
        agree = b.node("And", [agree, b.node("Equal", [votes[0], vote])])
    which = b.node("NonZero", [b.node("Not", [agree])])  # (1, E): the copies that disagree
    escalated = b.node("Slice", [b.node("Shape", [which]), b.const([1]), b.const([2])], ESCALATED)
    b.node("Not", [agree], ESCALATED_COPIES)  # per copy, so calls shared by several inputs split the count

    # The other members sit in an If branch that runs only when E > 0: a batch of 0 rows is valid
    # ONNX, but many exported models refuse it (torch's flatten becomes Reshape(x, [N, -1]), which
    # ORT cannot do for N = 0).
    outer, b.nodes = b.nodes, []
    copies = b.node("Reshape", [which, b.const([-1])])  # (E,)
    # Their rows of the model input: every view (and chunk) of each copy, copy-major as the head made them.
    row_shape = b.node("Slice", [b.node("Shape", [MODEL_INPUT]), b.const([1]), b.const([_END])])
    by_copy = b.node("Concat", [b.node("Shape", [votes[0]]), b.const([-1]), row_shape], axis=0)
    picked = b.node("Gather", [b.node("Reshape", [MODEL_INPUT, by_copy]), copies], axis=0)
    rows = b.node("Reshape", [picked, b.node("Concat", [b.const([-1]), row_shape], axis=0)])
    scores = [b.node("Gather", [s, copies], axis=0) for s in first]
    scores += [member_scores(i, rows) for i in range(k, members)]
    full = _vote(b, scores, reduce)
    merged = b.node("ScatterND", [votes[0], b.node("Transpose", [which]), full])
    escalate = helper.make_graph(b.nodes, "srtool_escalate", [],
                                 [helper.make_tensor_value_info(merged, TensorProto.INT64, None)])
    b.nodes = outer
    agreed = helper.make_graph([helper.make_node("Identity", [votes[0]], ["srtool/agreed"])], "srtool_agreed",
                               [], [helper.make_tensor_value_info("srtool/agreed", TensorProto.INT64, None)])
    b.node("If", [b.node("Greater", [escalated, b.const([0])])], output,
           then_branch=escalate, else_branch=agreed)


def _consensus_k(consensus: int | None, members: int) -> int:
    if not consensus:
        return 0
    if not 2 <= consensus < members:
        raise UsageError(f"--consensus {consensus} needs at least 2 and fewer than the number of "
                         f"models ({members}): the first K vote, the others settle disagreements")
    return consensus


def assemble(models: Model | list[Model], inputs: list, head, views: int | str, reduce: str,
             chunks: int | str = 1, consensus: int | None = None, head_models: tuple = ()) -> onnx.ModelProto:
    """Splice the models between a head and the vote tail; shared by the image and video graphs.

    `head(builder, model_input)` adds the nodes that turn the graph inputs into the model-input
    batch, ordered copy-major: copy 0's views (each of `chunks` chunks), then copy 1's, and so on.
    Every member (check_members) reads that one batch. The tail averages the logits of a view's
    chunks (the video base classifier; images have one chunk), reduces over every (member, view)
    pair of a copy (mean of logits, or max of softmax), and votes. `views` and `chunks` are ints,
    or the names of 1-element int64 tensors that the head computes (videos: both depend on the
    video's length, so one graph serves every length). `consensus` K (0 or None: off) runs the
    members after the K-th only on copies the first K disagree on (_consensus_votes) and adds the
    ESCALATED output. Members, and the `head_models` the head splices in (a denoiser), are brought to
    one opset, the newest of theirs and at least MIN_OPSET.
    """
    models = [models] if isinstance(models, Model) else list(models)
    check_members(models)
    k = _consensus_k(consensus, len(models))
    opset = max(MIN_OPSET, *(model.opset for model in [*models, *head_models]))
    protos = [_at_opset(model, opset) for model in models]
    b = Builder(opset)
    head(b, MODEL_INPUT)

    def member_scores(i: int, model_input: str) -> str:
        logits = _splice(b, protos[i], f"m{i + 1}", {models[i].input_name: model_input}, models[i].output_name)
        return _scores(b, logits, views, chunks, reduce)

    outputs = [helper.make_tensor_value_info(VOTES, TensorProto.INT64, ["batch"])]
    votes = b.name("votes") if b.invalid else VOTES
    if k:
        _consensus_votes(b, k, len(models), member_scores, reduce, votes)
        outputs.append(helper.make_tensor_value_info(ESCALATED, TensorProto.INT64, [1]))
        outputs.append(helper.make_tensor_value_info(ESCALATED_COPIES, TensorProto.BOOL, ["batch"]))
    else:
        _vote(b, [member_scores(i, MODEL_INPUT) for i in range(len(models))], reduce, votes)
    if b.invalid:  # the head's stages found a copy not finite: it votes for no class
        invalid = b.invalid[0]
        for flag in b.invalid[1:]:
            invalid = b.node("Or", [invalid, flag])
        b.node("Where", [invalid, b.const([INVALID_VOTE]), votes], VOTES)

    # The members' value_info is left out: it may pin a batch size that no longer holds.
    graph = helper.make_graph(b.nodes, f"srtool_sampling_{reduce}_{views}", inputs, outputs, initializer=b.inits)
    graph.sparse_initializer.extend(b.sparse_inits)
    opsets = [helper.make_opsetid(domain, version) for domain, version in b.domains.items()]
    opsets.append(helper.make_opsetid("", opset))
    out = helper.make_model(graph, opset_imports=opsets,
                            ir_version=max(b.ir_version, helper.find_min_ir_version_for([opsets[-1]])))
    out.functions.extend(b.functions)
    return out


def check_per_copy(models: Model | list[Model], view_shape: tuple[int, ...]) -> None:
    """Every classifier of the graph votes per copy (srtool.per_copy), on views of `view_shape`."""
    models = [models] if isinstance(models, Model) else list(models)
    check_members(models)  # first: a member that cannot take the others' views is said so
    for i, model in enumerate(models):
        check_classifier(model, view_shape, f"ensemble member {i + 1}" if len(models) > 1 else "model")


def sampling_graph(models: Model | list[Model], plan: Plan, consensus: int | None = None,
                   denoising: Denoising | None = None) -> onnx.ModelProto:
    """The image graph: noisy points in the plan's noise space → [denoiser] → k views → model(s) → votes.

    The denoiser sees each whole noisy image once, before the resize and the crops, so every view
    and every ensemble member reads the same denoised copy (noise space `input` only: core checks).
    """
    c = plan.input_shape[0]
    ph, pw = plan.patch_hw
    check_per_copy(models, (c, ph, pw))
    if denoising is not None:
        check_denoiser(denoising, plan.input_shape)
    inputs = [helper.make_tensor_value_info(NOISY, TensorProto.FLOAT, ["batch", *plan.noise_shape])]
    if plan.noise_space != "patch" and plan.crops:
        per_copy = ["batch"] if plan.sampling == "random" else []  # random positions: one set per copy
        inputs.append(helper.make_tensor_value_info(OFFSETS, TensorProto.INT64, [*per_copy, plan.patches, 2]))

    def head(b: Builder, model_input: str) -> None:
        if plan.noise_space == "patch":  # (B, k, C, P, P): the host already cut the patches
            b.node("Reshape", [NOISY, b.const([-1, c, ph, pw])], model_input)
            return
        image = NOISY if denoising is None else _denoise(b, denoising, NOISY)
        if plan.noise_space == "input" and plan.has_resize:
            nodes, inits = resize_nodes(image, "srtool/resized", plan.resized_hw, "srtool/resize/")
            b.nodes += nodes
            b.inits += inits
            image = "srtool/resized"
        if plan.crops:
            b.node("Reshape", [_crops(b, image, plan), b.const([-1, c, ph, pw])], model_input)
        else:
            b.node("Identity", [image], model_input)

    return assemble(models, inputs, head, plan.patches, plan.reduce, consensus=consensus,
                    head_models=(denoising.model,) if denoising else ())


CLEAN = "srtool/clean"
POINT_OF = "srtool/point_of"


def with_device_noise(graph: onnx.ModelProto, noise_shape: tuple[int, ...], sigma: float,
                      seed: int) -> onnx.ModelProto:
    """The sampling graph drawing its own noise: the clean points of a call's inputs (P, *S) and,
    per copy, which of them it is a copy of (B,) int64.

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
    g.input.extend([helper.make_tensor_value_info(CLEAN, TensorProto.FLOAT, ["points", *noise_shape]),
                    helper.make_tensor_value_info(POINT_OF, TensorProto.INT64, ["batch"])] + kept)
    nodes = [
        helper.make_node("Gather", [CLEAN, POINT_OF], ["srtool/expanded"], axis=0),
        helper.make_node("RandomNormalLike", ["srtool/expanded"], ["srtool/z"], mean=0.0,
                         scale=float(sigma), seed=float(seed)),
        helper.make_node("Add", ["srtool/expanded", "srtool/z"], [NOISY]),
    ]
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    return out
