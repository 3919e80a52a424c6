"""srtool's CUDA path on a GPU, measured in one run that fits one device call (issue 15, docs/gpu.md).

    python benchmarks/gpu.py                        # on a GPU machine: everything that fits --budget
    python benchmarks/gpu.py --export-only          # export the models into .gpu/models (needs torch)
    python benchmarks/gpu.py --dry-run --device cpu --budget 240   # the same steps, small, on a CPU

In order of priority (a step that would overrun --budget is recorded as skipped, one that fails is
recorded with its error, and the run goes on):

1. `pytest tests/test_cuda.py` (IO binding and device noise give valid tables, CUDA votes = CPU votes,
   also through the diffusion stage);
2. `srtool bench --json` (a subprocess per configuration) on Cohen et al.'s CIFAR ResNet-110 and an
   ImageNet ResNet-50, random weights, exported here by `exporters` (fp32, and fp16 converted by
   exporters.fp16): RS and Smooth-Mean k=4 (CIFAR 32→36, four 32×32 crops; ImageNet 256, four
   224×224 crops), host noise and `--noise device`, fp32 and fp16, and a batch sweep;
   and the composed graph of one-shot diffusion denoising: guided-diffusion's ImageNet 256×256
   unconditional UNet (random weights, fp32 and fp16) in front of the ResNet-50 (`bench
   --diffusion`: bare UNet, bare classifier, pipeline), and one `certify --diffusion --sequential`
   at N = 10,000 against the 470 s per input the DDS authors report on an A100;
   the many-inputs-per-call scheduler: a sequential grid run against a fixed run at the same batch
   (copies per call from the results metadata's `calls` and `copies`, throughput);
3. a PyTorch sampler written like Cohen et al.'s `Smooth._sample_noise` (repeat, `torch.randn_like`
   on the GPU, forward, argmax, counts on the host) on the very torch module the ONNX file was
   exported from, swept over batches, at its best batch;
4. GPU memory: `torch.cuda.max_memory_allocated` of the sampler, and the peak `nvidia-smi` reports
   while `srtool certify` runs one input at n = 1,000 and at n = 10,000 (it must not grow with n);
5. seconds per input at n0 = 100, n = 100,000: projected from the bench rates and measured with
   `srtool certify` on one ImageNet input (and with `--sequential` where srtool has it).

Everything goes to --out (default $OUT, else ./gpu-results) as gpu-results.json and gpu-results.md,
rewritten after every step, so a run killed at its time limit still leaves what it measured.
`--dry-run` runs the same steps with small settings: CIFAR ResNet-20 for ResNet-110, for
ResNet-50 a small stand-in network with the same input (3×224×224) and output (1000 classes), and
for the ADM UNet one with the same flags at 64×64 and 8 channels.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_N0, PAPER_N = 100, 100_000
SIGMA = 0.25
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def last_line(text: str) -> str:
    """The last non-empty line: srtool's own 'error: …' comes after ONNX Runtime's log lines."""
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


TARGETS = {"ratio": 0.9, "vs_torch": 1.0, "fp16": 2.0, "resnet50_s_per_input": 15.0,
           "dds_s_per_input": 470.0,   # DDS on an A100 (Carlini et al.), ImageNet, N = 10,000
           "scheduler_fill": 0.9}      # copies per call of a sequential grid run / --batch
LOWER_IS_BETTER = {"resnet50_s_per_input", "dds_s_per_input"}


@dataclass
class Case:
    """One model and its two plans: RS, and the paper's Smooth-Mean k=4 plan."""
    key: str                   # "cifar" or "imagenet"
    arch: str                  # exporters.archs.SMOOTHING_ARCHS name, or "tiny_imagenet" (dry run)
    shape: tuple[int, int, int]
    k4_args: list[str]         # srtool bench/certify options of the k=4 plan
    k4_input: int              # edge of the image the k=4 plan starts from (before any --resize)
    k4_resized: int            # edge after the in-graph resize (= k4_input where there is none)
    batch: int                 # RS copies per call; k=4 runs batch // 4 (the same forward passes)
    sweep: list[str]           # further RS batches
    torch_batches: list[int]   # PyTorch sampler sweep (RS; k=4 uses batch // 4)
    classes: int = 10

    def plan_args(self, plan: str) -> list[str]:
        return [] if plan == "RS" else list(self.k4_args)

    def plan_batch(self, plan: str, batch) -> str:
        if str(batch) == "auto":
            return "auto"
        return str(int(batch) if plan == "RS" else max(1, int(batch) // 4))


def cases(dry_run: bool) -> list[Case]:
    cifar_k4 = ["--resize", "36", "--patch-size", "32", "--patches", "4"]
    imagenet_k4 = ["--image-size", "256", "--patch-size", "224", "--patches", "4"]
    if dry_run:
        return [Case("imagenet", "tiny_imagenet", (3, 224, 224), imagenet_k4, 256, 256, 4, ["8"], [4, 8], 1000),
                Case("cifar", "cifar_resnet20", (3, 32, 32), cifar_k4, 32, 36, 8, ["16"], [4, 8, 16])]
    return [Case("imagenet", "resnet50", (3, 224, 224), imagenet_k4, 256, 256, 128, ["64", "256", "auto"],
                 [64, 128, 256, 512], 1000),
            Case("cifar", "cifar_resnet110", (3, 32, 32), cifar_k4, 32, 36, 1000, ["250", "2000"],
                 [250, 500, 1000, 2000])]


# ---- the record -------------------------------------------------------------------------------

@dataclass
class Record:
    out: Path
    budget: float
    settings: dict
    start: float = field(default_factory=time.monotonic)
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = {"settings": self.settings, "env": {}, "exports": {}, "tests": None, "bench": [],
                     "torch": [], "memory": [], "certify": [], "dds": [], "scheduler": [], "errors": [], "skipped": [], "targets": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    def attempt(self, name: str, function, need: float = 10.0):
        """Run one guarded step: skipped where less than `need` seconds are left, errors recorded."""
        if self.left() < need:
            self.data["skipped"].append(name)
            self.say(f"skip {name}: {self.left():.0f} s of the budget left, it needs about {need:.0f}")
            self.save()
            return None
        began = time.monotonic()
        try:
            result = function()
        except Exception as error:
            text = ANSI.sub("", f"{type(error).__name__}: {error}".strip())
            self.data["errors"].append({"step": name, "error": text[-2000:],
                                        "where": traceback.format_exc(limit=3)[-1500:]})
            self.say(f"FAILED {name} ({time.monotonic() - began:.1f} s): {last_line(text)[:300]}")
            result = None
        self.save()
        return result

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.data["targets"] = evaluate_targets(self.data)
        for name, text in (("gpu-results.json", json.dumps(self.data, indent=1, default=str)),
                           ("gpu-results.md", markdown(self.data))):
            temporary = self.out / f".{name}.tmp"
            temporary.write_text(text)
            temporary.replace(self.out / name)


# ---- environment ------------------------------------------------------------------------------

def cuda_library_dirs() -> list[str]:
    """Folders of the CUDA libraries pip installed beside torch (nvidia/cu13/lib, nvidia/cudnn/lib…).

    onnxruntime-gpu's CUDA provider links against libcudart.so.13 and libcublas.so.13 and loads
    cuDNN 9; the machine's torch brings them as nvidia-* wheels, found by no one without this.
    """
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    found = []
    for base in (spec.submodule_search_locations or []) if spec else []:
        for folder in sorted(glob.glob(os.path.join(base, "*", "lib")) + glob.glob(os.path.join(base, "*", "lib64"))):
            if glob.glob(os.path.join(folder, "lib*.so*")):
                found.append(folder)
    return found


def use_cuda_libraries() -> list[str]:
    """Put those folders on LD_LIBRARY_PATH for every subprocess (srtool, pytest)."""
    folders = cuda_library_dirs()
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    added = [f for f in folders if f not in current]
    if added:
        os.environ["LD_LIBRARY_PATH"] = ":".join(added + current)
    return added


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(ROOT)])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_process(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=max(1.0, timeout), **kwargs)


CUDA_PROBE = r"""
import sys, onnxruntime as ort
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
o = ort.SessionOptions(); o.log_severity_level = 2
s = ort.InferenceSession(m.SerializeToString(), o, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("session providers:", s.get_providers())
"""


def environment(record: Record, device: str, added_libs: list[str], probe_cuda: bool = True) -> None:
    env = record.data["env"]
    env.update({"python": sys.version.split()[0], "platform": platform.platform(), "cpu_cores": os.cpu_count(),
                "ld_library_path_added": added_libs, "device": device})
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    try:
        import onnxruntime as ort
        env.update({"onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
                    "onnxruntime_providers": ort.get_available_providers()})
    except Exception as error:
        env["onnxruntime"] = f"import failed: {error}"
    try:
        import torch
        env.update({"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                    "torch_gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
    except Exception as error:
        env["torch"] = f"import failed: {error}"
    try:
        from srtool.engine import gpu_present
        env["srtool_gpu_present"] = gpu_present()
    except Exception as error:
        env["srtool_gpu_present"] = f"import failed: {error}"
    env["decord_installed"] = importlib.util.find_spec("decord") is not None
    with contextlib.suppress(Exception):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    env["nvidia_library_dirs"] = cuda_library_dirs()
    if device == "cuda" and probe_cuda:
        probe = run_process([sys.executable, "-c", CUDA_PROBE], 120)
        env["cuda_session_probe"] = ANSI.sub("", probe.stdout.strip() + " " + probe.stderr.strip()[-1500:]).strip()
    record.say(f"environment: {json.dumps(env, default=str)}")


# ---- models -------------------------------------------------------------------------------------

def tiny_imagenet(num_classes: int = 1000):
    """The dry run's stand-in for ResNet-50: the same input and output, a few million MACs."""
    from torch import nn

    return nn.Sequential(nn.AvgPool2d(16), nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 14 * 14, num_classes))


def build_net(case: Case):
    from exporters.archs import SMOOTHING_ARCHS

    if case.arch == "tiny_imagenet":
        return tiny_imagenet(case.classes)
    return SMOOTHING_ARCHS[case.arch].build(case.classes)


def preprocess(case: Case):
    from exporters.archs import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
    from exporters.common import Preprocess

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if case.key == "imagenet" else (CIFAR10_MEAN, CIFAR10_STD)
    return Preprocess("normalize", 1.0, mean, std)


def model_paths(case: Case, folder: Path) -> dict[str, Path]:
    return {"fp32": folder / f"{case.arch}.onnx", "fp16": folder / f"{case.arch}_fp16.onnx",
            "weights": folder / f"{case.arch}.pt"}


def export_case(case: Case, folder: Path) -> dict:
    """Random weights (seed 0), saved; fp32 ONNX through exporters.common's export and parity check;
    fp16 by exporters.fp16 from that file, checked against it on ONNX Runtime's CPU provider."""
    import onnx
    import torch

    from exporters.common import Job, WithPreprocess, base_metadata, export_and_verify
    from exporters.fp16 import convert_to_fp16

    paths = model_paths(case, folder)
    if all(p.exists() for p in paths.values()):
        return {"reused": True, **{k: str(v) for k, v in paths.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    torch.manual_seed(0)
    net = build_net(case).eval()
    torch.save(net.state_dict(), paths["weights"])
    pre = preprocess(case)
    meta = base_metadata(case.arch, "normalize", case.classes, None, SIGMA, None, pre)
    code = export_and_verify(Job(WithPreprocess(net, pre, 4).eval(), case.shape, paths["fp32"], meta))
    if code != 0 or not paths["fp32"].exists():
        raise RuntimeError(f"export of {case.arch} failed (exit code {code})")
    proto, clipped = convert_to_fp16(onnx.load(str(paths["fp32"])))
    for prop in proto.metadata_props:
        if prop.key == "srtool.precision":
            prop.value = "float16"
    partial = paths["fp16"].with_suffix(".partial")
    onnx.save_model(proto, str(partial))
    partial.replace(paths["fp16"])  # last of the three files: present means complete
    check = fp16_check(paths, case)
    return {"reused": False, "seconds": round(time.monotonic() - began, 1), "fp16_clipped_weights": clipped,
            "fp16_check": check, **{k: str(v) for k, v in paths.items()}}


def fp16_check(paths: dict[str, Path], case: Case) -> dict:
    """fp32 vs fp16 logits of the exported files on 8 random [0,1] inputs (CPU provider)."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((8, *case.shape), dtype=np.float32)
    logits = {}
    for precision in ("fp32", "fp16"):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(paths[precision]), options, providers=["CPUExecutionProvider"])
        logits[precision] = session.run(None, {session.get_inputs()[0].name: x})[0]
    return {"finite": bool(np.isfinite(logits["fp16"]).all()),
            "max_abs_diff": float(np.abs(logits["fp32"] - logits["fp16"]).max()),
            "max_abs_logit": float(np.abs(logits["fp32"]).max()),
            "argmax_agree": int((logits["fp32"].argmax(1) == logits["fp16"].argmax(1)).sum()), "of": 8}


# ---- the composed denoiser + classifier graph (DDS: one-shot diffusion denoising) --------------

DDS_SIGMA = 0.5
DDS_RADII = "0.5,1.0"
DDS_A100_S_PER_INPUT = 470.0  # Carlini et al. (DDS), ImageNet, N = 10,000, on an A100


@dataclass
class DiffusionCase:
    """guided-diffusion's ImageNet 256x256 unconditional UNet (random weights) in front of the
    ImageNet classifier case; the dry run keeps the ADM flags (learned sigma, resblock up/down,
    scale-shift norm, 64 channels per head scaled down, attention at 32,16,8 relative to the edge)
    at a 64x64 edge and a few channels, so that it runs on a CPU in seconds."""
    name: str
    unet: dict                # exporters.archs.unet.UNetModel keyword arguments
    batch: int                # noisy copies per call (UNet and classifier alike)
    n0: int
    n: int                    # certify's --n (the DDS comparison's N)

    @property
    def edge(self) -> int:
        return self.unet["image_size"]

    def paths(self, folder: Path) -> dict[str, Path]:
        return {"fp32": folder / f"{self.name}.onnx", "fp16": folder / f"{self.name}_fp16.onnx"}


def diffusion_case(dry_run: bool) -> DiffusionCase:
    from exporters.archs.unet import attention_rates
    from exporters.diffusion import PRESETS

    adm = dict(PRESETS["adm-imagenet256-uncond"].unet)
    if not dry_run:
        return DiffusionCase("adm_imagenet256_uncond", adm, 32, PAPER_N0, 10_000)
    tiny = {**adm, "image_size": 64, "model_channels": 8, "num_res_blocks": 1, "num_head_channels": 8,
            "num_groups": 4, "channel_mult": (1, 2, 3, 4), "attention_resolutions": attention_rates(64, "32,16,8")}
    return DiffusionCase("adm_tiny64", tiny, 4, 20, 100)


def export_unet(case: DiffusionCase, folder: Path) -> dict:
    """Random weights (seed 0) through exporters.diffusion (its parity check at σ = 0.5 only: the
    full UNet is slow on a CPU); fp16 by exporters.fp16 from that file, its failure recorded. The
    fp16 file is checked later, on the run's device (`unet_fp16_check`): the export call has only
    the CPU package, where a float16 ADM UNet is slow."""
    import onnx
    import torch

    from exporters.archs.unet import UNetModel
    from exporters.diffusion import PRESETS, export_diffusion
    from exporters.fp16 import convert_to_fp16, load_as_fp16

    paths = case.paths(folder)
    info: dict = {"unet": {k: v for k, v in case.unet.items()}}
    began = time.monotonic()
    if not paths["fp32"].exists():
        torch.manual_seed(0)
        net = UNetModel(**case.unet).eval()
        info["parameters_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 1)
        summary = export_diffusion(net, PRESETS["adm-imagenet256-uncond"].spec, paths["fp32"],
                                   {}, sigmas=(DDS_SIGMA,), batch=1)
        del net
        if not summary.get("written"):
            raise RuntimeError(f"UNet export failed its parity check: {summary}")
        info["fp32_export"] = summary
    info["fp32"] = str(paths["fp32"])
    info["fp32_mib"] = round(sum(p.stat().st_size for p in folder.glob(paths["fp32"].name + "*")) / 2**20, 1)
    if not paths["fp16"].exists():
        try:
            weights, clipped_on_load = load_as_fp16(paths["fp32"])
            proto, clipped = convert_to_fp16(weights)
            clipped += clipped_on_load
            partial = paths["fp16"].with_suffix(".partial")
            onnx.save_model(proto, str(partial))
            partial.replace(paths["fp16"])
            info["fp16_clipped_weights"] = clipped
        except Exception as error:
            info["fp16_error"] = f"{type(error).__name__}: {str(error)[:500]}"
    if paths["fp16"].exists():
        info["fp16"] = str(paths["fp16"])
    info["seconds"] = round(time.monotonic() - began, 1)
    return info


def unet_fp16_check(paths: dict[str, Path], case: DiffusionCase, device: str) -> dict:
    """fp32 vs fp16 ε of the exported files on one input at σ = 0.5's step, on the run's device."""
    import onnxruntime as ort

    from exporters.diffusion import PRESETS

    spec = PRESETS["adm-imagenet256-uncond"].spec
    step = spec.one_shot_step(DDS_SIGMA)
    rng = np.random.default_rng(0)
    x = (np.sqrt(spec.alphas_cumprod()[step]) * rng.standard_normal((1, 3, case.edge, case.edge))).astype(np.float32)
    feeds = {"x": x, "t": np.full(1, spec.model_timestep(step), np.float32)}
    eps = {}
    for precision in ("fp32", "fp16"):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = ["CUDAExecutionProvider"] if device == "cuda" else []
        session = ort.InferenceSession(str(paths[precision]), options, providers=providers + ["CPUExecutionProvider"])
        eps[precision] = session.run(None, feeds)[0]
        del session  # one ADM UNet's weights in memory at a time
    return {"provider": providers[0] if providers else "CPUExecutionProvider", "finite": bool(np.isfinite(eps["fp16"]).all()),
            "max_abs_diff": float(np.abs(eps["fp32"] - eps["fp16"]).max()),
            "max_abs_eps": float(np.abs(eps["fp32"]).max())}


def dds_args(unet: Path, case: DiffusionCase) -> list[str]:
    """The composed graph's options: UNet at σ's t*, then resize into the 224x224 classifier."""
    return ["--diffusion", str(unet), "--image-size", str(case.edge), "--resize", "224", "--sigma", f"{DDS_SIGMA:g}"]


def dds_bench(record: Record, case: DiffusionCase, classifier: Path, unet: Path, precision: str, device: str,
              seconds: float) -> dict:
    """`srtool bench --diffusion`: the bare UNet, the bare classifier, and the whole pipeline.
    The full fp32 ADM UNet (2.21 GB) puts the sampling graph past protobuf's 2 GiB: srtool hands
    ONNX Runtime a file with its weights beside it then (engine.make_session), never run at full
    size before this step."""
    args = [sys.executable, "-m", "srtool", "bench", "--model", str(classifier), "--device", device,
            "--batch", str(case.batch), "--seconds", f"{seconds:g}", "--json", *dds_args(unet, case),
            *(["--threads", "1"] if device == "cpu" else [])]  # a dry run: the CPU is shared
    began = time.monotonic()
    result = run_process(args, min(record.left() - 2, 240))
    if result.returncode != 0:
        raise RuntimeError(failure(result))
    row = {"kind": "bench", "unet": case.name, "classifier": classifier.stem, "precision": precision,
           "wall_s": round(time.monotonic() - began, 1), **parse_json(result.stdout)}
    copies = row.get("pipeline_copies_per_s")
    row["projected_s_per_input"] = (case.n0 + case.n) / copies if copies else None
    record.data["dds"].append(row)
    record.say(f"dds bench {case.name} {precision} batch {row.get('batch')}: UNet {row.get('denoiser_copies_per_s', 0):,.1f} "
               f"copies/s, classifier {row.get('raw_forward_per_s', 0):,.1f} fwd/s, pipeline {copies or 0:,.1f} copies/s, "
               f"ratio {row.get('ratio', float('nan')):.2f}, {row['projected_s_per_input'] or float('nan'):.1f} s per "
               f"input at n0={case.n0} + N={case.n:,}")
    return row


# ---- the many-inputs-per-call scheduler -----------------------------------------------------------

def scheduler_step(record: Record, case: Case, model: Path, data: Path, inputs: int, n: int, device: str,
                   radii: str) -> list[dict]:
    """A sequential grid run against a fixed run at the same batch, on the same inputs: copies per
    ONNX Runtime call (the scheduler packs several inputs into one call) and throughput. The wall
    time includes the process's start and the model's load, the same in both runs."""
    rows = []
    for label, extra in (("fixed", []), ("sequential grid", ["--sequential", "--radii", radii])):
        row = certify(record, case, model, data, "fp32", "host", n, case.batch, device, extra=extra,
                      inputs=inputs, timeout=150)
        # the copies the run recorded (n0 and n of every input), else counted from its table
        used = row.get("copies") or sum((u or 0) for u in row["used_n"]) + PAPER_N0 * inputs
        row.update(kind="scheduler", run=label, inputs=inputs, inputs_per_s=inputs / row["wall_s"],
                   copies_per_s=used / row["wall_s"],
                   fill=(row["copies_per_call"] / case.batch) if row.get("copies_per_call") else None)
        record.data["scheduler"].append(row)
        rows.append(row)
        record.say(f"scheduler {case.arch} {label}: {inputs} inputs in {row['wall_s']} s, "
                   f"{row['copies_per_s']:,.0f} copies/s, copies per call {row.get('copies_per_call', row.get('scheduler'))}")
    return rows


def load_module(case: Case, folder: Path):
    """The torch module the ONNX file was exported from: network (saved weights) behind its
    normalization layer, as Cohen et al.'s base classifier."""
    import torch

    from exporters.common import WithPreprocess

    net = build_net(case)
    net.load_state_dict(torch.load(model_paths(case, folder)["weights"], map_location="cpu"))
    return WithPreprocess(net, preprocess(case), 4).eval()


# ---- srtool subprocesses ----------------------------------------------------------------------

def parse_json(stdout: str) -> dict:
    start = stdout.find("{")
    if start < 0:
        raise ValueError(f"no JSON in the output: {stdout[-500:]}")
    return json.loads(stdout[start:])


def failure(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr.strip() or result.stdout.strip())
    return f"exit code {result.returncode}: {text[-1500:]}"


def bench(record: Record, case: Case, model: Path, precision: str, plan: str, noise: str, batch,
          device: str, seconds: float, kind: str) -> dict:
    args = [sys.executable, "-m", "srtool", "bench", "--model", str(model), "--device", device,
            "--batch", case.plan_batch(plan, batch), "--noise", noise, "--seconds", f"{seconds:g}",
            "--json", *case.plan_args(plan)]
    began = time.monotonic()
    result = run_process(args, min(record.left() - 2, 240))
    if result.returncode != 0:
        raise RuntimeError(failure(result))
    row = {"case": case.key, "arch": case.arch, "plan": plan, "precision": precision, "noise": noise,
           "requested_batch": str(batch), "kind": kind, "wall_s": round(time.monotonic() - began, 1),
           **parse_json(result.stdout)}
    record.data["bench"].append(row)
    record.say(f"bench {case.arch} {plan} {precision} {noise} batch {row.get('batch')}: model "
               f"{row.get('raw_forward_per_s', 0):,.0f} fwd/s, pipeline {row.get('pipeline_forward_per_s', 0):,.0f} "
               f"fwd/s, ratio {row.get('ratio', float('nan')):.2f}, "
               f"{row.get('projected_s_per_input_n100k', float('nan')):.2f} s/input at n=100k ({row['wall_s']} s)")
    return row


class GpuMemoryPoll(threading.Thread):
    """Peak GPU memory by nvidia-smi polling: the whole GPU's, and a given process's where listed."""

    def __init__(self, pid: int | None = None, period: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.total_peak = self.process_peak = None
        self.samples = 0
        self._halt = threading.Event()

    @staticmethod
    def total() -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=10).stdout
            return float(out.split()[0])
        except Exception:
            return None

    def process(self) -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        except Exception:
            return None
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) == self.pid:
                with contextlib.suppress(ValueError):
                    return float(parts[1])
        return None

    def run(self) -> None:
        while not self._halt.is_set():
            total = self.total()
            if total is not None:
                self.total_peak = max(self.total_peak or 0.0, total)
                self.samples += 1
            if self.pid is not None:
                used = self.process()
                if used is not None:
                    self.process_peak = max(self.process_peak or 0.0, used)
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)


# A `srtool certify` whose process reports its own peak resident memory (VmHWM) at exit.
CERTIFY_WITH_RSS = ("import atexit, sys\n"
                    "atexit.register(lambda: print(next((l for l in open('/proc/self/status') "
                    "if l.startswith('VmHWM')), 'VmHWM: 0 kB'), file=sys.stderr))\n"
                    "from srtool.cli import main\nmain(sys.argv[1:])")


def scheduler_counts(config: dict) -> dict:
    """The scheduler's `calls` and `copies` (ONNX Runtime calls made and noisy copies they ran) from
    a results file's metadata, or a note where this srtool does not record them (before issue 23)."""
    calls, copies = config.get("calls"), config.get("copies")
    if calls is None or copies is None:
        return {"scheduler": "absent: the results metadata has no 'calls' and 'copies'"}
    return {"calls": calls, "copies": copies, "copies_per_call": copies / calls if calls else None}


def sample_images(case: Case, folder: Path, count: int = 2, edge: int | None = None) -> Path:
    """Random [0,255] images at the size a plan starts from (the model's, or the k=4 plan's input)."""
    height, width = (edge, edge) if edge else case.shape[1:]
    path = folder / f"{case.key}_{height}_{count}_images.npz"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8),
                 y=np.zeros(count, dtype=np.int64))
    return path


def certify(record: Record, case: Case, model: Path, data: Path, precision: str, noise: str, n: int,
            batch, device: str, extra: list[str] | None = None, inputs: int = 1, watch_gpu: bool = False,
            timeout: float = 240, n0: int = PAPER_N0) -> dict:
    """One `srtool certify` run in its own process: wall time, per-input time_s, peak memory, and
    the scheduler's `calls` and `copies` where the results metadata has them."""
    import pyarrow.parquet as pq

    from srtool.results import read_config

    extra = list(extra or [])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.parquet"
        args = [sys.executable, "-c", CERTIFY_WITH_RSS, "certify", "--model", str(model), "--images", str(data),
                "--max", str(inputs), "--n0", str(n0), "--n", str(n), "--batch", str(batch),
                "--device", device, "--noise", noise, "--seed", "0", "--out", str(out), "--quiet", *extra]
        baseline = GpuMemoryPoll.total() if watch_gpu else None
        began = time.monotonic()
        process = subprocess.Popen(args, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        poll = GpuMemoryPoll(process.pid) if watch_gpu else None
        if poll:
            poll.start()
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, min(timeout, record.left() - 2)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RuntimeError("timed out (budget)") from None
        finally:
            if poll:
                poll.stop()
        wall = time.monotonic() - began
        if process.returncode != 0:
            raise RuntimeError(f"exit code {process.returncode}: {(stderr.strip() or stdout.strip())[-1500:]}")
        table = pq.read_table(out).to_pylist()
        scheduler = scheduler_counts(read_config(out))
    hwm = re.search(r"VmHWM:\s*(\d+)", stderr)
    row = {"case": case.key, "arch": case.arch, "precision": precision, "noise": noise, "n": n,
           "batch": str(batch), "device": device, "extra": extra, "wall_s": round(wall, 2),
           "time_s": [r.get("time_s") for r in table], "used_n": [r.get("n") for r in table],
           "predict": [r.get("predict") for r in table], "radius": [r.get("radius") for r in table],
           "host_peak_mib": round(int(hwm.group(1)) / 1024, 1) if hwm else None, "n0": n0, **scheduler}
    if poll:
        row.update({"gpu_baseline_mib": baseline, "gpu_total_peak_mib": poll.total_peak,
                    "gpu_peak_mib": (poll.total_peak - baseline) if poll.total_peak is not None and baseline is not None
                    else None, "gpu_process_peak_mib": poll.process_peak, "gpu_samples": poll.samples})
    return row


def memory_test(record: Record, case: Case, model: Path, data: Path, precision: str, noise: str, ns: list[int],
                batch, device: str) -> list[dict]:
    import torch

    rows = []
    for n in ns:
        if device == "cuda":
            torch.cuda.empty_cache()  # this process's own cached blocks stay out of the GPU's total
        row = certify(record, case, model, data, precision, noise, n, batch, device, watch_gpu=device == "cuda")
        row["kind"] = "memory"
        record.data["memory"].append(row)
        rows.append(row)
        record.say(f"memory {case.arch} {precision} {noise} n={n:,} batch {batch}: GPU peak "
                   f"{row.get('gpu_peak_mib')} MiB (process {row.get('gpu_process_peak_mib')} MiB), host peak "
                   f"{row['host_peak_mib']} MiB, time_s {row['time_s']}")
    return rows


def sequential_option() -> tuple[list[str] | None, str]:
    """`--sequential` arguments if this srtool's certify has the option (issue 12), else None."""
    result = run_process([sys.executable, "-m", "srtool", "certify", "--help"], 60)
    text = result.stdout
    match = re.search(r"--sequential(?![-\w])(?: \[([^\]]+)\]| ([A-Z_]+)(?=\s))?", text)
    if not match:
        return None, "certify has no --sequential option"
    line = next((l.strip() for l in text.splitlines() if "--sequential" in l), "")
    if match.group(1):  # a choice: take the first
        return ["--sequential", match.group(1).split("|")[0].strip()], line
    if match.group(2):  # takes a value we cannot guess
        return None, f"--sequential takes a {match.group(2)}: {line}"
    return ["--sequential"], line


# ---- the PyTorch reference sampler --------------------------------------------------------------

def torch_sampler(module, case: Case, plan: str, batch: int, seconds: float, device: str,
                  half: bool = False) -> dict:
    """Noisy copies per second of a sampler written like Cohen et al.'s `_sample_noise`:
    x.repeat, torch.randn_like on the device, forward, argmax, counts on the host (one sync per
    batch). k=4: the same plan as srtool's (resize where the plan has one, four corner crops, mean)."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    dtype = torch.float16 if half else torch.float32
    module = module.to(dev, dtype)
    edge = case.shape[1] if plan == "RS" else case.k4_input
    x = torch.rand(1, 3, edge, edge, device=dev, dtype=dtype)
    side, resized = case.shape[1], case.k4_resized
    corners = (0, resized - side)
    counts = np.zeros(case.classes, dtype=np.int64)

    def sample() -> None:
        nonlocal counts
        with torch.no_grad():
            copies = x.repeat((batch, 1, 1, 1))
            noisy = copies + torch.randn_like(copies) * SIGMA
            if plan == "RS":
                logits = module(noisy)
            else:
                big = noisy if resized == edge else F.interpolate(noisy, size=(resized, resized), mode="bilinear",
                                                                  align_corners=False)
                views = torch.cat([big[:, :, t:t + side, l:l + side] for t in corners for l in corners])
                logits = module(views).view(4, batch, -1).mean(0)
            counts += np.bincount(logits.argmax(1).cpu().numpy(), minlength=case.classes)

    for _ in range(2):
        sample()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    calls, began = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - began < seconds:
        sample()
        calls += 1
    copies = calls * batch / (time.perf_counter() - began)
    views = 1 if plan == "RS" else 4
    return {"copies_per_s": copies, "forward_per_s": copies * views,
            "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}


def torch_sweep(record: Record, case: Case, module, plan: str, device: str, seconds: float) -> dict:
    import torch

    points = []
    for batch in case.torch_batches:
        size = batch if plan == "RS" else max(1, batch // 4)
        if record.left() < seconds + 5:
            record.data["skipped"].append(f"torch {case.arch} {plan} batch {size}")
            continue
        try:
            points.append({"batch": size, **torch_sampler(module, case, plan, size, seconds, device)})
        except Exception as error:  # e.g. out of memory at the largest batch: the others stand
            points.append({"batch": size, "error": f"{type(error).__name__}: {str(error)[:300]}"})
        if device == "cuda":
            torch.cuda.empty_cache()
    ok = [p for p in points if "error" not in p]
    if not ok:
        raise RuntimeError(f"no batch ran: {points}")
    best = max(ok, key=lambda p: p["forward_per_s"])
    row = {"case": case.key, "arch": case.arch, "plan": plan, "precision": "fp32", "sweep": points,
           "best_batch": best["batch"], "best_forward_per_s": best["forward_per_s"],
           "best_copies_per_s": best["copies_per_s"], "max_memory_allocated_mib": best["max_memory_allocated_mib"],
           "settings": {"cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
                        "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                        "matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}}
    if device == "cuda" and record.left() > seconds + 5:  # the same sampler in float16, at that batch
        with contextlib.suppress(Exception):
            half = torch_sampler(module, case, plan, best["batch"], seconds, device, half=True)
            row["fp16_forward_per_s"] = half["forward_per_s"]
        module.float()
    record.data["torch"].append(row)
    record.say(f"torch {case.arch} {plan}: best {row['best_forward_per_s']:,.0f} fwd/s at batch {row['best_batch']} "
               f"(sweep {[(p['batch'], round(p.get('forward_per_s', 0))) for p in points]}), "
               f"max allocated {row['max_memory_allocated_mib']} MiB")
    return row


# ---- tests --------------------------------------------------------------------------------------

def run_tests(record: Record, timeout: float) -> dict:
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        report, junit = Path(tmp) / "cuda-report.json", Path(tmp) / "junit.xml"
        began = time.monotonic()
        command = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-rs", "-p", "no:cacheprovider",
                   f"--junitxml={junit}"]
        result = subprocess.run(command, cwd=ROOT, env={**child_env(), "SRTOOL_CUDA_REPORT": str(report)},
                                capture_output=True, text=True, timeout=max(1.0, timeout))
        output = result.stdout + result.stderr
        (record.out / "pytest.log").write_text(output)
        details = json.loads(report.read_text()) if report.exists() else {}
        counts, cases_ = {}, []
        if junit.exists():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            for case in suite.iter("testcase"):
                bad = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
                cases_.append({"test": case.get("name"), "outcome": "passed" if bad is None else bad.tag,
                               "message": "" if bad is None else bad.get("message", "")[:500]})
    passed = counts.get("tests", 0) - sum(counts.get(k, 0) for k in ("failures", "errors", "skipped"))
    summary = (f"{passed} passed, {counts.get('failures', 0)} failed, {counts.get('errors', 0)} errors, "
               f"{counts.get('skipped', 0)} skipped" if counts else f"no report; exit code {result.returncode}")
    row = {"exit_code": result.returncode, "summary": summary, "seconds": round(time.monotonic() - began, 1),
           "cases": cases_, "details": details, "log": "pytest.log"}
    record.data["tests"] = row
    record.say(f"tests/test_cuda.py: {summary} (exit code {result.returncode})")
    for case in cases_:
        if case["outcome"] != "passed":
            record.say(f"  {case['test']}: {case['outcome']}: {case['message'][:200]}")
    return row


# ---- targets and the report -------------------------------------------------------------------

def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(row: str, value: float, target: str) -> dict:
    goal = TARGETS[target]
    met = value <= goal if target in LOWER_IS_BETTER else value >= goal
    return {"row": row, "value": value, "target": goal, "met": bool(met)}


def evaluate_targets(data: dict) -> dict:
    main = [r for r in data["bench"] if r.get("kind") == "main"]
    verdicts: dict[str, list] = {"pipeline_vs_model": [], "srtool_vs_torch": [], "fp16_vs_fp32": [],
                                 "resnet50_n100k": [], "dds": [], "scheduler_fill": []}
    for r in main:
        if r["precision"] == "fp32":
            row = f"{r['arch']} {r['plan']} {r['noise']} noise, batch {r['batch']}"
            verdicts["pipeline_vs_model"].append(_verdict(row, r.get("ratio") or 0, "ratio"))
    for t in data["torch"]:
        ours = [r for r in data["bench"]
                if (r["case"], r["plan"], r["precision"]) == (t["case"], t["plan"], "fp32")]
        if ours:
            best = max(ours, key=lambda r: r.get("pipeline_forward_per_s") or 0)
            verdicts["srtool_vs_torch"].append(_verdict(
                f"{t['arch']} {t['plan']}: srtool fp32 best (batch {best.get('batch')}, {best['noise']} noise) "
                f"vs PyTorch best (batch {t['best_batch']})",
                (best.get("pipeline_forward_per_s") or 0) / t["best_forward_per_s"], "vs_torch"))
    for r in main:
        if r["precision"] != "fp16":
            continue
        twin = next((s for s in main if s["precision"] == "fp32" and (s["case"], s["plan"], s["noise"]) ==
                     (r["case"], r["plan"], r["noise"])), None)
        if twin and twin.get("pipeline_forward_per_s"):
            verdicts["fp16_vs_fp32"].append(_verdict(
                f"{r['arch']} {r['plan']} {r['noise']} noise, batch {r['batch']}",
                r["pipeline_forward_per_s"] / twin["pipeline_forward_per_s"], "fp16"))
    resnet50 = [r for r in data["bench"] if r["arch"] == "resnet50" and r.get("projected_s_per_input_n100k")]
    for plan in ("RS", "k4"):
        rows = [r for r in resnet50 if r["plan"] == plan]
        for precision in ("fp32", "any"):
            pool = [r for r in rows if precision == "any" or r["precision"] == precision]
            if pool:
                best = min(pool, key=lambda r: r["projected_s_per_input_n100k"])
                verdicts["resnet50_n100k"].append(_verdict(
                    f"ResNet-50 {plan}, {'fastest' if precision == 'any' else 'fp32'} configuration "
                    f"({best['precision']}, {best['noise']} noise, batch {best['batch']}), projected",
                    best["projected_s_per_input_n100k"], "resnet50_s_per_input"))
    for c in data["certify"]:
        if c["arch"] == "resnet50" and c.get("n") == PAPER_N and c.get("time_s"):
            verdicts["resnet50_n100k"].append(_verdict(
                f"ResNet-50 RS {c['precision']} {c['noise']} noise {' '.join(c['extra'])}, measured by srtool certify",
                float(np.mean(c["time_s"])), "resnet50_s_per_input"))
    for r in data.get("dds", []):
        if r["kind"] == "bench" and r.get("projected_s_per_input"):
            verdicts["dds"].append(_verdict(
                f"{r['unet']} {r['precision']} + {r['classifier']}, batch {r.get('batch')}, projected "
                f"(n0 + N) / pipeline copies per second", r["projected_s_per_input"], "dds_s_per_input"))
        elif r["kind"] == "certify" and r.get("time_s"):
            verdicts["dds"].append(_verdict(
                f"{r['unet']} {r['precision']} + {r['arch']}, {' '.join(r['extra'][-3:])}, measured by srtool "
                f"certify (n used {r['used_n']})", float(np.mean(r["time_s"])), "dds_s_per_input"))
    for r in data.get("scheduler", []):
        if r["run"] == "sequential grid":
            if r.get("fill") is not None:
                verdicts["scheduler_fill"].append(_verdict(
                    f"{r['arch']} sequential grid, batch {r['batch']}: {r['copies_per_call']:,.0f} copies per call",
                    r["fill"], "scheduler_fill"))
            else:
                verdicts["scheduler_fill"].append({"row": f"{r['arch']}: {r.get('scheduler')}", "value": None,
                                                   "target": TARGETS["scheduler_fill"], "met": False})
    return verdicts


DRY_NOTE = " (DRY RUN: small settings, stand-in models)"
TARGET_TITLES = {
    "pipeline_vs_model": "srtool pipeline / bare ORT model ≥ 0.9 (fp32, host and device noise)",
    "srtool_vs_torch": "srtool ≥ the PyTorch sampler (fp32, both at their best batch)",
    "fp16_vs_fp32": "fp16 pipeline ≥ 2× fp32 (same plan, noise and batch)",
    "resnet50_n100k": "ResNet-50, n0=100 + n=100,000: ≤ 15 s per input (H200)",
    "dds": f"DDS-style UNet + ResNet-50, n0=100 + N=10,000: seconds per input vs "
           f"{DDS_A100_S_PER_INPUT:.0f} s (DDS authors, A100)",
    "scheduler_fill": "sequential grid run: copies per ONNX Runtime call ≥ 0.9 × --batch (many inputs per call)",
}


def markdown(data: dict) -> str:
    env, settings = data["env"], data["settings"]
    lines = [f"# srtool on a GPU: {env.get('torch_gpu') or env.get('nvidia_smi') or env.get('device')}", "",
             f"`python benchmarks/gpu.py {settings.get('argv', '')}`; {data.get('elapsed_s')} s of a "
             f"{settings.get('budget')} s budget{DRY_NOTE if settings.get('dry_run') else ''}.",
             f"ONNX Runtime {env.get('onnxruntime')} ({', '.join(env.get('onnxruntime_providers') or [])}), "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Python {env.get('python')}, "
             f"{env.get('cpu_cores')} cores; commit {env.get('git_commit')}.", ""]
    tests = data.get("tests")
    if tests:
        lines += [f"**tests/test_cuda.py**: {tests['summary']} (exit code {tests['exit_code']}, {tests['seconds']} s)."]
        for case in tests.get("cases") or []:
            if case["outcome"] != "passed":
                lines.append(f"- {case['test']}: {case['outcome']}: {case['message'][:200]}")
        for key, value in (tests.get("details") or {}).items():
            lines.append(f"- {key}: {json.dumps(value)}")
        lines.append("")
    lines += ["## Targets", ""]
    for key, title in TARGET_TITLES.items():
        rows = data["targets"].get(key) or []
        lines.append(f"- **{title}**: " + ("not measured" if not rows else ""))
        for v in rows:
            verdict = "not recorded" if v["value"] is None else ("met" if v["met"] else "**NOT met**")
            lines.append(f"  - {v['row']}: {_fmt(v['value'], 2)} → {verdict}")
    lines += ["", "## Throughput (srtool bench, medians of 3 rounds)", "",
              "| model | plan | precision | noise | batch | bare model (fwd/s) | pipeline (fwd/s) | pipeline / model | "
              "noisy copies/s | s per input at n=100k |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["bench"]:
        lines.append(f"| {r['arch']} | {r['plan']} | {r['precision']} | {r['noise']} | {r.get('batch')} | "
                     f"{_fmt(r.get('raw_forward_per_s'))} | {_fmt(r.get('pipeline_forward_per_s'))} | "
                     f"{_fmt(r.get('ratio'), 2)} | {_fmt(r.get('pipeline_copies_per_s'))} | "
                     f"{_fmt(r.get('projected_s_per_input_n100k'), 2)} |")
    lines += ["", "## PyTorch sampler (Cohen et al.'s `_sample_noise`, same module)", "",
              "| model | plan | best batch | fwd/s | copies/s | fp16 fwd/s | max allocated (MiB) | "
              "sweep (batch: fwd/s) |",
              "|---|---|---|---|---|---|---|---|"]
    for t in data["torch"]:
        sweep = ", ".join(f"{p['batch']}: {'error' if 'error' in p else _fmt(p.get('forward_per_s'))}"
                          for p in t["sweep"])
        lines.append(f"| {t['arch']} | {t['plan']} | {t['best_batch']} | {_fmt(t['best_forward_per_s'])} | "
                     f"{_fmt(t['best_copies_per_s'])} | {_fmt(t.get('fp16_forward_per_s'))} | "
                     f"{_fmt(t.get('max_memory_allocated_mib'))} | {sweep} |")
    lines += ["", "## Memory of `srtool certify` on one input", "",
              "| model | precision | noise | batch | n | GPU peak − baseline (MiB) | GPU peak of the process (MiB) | "
              "host peak RSS (MiB) | time_s |", "|---|---|---|---|---|---|---|---|---|"]
    for m in data["memory"]:
        lines.append(f"| {m['arch']} | {m['precision']} | {m['noise']} | {m['batch']} | {m['n']:,} | "
                     f"{_fmt(m.get('gpu_peak_mib'))} | {_fmt(m.get('gpu_process_peak_mib'))} | "
                     f"{_fmt(m.get('host_peak_mib'))} | {_fmt((m.get('time_s') or [None])[0], 2)} |")
    lines += ["", "## srtool certify, measured", "",
              "| model | precision | noise | options | n | batch | time_s per input | n used | wall (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in data["certify"]:
        options = " ".join(c["extra"]) or "–"
        lines.append(f"| {c['arch']} | {c['precision']} | {c['noise']} | {options} | {c['n']:,} | {c['batch']} |"
                     f" {', '.join(_fmt(t, 2) for t in c['time_s'])} | "
                     f"{', '.join(_fmt(n) for n in c['used_n'])} | {c['wall_s']} |")
    if data.get("sequential"):
        lines += ["", f"--sequential: {data['sequential']}"]
    lines += ["", f"## Composed UNet + classifier (one-shot diffusion denoising, σ = {DDS_SIGMA:g})", "",
              "| UNet | precision | classifier | run | batch | bare UNet (copies/s) | bare classifier (fwd/s) | "
              "bare parts in a row (copies/s) | pipeline (copies/s) | pipeline / bare | s per input | n used |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data.get("dds", []):
        if r["kind"] == "bench":
            lines.append(f"| {r['unet']} | {r['precision']} | {r['classifier']} | bench | {r.get('batch')} | "
                         f"{_fmt(r.get('denoiser_copies_per_s'), 1)} | {_fmt(r.get('raw_forward_per_s'), 1)} | "
                         f"{_fmt(r.get('bare_composed_copies_per_s'), 1)} | {_fmt(r.get('pipeline_copies_per_s'), 1)} | "
                         f"{_fmt(r.get('ratio'), 2)} | {_fmt(r.get('projected_s_per_input'), 1)} (projected) | – |")
        else:
            lines.append(f"| {r['unet']} | {r['precision']} | {r['arch']} | certify {' '.join(r['extra'][-3:])} | "
                         f"{r['batch']} | – | – | – | – | – | {', '.join(_fmt(t, 1) for t in r['time_s'])} | "
                         f"{', '.join(_fmt(n) for n in r['used_n'])} |")
    lines += ["", "## Many inputs per call: a sequential grid run against a fixed run, same batch", "",
              "| model | run | inputs | n | batch | wall (s) | inputs/s | copies/s | calls | copies | copies per call |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data.get("scheduler", []):
        lines.append(f"| {r['arch']} | {r['run']} | {r['inputs']} | {r['n']:,} | {r['batch']} | {r['wall_s']} | "
                     f"{_fmt(r['inputs_per_s'], 2)} | {_fmt(r['copies_per_s'])} | {_fmt(r.get('calls'))} | "
                     f"{_fmt(r.get('copies'))} | {_fmt(r.get('copies_per_call')) if 'calls' in r else r.get('scheduler')} |")
    if data["exports"]:
        lines += ["", "## Models", ""]
        for name, info in data["exports"].items():
            lines.append(f"- {name}: {json.dumps(info, default=str)}")
    if data["errors"] or data["skipped"]:
        lines += ["", "## Errors and skipped steps", ""]
        for e in data["errors"]:
            lines.append(f"- **{e['step']}**: {last_line(e['error'])[:400]}")
        if data["skipped"]:
            lines.append(f"- skipped for the budget: {', '.join(data['skipped'])}")
    return "\n".join(lines) + "\n"


# ---- the run ----------------------------------------------------------------------------------

STEPS = ("tests", "main", "dds", "torch", "fp16", "scheduler", "dds-certify", "memory", "k4", "n100k", "sweep")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dry-run", action="store_true",
                        help="small settings and stand-in models, to check the script on a CPU")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for everything (default 360)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else ./gpu-results)")
    parser.add_argument("--models", type=Path, default=ROOT / ".gpu" / "models",
                        help="exported models, reused where present (default .gpu/models)")
    parser.add_argument("--seconds", type=float, default=None, help="srtool bench --seconds (default 1.5; dry run 0.3)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated steps: {','.join(STEPS)} (default all)")
    parser.add_argument("--export-only", action="store_true", help="export the models and stop")
    args = parser.parse_args()

    out = args.out or Path(os.environ.get("OUT") or "gpu-results")
    seconds = args.seconds or (0.3 if args.dry_run else 1.5)
    steps = set((args.only or ",".join(STEPS)).split(","))
    if steps - set(STEPS):
        parser.error(f"--only: unknown steps {', '.join(sorted(steps - set(STEPS)))}; choose from {','.join(STEPS)}")
    added = use_cuda_libraries() if args.device == "cuda" else []
    record = Record(out, args.budget, {"argv": " ".join(sys.argv[1:]), "device": args.device, "dry_run": args.dry_run,
                                       "budget": args.budget, "bench_seconds": seconds, "steps": sorted(steps)})
    environment(record, args.device, added, probe_cuda=not args.export_only)
    record.save()
    device = args.device
    work = Path(tempfile.mkdtemp(prefix="srtool-gpu-"))
    if args.dry_run:
        import torch
        torch.set_num_threads(1)  # a CPU shared with others: more threads than cores is slower
    if device == "cuda":
        import torch
        torch.backends.cudnn.benchmark = True  # PyTorch at its best: cuDNN picks its fastest kernels

    # 0. models (exported once; the device plan's first call does it while the wheel travels)
    ready = []
    for case in cases(args.dry_run):
        info = record.attempt(f"export {case.arch}", lambda case=case: export_case(case, args.models), need=5)
        if info is not None:
            record.data["exports"][case.arch] = info
            record.say(f"models {case.arch}: {json.dumps(info, default=str)}")
            ready.append(case)
    unet_case = diffusion_case(args.dry_run)
    unet = None
    if steps & {"dds", "dds-certify"}:
        unet = record.attempt(f"export {unet_case.name}", lambda: export_unet(unet_case, args.models),
                              need=5 if args.dry_run else 120)
        if unet is not None:
            record.data["exports"][unet_case.name] = unet
            record.say(f"models {unet_case.name}: {json.dumps(unet, default=str)}")
    record.save()
    if args.export_only:
        return 0 if len(ready) == len(cases(args.dry_run)) and unet is not None else 1
    imagenet = next((c for c in ready if c.key == "imagenet"), None)
    dds_models = [(p, Path(unet[p])) for p in ("fp32", "fp16") if unet and unet.get(p)] if imagenet else []

    # 1. the CUDA tests
    if "tests" in steps:
        record.attempt("tests/test_cuda.py", lambda: run_tests(record, min(150, record.left() - 5)), need=30)

    noises = ["host", "device"] if device == "cuda" else ["host"]
    if device != "cuda":
        record.data["skipped"].append("--noise device (needs CUDA)")
    modules = {}

    def module(case):
        if case.arch not in modules:
            modules[case.arch] = load_module(case, args.models)
        return modules[case.arch]

    def bench_step(case, precision, plan, noise, batch, kind):
        path = model_paths(case, args.models)[precision]
        name = f"bench {case.arch} {plan} {precision} {noise} batch {batch}"
        record.attempt(name, lambda: bench(record, case, path, precision, plan, noise, batch, device, seconds, kind),
                       need=15 if not args.dry_run else 5)

    def torch_step(case, plan):
        record.attempt(f"torch {case.arch} {plan}", lambda: torch_sweep(record, case, module(case), plan, device,
                                                                          0.5 if not args.dry_run else 0.2), need=10)

    # 2. the targets' rows first: fp32 RS at the main batch, host and device noise
    if "main" in steps:
        for case in ready:
            for noise in noises:
                bench_step(case, "fp32", "RS", noise, case.batch, "main")
    # the composed UNet + ResNet-50 graph: bare UNet, bare classifier, pipeline; fp32, then fp16
    if "dds" in steps:
        classifier = model_paths(imagenet, args.models)["fp32"] if imagenet else None
        for precision, path in dds_models:
            record.attempt(f"dds bench {unet_case.name} {precision}",
                           lambda path=path, precision=precision: dds_bench(record, unet_case, classifier, path,
                                                                            precision, device, seconds),
                           need=5 if args.dry_run else 45)
        if len(dds_models) == 2:
            def fp16_check():
                check = unet_fp16_check(unet_case.paths(args.models), unet_case, device)
                unet["fp16_check"] = check
                record.say(f"{unet_case.name} fp16 check: {check}")
                return check

            record.attempt(f"fp16 check {unet_case.name}", fp16_check, need=5 if args.dry_run else 30)
    if "torch" in steps:
        for case in ready:
            torch_step(case, "RS")
    if "fp16" in steps:
        for case in ready:
            for noise in noises:
                bench_step(case, "fp16", "RS", noise, case.batch, "main")
    # many inputs per call: a sequential grid run against a fixed run at the same batch (CIFAR)
    if "scheduler" in steps:
        cifar = next((c for c in ready if c.key == "cifar"), None)
        if cifar:
            inputs, n = (4, 200) if args.dry_run else (32, 10_000)
            data = sample_images(cifar, work, count=inputs)
            record.attempt(f"scheduler {cifar.arch}",
                           lambda: scheduler_step(record, cifar, model_paths(cifar, args.models)["fp32"], data,
                                                  inputs, n, device, "0.25,0.5"),
                           need=10 if args.dry_run else 60)
    # one input certified through the composed graph at N = 10,000, --sequential at two radii,
    # with the faster precision the bench found (DDS: 470 s per input on an A100)
    if "dds-certify" in steps and dds_models:
        rates = {r["precision"]: r.get("pipeline_copies_per_s") or 0 for r in record.data["dds"] if r["kind"] == "bench"}
        precision, path = max(dds_models, key=lambda m: rates.get(m[0], 0))
        data = sample_images(imagenet, work, count=1, edge=unet_case.edge)

        def dds_certify():
            extra = [*dds_args(path, unet_case), "--sequential", "--radii", DDS_RADII]
            row = certify(record, imagenet, model_paths(imagenet, args.models)["fp32"], data, precision, "host",
                          unet_case.n, unet_case.batch, device, extra=extra, timeout=200, n0=unet_case.n0)
            row.update(kind="certify", unet=unet_case.name)
            record.data["dds"].append(row)
            record.say(f"dds certify {unet_case.name} {precision}: time_s {row['time_s']}, n used {row['used_n']}, "
                       f"wall {row['wall_s']} s")
            return row

        # the sequential run stops early or runs all n0 + N copies: budget for the latter where known
        projected = (unet_case.n0 + unet_case.n) / rates[precision] if rates.get(precision) else None
        need = 10 if args.dry_run else 60 if projected is None else min(200, projected + 30)
        record.attempt(f"dds certify {unet_case.name} {precision} n={unet_case.n}", dds_certify, need=need)
    # 3. memory against n: the ImageNet model, one input, n = 1,000 and 10,000
    if "memory" in steps:
        if imagenet:
            data = sample_images(imagenet, work)
            ns = [100, 1000] if args.dry_run else [1000, 10000]
            for noise in noises:
                fp32 = model_paths(imagenet, args.models)["fp32"]
                record.attempt(f"memory {imagenet.arch} {noise}",
                               lambda noise=noise: memory_test(record, imagenet, fp32, data, "fp32", noise, ns,
                                                               imagenet.batch, device),
                               need=30 if not args.dry_run else 5)
    # 4. Smooth-Mean k=4
    if "k4" in steps:
        for case in ready:
            for noise in noises:
                bench_step(case, "fp32", "k4", noise, case.batch, "main")
        for case in ready:
            torch_step(case, "k4")
        for case in ready:
            for noise in noises:
                bench_step(case, "fp16", "k4", noise, case.batch, "main")
    # 5. seconds per input at n = 100,000, measured (ImageNet RS, the faster precision), and --sequential
    if "n100k" in steps:
        if imagenet:
            data = sample_images(imagenet, work)
            n = 300 if args.dry_run else PAPER_N
            rs = [r for r in record.data["bench"] if r["arch"] == imagenet.arch and r["plan"] == "RS"
                  and r.get("pipeline_copies_per_s")]
            best = (max(rs, key=lambda r: r["pipeline_copies_per_s"]) if rs else
                    {"precision": "fp32", "noise": "host", "batch": imagenet.batch})
            path = model_paths(imagenet, args.models)[best["precision"]]

            def measured(extra=None):
                row = certify(record, imagenet, path, data, best["precision"], best["noise"], n, best["batch"],
                              device, extra=extra, inputs=2 if extra else 1, timeout=150)
                record.data["certify"].append(row)
                record.say(f"certify {imagenet.arch} {best['precision']} {best['noise']} n={n:,} {extra or ''}: "
                           f"time_s {row['time_s']}, n used {row['used_n']}, wall {row['wall_s']} s")
                return row

            record.attempt(f"certify {imagenet.arch} n={n}", measured, need=45 if not args.dry_run else 5)
            try:
                option, line = sequential_option()
            except Exception as error:  # e.g. a CLI that does not start: recorded, the run goes on
                option, line = None, f"cannot read certify --help: {type(error).__name__}: {error}"
            record.data["sequential"] = line
            if option:
                record.attempt(f"certify {imagenet.arch} n={n} {' '.join(option)}", lambda: measured(option),
                               need=45 if not args.dry_run else 5)
    # 6. the batch sweep
    if "sweep" in steps:
        for case in ready:
            for batch in case.sweep:
                for precision in ("fp32", "fp16"):
                    bench_step(case, precision, "RS", "host", batch, "sweep")

    shutil.rmtree(work, ignore_errors=True)
    record.save()
    record.say(f"done: {len(record.data['bench'])} bench rows, {len(record.data['torch'])} torch rows, "
               f"{len(record.data['errors'])} errors, {len(record.data['skipped'])} skipped; results in {out}")
    print(markdown(record.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
