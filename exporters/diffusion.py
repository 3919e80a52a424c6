"""Export diffusion UNets (improved-diffusion, guided-diffusion) and image-to-image denoisers to
ONNX models for srtool's `--diffusion` and `--denoiser`, and check them on noisy inputs.

    python -m exporters.diffusion 256x256_diffusion_uncond.pt --preset adm-imagenet256-uncond -o adm.onnx
    python -m exporters.diffusion cifar10_uncond_50M_500K.pt --preset iddpm-cifar10-uncond -o iddpm.onnx

The contracts (what srtool's runtime reads; DESIGN §11):

- `--diffusion U.onnx`, an ε-prediction UNet: inputs x (N, C, H, W) float32 in the model's data
  range [-1, 1] and t (N,) float32, the timestep as the UNet's embedding takes it (already
  t·1000/T for models trained with rescale_timesteps); output (N, C, H, W) = ε̂, or (N, 2C, H, W)
  for models that learn their variance (the first C channels are ε̂). Metadata `srtool.kind` =
  `diffusion`, `srtool.input_shape` = "C,H,W", `srtool.diffusion` = {"schedule", "steps",
  "rescale_timesteps", "learn_sigma", "data_range": [-1, 1]}.
- `--denoiser D.onnx`: input (N, C, H, W) noisy image in [0,1] pixel units (not clipped), output
  the same shape; a non-blind denoiser takes the noise level as a second input, broadcastable per
  sample. Metadata `srtool.kind` = `denoiser`, `srtool.input_shape`, optionally `srtool.denoiser`
  = {"sigma_scale": 1 | 255, "sigma_range": [lo, hi]}.

Both go through `export_and_check`: torch.onnx.export (dynamo) with a dynamic batch axis shared by
all inputs, the metadata, one self-contained file (or, above protobuf's 2 GB limit, the .onnx plus
its weights in `<name>.onnx.data` beside it, said out loud), onnx.checker, and a parity check of
ONNX Runtime against torch on the inputs the model really receives inside srtool: clean images
plus Gaussian noise at a few σ, so values outside [0, 1], and for a UNet exactly srtool's one-shot
input x_t = √ᾱ·(2(x+δ)−1) at the step t* of each σ. Nothing is written unless the check passes
(`--force` writes anyway); a failed check exits with code 1. Bad input is one `error:` line with
exit code 2.

The UNet itself is exporters/archs/unet.py; the presets below are the published flags of the two
checkpoints srtool's docs name (the repos' model_and_diffusion_defaults plus the flags their READMEs
give for each checkpoint).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a plain script: import as the package
    import pathlib
    import sys

    _here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from exporters.archs.unet import UNetModel, attention_rates, default_channel_mult
from exporters.common import (FP16_RTOL, FP32_RTOL, ExportError, export_failure, fit_state_dict, info,
                              load_checkpoint, program_name, run_cli, sha256_file, unwrap_checkpoint)

DATA_RANGE = (-1.0, 1.0)
# σ of the parity inputs, [0,1] pixel units: the noise levels certificates are usually stated at.
PARITY_SIGMAS = (0.12, 0.25, 0.5, 1.0)
EXPORT_BATCH = 2          # torch.export specializes size-1 dims: trace with 2, mark the axis dynamic
PROTOBUF_LIMIT = 2 ** 31  # one .onnx file cannot hold more


# ---- noise schedules ----------------------------------------------------------------------------

def named_alphas_cumprod(schedule: str, steps: int) -> np.ndarray:
    """ᾱ_t, t = 0..steps-1, of improved-/guided-diffusion's named beta schedules, in float64.

    linear: betas = linspace(1e-4·1000/T, 0.02·1000/T, T) (Ho et al., scaled so that any T spans the
    same total noise). cosine (Nichol & Dhariwal 2021): ᾱ(s) = cos²((s + 0.008)/1.008 · π/2),
    beta_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999).
    """
    if steps < 1:
        raise ExportError(f"a schedule needs at least 1 step, got {steps}")
    if schedule == "linear":
        scale = 1000 / steps
        betas = np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    elif schedule == "cosine":
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999)
                          for i in range(steps)], dtype=np.float64)
    else:
        raise ExportError(f"unknown noise schedule '{schedule}' (linear or cosine)")
    return np.cumprod(1.0 - betas)


@dataclass(frozen=True)
class DiffusionSpec:
    """What srtool needs to know about a UNet's diffusion process (the `srtool.diffusion` JSON)."""
    schedule: str | None = "linear"     # None: explicit alphas_cumprod
    steps: int = 1000
    rescale_timesteps: bool = False      # the UNet was fed t·1000/T (improved-diffusion's default)
    learn_sigma: bool = False            # the output has 2C channels, ε̂ first
    alphas_cumprod_table: tuple[float, ...] | None = None

    def alphas_cumprod(self) -> np.ndarray:
        if self.alphas_cumprod_table is not None:
            return np.asarray(self.alphas_cumprod_table, dtype=np.float64)
        return named_alphas_cumprod(self.schedule, self.steps)

    def metadata(self) -> str:
        entry: dict = {"rescale_timesteps": self.rescale_timesteps, "learn_sigma": self.learn_sigma,
                       "data_range": list(DATA_RANGE)}
        if self.alphas_cumprod_table is not None:
            entry["alphas_cumprod"] = [float(a) for a in self.alphas_cumprod_table]
        else:
            entry = {"schedule": self.schedule, "steps": self.steps, **entry}
        return json.dumps(entry)

    def one_shot_step(self, sigma: float) -> int:
        """The first t with √((1−ᾱ_t)/ᾱ_t) ≥ 2σ (Carlini et al.'s rule; 2σ: [0,1] -> [-1,1])."""
        abar = self.alphas_cumprod()
        reached = np.sqrt((1 - abar) / abar) >= 2 * sigma
        if not reached.any():
            raise ExportError(f"sigma {sigma} is beyond the schedule's noise range")
        return int(np.argmax(reached))

    def model_timestep(self, t: int) -> float:
        """The value the UNet's embedding takes for step t."""
        return t * 1000.0 / len(self.alphas_cumprod()) if self.rescale_timesteps else float(t)


# ---- presets: the published checkpoints ---------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    unet: dict                     # UNetModel keyword arguments
    spec: DiffusionSpec
    description: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.unet["in_channels"], self.unet["image_size"], self.unet["image_size"])


PRESETS = {
    # guided-diffusion README: --attention_resolutions 32,16,8 --class_cond False
    # --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear
    # --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True
    # --use_fp16 True --use_scale_shift_norm True; rescale_timesteps defaults to False there.
    "adm-imagenet256-uncond": Preset(
        unet=dict(image_size=256, in_channels=3, model_channels=256, out_channels=6,
                  num_res_blocks=2, attention_resolutions=attention_rates(256, "32,16,8"),
                  channel_mult=default_channel_mult(256), num_heads=4, num_head_channels=64,
                  num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                  use_new_attention_order=False),
        spec=DiffusionSpec("linear", 1000, rescale_timesteps=False, learn_sigma=True),
        description="guided-diffusion ImageNet 256x256 unconditional (256x256_diffusion_uncond.pt)"),
    # improved-diffusion README, CIFAR-10 unconditional L_hybrid cosine: --image_size 32
    # --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3
    # --diffusion_steps 4000 --noise_schedule cosine; defaults num_heads 4, attention at 16,8,
    # use_scale_shift_norm True, rescale_timesteps True.
    "iddpm-cifar10-uncond": Preset(
        unet=dict(image_size=32, in_channels=3, model_channels=128, out_channels=6,
                  num_res_blocks=3, attention_resolutions=attention_rates(32, "16,8"),
                  channel_mult=default_channel_mult(32), num_heads=4, num_head_channels=-1,
                  num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=False,
                  use_new_attention_order=False, dropout=0.3),
        spec=DiffusionSpec("cosine", 4000, rescale_timesteps=True, learn_sigma=True),
        description="improved-diffusion CIFAR-10 unconditional (cifar10_uncond_50M_500K.pt)"),
}


# ---- export and parity --------------------------------------------------------------------------

@dataclass
class Parity:
    label: str
    max_abs: float
    scale: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tol

    def line(self) -> str:
        rel = self.max_abs / self.scale if self.scale else float("nan")
        return (f"parity {self.label}: max |diff| {self.max_abs:.3g} ({rel:.2g} of max |output| "
                f"{self.scale:.3g}; tolerance {self.tol:.3g}) -> {'ok' if self.ok else 'FAILED'}")


def compare(label: str, reference: np.ndarray, got: np.ndarray, rtol: float = FP32_RTOL) -> Parity:
    """Largest absolute difference against `rtol` of the largest |output| (the reasoning is in
    exporters/common.py: float32 rounding stays orders of magnitude below, a wrong layer does not)."""
    scale = float(np.abs(reference).max())
    max_abs = float(np.abs(reference - got).max()) if np.isfinite(got).all() else float("inf")
    return Parity(label, max_abs, scale, max(rtol * scale, 1e-5))


@dataclass
class Export:
    """One export: the module, its named example inputs (batch first), metadata, parity inputs."""
    model: nn.Module
    inputs: dict[str, torch.Tensor]          # example inputs in forward's order
    output: str
    metadata: dict[str, str]
    parity_cases: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    opset: int = 20
    # A fully convolutional denoiser: its image input's H and W are left open in the graph (dynamic),
    # so one export serves every image size; `pinned` is the metadata to fall back to, with H×W fixed,
    # where torch.export cannot keep them open.
    spatial: bool = False
    pinned: dict[str, str] = field(default_factory=dict)


SPATIAL_CASE = "larger images"  # the parity case at another H×W, only for spatial exports


def _export_program(job: Export):
    if job.spatial:
        try:
            return _export_program_once(job)
        except ExportError as exc:
            info(f"H and W stay fixed: torch.export cannot leave them open ({exc})")
            job.spatial, job.metadata = False, job.pinned
            job.parity_cases = [case for case in job.parity_cases if case[0] != SPATIAL_CASE]
    return _export_program_once(job)


def _export_program_once(job: Export):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")
    spatial = {0: batch, 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # x and t share the batch Dim; the exporter notes that it merged the two names.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        try:
            return torch.onnx.export(
                job.model, tuple(job.inputs.values()), None, dynamo=True, verbose=False,
                opset_version=job.opset, input_names=list(job.inputs), output_names=[job.output],
                dynamic_shapes=tuple(spatial if job.spatial and i == 0 else {0: batch}
                                     for i in range(len(job.inputs))), optimize=True)
        except Exception as exc:
            raise export_failure(exc) from exc


def _check(path: Path, job: Export) -> None:
    """onnx.checker, a dynamic batch axis on every input, the declared non-batch shapes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"the exported graph fails onnx.checker: {first}") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    declared = {i.name: i for i in graph.input}
    for name, example in job.inputs.items():
        dims = declared[name].type.tensor_type.shape.dim
        if dims[0].HasField("dim_value"):
            raise ExportError(f"exported input '{name}' has a fixed batch size; the model's forward "
                              f"must not hard-code it")
        if job.spatial and name == next(iter(job.inputs)):  # C fixed, H and W open
            if dims[1].dim_value != example.shape[1] or any(d.HasField("dim_value") for d in dims[2:]):
                raise ExportError(f"exported input '{name}' should be N,{example.shape[1]},H,W with H and W "
                                  f"open; it is {[d.dim_value or d.dim_param for d in dims]}")
            continue
        if [d.dim_value for d in dims[1:]] != list(example.shape[1:]):
            raise ExportError(f"exported input '{name}' has shape {[d.dim_value for d in dims[1:]]}, "
                              f"expected {list(example.shape[1:])}")


def _onnx_outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def export_and_check(job: Export, out: Path, force: bool = False) -> dict:
    """Export, describe, check and verify; write `out` (and its .data file if any) only on success.

    Returns a summary: ok (parity passed), written, parity per case, size and external data files.
    A failed parity check prints one error line and writes nothing, unless force. Raises
    ExportError on bad input.
    """
    model = job.model.eval()
    program = _export_program(job)
    # The exporter tags the model with debugging metadata; the srtool.* keys are ours.
    program.model.metadata_props.clear()
    program.model.metadata_props.update(job.metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / out.name
        # One file unless the weights approach protobuf's 2 GB limit (64 MiB left for the graph);
        # then they go to <name>.data beside it.
        weight_bytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                           if v.const_value is not None)
        program.save(staged, external_data=weight_bytes >= PROTOBUF_LIMIT - 2 ** 26)
        side = sorted(p for p in Path(tmp).iterdir() if p != staged)
        _check(staged, job)
        results = []
        for label, feeds in job.parity_cases:
            with torch.no_grad():
                reference = model(*(torch.from_numpy(feeds[n]) for n in job.inputs)).float().numpy()
            results.append(compare(label, reference, _onnx_outputs(staged, feeds)))
            info(results[-1].line())
        ok = all(r.ok for r in results)
        summary = {"path": str(out), "ok": ok, "written": ok or force,
                   "parity": {r.label: {"max_abs": r.max_abs, "scale": r.scale} for r in results}}
        if not summary["written"]:
            print(f"error: parity check failed; {out} not written (--force writes it anyway)",
                  file=sys.stderr)
            return summary
        for stale in (out, out.with_name(out.name + ".data")):
            stale.unlink(missing_ok=True)
        for path in side:
            shutil.move(str(path), out.parent / path.name)
        shutil.move(str(staged), out)
    size = out.stat().st_size / 2 ** 20
    if side:
        info(f"wrote {out} ({size:.1f} MiB) and its weights in {', '.join(p.name for p in side)} "
             f"(over protobuf's 2 GB limit for one file: keep the files together)")
    else:
        info(f"wrote {out} ({size:.1f} MiB, weights embedded; onnx.checker passed)")
    summary.update(bytes=out.stat().st_size, external_data=[p.name for p in side])
    return summary


def noisy_images(rng: np.random.Generator, batch: int, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Smooth random [0,1] images plus N(0, σ²) noise, unclipped: what a denoiser sees in srtool."""
    coarse = rng.random((batch, shape[0], max(1, shape[1] // 4), max(1, shape[2] // 4)))
    clean = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=tuple(shape[1:]),
                                            mode="bilinear", align_corners=False).numpy()
    return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)


def diffusion_job(model: nn.Module, spec: DiffusionSpec, input_shape: Sequence[int],
                  metadata: dict[str, str], sigmas: Sequence[float] = PARITY_SIGMAS,
                  batch: int = 2, seed: int = 0, opset: int = 20) -> Export:
    """An Export for an (x, t) -> ε model, with srtool's one-shot inputs as parity cases."""
    c, h, w = input_shape
    abar = spec.alphas_cumprod()
    probe = _probe(model, (torch.zeros(EXPORT_BATCH, c, h, w), torch.zeros(EXPORT_BATCH)))
    if probe.ndim != 4 or probe.shape[0] != EXPORT_BATCH or tuple(probe.shape[2:]) != (h, w):
        raise ExportError(f"the model maps N,{c},{h},{w} to {list(probe.shape)}; a diffusion UNet "
                          f"must return N,{c},{h},{w} (or N,{2 * c},{h},{w} with learned variance)")
    want = 2 * c if spec.learn_sigma else c
    if probe.shape[1] != want:
        raise ExportError(f"the model returns {probe.shape[1]} channels; with learn_sigma="
                          f"{spec.learn_sigma} it should return {want}")
    rng = np.random.default_rng(seed)
    cases = []
    for sigma in sigmas:
        t = spec.one_shot_step(sigma)
        noisy = noisy_images(rng, batch, input_shape, sigma)
        x_t = (np.sqrt(abar[t]) * (2.0 * noisy - 1.0)).astype(np.float32)
        cases.append((f"sigma {sigma:g} (t* {t})",
                      {"x": x_t, "t": np.full(batch, spec.model_timestep(t), np.float32)}))
    meta = {**metadata, "srtool.kind": "diffusion", "srtool.input_shape": f"{c},{h},{w}",
            "srtool.diffusion": spec.metadata()}
    example = {"x": torch.randn(EXPORT_BATCH, c, h, w), "t": torch.full((EXPORT_BATCH,), 100.0)}
    return Export(model, example, "eps", meta, cases, opset)


def denoiser_job(model: nn.Module, input_shape: Sequence[int], metadata: dict[str, str],
                 noise_level_shape: Sequence[int] | None = None, sigma_scale: float = 1.0,
                 sigma_range: tuple[float, float] | None = None,
                 sigmas: Sequence[float] = PARITY_SIGMAS, batch: int = 2, seed: int = 0,
                 opset: int = 20) -> Export:
    """An Export for an image-to-image denoiser (noise level as second input if non-blind)."""
    shape = tuple(input_shape)
    example = {"input": torch.rand(EXPORT_BATCH, *shape)}
    if noise_level_shape is not None:
        example["noise_level"] = torch.full((EXPORT_BATCH, *noise_level_shape), 0.25 * sigma_scale)
    probe = _probe(model, tuple(example.values()))
    if tuple(probe.shape) != (EXPORT_BATCH, *shape):
        raise ExportError(f"the denoiser maps N,{','.join(map(str, shape))} to {list(probe.shape)}; "
                          f"its output must have the input's shape")
    if sigma_range is not None:
        sigmas = [s for s in sigmas if sigma_range[0] <= s <= sigma_range[1]] or [sum(sigma_range) / 2]
    rng = np.random.default_rng(seed)
    cases = []
    for sigma in sigmas:
        feeds = {"input": noisy_images(rng, batch, shape, sigma)}
        if noise_level_shape is not None:
            feeds["noise_level"] = np.full((batch, *noise_level_shape), sigma * sigma_scale, np.float32)
        cases.append((f"sigma {sigma:g}", feeds))
    extra = {}
    if sigma_scale != 1.0 or sigma_range is not None:
        extra = {"sigma_scale": sigma_scale}
        if sigma_range is not None:
            extra["sigma_range"] = list(sigma_range)
    meta = {**metadata, "srtool.kind": "denoiser"}
    if extra:
        meta["srtool.denoiser"] = json.dumps(extra)
    pinned = {**meta, "srtool.input_shape": ",".join(map(str, shape))}
    # Fully convolutional (a blind denoiser that keeps the shape of an input twice as high and wide):
    # H and W stay open, so Smooth-Reduce on larger images needs no re-export; srtool then reads the
    # open sizes from the graph, so no srtool.input_shape pins them.
    larger = (shape[0], 2 * shape[1], 2 * shape[2])
    spatial = noise_level_shape is None and _keeps_shape(model, larger)
    if spatial:
        cases.append((SPATIAL_CASE, {"input": noisy_images(rng, batch, larger, sigmas[0])}))
    return Export(model, example, "denoised", meta if spatial else pinned, cases, opset, spatial, pinned)


def _keeps_shape(model: nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        with torch.no_grad():
            out = model.eval()(torch.rand(EXPORT_BATCH, *shape))
    except Exception:  # the network wants its trained size: H and W stay fixed
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape) == (EXPORT_BATCH, *shape)


def _probe(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    shapes = " and ".join(f"N,{','.join(map(str, x.shape[1:]))}" for x in inputs)
    try:
        with torch.no_grad():
            out = model.eval()(*inputs)
    except Exception as exc:
        raise ExportError(f"the model fails on inputs of shape {shapes}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model returns a {type(out).__name__}, not one tensor")
    return out


def export_diffusion(model: nn.Module, spec: DiffusionSpec, out: Path,
                     extra_metadata: dict[str, str] | None = None, force: bool = False,
                     **options) -> dict:
    """Export a UNet built in Python (models/train_diffusion.py uses this)."""
    input_shape = (model.in_channels, model.image_size, model.image_size)
    job = diffusion_job(model, spec, input_shape, dict(extra_metadata or {}), **options)
    return export_and_check(job, out, force)


def export_fp16(fp32: Path, job: Export, force: bool = False) -> dict:
    """`<name>_fp16.onnx` beside the exported float32 file: its weights read and rounded a tensor at a
    time (exporters.fp16.load_as_fp16: the fp32 ADM UNet is past protobuf's 2 GiB), checked against
    PyTorch on the same parity inputs at FP16_RTOL, written only if that passes (unless force)."""
    from exporters.fp16 import convert_to_fp16, load_as_fp16

    out = fp32.with_name(fp32.stem + "_fp16.onnx")
    proto, clipped = load_as_fp16(fp32)
    proto, more = convert_to_fp16(proto)
    clipped += more
    for prop in proto.metadata_props:
        if prop.key == "srtool.precision":
            prop.value = "float16"
            break
    else:
        proto.metadata_props.add(key="srtool.precision", value="float16")
    if clipped:
        info(f"--fp16: {clipped:,} weights beyond float16's range were clipped to ±{65504}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / out.name
        onnx.save_model(proto, str(staged))
        del proto
        results = []
        model = job.model.eval()
        for label, feeds in job.parity_cases:
            with torch.no_grad():
                reference = model(*(torch.from_numpy(feeds[n]) for n in job.inputs)).float().numpy()
            results.append(compare(f"fp16 {label}", reference, _onnx_outputs(staged, feeds), FP16_RTOL))
            info(results[-1].line())
        ok = all(r.ok for r in results)
        summary = {"path": str(out), "ok": ok, "written": ok or force, "clipped": clipped,
                   "parity": {r.label: {"max_abs": r.max_abs, "scale": r.scale} for r in results}}
        if not summary["written"]:
            print(f"error: fp16 parity check failed; {out} not written (--force writes it anyway)",
                  file=sys.stderr)
            return summary
        shutil.move(str(staged), out)
    info(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, float16 weights, float32 inputs and output)")
    return summary


# ---- checkpoints --------------------------------------------------------------------------------

def load_unet(path: Path, unet: dict, trust: bool) -> UNetModel:
    """Build the UNet and load a checkpoint into it, strictly; float16 weights become float32."""
    state_dict, _ = unwrap_checkpoint(load_checkpoint(path, trust), path)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        net = UNetModel(**unet)
    except ValueError as exc:   # e.g. channels not divisible by num_head_channels
        raise ExportError(f"these UNet flags do not build a network: {exc}") from None
    fit_state_dict(net, state_dict, "", "the UNet with these flags")
    return net.eval()


# ---- command line -------------------------------------------------------------------------------

def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'")


# The flags of the repos' scripts (script_util.py), which override the preset's values.
UNET_FLAGS = {
    "image_size": int, "num_channels": int, "num_res_blocks": int, "num_heads": int,
    "num_head_channels": int, "num_heads_upsample": int, "attention_resolutions": str,
    "channel_mult": str, "learn_sigma": _bool, "use_scale_shift_norm": _bool,
    "resblock_updown": _bool, "use_new_attention_order": _bool,
}
DIFFUSION_FLAGS = {"diffusion_steps": int, "noise_schedule": str, "rescale_timesteps": _bool}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("diffusion"),
        description="Export an improved-/guided-diffusion UNet checkpoint to an ONNX model for "
                    "srtool --diffusion, then check it against PyTorch on noisy inputs.")
    parser.add_argument("checkpoint", type=Path, help="the .pt state dict")
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS),
                        help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    for name, kind in {**UNET_FLAGS, **DIFFUSION_FLAGS}.items():
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help="override the preset (the repos' flag of the same name)")
    parser.add_argument("-o", "--out", type=Path, help="output .onnx (default: <preset>.onnx)")
    parser.add_argument("--parity-batch", type=int, default=2, help="images per parity case")
    parser.add_argument("--parity-sigmas", default=",".join(map(str, PARITY_SIGMAS)),
                        help="σ of the noisy parity inputs, [0,1] pixel units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=20)
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that pickle arbitrary objects (runs their code!)")
    parser.add_argument("--force", action="store_true",
                        help="write the model even if the parity check fails (exit code 1)")
    parser.add_argument("--fp16", action="store_true",
                        help="also write <out>_fp16.onnx (float16 weights, float32 inputs/output), "
                             "checked against PyTorch like the float32 file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def configure(args: argparse.Namespace) -> tuple[dict, DiffusionSpec]:
    """The preset, with any flag given on the command line replacing its value."""
    preset = PRESETS[args.preset]
    unet, spec = dict(preset.unet), preset.spec
    size = args.image_size or unet["image_size"]
    unet["image_size"] = size
    if args.channel_mult:
        unet["channel_mult"] = tuple(_safe(float, v) for v in args.channel_mult.split(","))
    elif args.image_size:
        unet["channel_mult"] = _safe(default_channel_mult, size)
    # attention_resolutions are feature-map sizes: the preset's sizes carry over to another
    # image_size unless given.
    resolutions = args.attention_resolutions or ",".join(
        str(preset.unet["image_size"] // r) for r in preset.unet["attention_resolutions"])
    unet["attention_resolutions"] = _safe(attention_rates, size, resolutions)
    for flag, key in (("num_channels", "model_channels"), ("num_res_blocks", "num_res_blocks"),
                      ("num_heads", "num_heads"), ("num_head_channels", "num_head_channels"),
                      ("num_heads_upsample", "num_heads_upsample"),
                      ("use_scale_shift_norm", "use_scale_shift_norm"),
                      ("resblock_updown", "resblock_updown"),
                      ("use_new_attention_order", "use_new_attention_order")):
        if getattr(args, flag) is not None:
            unet[key] = getattr(args, flag)
    learn_sigma = spec.learn_sigma if args.learn_sigma is None else args.learn_sigma
    unet["out_channels"] = unet["in_channels"] * (2 if learn_sigma else 1)
    spec = DiffusionSpec(
        schedule=args.noise_schedule or spec.schedule,
        steps=args.diffusion_steps or spec.steps,
        rescale_timesteps=spec.rescale_timesteps if args.rescale_timesteps is None
        else args.rescale_timesteps,
        learn_sigma=learn_sigma)
    named_alphas_cumprod(spec.schedule, spec.steps)   # refuses an unknown schedule now
    unet["dropout"] = 0.0   # inference: dropout is off anyway, and it holds no weights
    return unet, spec


def _safe(fn, *args):
    try:
        return fn(*args)
    except (ValueError, ZeroDivisionError) as exc:
        raise ExportError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unet, spec = configure(args)
    sigmas = [_safe(float, s) for s in args.parity_sigmas.split(",") if s.strip()]
    info(f"{args.preset}: UNet {json.dumps(unet)}; diffusion {spec.metadata()}")
    net = load_unet(args.checkpoint, unet, args.trust_checkpoint)
    info(f"loaded {args.checkpoint} ({sum(p.numel() for p in net.parameters()):,} parameters, "
         f"strict)")
    meta = {"srtool.arch": args.preset, "srtool.unet_config": json.dumps(unet),
            "srtool.source_sha256": sha256_file(args.checkpoint)}
    job = diffusion_job(net, spec, (unet["in_channels"], unet["image_size"], unet["image_size"]),
                        meta, sigmas, args.parity_batch, args.seed, args.opset)
    out = args.out or Path(f"{args.preset}.onnx")
    summary = export_and_check(job, out, args.force)
    if args.fp16 and summary["written"]:
        summary["ok"] &= export_fp16(out, job, args.force)["ok"]
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
