"""Hostile ONNX models (issue 25 items 1, 3, 4): external data, malformed metadata, opsets, refusals.

srtool hands ONNX Runtime each model as bytes, so ORT would resolve a relative external-data location
against the working directory: every reference (initializers, sparse initializers, Constant and
other tensor attributes, subgraphs, local functions) must be read by srtool from the model's own
folder, or the model refused in one line. Malformed `srtool.*` metadata and opsets srtool cannot run
are one line and exit 2, and a refused command leaves no file behind.

Every model here is the same 3-class linear classifier on 1×4×4 inputs, f(x) = flatten(x)·W, with
W put somewhere else in the graph; the tables of the runs that are allowed equal the table of the
model that holds W inline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli_helpers import read, srtool
from srtool.errors import UsageError
from srtool.model import load_model

WEIGHTS = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
FAST = ["--n0", 5, "--n", 30, "--threads", 1, "--quiet"]
# Where the weights W live in the graph.
PLACES = ("initializer", "constant", "sparse", "subgraph", "function")


def _external(tensor: TensorProto, location: str, offset: int | None = None, length: int | None = None):
    """Turn `tensor` into a reference to `location` (its values dropped from the model)."""
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))
    return tensor


def linear_model(place: str = "initializer", location: str | None = None, offset=None, length=None,
                 metadata: dict | None = None, opset: int = 17) -> onnx.ModelProto:
    """f(x) = flatten(x)·W with W at `place`; with `location`, W's values are external data there."""
    weights = numpy_helper.from_array(WEIGHTS, "W")
    if location is not None and place != "sparse":
        _external(weights, location, offset, length)
    nodes, inits, sparse, functions = [], [], [], []
    opsets = [helper.make_opsetid("", opset)]
    if place == "initializer":
        inits.append(weights)
    elif place == "constant":
        nodes.append(helper.make_node("Constant", [], ["W"], value=weights))
    elif place == "sparse":  # every entry stored: values (48,) at indices 0…47
        values = numpy_helper.from_array(WEIGHTS.ravel(), "W")
        if location is not None:
            _external(values, location, offset, length)
        indices = numpy_helper.from_array(np.arange(48, dtype=np.int64), "W_indices")
        sparse.append(helper.make_sparse_tensor(values, indices, [16, 3]))
    elif place == "subgraph":  # W comes out of the then-branch of an If
        branch = helper.make_graph([helper.make_node("Constant", [], ["W_then"], value=weights)], "then", [],
                                   [helper.make_tensor_value_info("W_then", TensorProto.FLOAT, [16, 3])])
        other = helper.make_graph([helper.make_node("Constant", [], ["W_else"],
                                                    value=numpy_helper.from_array(np.zeros((16, 3), np.float32)))],
                                  "else", [], [helper.make_tensor_value_info("W_else", TensorProto.FLOAT, [16, 3])])
        inits.append(numpy_helper.from_array(np.array(True), "yes"))
        nodes.append(helper.make_node("If", ["yes"], ["W"], then_branch=branch, else_branch=other))
    elif place == "function":  # W is made by a local function's body
        functions.append(helper.make_function("local", "Weights", [], ["out"],
                                              [helper.make_node("Constant", [], ["out"], value=weights)],
                                              [helper.make_opsetid("", opset)]))
        opsets.append(helper.make_opsetid("local", 1))
        nodes.append(helper.make_node("Weights", [], ["W"], domain="local"))
    nodes += [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    graph.sparse_initializer.extend(sparse)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8, functions=functions)
    for key, value in {"srtool.sigma": "0.25", **(metadata or {})}.items():
        model.metadata_props.add(key=key, value=value)
    return model


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """The working directory (with a w.bin of the right weights) and a model folder `m/` beside it;
    the data: four labelled 1×4×4 images."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    WEIGHTS.tofile(tmp_path / "w.bin")  # where ORT would look for a relative location: never read
    x = (np.random.default_rng(1).integers(0, 256, (4, 1, 4, 4)) / np.float32(255)).astype(np.float32)  # 8-bit
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0]))
    return tmp_path


def certify(folder: Path, model: onnx.ModelProto | str, out="run.parquet", capsys=None, extra=()):
    if isinstance(model, onnx.ModelProto):
        path = folder / "m" / "model.onnx"
        path.write_bytes(model.SerializeToString())
        model = path
    return srtool("certify", "--model", model, "--images", folder / "d.npz", *FAST, "--out", folder / out, *extra,
                  capsys=capsys)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refused(scene, model, capsys, message: str, extra=()) -> str:
    """One line naming `message`, exit 2, and not one file more than before; the line."""
    before = files(scene)
    code, out, err = certify(scene, model, capsys=capsys, extra=extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "unexpected" not in err and "Traceback" not in err
    assert files(scene) == before or files(scene) == sorted(before + ["m/model.onnx"]), files(scene)
    return err


# -- 1. external data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("place", PLACES)
def test_external_data_only_in_the_working_directory_is_refused(scene, capsys, place):
    """Was: ORT read ./w.bin (the working directory) and the run certified with exit 0."""
    refused(scene, linear_model(place, "w.bin"), capsys,
            f"keeps its data in 'w.bin', which is not a file in the model's folder ({scene / 'm'})")


@pytest.mark.parametrize("location", ["../w.bin", "sub/../../w.bin", "{abs}", "link.bin", "m", "", "missing.bin",
                                      "*/_ORT_MEM_ADDR_/*"])
def test_external_data_outside_the_folder_is_refused(scene, capsys, location):
    """Escaping paths, absolute paths, a link out of the folder, a folder, nothing: all one message
    (was: "is not an ONNX model" for an escaping path). ORT's in-memory address form is no file."""
    (scene / "m" / "link.bin").symlink_to(scene / "w.bin")
    location = location.format(abs=scene / "w.bin")
    refused(scene, linear_model("initializer", location), capsys,
            f"keeps its data in {location!r}, which is not a file in the model's folder")


@pytest.mark.parametrize("offset, length", [(0, 1000), (200, None), (-4, None), (8, 200)])
def test_external_data_past_the_end_of_its_file_is_refused(scene, capsys, offset, length):
    WEIGHTS.tofile(scene / "m" / "w.bin")
    refused(scene, linear_model("constant", "w.bin", offset, length), capsys, "past the end of 'w.bin'")


@pytest.mark.parametrize("offset", ["x", "1.5"])
def test_external_data_offsets_must_be_whole_numbers(scene, capsys, offset):
    WEIGHTS.tofile(scene / "m" / "w.bin")
    model = linear_model("initializer", "w.bin")
    model.graph.initializer[0].external_data.add(key="offset", value=offset)
    refused(scene, model, capsys, "external data offset or length that is not a whole number")


@pytest.mark.parametrize("place", PLACES)
def test_external_data_in_the_models_folder_gives_the_inline_models_table(scene, capsys, place):
    """Read by srtool (at an offset, with a length) from the model's folder, as ORT would have."""
    assert certify(scene, linear_model(place), out="inline.parquet", capsys=capsys)[0] == 0
    (scene / "m" / "sub").mkdir()
    (scene / "m" / "sub" / "data.bin").write_bytes(b"12345678" + WEIGHTS.tobytes() + b"tail")
    (scene / "w.bin").write_bytes(np.zeros_like(WEIGHTS).tobytes())  # would change every vote if read
    code, _, err = certify(scene, linear_model(place, "sub/data.bin", 8, WEIGHTS.nbytes), capsys=capsys)
    assert code == 0, err
    (inline, config_a), (external, config_b) = read(scene / "inline.parquet"), read(scene / "run.parquet")
    assert inline.drop(["time_s"]).to_pylist() == external.drop(["time_s"]).to_pylist()
    assert len(set(inline.column("predict").to_pylist())) > 1  # the weights matter


def test_model_bytes_with_external_data_are_refused():
    with pytest.raises(UsageError, match="a model given as bytes must hold all its data"):
        load_model(linear_model("constant", "w.bin").SerializeToString())


def test_onnx_save_with_external_data_runs(scene, capsys):
    """The form torch.onnx.export and onnx.save write: a side file beside the model."""
    assert certify(scene, linear_model(), out="inline.parquet", capsys=capsys)[0] == 0
    onnx.save(linear_model(), str(scene / "m" / "saved.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="saved.onnx.data", size_threshold=0)
    assert not load_model(scene / "m" / "saved.onnx").proto.graph.initializer[0].external_data
    code, _, err = certify(scene, str(scene / "m" / "saved.onnx"), capsys=capsys)
    assert code == 0, err
    assert read(scene / "inline.parquet")[0].drop(["time_s"]) == read(scene / "run.parquet")[0].drop(["time_s"])


# -- 3. metadata and opsets ---------------------------------------------------------------------------

BAD_METADATA = [
    ("srtool.classes", "not json", "metadata srtool.classes is 'not json', not a JSON list of class names"),
    ("srtool.classes", '{"a": 1}', "not a JSON list of class names"),
    ("srtool.classes", '"abc"', "not a JSON list of class names"),
    ("srtool.classes", "[1, 2, 3]", "not a JSON list of class names"),
    ("srtool.classes", "[]", "not a JSON list of class names"),
    ("srtool.classes", '["a", null, "c"]', "not a JSON list of class names"),
    ("srtool.classes", '["a", "b"]', "metadata srtool.classes names 2 classes, but the model outputs 3"),
    ("srtool.input_shape", "1,four,4", "not positive whole numbers"),
    ("srtool.input_shape", "1,4.0,4", "not positive whole numbers"),
    ("srtool.input_shape", "", "not positive whole numbers"),
    ("srtool.input_shape", "1,0,4", "not positive whole numbers"),
    ("srtool.input_shape", "1,-4,4", "not positive whole numbers"),
    ("srtool.input_shape", "1,4", "srtool.input_shape has 2 sizes, but the model input has 3"),
    ("srtool.input_shape", "1,4,4,4", "srtool.input_shape has 4 sizes, but the model input has 3"),
    ("srtool.input_shape", "3,4,4", "srtool.input_shape 3×4×4 disagrees with the model input's sizes 1×4×4"),
    ("srtool.sigma", "abc", "metadata srtool.sigma is 'abc', not a positive number"),
    ("srtool.sigma", "nan", "not a positive number"),
    ("srtool.sigma", "inf", "not a positive number"),
    ("srtool.sigma", "-0.25", "not a positive number"),
    ("srtool.sigma", "0", "not a positive number"),
    ("srtool.sigma", "", "not a positive number"),
]


@pytest.mark.parametrize("key, value, message", BAD_METADATA)
def test_malformed_metadata_is_one_line(scene, capsys, key, value, message):
    """Was: exit 1 "unexpected" (JSONDecodeError, ValueError) or a NaN σ certifying NaN radii."""
    assert refused(scene, linear_model(metadata={key: value}), capsys, message).startswith("error: model.onnx: ")


def test_metadata_is_checked_even_where_an_option_overrides_it(scene, capsys):
    refused(scene, linear_model(metadata={"srtool.sigma": "x"}), capsys, "not a positive number",
            extra=["--sigma", 0.25])


def test_huge_declared_input_is_refused(scene, capsys):
    """A free-size input with a huge srtool.input_shape: refused before a first run on zeros."""
    model = linear_model(metadata={"srtool.input_shape": "100000,100000,100000"})
    for axis, dim in enumerate(model.graph.input[0].type.tensor_type.shape.dim[1:]):
        dim.dim_param = f"d{axis}"
    refused(scene, model, capsys, "the model input 100000×100000×100000 has more than 268,435,456 values per copy")


@pytest.mark.parametrize("opset", [99, 29, 0, -1])
def test_opsets_srtool_cannot_run_are_one_line(scene, capsys, opset):
    """Was: exit 1 "unexpected ValueError: Unsupported opset-version" (opset newer than onnx knows)."""
    model = linear_model()
    del model.opset_import[:]
    if opset:
        model.opset_import.add(domain="", version=opset)
    refused(scene, model, capsys, f"the model imports ONNX opset {opset}; srtool can run opsets 1 to")


@pytest.mark.parametrize("opset", [1, 7, 11])
def test_old_opsets_are_converted(scene, capsys, opset):
    assert certify(scene, linear_model(), out="new.parquet", capsys=capsys)[0] == 0
    code, _, err = certify(scene, linear_model(opset=opset), capsys=capsys)
    assert code == 0, err
    assert read(scene / "new.parquet")[0].drop(["time_s"]) == read(scene / "run.parquet")[0].drop(["time_s"])


def test_classes_checked_against_the_width_found_by_running_the_model(scene, capsys):
    """An output whose width is not declared: srtool runs the model once and compares."""
    model = linear_model(metadata={"srtool.classes": json.dumps(["a", "b"])})
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    refused(scene, model, capsys, "metadata srtool.classes names 2 classes, but the model outputs 3")


# -- 4. a refused command writes nothing ---------------------------------------------------------------

def wider_on_noise_model() -> onnx.ModelProto:
    """Declares (and on zeros returns) 3 logits; on any input with a pixel above 0.01 a fourth, winning
    one: the probe passes and the first noisy copy votes for class 3 of 3."""
    def branch(name: str, extra: list[float]) -> onnx.GraphProto:
        weights = np.concatenate([WEIGHTS, np.full((16, len(extra)), 1.0, np.float32)], axis=1) if extra else WEIGHTS
        return helper.make_graph([helper.make_node("MatMul", ["flat", f"{name}_W"], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(weights, f"{name}_W")])
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("ReduceMax", ["flat"], ["top"], keepdims=0),
             helper.make_node("Greater", ["top", "small"], ["noisy"]),
             helper.make_node("If", ["noisy"], ["logits"], then_branch=branch("wide", [1.0]),
                              else_branch=branch("narrow", []))]
    graph = helper.make_graph(nodes, "shifty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.float32(0.01), "small")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="srtool.sigma", value="0.25")
    return model


@pytest.mark.parametrize("out", ["run.parquet", "new/sub/run.parquet", None])
def test_a_run_refused_after_it_started_leaves_no_file(scene, capsys, out):
    """Was: RUN.parquet.parts/config.json (and the folders of --out) stayed behind."""
    model = scene / "m" / "model.onnx"
    model.write_bytes(wider_on_noise_model().SerializeToString())
    before = files(scene)
    code, _, err = srtool("certify", "--model", model, "--images", scene / "d.npz", *FAST,
                          *(["--out", scene / out] if out else []), capsys=capsys)
    assert code == 2 and err.strip() == "error: the model voted for class 3 but declares 3 classes", err
    assert files(scene) == before  # no parts, no lock, no runs/ or new/sub/ folder


def test_a_refused_overwrite_keeps_the_old_results(scene, capsys):
    assert certify(scene, linear_model(), capsys=capsys)[0] == 0
    finished = (scene / "run.parquet").read_bytes()
    model = scene / "m" / "shifty.onnx"
    model.write_bytes(wider_on_noise_model().SerializeToString())
    code, _, err = srtool("certify", "--model", model, "--images", scene / "d.npz", *FAST, "--out",
                          scene / "run.parquet", "--overwrite", capsys=capsys)
    assert code == 2 and "voted for class 3" in err
    assert (scene / "run.parquet").read_bytes() == finished and not (scene / "run.parquet.parts").exists()


def linear_reading_bias_row(index_nodes: list, inits: list) -> onnx.ModelProto:
    """The linear model plus row `index` of a 1×3 zero bias: `index_nodes` compute `index` from x, so
    an index other than 0 makes ONNX Runtime raise in the Gather."""
    nodes = [*index_nodes,
             helper.make_node("Gather", ["bias", "index"], ["row"], axis=0),
             helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "row"], ["logits"])]
    inits = [*inits, numpy_helper.from_array(np.zeros((1, 3), np.float32), "bias"), numpy_helper.from_array(WEIGHTS, "W")]
    graph = helper.make_graph(nodes, "failing", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="srtool.sigma", value="0.25")
    return model


def failing_on_noise_model() -> onnx.ModelProto:
    """Runs on zeros; on a copy whose first pixel is 0.1 or more the Gather index runs out of range and
    ONNX Runtime raises: the load probe's copies find it before any work."""
    return linear_reading_bias_row(
        [helper.make_node("Flatten", ["x"], ["pixels"], axis=1),
         helper.make_node("Gather", ["pixels", "zero"], ["first"], axis=1),
         helper.make_node("Mul", ["first", "ten"], ["scaled"]),
         helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64)],
        [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.float32(10), "ten")])


def test_a_model_that_fails_at_run_time_is_one_line(scene, capsys):
    """Was: exit 1 "unexpected InvalidArgument", after ORT's own log line on stderr."""
    err = refused(scene, failing_on_noise_model(), capsys, "error: model model.onnx failed on a batch of 3 noisy "
                  "copies at load (ONNX Runtime: Non-zero status code returned while running Gather node.")
    assert "[E:onnxruntime" not in err


def failing_on_large_batches_model() -> onnx.ModelProto:
    """Passes the load probe (batches of at most 64); a batch of 100 copies or more reads past the
    end of a Gather and ONNX Runtime raises mid-run."""
    return linear_reading_bias_row(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
         helper.make_node("Greater", ["n", "ninety_nine"], ["large"]),
         helper.make_node("Cast", ["large"], ["one_if_large"], to=TensorProto.INT64),
         helper.make_node("Mul", ["one_if_large", "thousand"], ["index"])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(99, np.int64), "ninety_nine"),
         numpy_helper.from_array(np.array(1000, np.int64), "thousand")])


def test_a_model_that_fails_mid_run_is_one_line(scene, capsys):
    err = refused(scene, failing_on_large_batches_model(), capsys, "the model failed on a batch of noisy "
                  "copies (ONNX Runtime: Non-zero status code returned while running Gather node.",
                  extra=["--batch", 128])
    assert "[E:onnxruntime" not in err


@pytest.mark.parametrize("elem_type, shown", [(TensorProto.INT64, "int64"), (TensorProto.BOOL, "bool"),
                                              (TensorProto.STRING, "string"), (99, "data type 99")])
def test_logits_that_are_not_floating_point_are_refused(scene, capsys, elem_type, shown):
    """Was: ONNX Runtime's INVALID_GRAPH message about srtool's own nodes."""
    model = linear_model()
    model.graph.output[0].type.tensor_type.elem_type = elem_type
    refused(scene, model, capsys, f"model.onnx: the model output holds {shown}, not floating-point logits")


def test_bench_on_a_model_that_fails_at_run_time_is_one_line(scene, capsys):
    model = scene / "m" / "failing.onnx"
    model.write_bytes(failing_on_noise_model().SerializeToString())
    code, _, err = srtool("bench", "--model", model, "--seconds", 0.2, "--threads", 1, capsys=capsys)
    assert code == 2 and err.strip().startswith("error: model failing.onnx failed on a batch of 3 noisy copies at load "
                                                "(ONNX Runtime: Non-zero status code returned while running Gather"), err
    assert len(err.strip().splitlines()) == 1


def test_new_external_weights_are_a_new_model(scene):
    """The model's sha256 (which a resume compares) covers its external data, not only the .onnx file."""
    (scene / "m" / "model.onnx").write_bytes(linear_model("initializer", "w.bin").SerializeToString())
    WEIGHTS.tofile(scene / "m" / "w.bin")
    first = load_model(scene / "m" / "model.onnx").sha256
    (-WEIGHTS).tofile(scene / "m" / "w.bin")
    assert load_model(scene / "m" / "model.onnx").sha256 != first
    (scene / "m" / "inline.onnx").write_bytes(linear_model().SerializeToString())  # no external data: the file's hash
    assert load_model(scene / "m" / "inline.onnx").sha256 == hashlib.sha256(
        (scene / "m" / "inline.onnx").read_bytes()).hexdigest()
