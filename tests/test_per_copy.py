"""Every model in the sampling graph votes per copy (srtool.per_copy), and a denoiser stage whose output
is not finite makes its copy invalid. Each refused model has a control: the same graph built
correctly runs."""

from __future__ import annotations

import glob

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cli_helpers import read, srtool
from srtool import per_copy
from srtool.denoise import denoising_for, load_denoiser
from srtool.model import load_model
from test_denoised import DDPM, _save, image_info, identity_denoiser

SIDE = 28
FEATURES = SIDE * SIDE


def _classifier(path, body: list, first: str = "x", inits=(), opset: int = 17, functions=()) -> str:
    """A 10-class linear classifier of 1×28×28 images behind `body`, nodes that turn x into `x_in`."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((10, FEATURES)).astype(np.float32)
    weights = ((prototypes - prototypes.mean(axis=0)).T * 0.5).astype(np.float32)
    nodes = [*body, helper.make_node("Flatten", ["x_in"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [FEATURES, 10], weights.ravel()), *inits]
    graph = helper.make_graph(nodes, "c", [image_info(first, (1, SIDE, SIDE))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8, functions=list(functions))
    model.metadata_props.add(key="srtool.sigma", value="0.25")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _scalar(name, value, kind=TensorProto.FLOAT):
    return helper.make_tensor(name, kind, [], [value])


def batch_index_plus(shift: int) -> list:
    """Nodes making `idx` = (0..N-1 + shift) mod N for the batch of x."""
    return [helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
            helper.make_node("Range", ["zero", "n", "one"], ["range"]),
            helper.make_node("Add", ["range", "shift"], ["moved"]),
            helper.make_node("Mod", ["moved", "n"], ["idx"])]


INDEX_INITS = lambda shift: [_scalar("zero", 0, TensorProto.INT64), _scalar("one", 1, TensorProto.INT64),  # noqa: E731
                             _scalar("shift", shift, TensorProto.INT64)]

# name → (coupled or random graph, its honest control, words the refusal says)
CLASSIFIERS = {
    "batch statistics": (
        lambda p: _classifier(p, [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
                                  helper.make_node("Sub", ["x", "mean"], ["x_in"])]),
        lambda p: _classifier(p, [helper.make_node("Sub", ["x", "mean"], ["x_in"])],
                              inits=[_scalar("mean", 0.5)]),
        "batch statistics"),
    "batch size": (
        lambda p: _classifier(p, [helper.make_node("Shape", ["x"], ["shape"]),
                                  helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                                  helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
                                  helper.make_node("Add", ["x", "nf"], ["x_in"])],
                              inits=[_scalar("zero", 0, TensorProto.INT64)]),
        lambda p: _classifier(p, [helper.make_node("Add", ["x", "nf"], ["x_in"])], inits=[_scalar("nf", 1.0)]),
        "different outputs in different batches"),
    "rolled batch": (
        lambda p: _classifier(p, [*batch_index_plus(1), helper.make_node("Gather", ["x", "idx"], ["x_in"], axis=0)],
                              inits=INDEX_INITS(1)),
        lambda p: _classifier(p, [*batch_index_plus(0), helper.make_node("Gather", ["x", "idx"], ["x_in"], axis=0)],
                              inits=INDEX_INITS(0)),
        "different outputs in different batches"),
    "batch mean": (
        lambda p: _classifier(p, [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
                                  helper.make_node("Add", ["x", "mean"], ["x_in"])]),
        lambda p: _classifier(p, [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
                                  helper.make_node("Add", ["x", "mean"], ["x_in"])]),
        "different outputs in different batches"),
    "random normal": (
        lambda p: _classifier(p, [helper.make_node("RandomNormalLike", ["x"], ["z"], scale=0.01),
                                  helper.make_node("Add", ["x", "z"], ["x_in"])]),
        lambda p: _classifier(p, [helper.make_node("Add", ["x", "z"], ["x_in"])], inits=[_scalar("z", 0.0)]),
        "RandomNormalLike"),
    "active dropout": (
        lambda p: _classifier(p, [helper.make_node("Dropout", ["x", "ratio", "train"], ["x_in"])],
                              inits=[_scalar("ratio", 0.5), _scalar("train", True, TensorProto.BOOL)]),
        lambda p: _classifier(p, [helper.make_node("Dropout", ["x", "ratio", "train"], ["x_in"])],
                              inits=[_scalar("ratio", 0.5), _scalar("train", False, TensorProto.BOOL)]),
        "Dropout with training_mode"),
    "random op in a branch": (
        lambda p: _classifier(p, [helper.make_node("If", ["yes"], ["x_in"], then_branch=_branch("RandomUniformLike"),
                                                   else_branch=_branch("Identity"))],
                              inits=[_scalar("yes", True, TensorProto.BOOL)]),
        lambda p: _classifier(p, [helper.make_node("If", ["yes"], ["x_in"], then_branch=_branch("Identity"),
                                                   else_branch=_branch("Identity"))],
                              inits=[_scalar("yes", True, TensorProto.BOOL)]),
        "RandomUniformLike"),
}


def _branch(op: str) -> onnx.GraphProto:
    """A subgraph returning op(x) (outer x), for an If."""
    return helper.make_graph([helper.make_node(op, ["x"], ["b_out"])], f"b_{op}", [],
                             [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, None)])


def _run(capsys, tmp_path, *args):
    return srtool("certify", *args, "--n0", 5, "--n", 20, "--threads", 1, "--quiet",
                  "--out", tmp_path / "r.parquet", "--overwrite", capsys=capsys)


@pytest.mark.parametrize("case", sorted(CLASSIFIERS))
def test_coupled_or_random_classifiers_are_refused(tmp_path, prototype_run, capsys, case):
    _, data = prototype_run(3)
    coupled, control, words = CLASSIFIERS[case]
    code, _, err = _run(capsys, tmp_path, "--model", control(tmp_path / "ok.onnx"), "--images", data)
    assert code == 0, err
    code, _, err = _run(capsys, tmp_path, "--model", coupled(tmp_path / "bad.onnx"), "--images", data)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert "bad.onnx" in err


def test_an_ensemble_member_is_checked_too(tmp_path, prototype_run, capsys):
    model, data = prototype_run(3)
    coupled = CLASSIFIERS["batch statistics"][0](tmp_path / "member.onnx")
    code, _, err = _run(capsys, tmp_path, "--model", model, "--model", coupled, "--images", data)
    assert code == 2 and "ensemble member 2 member.onnx" in err


def test_python_api_refuses_the_same(tmp_path):
    import srtool as api
    from srtool.errors import UsageError

    with pytest.raises(UsageError, match="batch statistics"):
        api.Smooth(CLASSIFIERS["batch statistics"][0](tmp_path / "bn.onnx")).certify(
            np.zeros((1, SIDE, SIDE), np.uint8), n0=5, n=10)


# -- denoisers and UNets -------------------------------------------------------------------------------

def batch_mean_denoiser(path) -> str:
    """Returns every copy's batch mean: a denoiser that reads the other rows."""
    return _save([helper.make_node("ReduceMean", ["y"], ["mean"], axes=[0], keepdims=1),
                  helper.make_node("Mul", ["y", "zero"], ["zeros"]),
                  helper.make_node("Add", ["zeros", "mean"], ["out"])],
                 [image_info("y", (1, SIDE, SIDE))], [image_info("out", (1, SIDE, SIDE))], [_scalar("zero", 0.0)],
                 path, {"srtool.kind": "denoiser"})


def unet(path, eps_nodes: list, inits=()) -> str:
    """An ε-prediction UNet (x, t) → `eps` built by `eps_nodes` from x."""
    return _save([*eps_nodes], [image_info("x", (1, SIDE, SIDE)), helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N"])],
                 [image_info("eps", (1, SIDE, SIDE))], list(inits), path,
                 {"srtool.kind": "diffusion", "srtool.diffusion": DDPM})


def test_denoisers_and_unets_are_checked(tmp_path, prototype_run, capsys):
    model, data = prototype_run(3)
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--denoiser",
                        identity_denoiser(tmp_path / "identity.onnx", SIDE))
    assert code == 0, err
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--denoiser",
                        batch_mean_denoiser(tmp_path / "mean.onnx"))
    assert code == 2 and "--denoiser model mean.onnx" in err and "batch" in err, err
    random_unet = unet(tmp_path / "noisy_unet.onnx", [helper.make_node("RandomNormalLike", ["x"], ["eps"])])
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--diffusion", random_unet)
    assert code == 2 and "RandomNormalLike" in err and "--diffusion model" in err, err
    calm_unet = unet(tmp_path / "calm_unet.onnx", [helper.make_node("Tanh", ["x"], ["eps"])])
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--diffusion", calm_unet)
    assert code == 0, err


# -- non-finite denoiser stages ------------------------------------------------------------------------

def test_infinite_eps_makes_every_copy_invalid(tmp_path, prototype_run, capsys):
    """ε̂ = +inf would become x̂₀ = −inf, clipped to a black image the classifier votes on with
    certainty: every row would be certified at the cap. It is invalid instead."""
    model, data = prototype_run(2)
    inf_unet = unet(tmp_path / "inf.onnx", [helper.make_node("Mul", ["x", "zero"], ["zeros"]),
                                            helper.make_node("Add", ["zeros", "inf"], ["eps"])],
                    [_scalar("zero", 0.0), _scalar("inf", np.inf)])
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--diffusion", inf_unet)
    assert code == 0, err
    table, _ = read(tmp_path / "r.parquet")
    assert table.column("predict").to_pylist() == [-1, -1]
    assert table.column("invalid").to_pylist() == [25, 25]  # n0 + n: no copy voted
    assert table.column("radius").to_pylist() == [0.0, 0.0]


def test_nan_from_a_denoiser_is_invalid_even_if_the_classifier_hides_it(tmp_path, prototype_run, capsys):
    _, data = prototype_run(2)
    hides_nan = _classifier(tmp_path / "hides.onnx", [helper.make_node("IsNaN", ["x"], ["nan"]),
                                                       helper.make_node("Where", ["nan", "zero", "x"], ["x_in"])],
                            inits=[_scalar("zero", 0.0)])
    nan_denoiser = _save([helper.make_node("Mul", ["y", "nan"], ["out"])], [image_info("y", (1, SIDE, SIDE))],
                         [image_info("out", (1, SIDE, SIDE))], [_scalar("nan", np.nan)], tmp_path / "nan.onnx",
                         {"srtool.kind": "denoiser"})
    code, _, err = _run(capsys, tmp_path, "--model", hides_nan, "--images", data, "--denoiser", nan_denoiser)
    assert code == 0, err
    table, _ = read(tmp_path / "r.parquet")
    assert table.column("invalid").to_pylist() == [25, 25] and table.column("predict").to_pylist() == [-1, -1]


# -- schedules and metadata ----------------------------------------------------------------------------

@pytest.mark.parametrize("diffusion, words", [
    ({**DDPM, "steps": 10}, "linear schedule of 10 steps"),   # ᾱ ≤ 0 past β = 1
    ({**DDPM, "steps": 20}, "linear schedule of 20 steps"),   # ᾱ = 0 at its last step
    ({"alphas_cumprod": [0.9, 0.5, 0.0]}, "alphas_cumprod"),
])
def test_schedules_are_checked_like_tables(tmp_path, prototype_run, capsys, diffusion, words):
    model, data = prototype_run(2)
    path = _save([helper.make_node("Tanh", ["x"], ["eps"])],
                 [image_info("x", (1, SIDE, SIDE)), helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N"])],
                 [image_info("eps", (1, SIDE, SIDE))], [], tmp_path / "u.onnx",
                 {"srtool.kind": "diffusion", "srtool.diffusion": diffusion})
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--diffusion", path, "--timestep", 5)
    assert code == 2 and words in err and "decreasing" in err and len(err.strip().splitlines()) == 1, err


def test_infinite_sigma_scale_is_refused(tmp_path, prototype_run, capsys):
    model, data = prototype_run(2)
    path = _save([helper.make_node("Identity", ["y"], ["out"])], [image_info("y", (1, SIDE, SIDE))],
                 [image_info("out", (1, SIDE, SIDE))], [], tmp_path / "d.onnx",
                 {"srtool.kind": "denoiser", "srtool.denoiser": '{"sigma_scale": 1e999}'})
    code, _, err = _run(capsys, tmp_path, "--model", model, "--images", data, "--denoiser", path)
    assert code == 2 and "sigma_scale" in err and "finite" in err


# -- the tolerance, against the real models ------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(p for p in glob.glob(str(per_copy.__file__).replace("per_copy.py", "assets/**/*.onnx"),
                                                             recursive=True) if "ddpm" not in p))
def test_shipped_classifiers_vary_far_below_the_tolerance(path):
    model = load_model(path)
    assert per_copy.check_classifier(model, model.input_shape) <= per_copy.PROBE_TOLERANCE / 100


@pytest.mark.parametrize("sigma", [0.12, 0.5])
def test_shipped_ddpm_varies_far_below_the_tolerance(sigma):
    ddpm = load_denoiser(per_copy.__file__.replace("per_copy.py", "assets/fmnist_ddpm.onnx"), "diffusion")
    stage = denoising_for(ddpm, sigma, None, (1, SIDE, SIDE))
    assert per_copy.check_denoiser(stage, (1, SIDE, SIDE)) <= per_copy.PROBE_TOLERANCE / 100


def test_a_coupled_model_varies_far_above_it(tmp_path):
    model = load_model(CLASSIFIERS["batch statistics"][0](tmp_path / "bn.onnx"))
    with pytest.raises(Exception, match=r"by \S+ of their scale") as refused:
        per_copy.check_classifier(model, (1, SIDE, SIDE))
    deviation = float(str(refused.value).split("(by ")[1].split()[0])
    assert deviation >= 100 * per_copy.PROBE_TOLERANCE


def test_a_random_op_in_a_local_function_is_refused(tmp_path):
    """A random op hidden in a model-local function is found too."""
    noisy = onnx.helper.make_function("custom", "Jitter", ["v"], ["w"],
                                      [helper.make_node("RandomUniformLike", ["v"], ["u"]),
                                       helper.make_node("Add", ["v", "u"], ["w"])],
                                      [helper.make_opsetid("", 17)])
    path = _classifier(tmp_path / "f.onnx", [helper.make_node("Jitter", ["x"], ["x_in"], domain="custom")],
                       functions=[noisy])
    with pytest.raises(Exception, match="RandomUniformLike"):
        per_copy.check_classifier(load_model(path), (1, SIDE, SIDE))


def test_a_large_model_gets_three_calls_of_four_copies(tmp_path, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(per_copy, "LARGE_MODEL_BYTES", 0)
    monkeypatch.setattr(per_copy, "_checked", {})  # probed afresh, not remembered from another test
    batches = []
    run = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run",
                        lambda self, names, feeds, *a: batches.append(len(next(iter(feeds.values())))) or
                        run(self, names, feeds, *a))
    model = load_model(CLASSIFIERS["batch statistics"][1](tmp_path / "ok.onnx"))
    per_copy.check_classifier(model, (1, SIDE, SIDE))
    assert batches == [2, 1, 1]
