"""The float sampler's structure read by a crafted model: a false certificate (issue 29, docs/soundness.md).

The float sampler (`noise="host"`) makes each pair of values i and i + 32 of a 64-value copy from
one Box–Muller draw: v_i = fl32(r·cos θ), v_{i+32} = fl32(r·sin θ), with θ = fl32(a·fl32(2π·2^-24))
for an integer a < 2^24. At a black pixel 0 + v = v exactly, so atan2(v_{i+32}, v_i), taken in
float64, gives θ back to within the float32 roundings of the product and of numpy's float32 cos and
sin. Those are relative errors e of each value, and they move the angle by |sin θ cos θ|·(e_sin − e_cos):
with cos and sin within 1.5 ulp (numpy's SIMD float32 sin/cos: 1.49 ulp at most, 1.42 measured;
its scalar path: 0.56) and the product's rounding, |e| ≤ 1.5·2^-23 + 2^-24, so the recovered angle
lies within C·|sin θ cos θ| of the set {fl32(a·step)}, C = 5·10^-7 ≥ 2·(1.5·2^-23 + 2^-24)
(3.2 million pairs of srtool's sampler gave at most 2.5·10^-7 on the SIMD path, 1.9·10^-7 with
NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR"). A continuous Gaussian pair's
angle is uniform: it passes that test 70% of the time, and all 32 pairs of a copy pass with
probability about 0.7^32 = 10^-5. The model votes 1
when all 32 pairs pass: at the black image every float copy votes 1 and srtool certifies class 1
at σ·Φ⁻¹(α^(1/n)), while at a point four pixels of 1/255 away (fl32(1/255 + v) no longer carries
θ) most float copies vote 0. Under the exact discrete sampler almost no copy passes (its values
j/255 carry no such angle), and neither point is class 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from scipy import stats as scipy_stats

import srtool
from srtool.noise import ANGLE_STEP, Gaussian

PAIRS = 32  # a 1×8×8 copy: values i and i + 32 come from one draw
TOLERANCE = 5e-7  # C: the sampler's angle error over |sin θ cos θ| (at most 2.5e-7 measured)
ATAN_TERMS = 16  # atan(w) = Σ (-1)^k w^(2k+1)/(2k+1), |w| ≤ tan(π/8): the rest is below 10^-14


def structure_reader(path) -> str:
    """N×1×8×8 float32 in, N×2 logits out: class 1 when every pair (v_i, v_{i+32}) has the float
    sampler's angle, else 0. All in float64: atan2 from a reduction to |w| ≤ tan(π/8) and its Taylor
    series (ONNX Runtime's CPU Atan is float32 only), then the distance to fl32((a + k)·step),
    k = -1, 0, 1, a = round(θ/step), the fl32 rounding done by a Cast to FLOAT and back."""
    nodes, constants = [], {}

    def const(value) -> str:
        name = f"c{len(constants)}"
        constants[name] = helper.make_tensor(name, TensorProto.DOUBLE, [], [float(value)])
        return name

    def op(kind, *inputs, **attributes) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attributes))
        return out

    flat = op("Cast", op("Flatten", "x", axis=1), to=TensorProto.DOUBLE)
    cosines = op("Slice", flat, "zero", "half", "one_axis")
    sines = op("Slice", flat, "half", "end", "one_axis")
    ax, ay = op("Abs", cosines), op("Abs", sines)
    t = op("Div", op("Min", ax, ay), op("Max", ax, ay))  # tan of the angle to the nearer axis, in [0, 1]
    wide = op("Greater", t, const(np.tan(np.pi / 8)))
    w = op("Where", wide, op("Div", op("Sub", t, const(1)), op("Add", t, const(1))), t)
    squared = op("Mul", w, w)
    series = const(1 / (2 * ATAN_TERMS - 1))
    for k in reversed(range(ATAN_TERMS - 1)):  # Horner in w²
        series = op("Add", op("Mul", series, squared), const((-1) ** k / (2 * k + 1)))
    angle = op("Add", op("Mul", w, series), op("Where", wide, const(np.pi / 4), const(0)))
    angle = op("Where", op("Greater", ay, ax), op("Sub", const(np.pi / 2), angle), angle)  # first quadrant
    angle = op("Where", op("Less", cosines, const(0)), op("Sub", const(np.pi), angle), angle)
    theta = op("Where", op("Less", sines, const(0)), op("Sub", const(2 * np.pi), angle), angle)  # [0, 2π]

    step = const(np.float64(ANGLE_STEP))
    a = op("Floor", op("Add", op("Div", theta, step), const(0.5)))
    distances = []
    for k in (-1, 0, 1):
        grid = op("Cast", op("Cast", op("Mul", op("Add", a, const(k)), step), to=TensorProto.FLOAT),
                  to=TensorProto.DOUBLE)
        distances.append(op("Abs", op("Sub", theta, grid)))
    distance = op("Min", *distances)
    sin_cos = op("Div", op("Abs", op("Mul", cosines, sines)),
                 op("Add", op("Mul", cosines, cosines), op("Mul", sines, sines)))
    passed = op("Cast", op("Less", distance, op("Mul", sin_cos, const(TOLERANCE))), to=TensorProto.FLOAT)
    vote = op("ReduceMin", passed, axes=[1], keepdims=1)  # 1 only when all 32 pairs pass
    nodes.append(helper.make_node("Concat", [op("Sub", "one", vote), vote], ["logits"], axis=1))

    graph = helper.make_graph(
        nodes, "structure_reader",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [*constants.values(),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
         helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
         helper.make_tensor("half", TensorProto.INT64, [1], [PAIRS]),
         helper.make_tensor("end", TensorProto.INT64, [1], [2 * PAIRS]),
         helper.make_tensor("one_axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def image(lit: list[int], level: int = 1) -> np.ndarray:
    """A 1×8×8 black image with the pixels `lit` (flat indices) at level/255, as 8-bit data loads."""
    x = np.zeros((1, 8, 8), np.float32)
    x.reshape(-1)[lit] = np.float32(level) / np.float32(255)
    return x


BLACK = image([])
NEAR = image([0, 1, 2, 3])  # four pixels of 1/255, in four different pairs: 2/255 = 0.0078 from BLACK
ALL = image(list(range(64)))  # every pixel 1/255: 8/255 = 0.031 from BLACK
N, ALPHA = 500, 0.001


def test_the_model_reads_the_float_sampler_and_not_a_gaussian(tmp_path):
    """The graph against its definition: every copy of the float sampler at the black image votes 1,
    no continuous Gaussian copy (float64 noise) does, and at NEAR the votes split."""
    import onnxruntime as ort
    session = ort.InferenceSession(structure_reader(tmp_path / "reader.onnx"), providers=["CPUExecutionProvider"])
    copies = np.empty((2000, 1, 8, 8), np.float32)
    assert session.run(None, {"x": Gaussian(7, 0, 1).fill(copies, BLACK, 0.25)})[0].argmax(1).all()
    gaussian = np.random.default_rng(7).standard_normal(copies.shape) * 0.25
    assert not session.run(None, {"x": gaussian.astype(np.float32)})[0].argmax(1).any()
    near = session.run(None, {"x": Gaussian(7, 0, 1).fill(copies, NEAR, 0.25)})[0].argmax(1).mean()
    assert 0.1 < near < 0.4  # each of the four broken pairs passes 70% of the time: 0.7^4 = 0.24


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).astype(np.float64)))


def test_float_sampler_certifies_past_a_point_of_the_other_class(tmp_path):
    """noise="host": every copy at the black image votes 1, so it is certified class 1 at
    σ·Φ⁻¹(α^(1/n)) = 0.25·Φ⁻¹(0.001^(1/500)) = 0.551; NEAR, 0.0078 away, is predicted class 0 and even
    certified class 0 past BLACK, and ALL, 0.031 away, is certified class 0 at the same radius:
    certified balls of different classes overlap. Cohen's theorem is not wrong: the float smoothed classifier is not the one it
    is about."""
    smooth = srtool.Smooth(structure_reader(tmp_path / "reader.onnx"), sigma=0.25, noise="host", threads=1)
    expected = 0.25 * scipy_stats.norm.ppf(ALPHA ** (1 / N))
    with pytest.warns(UserWarning, match="float noise sampler .asked for by name.: the radii do not hold"):
        at_black = smooth.certify(BLACK, n0=50, n=N, alpha=ALPHA)
    assert int(at_black.label) == 1 and abs(float(at_black.radius) - expected) < 1e-6
    with pytest.warns(UserWarning, match="float noise sampler"):
        at_near = smooth.predict(NEAR, n=N, alpha=ALPHA)
    assert int(at_near.label) == 0 and distance(BLACK, NEAR) < float(at_black.radius)
    with pytest.warns(UserWarning, match="float noise sampler"):
        near_certified = smooth.certify(NEAR, n0=50, n=N, alpha=ALPHA)
    assert int(near_certified.label) == 0 and float(near_certified.radius) > distance(BLACK, NEAR)
    with pytest.warns(UserWarning, match="float noise sampler"):
        at_all = smooth.certify(ALL, n0=50, n=N, alpha=ALPHA)
    assert int(at_all.label) == 0 and abs(float(at_all.radius) - expected) < 1e-6
    assert distance(BLACK, ALL) < float(at_black.radius)


def no_false_certificate(smooth: srtool.Smooth) -> None:
    """No certificate at BLACK reaches NEAR or ALL while they are confidently of another class."""
    at_black = smooth.certify(BLACK, n0=50, n=N, alpha=ALPHA)
    label, radius = int(at_black.label), float(at_black.radius)
    assert label != 1  # no copy of the exact sampler carries the float sampler's angles
    for other in (NEAR, ALL):
        other_label = int(smooth.predict(other, n=N, alpha=ALPHA).label)
        if label != -1 and distance(BLACK, other) < radius:
            assert other_label in (label, -1)


def test_discrete_sampler_has_no_such_pair(tmp_path):
    no_false_certificate(srtool.Smooth(structure_reader(tmp_path / "reader.onnx"), sigma=0.25, noise="discrete",
                                       threads=1))


def test_default_sampler_has_no_such_pair(tmp_path):
    # default: no noise argument, "auto" takes the exact discrete sampler on these grid images, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        no_false_certificate(srtool.Smooth(structure_reader(tmp_path / "reader.onnx"), sigma=0.25, threads=1))
