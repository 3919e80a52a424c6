"""exporters/: checkpoints in the published layouts → self-contained ONNX models srtool can certify.

Every architecture is rebuilt with random weights, saved in the original checkpoint format (dict,
key prefix), exported through the script's own entry point, and the ONNX file is then checked
*independently* of the exporter's built-in parity check: ONNX Runtime (CPU) against a torch
reference that applies the original input layer by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # torch is a dev-only dependency (DESIGN §4)
from torch import nn  # noqa: E402

from exporters import common, factory, mars, smoothing  # noqa: E402
from exporters.archs import (ACTIVITYNET_MEAN_255, CIFAR10_CLASSES, CIFAR10_MEAN,  # noqa: E402
                             CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD)
from exporters.archs.resnet import CifarResNet, ImageNetResNet50  # noqa: E402
from exporters.archs.resnext3d import ResNeXt3D  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-3  # same reasoning as exporters.common.FP32_RTOL


# ---- helpers --------------------------------------------------------------------------------------

def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random weights *and* non-trivial batch-norm statistics, so a wrong fold or a skipped layer
    shows up in the logits (fresh BN layers are the identity in eval mode)."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.2, 0.6)  # < 1 keeps deep residual stacks from exploding
            m.bias.data.normal_(0, 0.1)
            m.num_batches_tracked.fill_(n)
    return net.eval()


def save_checkpoint(path: Path, net: nn.Module, prefix: str, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 90, **extra, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}, path)
    return path


def run(script, argv: list[str], capsys) -> tuple[int, str, str]:
    code = common.run_cli(script.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def reference(net: nn.Module, x: np.ndarray, scale=1.0, mean=None, std=None) -> np.ndarray:
    """The original input layer (NormalizeLayer / InputCenterLayer / MARS' 0-255 minus mean), by hand."""
    t = torch.from_numpy(x) * scale
    shape = (1, -1) + (1,) * (t.ndim - 2)
    if mean is not None:
        t = t - torch.tensor(mean).view(shape)
    if std is not None:
        t = t / torch.tensor(std).view(shape)
    with torch.no_grad():
        return net(t).numpy()


def assert_parity(onnx_path: Path, net: nn.Module, shape, batch: int, rtol=RTOL, **pre) -> float:
    x = np.random.default_rng(7).random((batch, *shape), dtype=np.float32)
    want, got = reference(net, x, **pre), ort_logits(onnx_path, x)
    assert got.shape == want.shape and got.dtype == np.float32
    diff = float(np.abs(want - got).max())
    assert diff <= rtol * float(np.abs(want).max()), (diff, float(np.abs(want).max()))
    assert (want.argmax(1) == got.argmax(1)).all()
    return diff


def assert_self_contained(path: Path) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert not list(path.parent.glob(path.name + "*.data")) and not (path.parent / (path.name + ".data")).exists()
    onnx.checker.check_model(proto, full_check=True)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")  # dynamic batch axis


# ---- key layouts: the names the published checkpoints use -----------------------------------------

def test_state_dict_layouts_match_the_originals():
    """Key names and shapes stated in the original code (not derived from our own modules)."""
    r110 = CifarResNet(110).state_dict()
    assert len([k for k in r110 if k.startswith("layer3.") and k.endswith("conv1.weight")]) == 18
    assert list(r110["layer2.0.downsample.0.weight"].shape) == [32, 16, 1, 1]
    assert "layer1.0.downsample.0.weight" not in r110  # 16→16, stride 1: identity shortcut
    assert list(r110["layer3.17.bn2.running_var"].shape) == [64]
    assert list(r110["fc.weight"].shape) == [10, 64]
    r20 = CifarResNet(20).state_dict()
    assert {k.split(".")[1] for k in r20 if k.startswith("layer1.")} == {"0", "1", "2"}

    r50 = ImageNetResNet50().state_dict()
    assert len(r50) == 320  # torchvision resnet50: 161 parameters + 53 BN × 3 buffers
    assert sum(v.numel() for k, v in ImageNetResNet50().named_parameters()) == 25_557_032
    assert list(r50["layer1.0.downsample.0.weight"].shape) == [256, 64, 1, 1]
    assert list(r50["layer2.0.conv2.weight"].shape) == [128, 128, 3, 3]
    assert list(r50["layer4.2.conv3.weight"].shape) == [2048, 512, 1, 1]
    assert list(r50["fc.weight"].shape) == [1000, 2048]

    rx = ResNeXt3D(101).state_dict()
    assert list(rx["conv1.weight"].shape) == [64, 3, 7, 7, 7]
    assert list(rx["layer1.0.conv2.weight"].shape) == [128, 4, 3, 3, 3]  # 32 groups of 4
    assert list(rx["layer3.22.conv2.weight"].shape) == [512, 16, 3, 3, 3]  # 23 blocks in stage 3
    assert list(rx["layer4.0.downsample.0.weight"].shape) == [2048, 1024, 1, 1, 1]
    assert list(rx["fc.weight"].shape) == [101, 2048]


# ---- one test per architecture ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar20(tmp_path_factory):
    """cifar_resnet20 in Cohen's layout and path, exported once for the tests that need a model."""
    root = tmp_path_factory.mktemp("cohen")
    net = randomize(CifarResNet(20), seed=1)
    ckpt = save_checkpoint(root / "models/cifar10/resnet20/noise_0.25/checkpoint.pth.tar", net,
                           "1.", arch="cifar_resnet20")
    out = root / "cifar_resnet20.onnx"
    code = common.run_cli(smoothing.main, [str(ckpt), "-o", str(out), "--parity-batch", "5"])
    assert code == 0
    return net, ckpt, out


def test_cifar_resnet20(cifar20):
    net, ckpt, out = cifar20
    assert_self_contained(out)
    assert_parity(out, net, (3, 32, 32), batch=4, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert_parity(out, net, (3, 32, 32), batch=1, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    meta = metadata(out)
    assert meta["srtool.input_shape"] == "3,32,32"
    assert json.loads(meta["srtool.classes"]) == CIFAR10_CLASSES
    assert meta["srtool.num_classes"] == "10"
    assert float(meta["srtool.sigma"]) == 0.25
    assert meta["srtool.source_sha256"] == common.sha256_file(ckpt)
    assert meta["srtool.arch"] == "cifar_resnet20"
    assert meta["srtool.normalize"] == "normalize"  # Cohen's path → NormalizeLayer


def test_cifar_resnet110_smoothadv_center(tmp_path, capsys):
    """A SmoothAdv-style path selects the mean-only InputCenterLayer and says so."""
    net = randomize(CifarResNet(110), seed=2)
    ckpt = save_checkpoint(
        tmp_path / "pretrained_models/cifar10/PGD_2steps/eps_64/cifar10/resnet110/noise_0.12/"
                   "checkpoint.pth.tar", net, "1.", arch="cifar_resnet110")
    out = tmp_path / "r110.onnx"
    code, stdout, _ = run(smoothing, [ckpt, "-o", out, "--parity-batch", "2"], capsys)
    assert code == 0, stdout
    assert "normalization: center" in stdout and "parity float32" in stdout
    assert_self_contained(out)
    assert_parity(out, net, (3, 32, 32), batch=3, mean=CIFAR10_MEAN)
    meta = metadata(out)
    assert meta["srtool.normalize"] == "center" and float(meta["srtool.sigma"]) == 0.12


def test_imagenet32_resnet110(tmp_path, capsys):
    """Salman et al.'s ImageNet-32 network: CIFAR ResNet-110 with 1000 outputs, keys '1.*',
    NormalizeLayer with the CIFAR-10 statistics; no class names are known for it."""
    net = randomize(CifarResNet(110, num_classes=1000), seed=3)
    ckpt = save_checkpoint(tmp_path / "pretrained_models/imagenet32/PGD_2steps/eps_64/imagenet32/"
                                      "resnet110/noise_0.25/checkpoint.pth.tar",
                           net, "1.", arch="imagenet32_resnet110")
    out = tmp_path / "i32.onnx"
    code, stdout, err = run(smoothing, [ckpt, "-o", out, "--parity-batch", "2"], capsys)
    assert code == 0, err
    assert_self_contained(out)
    assert_parity(out, net, (3, 32, 32), batch=2, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    meta = metadata(out)
    assert meta["srtool.num_classes"] == "1000" and "srtool.classes" not in meta
    assert meta["srtool.normalize"] == "normalize"


def test_resnet50_imagenet(tmp_path, capsys):
    """torchvision ResNet-50 inside DataParallel inside Sequential: keys '1.module.*'."""
    net = randomize(ImageNetResNet50(), seed=4)
    ckpt = save_checkpoint(tmp_path / "models/imagenet/resnet50/noise_0.50/checkpoint.pth.tar",
                           net, "1.module.", arch="resnet50")
    out = tmp_path / "r50.onnx"
    code, stdout, err = run(smoothing, [ckpt, "-o", out, "--parity-batch", "1"], capsys)
    assert code == 0, err
    assert_self_contained(out)
    assert_parity(out, net, (3, 224, 224), batch=1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    meta = metadata(out)
    assert meta["srtool.input_shape"] == "3,224,224" and meta["srtool.num_classes"] == "1000"
    assert float(meta["srtool.sigma"]) == 0.5 and meta["srtool.arch"] == "resnet50"


def test_mars_resnext101(tmp_path, capsys):
    """The real 3-D ResNeXt-101, batch 1: [0,1] clips in, x255 and ActivityNet mean in the graph."""
    net = randomize(ResNeXt3D(101), seed=5)
    ckpt = save_checkpoint(tmp_path / "trained_models/UCF101/RGB_UCF101_16f.pth", net, "module.",
                           arch="resnext-101")
    names = [f"Action{i:03d}" for i in range(101)]
    class_ind = tmp_path / "classInd.txt"
    class_ind.write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    out = tmp_path / "mars.onnx"
    code, stdout, err = run(mars, [ckpt, "-o", out, "--classes", class_ind, "--parity-batch", "1"],
                            capsys)
    assert code == 0, err
    assert_self_contained(out)
    assert_parity(out, net, (3, 16, 112, 112), batch=1, scale=255.0, mean=ACTIVITYNET_MEAN_255)
    meta = metadata(out)
    assert meta["srtool.input_shape"] == "3,16,112,112"
    assert json.loads(meta["srtool.classes"]) == names and meta["srtool.num_classes"] == "101"
    assert meta["srtool.arch"] == "mars_resnext101"


FACTORY_SOURCE = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))

def make(width=8, classes=5):
    return Tiny(width, classes)
'''


def test_factory_user_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "usernets").mkdir()
    (tmp_path / "usernets" / "__init__.py").write_text("")
    (tmp_path / "usernets" / "tiny.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)  # `package.module:callable` resolves from the current directory
    monkeypatch.syspath_prepend(str(tmp_path))
    from usernets.tiny import make

    net = randomize(make(width=6, classes=4), seed=6)
    ckpt = save_checkpoint(tmp_path / "runs/noise_0.5/best.pt", net, "module.")  # DataParallel'd
    out = tmp_path / "tiny.onnx"
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    code, stdout, err = run(factory, [
        "--factory", "usernets.tiny:make", "--kwargs", '{"width": 6, "classes": 4}',
        "--checkpoint", ckpt, "--input-shape", "3,20,24", "--mean", "0.5,0.4,0.3",
        "--std", "0.25,0.2,0.3", "-o", out], capsys)
    assert code == 0, err
    assert_self_contained(out)
    assert_parity(out, net, (3, 20, 24), batch=3, mean=mean, std=std)
    meta = metadata(out)
    assert meta["srtool.input_shape"] == "3,20,24" and meta["srtool.num_classes"] == "4"
    assert meta["srtool.normalize"] == "normalize" and float(meta["srtool.sigma"]) == 0.5
    assert meta["srtool.arch"] == "usernets.tiny:make"


# ---- float16 ----------------------------------------------------------------------------------

def test_fp16_parity(cifar20, tmp_path, capsys):
    net, ckpt, _ = cifar20
    out = tmp_path / "r20_fp16.onnx"
    code, stdout, err = run(smoothing, [ckpt, "-o", out, "--fp16"], capsys)
    assert code == 0, err
    assert "soundness" in err  # DESIGN §3: fp16 can in principle break certificates
    assert "parity float16" in stdout and "-> ok" in stdout.split("parity float16")[1]
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in proto.graph.initializer if t.dims and np.prod(t.dims) > 8]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert metadata(out)["srtool.precision"] == "float16"
    assert_self_contained(out)
    assert_parity(out, net, (3, 32, 32), batch=4, rtol=common.FP16_RTOL,
                  mean=CIFAR10_MEAN, std=CIFAR10_STD)


# ---- errors: one line, exit code 2 --------------------------------------------------------------

def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err  # warnings may precede it
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_checkpoint_that_does_not_fit_the_architecture(cifar20, tmp_path, capsys):
    _, ckpt, _ = cifar20
    # ResNet-20 weights claimed to be ResNet-110: blocks 3..17 of every stage are missing.
    code, _, err = run(smoothing, [ckpt, "--arch", "cifar_resnet110", "-o", tmp_path / "x.onnx"],
                       capsys)
    one_line_error(code, err, "do not fit cifar_resnet110", "missing", "1.layer1.3.", "0 unexpected")
    assert not (tmp_path / "x.onnx").exists()
    # Renamed keys (e.g. a different codebase's naming) are listed as unexpected.
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    renamed = {k.replace("layer", "stage"): v for k, v in state.items()}
    bad = tmp_path / "renamed.pth"
    torch.save({"arch": "cifar_resnet20", "state_dict": renamed}, bad)
    code, _, err = run(smoothing, [bad, "-o", tmp_path / "x.onnx"], capsys)
    one_line_error(code, err, "do not fit cifar_resnet20", "unexpected", "stage1.0.conv1.weight")


def test_unknown_arch(tmp_path, capsys):
    bad = tmp_path / "vgg.pth.tar"
    torch.save({"arch": "vgg16", "state_dict": {"1.features.0.weight": torch.zeros(1)}}, bad)
    code, _, err = run(smoothing, [bad], capsys)
    one_line_error(code, err, "unknown architecture 'vgg16'", "cifar_resnet110")


def test_not_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    code, _, err = run(smoothing, [text], capsys)
    one_line_error(code, err, "is not a PyTorch checkpoint")
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    code, _, err = run(smoothing, [other], capsys)
    one_line_error(code, err, "is not a model checkpoint")
    code, _, err = run(mars, [tmp_path / "missing.pth"], capsys)
    one_line_error(code, err, "no such checkpoint file")
    # A real checkpoint that pickles more than tensors is refused by the safe load, with a way out.
    pickled = tmp_path / "namespace.pth"
    torch.save({"args": argparse.Namespace(lr=0.1), "arch": "cifar_resnet20",
                "state_dict": {"1.fc.bias": torch.zeros(10)}}, pickled)
    code, _, err = run(smoothing, [pickled], capsys)
    one_line_error(code, err, "argparse.Namespace", "--trust-checkpoint")


def test_cli_errors_exit_2_without_traceback(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "exporters.smoothing", str(text)], cwd=REPO,
                          capture_output=True, text=True)
    one_line_error(proc.returncode, proc.stderr, "is not a PyTorch checkpoint")


def test_parity_failure_exits_nonzero_and_writes_nothing(cifar20, tmp_path, capsys, monkeypatch):
    _, ckpt, _ = cifar20
    real = common.onnx_logits
    monkeypatch.setattr(common, "onnx_logits", lambda proto, x: real(proto, x) + 0.05)
    out = tmp_path / "broken.onnx"
    code, stdout, err = run(smoothing, [ckpt, "-o", out], capsys)
    assert code == 1 and "FAILED" in stdout and "parity check failed" in err
    assert not out.exists()


# ---- the pieces that decide metadata and normalization -------------------------------------------

def test_normalization_hints_and_warning(capsys):
    cohen = Path("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar")
    salman = Path("smoothing-adversarial/pretrained_models/imagenet/PGD_1step/eps_512/"
                  "resnet50/noise_0.25/checkpoint.pth.tar")
    finetuned = Path("pretrained_models/cifar10/finetune_cifar_from_imagenetPGD2steps/"
                     "PGD_10steps_30epochs_multinoise/2-multitrain/eps_64/cifar10/resnet110/"
                     "noise_0.12/checkpoint.pth.tar")
    assert smoothing.path_hint(cohen)[0] == "normalize"
    assert smoothing.path_hint(salman)[0] == "center"
    assert smoothing.path_hint(finetuned)[0] == "normalize"
    assert smoothing.path_hint(Path("ckpt.pth"))[0] is None

    assert smoothing.choose_normalization("normalize", salman) == "normalize"
    captured = capsys.readouterr()
    assert "normalization: normalize" in captured.out
    assert "warning:" in captured.err and "--normalize center" in captured.err
    assert smoothing.choose_normalization("center", cohen) == "center"
    assert "--normalize normalize" in capsys.readouterr().err
    assert smoothing.choose_normalization("auto", salman) == "center"
    assert smoothing.choose_normalization("auto", Path("ckpt.pth")) == "normalize"
    assert "--normalize center" in capsys.readouterr().out  # the no-hint default names the pitfall


def test_sigma_and_class_names(tmp_path):
    assert common.parse_sigma("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar") == 0.25
    assert common.parse_sigma("x/noise_1.00/checkpoint.pth.tar") == 1.0
    assert common.parse_sigma("RGB_UCF101_16f.pth") is None
    names = tmp_path / "classes.json"
    names.write_text('["a", "b"]')
    assert common.read_classes(names) == ["a", "b"]
    ind = tmp_path / "classInd.txt"
    ind.write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n\n")
    assert common.read_classes(ind) == ["ApplyEyeMakeup", "ApplyLipstick"]


def test_help_as_module_and_as_script():
    for name in ("smoothing", "mars", "factory"):
        proc = subprocess.run([sys.executable, f"exporters/{name}.py", "--help"], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "exporters.mars", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: python -m exporters.mars" in proc.stdout


# ---- end to end: srtool certifies an exported model ----------------------------------------------

def test_srtool_certify_accepts_exported_cifar_model(cifar20, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _, _, model = cifar20
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((2, 3, 32, 32), dtype=np.float32), y=np.array([3, 8]))
    out = tmp_path / "out.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "srtool", "certify", "--model", str(model), "--images", str(data),
         "--sigma", "0.25", "--n0", "8", "--n", "16", "--batch", "16", "--out", str(out),
         "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pq.read_table(out).num_rows == 2
