"""Shared fixtures: tiny ONNX models built with onnx.helper, whose behaviour the tests know exactly."""

from __future__ import annotations

import os

# The fuzz tests (test_fuzz.py) decode damaged images whose headers may claim huge sizes; OpenCV
# reads this cap once, when it is loaded, and by default allows 2^30 pixels (gigabytes per image).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 24))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

# Hypothesis profiles for test_fuzz.py: "ci" (the default; derandomized, so every run tries the same
# examples, and the whole file runs in well under a minute on 2 cores) and "long", chosen with
# `python -m pytest tests/test_fuzz.py --hypothesis-profile long` (random examples, many more).
# Tests scale max_examples by their cost (test_fuzz.budget).
_FUZZ = dict(deadline=None, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=20, derandomize=True, **_FUZZ)
settings.register_profile("long", max_examples=500, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def linear_onnx(weights: np.ndarray, bias: np.ndarray, input_shape: tuple[int, ...], path,
                metadata: dict | None = None, opset: int = 17) -> str:
    """Save f(x) = flatten(x) @ weights + bias as ONNX: input N×input_shape, output N×classes."""
    features, classes = weights.shape
    assert features == int(np.prod(input_shape))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [helper.make_tensor("W", TensorProto.FLOAT, [features, classes], weights.astype(np.float32).ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, [classes], bias.astype(np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def make_linear(tmp_path):
    """make_linear(weights, bias, input_shape, name=..., metadata=...) -> path of the saved model."""
    def make(weights, bias, input_shape, name="linear.onnx", metadata=None, opset=17):
        return linear_onnx(np.asarray(weights), np.asarray(bias), tuple(input_shape), tmp_path / name,
                           metadata, opset)
    return make


@pytest.fixture
def prototype_run(tmp_path, make_linear):
    """prototype_run(count) -> (model, data): a 10-class linear model on 1×28×28 (σ = 0.25 in its
    metadata) and `count` labelled images near its class prototypes (an .npz) it classifies well."""
    def make(count: int):
        rng = np.random.default_rng(0)
        prototypes = rng.random((10, 28 * 28)).astype(np.float32)
        weights = (prototypes - prototypes.mean(axis=0)).T * 0.5
        model = make_linear(weights, np.zeros(10), (1, 28, 28), metadata={"srtool.sigma": 0.25})
        labels = np.arange(count) % 10
        x = np.clip(prototypes[labels].reshape(-1, 28, 28) + rng.normal(0, 0.05, (count, 28, 28)), 0, 1)
        data = tmp_path / "data.npz"
        np.savez(data, x=(x * 255).astype(np.uint8), y=labels)
        return model, data
    return make
