"""exporters.diffusion, exporters.archs.unet and exporters.factory --kind denoiser|diffusion.

No real checkpoint can be downloaded here, so: random-weight checkpoints in both published key
layouts (improved-diffusion: Downsample/Upsample, heads by count; guided-diffusion ADM: resampling
residual blocks, heads by width) at tiny widths are exported through the command line and checked
against torch on srtool's one-shot inputs; the FULL published configurations are built on torch's
meta device (no memory) and checked against facts read from the original code (parameter count,
block count, key names and shapes). The schedules are checked against their closed forms.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # torch is a dev-only dependency (DESIGN §4)
from torch import nn  # noqa: E402

from exporters import common, diffusion, factory  # noqa: E402
from exporters.archs.unet import AttentionBlock, UNetModel, attention_rates  # noqa: E402
from exporters.diffusion import PRESETS, DiffusionSpec, named_alphas_cumprod  # noqa: E402

RTOL = 1e-3  # exporters.common.FP32_RTOL


def run(script, argv, capsys):
    code = common.run_cli(script.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], errors[0]


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere, GroupNorm affine included (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
    return net.eval()


# ---- schedules and t* -------------------------------------------------------------------------

def test_linear_schedule_and_one_shot_steps():
    spec = DiffusionSpec("linear", 1000)
    abar = spec.alphas_cumprod()
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(abar, np.cumprod(1 - betas), rtol=0, atol=1e-15)
    # Carlini et al.'s DDS code: t* = 145, 259, 396 for sigma = 0.25, 0.5, 1.0.
    assert [spec.one_shot_step(s) for s in (0.25, 0.5, 1.0)] == [145, 259, 396]
    t = spec.one_shot_step(0.5)
    ratio = np.sqrt((1 - abar) / abar)
    assert ratio[t] >= 1.0 > ratio[t - 1]
    # Other step counts scale the betas by 1000/T: 2.5e-5 .. 0.005 for T = 4000.
    abar4k = named_alphas_cumprod("linear", 4000)
    betas4k = 1 - abar4k[1:] / abar4k[:-1]
    assert 1 - abar4k[0] == pytest.approx(2.5e-5, rel=1e-9) and betas4k[-1] == pytest.approx(0.005, rel=1e-9)


def test_cosine_schedule_closed_form():
    steps = 4000
    abar = named_alphas_cumprod("cosine", steps)

    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    # Before the 0.999 clip the product telescopes: ᾱ_t = f((t+1)/T) / f(0).
    for t in (0, 1, 100, 1158, 2000, 3900):
        assert abar[t] == pytest.approx(f((t + 1) / steps) / f(0), rel=1e-9)
    spec = DiffusionSpec("cosine", steps, rescale_timesteps=True, learn_sigma=True)
    t = spec.one_shot_step(0.25)
    assert np.sqrt((1 - abar[t]) / abar[t]) >= 0.5 > np.sqrt((1 - abar[t - 1]) / abar[t - 1])
    assert spec.model_timestep(t) == pytest.approx(t * 1000 / 4000)
    with pytest.raises(common.ExportError, match="beyond"):
        spec.one_shot_step(1e6)


# ---- the full published configurations, without allocating them ----------------------------------

def meta_state_dict(preset: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = UNetModel(**PRESETS[preset].unet)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_adm_imagenet256_uncond_layout():
    keys = meta_state_dict("adm-imagenet256-uncond")
    # guided-diffusion's UNetModel with the README's flags: 552,814,086 parameters, 18 input and
    # 18 output blocks (1 + 6 levels x 2 res blocks + 5 resampling blocks).
    assert sum(math.prod(s) for s in keys.values()) == 552_814_086
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("input_blocks.")) == 17
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("output_blocks.")) == 17
    assert keys["input_blocks.0.0.weight"] == (256, 3, 3, 3)
    assert keys["time_embed.0.weight"] == (1024, 256)
    # resblock_updown: the first downsampling block is a residual block, no strided conv "op".
    assert keys["input_blocks.3.0.in_layers.2.weight"] == (256, 256, 3, 3)
    assert not any(".op." in k for k in keys) and not any(k.endswith("conv.weight") for k in keys)
    # Attention at 32, 16, 8 pixels (rates 8, 16, 32), 64 channels a head: level 3 has 512 channels.
    assert keys["input_blocks.10.1.qkv.weight"] == (1536, 512, 1)
    assert keys["middle_block.1.qkv.weight"] == (3072, 1024, 1)
    assert "input_blocks.7.1.qkv.weight" not in keys  # level 2 (64x64) has none
    assert keys["out.2.weight"] == (6, 256, 3, 3)     # learn_sigma: 2C outputs
    assert keys["input_blocks.1.0.emb_layers.1.weight"] == (512, 1024)  # scale and shift


def test_iddpm_cifar10_uncond_layout():
    keys = meta_state_dict("iddpm-cifar10-uncond")
    # improved-diffusion's UNetModel, 128 channels, mult (1,2,2,2), 3 res blocks: 52,546,438
    # parameters, 16 input and 16 output blocks.
    assert sum(math.prod(s) for s in keys.values()) == 52_546_438
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("input_blocks.")) == 15
    assert keys["input_blocks.4.0.op.weight"] == (128, 128, 3, 3)    # Downsample with conv
    assert keys["output_blocks.3.1.conv.weight"] == (256, 256, 3, 3)  # Upsample with conv
    assert keys["input_blocks.5.1.qkv.weight"] == (768, 256, 1)      # attention at 16x16
    assert "input_blocks.1.1.qkv.weight" not in keys                 # none at 32x32
    assert keys["out.2.weight"] == (6, 128, 3, 3)


def test_attention_orders_against_a_direct_computation():
    """Legacy order (improved-diffusion, guided default) reads the 3C qkv channels head by head,
    [q k v] per head; the new order reads [all q | all k | all v]."""
    torch.manual_seed(0)
    c, heads, hw = 8, 2, 4
    x = torch.randn(1, c, 2, 2)
    for new_order in (False, True):
        block = randomize(AttentionBlock(c, heads, -1, new_order, num_groups=4), 3)
        with torch.no_grad():
            got = block(x)
            qkv = block.qkv(block.norm(x.reshape(1, c, hw)))[0].numpy()   # 3C x T
        ch = c // heads
        outputs = []
        for h in range(heads):
            if new_order:
                q, k, v = (qkv[part * c + h * ch: part * c + (h + 1) * ch] for part in range(3))
            else:
                q, k, v = (qkv[h * 3 * ch + part * ch: h * 3 * ch + (part + 1) * ch] for part in range(3))
            logits = q.T @ k / math.sqrt(ch)                     # T x T
            weights = np.exp(logits - logits.max(1, keepdims=True))
            weights /= weights.sum(1, keepdims=True)
            outputs.append(v @ weights.T)                        # ch x T
        h_all = torch.from_numpy(np.concatenate(outputs)).float()[None]
        want = x.reshape(1, c, hw) + block.proj_out(h_all)
        assert torch.allclose(got.reshape(1, c, hw), want, atol=1e-5)


# ---- tiny checkpoints in both layouts, through the command line --------------------------------

TINY = {  # preset, flags, the layout's distinguishing keys
    "improved": ("iddpm-cifar10-uncond",
                 ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1",
                  "--channel_mult", "1,2", "--attention_resolutions", "4", "--num_heads", "2"],
                 ["input_blocks.2.0.op.weight", "output_blocks.1.2.conv.weight"]),
    "guided": ("adm-imagenet256-uncond",
               ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1",
                "--channel_mult", "1,2", "--attention_resolutions", "8,4",
                "--num_head_channels", "16"],
               ["input_blocks.2.0.in_layers.2.weight", "output_blocks.1.2.out_layers.3.weight"]),
}


def tiny_unet(layout: str) -> tuple[UNetModel, DiffusionSpec, list[str]]:
    preset, flags, _ = TINY[layout]
    args = diffusion.build_parser().parse_args(["x.pt", "--preset", preset, *flags])
    unet, spec = diffusion.configure(args)
    return UNetModel(**unet), spec, flags


@pytest.mark.parametrize("layout", sorted(TINY))
def test_export_tiny_checkpoint(layout, tmp_path, capsys):
    net, spec, flags = tiny_unet(layout)
    randomize(net, seed=1)
    state = net.state_dict()
    for key in TINY[layout][2]:
        assert key in state
    # Published checkpoints are bare state dicts, ADM's in float16: stored so here too.
    ckpt = tmp_path / "model.pt"
    torch.save({k: v.half() for k, v in state.items()}, ckpt)
    out = tmp_path / "unet.onnx"
    code, stdout, err = run(diffusion, [ckpt, "--preset", TINY[layout][0], *flags, "-o", out], capsys)
    assert code == 0, err
    assert stdout.count("-> ok") == len(diffusion.PARITY_SIGMAS) and "strict)" in stdout

    meta = metadata(out)
    assert meta["srtool.kind"] == "diffusion" and meta["srtool.input_shape"] == "3,8,8"
    described = json.loads(meta["srtool.diffusion"])
    assert described == {"schedule": spec.schedule, "steps": spec.steps,
                         "rescale_timesteps": spec.rescale_timesteps, "learn_sigma": True,
                         "data_range": [-1.0, 1.0]}
    proto = onnx.load(str(out))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in proto.graph.input}
    assert ranks == {"x": 4, "t": 1}

    # Independently of the built-in check: a fresh network with the float16-rounded weights, on
    # srtool's one-shot input at sigma 0.5, a batch size other than the traced one.
    reference = UNetModel(**{**diffusion.configure(diffusion.build_parser().parse_args(
        ["x.pt", "--preset", TINY[layout][0], *flags]))[0]}).eval()
    reference.load_state_dict({k: v.half().float() for k, v in state.items()})
    rng = np.random.default_rng(5)
    t = spec.one_shot_step(0.5)
    abar = spec.alphas_cumprod()[t]
    noisy = rng.random((3, 3, 8, 8)) + 0.5 * rng.standard_normal((3, 3, 8, 8))
    x_t = (np.sqrt(abar) * (2 * noisy - 1)).astype(np.float32)
    steps = np.full(3, spec.model_timestep(t), np.float32)
    got = ort_run(out, {"x": x_t, "t": steps})
    with torch.no_grad():
        want = reference(torch.from_numpy(x_t), torch.from_numpy(steps)).numpy()
    assert got.shape == (3, 6, 8, 8)
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max()
    # The timestep matters: another t gives another output.
    other = ort_run(out, {"x": x_t, "t": steps + 50})
    assert np.abs(other - got).max() > 100 * RTOL * np.abs(want).max()


def test_large_model_gets_its_weights_beside_it(tmp_path, monkeypatch, capsys):
    """Above protobuf's limit (ADM in float32 is 2.2 GB) the weights go to <name>.onnx.data; the
    limit is lowered here so that a toy model takes that path."""
    monkeypatch.setattr(diffusion, "PROTOBUF_LIMIT", 2 ** 26 + 1)
    net = randomize(nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.Conv2d(64, 1, 3, padding=1)), 4)
    out = tmp_path / "big.onnx"
    job = diffusion.denoiser_job(net, (1, 8, 8), {}, sigmas=(0.25,))
    summary = diffusion.export_and_check(job, out)
    assert summary["ok"] and summary["external_data"] == ["big.onnx.data"]
    assert "keep the files together" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    proto = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(out, {"input": x}) - want).max() <= RTOL * np.abs(want).max()


def test_checkpoint_of_the_other_layout_is_refused(tmp_path, capsys):
    net, _, _ = tiny_unet("improved")
    ckpt = tmp_path / "improved.pt"
    torch.save(net.state_dict(), ckpt)
    code, _, err = run(diffusion, [ckpt, "--preset", "adm-imagenet256-uncond", *TINY["guided"][1],
                                   "-o", tmp_path / "x.onnx"], capsys)
    one_line_error(code, err, "do not fit the UNet", "missing", "unexpected")
    assert not (tmp_path / "x.onnx").exists()


def test_bad_flags_and_files_are_one_line_errors(tmp_path, capsys):
    net, _, flags = tiny_unet("improved")
    ckpt = tmp_path / "m.pt"
    torch.save(net.state_dict(), ckpt)
    preset = ["--preset", "iddpm-cifar10-uncond"]
    code, _, err = run(diffusion, [ckpt, *preset, *flags, "--noise_schedule", "quadratic"], capsys)
    one_line_error(code, err, "unknown noise schedule 'quadratic'")
    code, _, err = run(diffusion, [ckpt, *preset, *flags, "--num_head_channels", "24"], capsys)
    one_line_error(code, err, "not divisible by num_head_channels 24")
    code, _, err = run(diffusion, [tmp_path / "missing.pt", *preset], capsys)
    one_line_error(code, err, "no such checkpoint")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(diffusion, [tmp_path / "junk.pt", *preset], capsys)
    one_line_error(code, err, "not a PyTorch checkpoint")


# ---- factory: any denoiser or ε model ---------------------------------------------------------

FACTORY_SOURCE = '''
import torch
from torch import nn

class NonBlind(nn.Module):
    """A toy non-blind denoiser: x - level * conv(x), noise level (N,1,1,1)."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x, level):
        return x - level * self.conv(x)

class Eps(nn.Module):
    """A toy epsilon model: conv(x) scaled by the timestep."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x, t):
        return self.conv(x) * (1 + t / 1000)[:, None, None, None]

class Shrinks(nn.Module):
    def forward(self, x):
        return x[:, :, 1:, 1:]

class NoTime(nn.Module):
    def forward(self, x):
        return x

class Blind(nn.Module):
    """A toy fully convolutional blind denoiser."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x):
        return x - 0.1 * self.conv(x)

class Pinned(nn.Module):
    """A blind denoiser that only works at its trained size (a linear layer over all pixels)."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)
    def forward(self, x):
        return self.fc(x.flatten(1)).view(x.shape)
'''


def test_fully_convolutional_denoiser_has_open_height_and_width(toys, tmp_path, capsys):
    out = tmp_path / "blind.onnx"
    code, _, err = run(factory, ["--kind", "denoiser", "--factory", f"{toys}:Blind", "--input-shape", "1,8,8",
                                 "-o", out], capsys)
    assert code == 0, err
    proto = onnx.load(str(out))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 1 and not any(d.HasField("dim_value") for d in dims[2:])
    meta = {p.key: p.value for p in proto.metadata_props}
    # no file path in srtool.arch, and no srtool.input_shape pinning the open sizes
    assert meta["srtool.arch"] == "toys.py:Blind" and "srtool.input_shape" not in meta
    x = np.random.default_rng(0).random((2, 1, 20, 12), dtype=np.float32)
    assert ort_run(out, {"input": x}).shape == (2, 1, 20, 12)
    from srtool.denoise import load_denoiser
    assert load_denoiser(out, "denoiser").input_shape == (1, None, None)

    pinned = tmp_path / "pinned.onnx"
    code, _, err = run(factory, ["--kind", "denoiser", "--factory", f"{toys}:Pinned", "--input-shape", "1,8,8",
                                 "-o", pinned], capsys)
    assert code == 0, err
    proto = onnx.load(str(pinned))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 8, 8]
    assert {p.key: p.value for p in proto.metadata_props}["srtool.input_shape"] == "1,8,8"


@pytest.fixture
def toys(tmp_path):
    path = tmp_path / "toys.py"
    path.write_text(FACTORY_SOURCE)
    return path


def test_factory_non_blind_denoiser(toys, tmp_path, capsys):
    net = randomize(common.import_factory(f"{toys}:NonBlind")(), seed=2)
    ckpt = tmp_path / "den.pt"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "den.onnx"
    code, stdout, err = run(factory, [
        "--kind", "denoiser", "--factory", f"{toys}:NonBlind", "--checkpoint", ckpt,
        "--input-shape", "1,12,12", "--noise-level-shape", "1,1,1", "--sigma-scale", "255",
        "--sigma-range", "0,0.3", "-o", out], capsys)
    assert code == 0, err
    # Only the sigmas inside the declared range are checked, on noisy (unclipped) inputs.
    assert stdout.count("-> ok") == 2 and "sigma 0.12" in stdout and "sigma 0.25" in stdout
    meta = metadata(out)
    assert meta["srtool.kind"] == "denoiser" and meta["srtool.input_shape"] == "1,12,12"
    assert json.loads(meta["srtool.denoiser"]) == {"sigma_scale": 255.0, "sigma_range": [0.0, 0.3]}
    rng = np.random.default_rng(3)
    x = (rng.random((5, 1, 12, 12)) + 0.25 * rng.standard_normal((5, 1, 12, 12))).astype(np.float32)
    level = np.full((5, 1, 1, 1), 0.25 * 255, np.float32)
    got = ort_run(out, {"input": x, "noise_level": level})
    with torch.no_grad():
        want = net(torch.from_numpy(x), torch.from_numpy(level)).numpy()
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def test_factory_eps_model_and_refusals(toys, tmp_path, capsys):
    out = tmp_path / "eps.onnx"
    base = ["--kind", "diffusion", "--input-shape", "1,12,12", "-o", out]
    code, stdout, err = run(factory, [*base, "--factory", f"{toys}:Eps", "--schedule", "linear",
                                      "--steps", "1000"], capsys)
    assert code == 0, err
    assert "t* 145" in stdout and "t* 259" in stdout
    meta = metadata(out)
    assert meta["srtool.kind"] == "diffusion"
    assert json.loads(meta["srtool.diffusion"])["schedule"] == "linear"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [len(i.shape) for i in session.get_inputs()] == [4, 1]

    code, _, err = run(factory, [*base, "--factory", f"{toys}:Eps"], capsys)
    one_line_error(code, err, "needs the noise schedule")
    code, _, err = run(factory, [*base, "--factory", f"{toys}:NoTime", "--schedule", "linear",
                                 "--steps", "1000"], capsys)
    one_line_error(code, err, "fails on inputs")
    code, _, err = run(factory, ["--kind", "denoiser", "--factory", f"{toys}:Shrinks",
                                 "--input-shape", "1,12,12", "-o", out], capsys)
    one_line_error(code, err, "output must have the input's shape")
    code, _, err = run(factory, ["--kind", "denoiser", "--factory", f"{toys}:Shrinks",
                                 "--input-shape", "1,12,12", "--mean", "0.5"], capsys)
    one_line_error(code, err, "--mean/--std/--scale are for classifiers")
    bad = tmp_path / "abar.json"
    bad.write_text("[0.5, 0.9]")
    code, _, err = run(factory, [*base, "--factory", f"{toys}:Eps", "--alphas-cumprod", bad], capsys)
    one_line_error(code, err, "decreasing")


def test_parity_failure_exits_1_and_writes_nothing(toys, tmp_path, capsys, monkeypatch):
    def broken(label, reference, got):   # as if ONNX Runtime computed something else
        return diffusion.Parity(label, 1.0, float(np.abs(reference).max()), 1e-3)
    monkeypatch.setattr(diffusion, "compare", broken)
    out = tmp_path / "eps.onnx"
    args = ["--kind", "diffusion", "--factory", f"{toys}:Eps", "--input-shape", "1,12,12",
            "--schedule", "cosine", "--steps", "100", "-o", out]
    code, stdout, err = run(factory, args, capsys)
    assert code == 1 and "FAILED" in stdout and "not written" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "toys.py"]   # no file, no staging folder left
    code, _, err = run(factory, [*args, "--force"], capsys)
    assert code == 1 and out.exists()


def test_attention_rates():
    assert attention_rates(256, "32,16,8") == (8, 16, 32)
    assert attention_rates(32, [16, 8]) == (2, 4)


def test_fp16_export_reads_external_weights_and_checks_parity(tmp_path, monkeypatch, capsys):
    """--fp16 writes <out>_fp16.onnx beside the float32 file, its weights read from the float32
    file's external data (the limit is lowered so that a tiny ADM-layout UNet takes the path the real
    2.2 GB one does), float16 inside, float32 at the boundary, close to PyTorch on a fresh input."""
    from exporters.common import FP16_RTOL

    monkeypatch.setattr(diffusion, "PROTOBUF_LIMIT", 2 ** 26 + 1)
    net, spec, flags = tiny_unet("guided")
    randomize(net, seed=2)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "unet.onnx"
    code, stdout, err = run(diffusion, [ckpt, "--preset", "adm-imagenet256-uncond", *flags, "-o", out,
                                        "--parity-sigmas", "0.5", "--fp16"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "unet.onnx", "unet.onnx.data",
                                                         "unet_fp16.onnx"]
    assert stdout.count("parity fp16") == 1 and stdout.count("-> ok") == 2
    half = onnx.load(str(tmp_path / "unet_fp16.onnx"))
    assert metadata(tmp_path / "unet_fp16.onnx")["srtool.precision"] == "float16"
    assert metadata(tmp_path / "unet_fp16.onnx")["srtool.kind"] == "diffusion"
    weights = [t for t in half.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
               and np.prod(t.dims) > 16]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [onnx.TensorProto.FLOAT] * 2
    rng = np.random.default_rng(7)
    x_t = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    steps = np.full(2, spec.model_timestep(spec.one_shot_step(0.25)), np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x_t), torch.from_numpy(steps)).numpy()
    got = ort_run(tmp_path / "unet_fp16.onnx", {"x": x_t, "t": steps})
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= FP16_RTOL * np.abs(want).max()
    assert np.abs(got - want).max() > 0  # float16 really rounds
