"""Denoisers in front of the classifier (srtool.denoise, graph._denoise, --denoiser / --diffusion).

References: the one-shot diffusion step computed directly in numpy on a tiny UNet-like model; an
identity denoiser gives exactly the plain run's counts; an affine denoiser in front of a linear
classifier is linear, so its smoothed classifier is exact and the soundness test's reference holds;
the t* of both published schedules.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cli_helpers import read, srtool
from srtool import core, stats
from srtool.data import Item
from srtool.denoise import Denoising, load_denoiser, named_schedule, one_shot_timestep
from srtool.engine import VoteCounter
from srtool.errors import UsageError
from srtool.graph import Builder, _denoise, sampling_graph
from srtool.model import load_model
from srtool.pipeline import Settings, evaluate
from srtool.plan import Plan

OPSET = 17


def _save(nodes, inputs, outputs, inits, path, metadata=None) -> str:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", OPSET)]))
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def image_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])


def affine_denoiser(path, side: int, matrix=None, shift=None, level_vector=None, out_side=None,
                    metadata=None) -> str:
    """y (N,1,S,S) ↦ A·y + c (+ level·v with a noise-level input (N,1,1,1)); A = I, c = 0 by default."""
    features = side * side
    matrix = np.eye(features) if matrix is None else matrix
    out_side = out_side or side
    shift = np.zeros(out_side ** 2) if shift is None else shift
    nodes = [helper.make_node("Flatten", ["y"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "At"], ["ay"]),
             helper.make_node("Add", ["ay", "c"], ["sum"])]
    inits = [helper.make_tensor("At", TensorProto.FLOAT, [features, out_side ** 2], matrix.T.astype(np.float32).ravel()),
             helper.make_tensor("c", TensorProto.FLOAT, [out_side ** 2], shift.astype(np.float32)),
             helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 1, out_side, out_side])]
    inputs = [image_info("y", (1, side, side))]
    if level_vector is not None:
        inputs.append(image_info("level", (1, 1, 1)))
        nodes += [helper.make_node("Flatten", ["level"], ["level_flat"], axis=1),
                  helper.make_node("Mul", ["level_flat", "v"], ["lv"]),
                  helper.make_node("Add", ["sum", "lv"], ["total"])]
        inits.append(helper.make_tensor("v", TensorProto.FLOAT, [features], level_vector.astype(np.float32)))
    else:
        nodes.append(helper.make_node("Identity", ["sum"], ["total"]))
    nodes.append(helper.make_node("Reshape", ["total", "shape"], ["denoised"]))
    return _save(nodes, inputs, [image_info("denoised", (1, out_side, out_side))], inits, path,
                 {"srtool.kind": "denoiser", **(metadata or {})})


def identity_denoiser(path, side: int) -> str:
    return _save([helper.make_node("Identity", ["y"], ["out"])], [image_info("y", (1, side, side))],
                 [image_info("out", (1, side, side))], [], path, {"srtool.kind": "denoiser"})


DDPM = {"schedule": "linear", "steps": 1000, "rescale_timesteps": False, "learn_sigma": False, "data_range": [-1, 1]}


def tiny_unet(path, side: int, channels: int = 1, learn_sigma=False, diffusion=None, timestep_type=TensorProto.FLOAT,
              with_timestep=True) -> str:
    """ε̂ = tanh(1.5·x_t) + t·u (u a fixed per-pixel pattern); with learn_sigma also 3·x_t as the
    variance channels, which the one-shot step must ignore."""
    u = np.linspace(-1e-3, 1e-3, channels * side * side).reshape(1, channels, side, side).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "k"], ["kx"]), helper.make_node("Tanh", ["kx"], ["th"])]
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [], [1.5]),
             helper.make_tensor("u", TensorProto.FLOAT, list(u.shape), u.ravel()),
             helper.make_tensor("t_shape", TensorProto.INT64, [4], [-1, 1, 1, 1]),
             helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])]
    inputs = [image_info("x", (channels, side, side))]
    if with_timestep:
        inputs.append(helper.make_tensor_value_info("t", timestep_type, ["N"]))
        nodes += [helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
                  helper.make_node("Reshape", ["tf", "t_shape"], ["t4"]),
                  helper.make_node("Mul", ["t4", "u"], ["tu"]),
                  helper.make_node("Add", ["th", "tu"], ["eps"])]
    else:
        nodes.append(helper.make_node("Identity", ["th"], ["eps"]))
    out_channels = channels * (2 if learn_sigma else 1)
    if learn_sigma:
        nodes += [helper.make_node("Mul", ["x", "three"], ["var"]),
                  helper.make_node("Concat", ["eps", "var"], ["out"], axis=1)]
    else:
        nodes.append(helper.make_node("Identity", ["eps"], ["out"]))
    meta = {"srtool.kind": "diffusion", "srtool.diffusion": {**DDPM, "learn_sigma": learn_sigma}
            if diffusion is None else diffusion}
    if meta["srtool.diffusion"] == "absent":
        del meta["srtool.diffusion"]
    return _save(nodes, inputs, [image_info("out", (out_channels, side, side))], inits, path, meta)


# -- the schedules and t* ------------------------------------------------------------------------------

def test_linear_schedule_gives_the_published_timesteps():
    """DDS on ImageNet (linear 1000 steps): t* = 145, 259, 396 at σ = 0.25, 0.5, 1.0."""
    alphas = named_schedule("linear", 1000)
    assert [one_shot_timestep(alphas, s) for s in (0.25, 0.5, 1.0)] == [145, 259, 396]
    assert alphas[0] == pytest.approx(1 - 1e-4) and alphas[-1] == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_schedule_matches_its_closed_form_and_rule():
    """improved-diffusion's cosine schedule (4000 steps): ᾱ_t = f(t+1)/f(0) wherever no β is capped,
    and t* is the first step whose noise √((1−ᾱ)/ᾱ) reaches 2σ."""
    steps = 4000
    alphas = named_schedule("cosine", steps)
    f = [math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(steps + 1)]
    closed = np.array(f[1:]) / f[0]
    assert np.allclose(alphas[:3900], closed[:3900], rtol=1e-9)
    for sigma in (0.12, 0.25, 0.5, 1.0):
        t = one_shot_timestep(alphas, sigma)
        noise = np.sqrt((1 - alphas) / alphas)
        assert noise[t] >= 2 * sigma > noise[t - 1]
    assert [one_shot_timestep(alphas, s) for s in (0.25, 0.5, 1.0)] == [1158, 1984, 2809]


# -- the graph against numpy -------------------------------------------------------------------------

@pytest.mark.parametrize("learn_sigma,rescale,timestep_type", [(False, False, TensorProto.FLOAT),
                                                               (True, True, TensorProto.FLOAT),
                                                               (False, False, TensorProto.INT64)])
def test_one_shot_step_matches_numpy(tmp_path, learn_sigma, rescale, timestep_type):
    side, sigma, steps = 6, 0.25, 1000 if not rescale else 4000
    meta = {**DDPM, "schedule": "cosine" if rescale else "linear", "steps": steps, "rescale_timesteps": rescale,
            "learn_sigma": learn_sigma}
    unet = load_denoiser(tiny_unet(tmp_path / "unet.onnx", side, 2, learn_sigma, meta, timestep_type), "diffusion")
    t = unet.timestep(sigma)
    stage = Denoising(unet, sigma, t)
    b = Builder(OPSET)
    out = _denoise(b, stage, "noisy")
    b.node("Identity", [out], "denoised")
    graph = helper.make_graph(b.nodes, "stage", [image_info("noisy", (2, side, side))],
                              [image_info("denoised", (2, side, side))], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    noisy = (rng.random((5, 2, side, side)) + sigma * rng.standard_normal((5, 2, side, side))).astype(np.float32)
    got = session.run(None, {"noisy": noisy})[0]

    alpha = named_schedule(meta["schedule"], steps)[t]
    x_t = math.sqrt(alpha) * (2 * noisy.astype(np.float64) - 1)
    t_fed = t * 1000 / steps if rescale else t
    u = np.linspace(-1e-3, 1e-3, 2 * side * side).reshape(1, 2, side, side)
    eps = np.tanh(1.5 * x_t) + t_fed * u
    x0 = np.clip((x_t - math.sqrt(1 - alpha) * eps) / math.sqrt(alpha), -1, 1)
    assert np.abs(got - (x0 + 1) / 2).max() < 1e-5
    assert np.abs(got - (x0 + 1) / 2).max() < np.abs(got - noisy).max()  # it did change the copies


def test_non_blind_denoiser_is_fed_sigma_times_its_scale(tmp_path):
    side, sigma = 4, 0.25
    vector = np.arange(side * side, dtype=np.float64)
    path = affine_denoiser(tmp_path / "nb.onnx", side, level_vector=vector,
                           metadata={"srtool.denoiser": {"sigma_scale": 255, "sigma_range": [0, 0.5]}})
    model = load_denoiser(path, "denoiser")
    stage = Denoising(model, sigma)
    b = Builder(OPSET)
    b.node("Identity", [_denoise(b, stage, "noisy")], "denoised")
    graph = helper.make_graph(b.nodes, "stage", [image_info("noisy", (1, side, side))],
                              [image_info("denoised", (1, side, side))], b.inits)
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                                     ir_version=8).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    noisy = np.zeros((3, 1, side, side), np.float32)
    got = session.run(None, {"noisy": noisy})[0]
    assert np.allclose(got.reshape(3, -1), sigma * 255 * vector, rtol=1e-6)


# -- runs --------------------------------------------------------------------------------------------

def test_identity_denoiser_gives_the_plain_counts(tmp_path, prototype_run, capsys):
    model, data = prototype_run(6)
    denoiser = identity_denoiser(tmp_path / "identity.onnx", 28)
    common = ["certify", "--model", model, "--images", data, "--n0", 20, "--n", 200, "--threads", 1, "--quiet"]
    assert srtool(*common, "--out", tmp_path / "plain.parquet", capsys=capsys)[0] == 0
    assert srtool(*common, "--denoiser", denoiser, "--out", tmp_path / "dn.parquet", capsys=capsys)[0] == 0
    plain, _ = read(tmp_path / "plain.parquet")
    denoised, config = read(tmp_path / "dn.parquet")
    assert denoised.column("counts").to_pylist() == plain.column("counts").to_pylist()
    assert config["denoiser"]["kind"] == "denoiser" and len(config["denoiser"]["model_sha256"]) == 64


def test_diffusion_run_records_the_stage_and_combines(tmp_path, prototype_run, capsys):
    """Smooth-Mean k=4 over an ensemble of two, sequential, with a UNet in front: it runs, and the
    metadata says which step ran, on which schedule."""
    model, data = prototype_run(3)
    unet = tiny_unet(tmp_path / "unet.onnx", 28)
    out = tmp_path / "dds.parquet"
    code, _, err = srtool("certify", "--model", model, "--model", model, "--images", data, "--diffusion", unet,
                          "--sigma", 0.5, "--n0", 20, "--n", 400, "--resize", 32, "--patch-size", 28,
                          "--patches", 4, "--sequential", "--radii", "0.25,0.5", "--threads", 1, "--quiet",
                          "--out", out, capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert config["denoiser"]["timestep"] == 259 and config["denoiser"]["schedule"]["schedule"] == "linear"
    assert config["denoiser"]["noise_at_timestep"] == pytest.approx(0.5, rel=0.01)
    assert table.num_rows == 3 and all(e is None for e in table.column("error").to_pylist())
    # --timestep overrides t*
    code, _, err = srtool("certify", "--model", model, "--images", data, "--diffusion", unet, "--sigma", 0.5,
                          "--timestep", 7, "--n0", 10, "--n", 20, "--threads", 1, "--quiet",
                          "--out", tmp_path / "t7.parquet", capsys=capsys)
    assert code == 0, err
    assert read(tmp_path / "t7.parquet")[1]["denoiser"]["timestep"] == 7


# -- soundness: affine ∘ linear is linear ----------------------------------------------------------

def test_affine_denoiser_never_overclaims(tmp_path, make_linear):
    """The base classifier w·(A y + c) + b is linear in y with normal Aᵀw: the true robust radius at x
    is its distance to that plane, which no certificate may exceed beyond α's share."""
    from test_soundness import ALPHA, N, N0, SIDE, TRIALS, allowed_failures, two_class

    sigma = 0.5
    rng = np.random.default_rng(3)
    features = SIDE * SIDE
    matrix = np.eye(features) * 0.6 + rng.normal(0, 0.1, (features, features))
    shift = rng.normal(0, 0.05, features)
    w = rng.standard_normal(features)
    bias = 0.1
    weights, biases = two_class(w, bias)
    model = load_model(make_linear(weights, biases, (1, SIDE, SIDE)))
    denoiser = load_denoiser(affine_denoiser(tmp_path / "affine.onnx", SIDE, matrix, shift), "denoiser")
    plan = Plan((1, SIDE, SIDE), (SIDE, SIDE), (SIDE, SIDE))
    counter = VoteCounter(sampling_graph(model, plan, denoising=Denoising(denoiser, sigma)), plan, 2, batch=N,
                          device="cpu", threads=1)
    settings = Settings("certify", sigma, ALPHA, N0, N, 11)
    normal, offset = matrix.T @ w, w @ shift + bias
    unit = normal / np.linalg.norm(normal)
    false = certified = 0
    for trial in range(TRIALS):
        base = rng.uniform(0.2, 0.8, features)
        base -= unit * (normal @ base + offset) / np.linalg.norm(normal)
        x = base + rng.choice([0.05, 0.25, 0.5, 1.0]) * sigma * rng.choice([-1, 1]) * unit
        margin = normal @ x + offset
        row = evaluate(Item(trial, 0 if margin > 0 else 1, x.reshape(1, SIDE, SIDE).astype(np.float32)),
                       plan, counter, settings)
        if row["predict"] != stats.ABSTAIN:
            certified += 1
            false += row["predict"] != row["label"] or row["radius"] > abs(margin) / np.linalg.norm(normal) * (1 + 1e-6)
    counter.close()
    assert certified >= TRIALS // 3
    assert false <= allowed_failures()


# -- refusals ------------------------------------------------------------------------------------------

def _refusal(capsys, *args) -> str:
    code, out, err = srtool("certify", *args, "--n0", 5, "--n", 10, "--quiet", capsys=capsys)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


REFUSALS = {
    "output shape": (lambda p: affine_denoiser(p, 28, matrix=np.zeros((16, 28 * 28)), out_side=4),
                     "denoiser", "must return 1×28×28"),
    "no timestep": (lambda p: tiny_unet(p, 28, with_timestep=False), "diffusion", "timestep t"),
    "no schedule": (lambda p: tiny_unet(p, 28, diffusion="absent"), "diffusion", "no srtool.diffusion metadata"),
    "malformed schedule": (lambda p: tiny_unet(p, 28, diffusion={"schedule": "linear", "steps": "many"}),
                           "diffusion", "schedule (linear or cosine) and steps"),
    "not json": (lambda p: tiny_unet(p, 28, diffusion="{schedule: linear"), "diffusion", "must be a JSON object"),
    "bad table": (lambda p: tiny_unet(p, 28, diffusion={"alphas_cumprod": [0.5, 0.9]}), "diffusion", "decreasing"),
    "data range": (lambda p: tiny_unet(p, 28, diffusion={**DDPM, "data_range": [0, 1]}), "diffusion", "data_range"),
    "sigma range": (lambda p: affine_denoiser(p, 28, metadata={"srtool.denoiser": {"sigma_range": [0, 0.1]}}),
                    "denoiser", "denoises noise levels 0 to 0.1"),
    "wrong kind": (lambda p: tiny_unet(p, 28), "denoiser", "use --diffusion"),
    "image size": (lambda p: identity_denoiser(p, 14), "denoiser", "takes 1×14×14 inputs"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line(tmp_path, prototype_run, capsys, case):
    model, data = prototype_run(2)
    make, option, words = REFUSALS[case]
    err = _refusal(capsys, "--model", model, "--images", data, f"--{option}", make(tmp_path / "d.onnx"),
                   "--sigma", 0.25, "--out", tmp_path / "r.parquet")
    assert words in err
    assert not list(tmp_path.glob("r.parquet*"))


def test_refusals_of_the_combination(tmp_path, prototype_run, capsys):
    model, data = prototype_run(2)
    unet = tiny_unet(tmp_path / "unet.onnx", 28)
    denoiser = identity_denoiser(tmp_path / "id.onnx", 28)
    base = ["--model", model, "--images", data, "--out", tmp_path / "r.parquet"]
    assert "beyond the diffusion model's schedule" in _refusal(capsys, *base, "--diffusion", unet, "--sigma", 80)
    assert "not both" in _refusal(capsys, *base, "--diffusion", unet, "--denoiser", denoiser)
    assert "--timestep" in _refusal(capsys, *base, "--denoiser", denoiser, "--timestep", 3)
    assert "--timestep must lie in 0 … 999" in _refusal(capsys, *base, "--diffusion", unet, "--timestep", 1000)
    assert "no radius proof" in _refusal(capsys, *base, "--denoiser", denoiser, "--resize", 32, "--patch-size", 28,
                                         "--noise-space", "resized")
    assert not list(tmp_path.glob("r.parquet*"))
    with pytest.raises(UsageError, match="apply to images"):  # `srtool video` has no such option
        core.Run(kind="videos", denoiser=denoiser)


def test_python_api_takes_the_same_stage(tmp_path, prototype_run):
    """Smooth(…, diffusion=…) gives the command line's row for the same image and seed."""
    import srtool as api

    model, data = prototype_run(2)
    unet = tiny_unet(tmp_path / "unet.onnx", 28)
    x = np.load(data)["x"][1][None]
    with api.Smooth(model, sigma=0.5, diffusion=unet, threads=1) as smooth:
        cert = smooth.certify(x, n0=20, n=100, index=1)
    results = api.certify(model, images=data, diffusion=unet, sigma=0.5, n0=20, n=100, threads=1,
                          out=tmp_path / "api.parquet")
    row = results.table.to_pylist()[1]
    assert (cert.label, cert.count, list(cert.counts)) == (row["predict"], row["count"], row["counts"])
    assert results.config["denoiser"]["timestep"] == 259


def test_discrete_noise_feeds_the_denoiser(tmp_path, prototype_run, capsys):
    """--noise discrete (radii that hold in floating point) with a UNet in front: the stage sees the
    exact grid noise like any base classifier; the metadata records both."""
    model, data = prototype_run(2)
    unet = tiny_unet(tmp_path / "unet.onnx", 28)
    out = tmp_path / "discrete.parquet"
    code, _, err = srtool("certify", "--model", model, "--images", data, "--diffusion", unet, "--sigma", 0.25,
                          "--noise", "discrete", "--n0", 10, "--n", 50, "--threads", 1, "--quiet", "--out", out,
                          capsys=capsys)
    assert code == 0, err
    table, config = read(out)
    assert config["noise"] == "discrete" and config["denoiser"]["timestep"] == 145
    assert all(e is None for e in table.column("error").to_pylist())


def test_graphs_past_protobufs_limit_run_from_a_private_folder(tmp_path, prototype_run, capsys, monkeypatch):
    """A sampling graph larger than protobuf's 2 GiB (ADM's UNet is 2.2 GB) goes to ONNX Runtime as a
    file with its weights beside it, in a folder of srtool's own: the same votes as from bytes."""
    from srtool import session

    model, data = prototype_run(3)
    unet = tiny_unet(tmp_path / "unet.onnx", 28)
    common = ["certify", "--model", model, "--images", data, "--diffusion", unet, "--sigma", 0.25, "--n0", 10,
              "--n", 60, "--threads", 1, "--quiet"]
    assert srtool(*common, "--out", tmp_path / "bytes.parquet", capsys=capsys)[0] == 0
    spilled = []
    original = session._spilled
    monkeypatch.setattr(session, "MAX_PROTO_BYTES", 1000)
    monkeypatch.setattr(session, "_spilled", lambda proto: spilled.append(1) or original(proto))
    assert srtool(*common, "--out", tmp_path / "file.parquet", capsys=capsys)[0] == 0
    assert spilled
    assert read(tmp_path / "file.parquet")[0].column("counts") == read(tmp_path / "bytes.parquet")[0].column("counts")


def test_spilling_leaves_the_callers_proto_as_it_was(tmp_path):
    """The weights leave the proto only while the graph is written, and come back bit for bit."""
    from srtool import session

    proto = onnx.load(tiny_unet(tmp_path / "unet.onnx", 28))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32), "big"))
    before = proto.SerializeToString()
    path, folder = session._spilled(proto)
    assert proto.SerializeToString() == before
    written = onnx.load(path, load_external_data=False)
    big = next(t for t in written.graph.initializer if t.name == "big")
    assert big.data_location == TensorProto.EXTERNAL and not big.raw_data
    folder.cleanup()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_terminated_run_leaves_no_spilled_graph_behind(tmp_path, prototype_run, signal_name):
    """A `timeout` or a preemption (SIGTERM) unwinds like Ctrl-C: the private graph folder goes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model, data = prototype_run(40)
    unet = tiny_unet(tmp_path / "unet.onnx", 28)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    driver = ("import srtool.session as s; s.MAX_PROTO_BYTES = 1000\n"
              "from srtool.cli import main\n"
              f"main(['certify', '--model', {str(model)!r}, '--images', {str(data)!r}, '--diffusion', {str(unet)!r},"
              f" '--sigma', '0.25', '--n', '200000', '--quiet', '--out', {str(tmp_path / 'r.parquet')!r}])\n")
    process = subprocess.Popen([sys.executable, "-c", driver], env={**os.environ, "TMPDIR": str(scratch)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (tmp_path / "r.parquet.parts").exists() and time.time() < deadline:  # the run is under way
        time.sleep(0.1)
    assert any(scratch.glob("srtool-graph-*"))  # its graph, spilled
    time.sleep(1.0)
    process.send_signal(getattr(signal, signal_name))
    process.communicate(timeout=60)
    assert process.returncode == 130
    assert not list(scratch.glob("srtool-graph-*"))
    assert (tmp_path / "r.parquet.parts").exists()  # the rows so far, kept for a resume
