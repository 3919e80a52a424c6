"""Every model in the sampling graph must vote per copy: a fixed function of its own noisy copy.

Cohen's theorem is about a base classifier f applied to one noisy copy x + δ: the n votes are then
i.i.d. and their count is binomial. A graph that reads other rows of its batch (BatchNorm exported
in training mode centres each copy by the batch mean; a mean, roll or sort over the batch axis;
logits that depend on the batch size) makes the votes dependent, and one that draws random numbers
of its own (ONNX Runtime's RandomNormal*, RandomUniform*, Multinomial, Bernoulli, an active
Dropout) makes f random: either way the counts are not binomial and no radius follows. Such graphs
also give different tables at different batch sizes. Two checks, for the classifier, every ensemble
member, the denoiser and the diffusion UNet, before anything is written:

- statically, no random op anywhere in the model (subgraphs and local functions included);
- a probe at load, on the CPU, with distinct copies on the 1/255 grid spread past [0, 1] as noisy
  copies are: three copies as one batch of 3, then two of them as a batch of 2 in the other order,
  then one alone; where those calls were quick (a small model), once more at a batch of LARGE_BATCH,
  the three among other copies. A model of more than LARGE_MODEL_BYTES of weights gets two copies:
  a batch of 2, then each alone (3 calls, 4 copies: about 25 s for a 2.2 GB ADM UNet on 2 cores).
  Each copy's output must agree across the calls within PROBE_TOLERANCE of the outputs' scale.

The probe finds mistakes; it is no proof: a model built to couple its copies only at batch sizes the
probe does not use would pass it. Such a model is outside the model contract, and its certificates
are not srtool's.

srtool's own additions (the noise of `--noise device`) are not the user's model and are not checked.
"""

from __future__ import annotations

import numpy as np
import onnx

from .errors import UsageError
from .model import weight_bytes

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})
# A copy's outputs across calls may differ by float reassociation alone: a kernel may sum in another
# order at another batch size. The shipped classifiers, ensemble members, DDPM and video model differ
# by at most about 1e-6 of their outputs' scale at batch sizes 1–3 (tests/test_per_copy.py measures
# them), a batch-coupled graph by a sizeable share of it: BatchNorm in training mode moves every
# output by O(1). 1e-3 lies far from both.
PROBE_TOLERANCE = 1e-3
LARGE_BATCH, QUICK_SECONDS = 64, 0.05  # the fourth call, where the first three took less than QUICK_SECONDS
LARGE_MODEL_BYTES = 100 * 2**20  # past this, two probe copies (each copy of a 2.2 GB UNet costs seconds)
_checked: dict = {}  # (model sha256, role, what it is fed) → the deviation its probe found, in this process


def random_op(proto: onnx.ModelProto) -> str | None:
    """The first op of `proto` that draws random numbers (its op type), or None."""

    def scan(nodes, constants: dict):
        for node in nodes:
            custom = node.domain not in ("", "ai.onnx")
            lowered = node.op_type.lower()
            if not custom and (node.op_type in RANDOM_OPS or node.op_type.startswith("Random")) \
                    or custom and ("random" in lowered or "dropout" in lowered):
                return node.op_type
            if node.op_type == "Dropout" and any(a.name == "is_test" and a.i == 0 for a in node.attribute):
                return "Dropout with is_test 0"  # opsets before 7 said training this way
            if node.op_type == "Dropout" and len(node.input) >= 3 and node.input[2] \
                    and constants.get(node.input[2]) is not False:
                return "Dropout with training_mode"
            for attribute in node.attribute:
                for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    found = scan(graph.node, {**constants, **_constants(graph)})
                    if found:
                        return found
        return None

    for graph in (proto.graph, *proto.functions):
        found = scan(graph.node, _constants(graph))
        if found:
            return found
    return None


def _constants(graph) -> dict:
    """Boolean scalars a graph defines as initializers or Constant nodes: name → value."""
    found = {}
    tensors = [(t.name, t) for t in getattr(graph, "initializer", [])]
    tensors += [(node.output[0], attribute.t) for node in graph.node if node.op_type == "Constant"
                for attribute in node.attribute if attribute.name == "value"]
    for name, tensor in tensors:
        try:
            value = onnx.numpy_helper.to_array(tensor)
        except Exception:  # external or odd data: not a constant this check can read
            continue
        if value.size == 1:
            found[name] = bool(value.reshape(-1)[0])
    return found


def refuse_random_ops(proto: onnx.ModelProto, what: str) -> None:
    op = random_op(proto)
    if op is not None:
        raise UsageError(f"{what} draws random numbers of its own ({op}): each vote must be a fixed function of "
                         "its noisy copy (export it in eval mode, without random ops; srtool adds the noise)")


def probe(proto: onnx.ModelProto, what: str, key: tuple, feeds, output_name: str, copies,
          expected_shape=None) -> float:
    """Refuse a model whose output for a copy depends on the other copies of its batch, or on chance;
    else return the largest change of a copy's output between calls (a share of the outputs' scale).

    `copies(count)` makes `count` distinct probe copies (the same first rows for any count);
    `feeds(batch)` gives the model's inputs for a batch of them; `expected_shape(batch)` is the
    output shape the model must return, where srtool knows it.
    """
    import time

    from .session import make_session, runtime_failure

    if key in _checked:
        return _checked[key]
    refuse_random_ops(proto, what)
    session = make_session(proto, "cpu")
    huge = weight_bytes(proto) > LARGE_MODEL_BYTES
    try:
        outputs, made, start = [], copies(2 if huge else 3), time.perf_counter()
        large = [1, *range(3, LARGE_BATCH // 2 + 1), 2, *range(LARGE_BATCH // 2 + 1, LARGE_BATCH), 0]  # 0..63
        for rows in ([[0, 1], [1], [0]] if huge else [[0, 1, 2], [2, 1], [1], large]):
            if rows is large:
                if time.perf_counter() - start > QUICK_SECONDS:
                    break
                made = copies(LARGE_BATCH)
            try:
                out = np.asarray(session.run([output_name], feeds(made[rows]))[0], dtype=np.float64)
            except Exception as error:  # ONNX Runtime's own exception types
                failure = runtime_failure(error)
                if failure is None:
                    raise
                raise UsageError(f"{what} failed on a batch of {len(rows)} noisy copies at load (ONNX Runtime: "
                                 f"{failure})") from None
            if expected_shape is not None and tuple(out.shape) != tuple(expected_shape(len(rows))):
                raise UsageError(f"{what} returns {'×'.join(map(str, out.shape))} for {len(rows)} input(s), not "
                                 f"{'×'.join(map(str, expected_shape(len(rows))))}")
            if out.ndim < 1 or out.shape[0] != len(rows):
                raise UsageError(f"{what} returns {out.shape[0] if out.ndim else 'no'} rows for a batch of "
                                 f"{len(rows)}: its output must hold one row per copy")
            outputs.append(dict(zip(rows, out)))
    finally:
        del session
    deviation = _largest_change(outputs)
    if deviation > PROBE_TOLERANCE:
        raise UsageError(f"{what} gives a copy different outputs in different batches (by {deviation:.2g} of "
                         "their scale): does it use batch statistics (BatchNorm in training mode), mix the "
                         "rows of its batch, or draw random numbers? Export it in eval mode: each vote must "
                         "depend on its own noisy copy only")
    _checked[key] = deviation
    return deviation


def _largest_change(outputs: list[dict]) -> float:
    """The largest difference between two outputs of one copy, as a share of the outputs' scale;
    infinite where a value is finite in one call and not in another."""
    scale = max((float(np.abs(o[np.isfinite(o)]).max(initial=0.0)) for call in outputs for o in call.values()),
                default=0.0) or 1.0
    largest = 0.0
    for copy in (0, 1, 2):
        seen = [call[copy] for call in outputs if copy in call]
        for other in seen[1:]:
            finite = np.isfinite(seen[0])
            if not np.array_equal(finite, np.isfinite(other)) or \
                    not np.array_equal(seen[0][~finite], other[~finite], equal_nan=True):
                return float("inf")
            largest = max(largest, float(np.abs(seen[0][finite] - other[finite]).max(initial=0.0)) / scale)
    return largest


def probe_copies(shape: tuple[int, ...], low: float = 0.0, high: float = 1.0):
    """copies(count): `count` distinct copies of `shape`, grid steps from −96 to 351 (pixels −0.38 to
    1.38, as noisy copies at σ = 0.25 reach) mapped to [low, high] as [0, 1] is; copy i is the same
    for every count."""
    def copies(count: int) -> np.ndarray:
        grid = np.stack([np.random.default_rng(i).integers(-96, 352, shape) for i in range(count)]) / 255.0
        return (low + (high - low) * grid).astype(np.float32)
    return copies


def check_classifier(model, input_shape: tuple[int, ...], role: str = "model") -> float:
    """The classifier (or one ensemble member) on views of `input_shape` (C, H, W or C, T, H, W)."""
    return probe(model.proto, f"{role} {model.path.name}", (model.sha256, role, tuple(input_shape)),
          lambda batch: {model.input_name: batch}, model.output_name, probe_copies(tuple(input_shape)))


def check_denoiser(stage, image_shape: tuple[int, int, int]) -> float:
    """The denoiser or diffusion UNet of a Denoising stage, on images of `image_shape`."""
    from onnx import TensorProto

    model = stage.model
    copies = probe_copies(tuple(image_shape), *((-1.0, 1.0) if model.kind == "diffusion" else (0.0, 1.0)))
    what = f"the {'--diffusion' if model.kind == 'diffusion' else '--denoiser'} model {model.path.name}"
    channels = image_shape[0] * (2 if model.kind == "diffusion" and model.learn_sigma else 1)

    def feeds(images):
        batch = len(images)
        fed = {model.input_name: images}
        if model.kind == "diffusion":
            dtype = {TensorProto.FLOAT: np.float32, TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}
            fed[model.timestep_input] = np.full(batch, stage.timestep_value, dtype[model.timestep_type])
        elif model.level_input:
            fed[model.level_input] = np.full((batch, *model.level_shape), stage.level, np.float32)
        return fed

    key = (model.sha256, model.kind, tuple(image_shape), stage.timestep, stage.level)
    return probe(model.proto, what, key, feeds, model.output_name, copies,
          expected_shape=lambda batch: (batch, channels, *image_shape[1:]))
