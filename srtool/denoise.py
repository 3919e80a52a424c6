"""Denoisers in front of an off-the-shelf classifier: a Gaussian denoiser, or one diffusion step.

The base classifier becomes classifier ∘ denoiser (DESIGN §11). srtool still adds its own noise, in
the input space at σ, and the denoiser is one more deterministic part of the function that maps a
noisy copy to a vote, so the certificate is Cohen's, unchanged: radius σ·Φ⁻¹(p_lower) × the plan's
factor. A denoiser never changes σ and never adds noise of its own. Noise after a resize or per patch
has no such argument with a denoiser in front, so only noise space `input` is allowed.

Two kinds of model, each an ONNX file with `srtool.*` metadata (docs/denoised.md gives the contract):

- `denoiser`: image → image in [0,1] pixel units (DnCNN, MemNet, …). A non-blind denoiser (FFDNet,
  DRUNet) takes the noise level as a second input; srtool fills it with σ·sigma_scale.
- `diffusion`: an ε-prediction UNet (x_t in [−1,1], t) → ε̂ (or 2C channels when it learns its
  variance; the first C are ε̂). One-shot denoising (Carlini et al. 2023): a noisy copy y = x + δ
  in [0,1] units is noise 2σ in [−1,1] units, and √ᾱ_t·(2y − 1) = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε exactly
  when √((1−ᾱ_t)/ᾱ_t) = 2σ. srtool takes the first step t* with √((1−ᾱ_t)/ᾱ_t) ≥ 2σ (as the DDS
  code does: 145, 259, 396 for σ = 0.25, 0.5, 1.0 on the linear 1000-step schedule), runs the UNet
  once there and returns x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t clamped to [−1, 1], mapped back to [0, 1].
  A t* whose noise does not match 2σ exactly costs accuracy, never soundness.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from .errors import UsageError
from .model import read_onnx, static_dims

KINDS = ("denoiser", "diffusion")
SCHEDULES = ("linear", "cosine")


# -- noise schedules -----------------------------------------------------------------------------------

def named_schedule(name: str, steps: int) -> np.ndarray:
    """ᾱ_t for t = 0 … steps−1 of improved-/guided-diffusion's named schedules (float64).

    linear: β from 1e-4 to 0.02 scaled by 1000/steps (Ho et al.'s, for any number of steps);
    cosine: Nichol & Dhariwal's ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), each β capped at 0.999.
    """
    if name == "linear":
        scale = 1000 / steps
        betas = np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    elif name == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - alpha_bar(i + 1) / alpha_bar(i), 0.999) for i in range(steps)])
    else:
        raise UsageError(f"unknown noise schedule {name!r} (srtool knows {', '.join(SCHEDULES)})")
    return np.cumprod(1.0 - betas)


def one_shot_timestep(alphas_cumprod: np.ndarray, sigma: float) -> int:
    """The first step t whose noise in [−1,1] units, √((1−ᾱ_t)/ᾱ_t), reaches 2σ."""
    ratios = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    reached = np.flatnonzero(ratios >= 2 * sigma)
    if not len(reached):
        raise UsageError(f"σ = {sigma:g} is beyond the diffusion model's schedule: its last step has noise "
                         f"{ratios[-1] / 2:.3g} in [0,1] pixel units")
    return int(reached[0])


# -- the model and its contract ------------------------------------------------------------------------

@dataclass
class Denoiser:
    """A loaded denoiser or diffusion UNet, with what srtool needs to splice it into the graph."""
    kind: str  # "denoiser" or "diffusion"
    path: object
    proto: onnx.ModelProto
    sha256: str
    opset: int
    input_name: str  # the image (denoiser: [0,1] units; diffusion: x_t in [−1,1])
    output_name: str
    input_shape: tuple[int | None, ...]  # C, H, W; None where the model leaves a size open
    level_input: str | None = None  # non-blind denoisers: the noise-level input
    level_shape: tuple[int, ...] = ()  # its dims after the batch axis
    sigma_scale: float = 1.0  # the level fed is σ·sigma_scale
    sigma_range: tuple[float, float] | None = None  # σ the denoiser was made for ([0,1] units)
    timestep_input: str | None = None  # diffusion: the timestep input and its element type
    timestep_type: int = TensorProto.FLOAT
    alphas_cumprod: np.ndarray | None = None
    schedule: dict = field(default_factory=dict)  # the metadata's description, for the results
    rescale_timesteps: bool = False  # the UNet takes t·1000/T (improved-diffusion)
    learn_sigma: bool = False  # 2C output channels; the first C are ε̂

    @property
    def name(self) -> str:
        return self.path.stem

    def check_image(self, shape: tuple[int, int, int]) -> None:
        """Refuse inputs (C, H, W) the model does not take: it runs on the noisy input itself."""
        if any(want is not None and want != got for want, got in zip(self.input_shape, shape)):
            want = "×".join("?" if d is None else str(d) for d in self.input_shape)
            raise UsageError(f"the {self.kind} model {self.path.name} takes {want} inputs, the images are "
                             f"{'×'.join(map(str, shape))} (see --image-size)")

    def timestep(self, sigma: float, override: int | None = None) -> int | None:
        """The diffusion step for σ (or the user's `override`); None for a plain denoiser."""
        if self.kind != "diffusion":
            return None
        steps = len(self.alphas_cumprod)
        if override is None:
            return one_shot_timestep(self.alphas_cumprod, sigma)
        if not 0 <= override < steps:
            raise UsageError(f"--timestep must lie in 0 … {steps - 1} (the schedule has {steps} steps)")
        return int(override)

    def check_sigma(self, sigma: float) -> None:
        if self.sigma_range is not None and not self.sigma_range[0] <= sigma <= self.sigma_range[1]:
            low, high = self.sigma_range
            raise UsageError(f"{self.path.name} denoises noise levels {low:g} to {high:g} ([0,1] pixel units), "
                             f"not σ = {sigma:g}")

    def describe(self, sigma: float, timestep: int | None) -> dict:
        """What the results' metadata records of it."""
        out = {"kind": self.kind, "model": str(self.path), "model_sha256": self.sha256}
        if self.kind == "diffusion":
            ratio = math.sqrt((1 - self.alphas_cumprod[timestep]) / self.alphas_cumprod[timestep])
            out.update(timestep=timestep, schedule=self.schedule, steps=len(self.alphas_cumprod),
                       noise_at_timestep=ratio / 2)  # in [0,1] units: compare with σ
        elif self.level_input:
            out["level_fed"] = sigma * self.sigma_scale
        return out


def _meta_json(meta: dict, key: str, path) -> dict:
    if key not in meta:
        return {}
    try:
        value = json.loads(meta[key])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UsageError(f"{path.name}: metadata {key} must be a JSON object")
    return value


def load_denoiser(source, kind: str) -> Denoiser:
    """A denoiser (kind 'denoiser') or ε-prediction UNet (kind 'diffusion') from a file or bytes."""
    path, raw, proto, sha256 = read_onnx(source)
    what = f"{path.name}: the {'--diffusion' if kind == 'diffusion' else '--denoiser'} model"
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(proto.graph.output) < 1:
        raise UsageError(f"{what} has no output")
    meta = {p.key: p.value for p in proto.metadata_props}
    declared = meta.get("srtool.kind")
    if declared is not None and declared != kind:
        raise UsageError(f"{what} says it is a {declared} (srtool.kind); use --{declared}")
    # A denoiser's image is its first input (a non-blind one's noise level the second); a UNet's x_t
    # is its one rank-4 input, beside the rank-1 timesteps.
    images = inputs[:1] if kind == "denoiser" else [i for i in inputs if len(static_dims(i)) == 4]
    if len(images) != 1 or len(static_dims(images[0])) != 4 or images[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UsageError(f"{what} must take one float32 N×C×H×W image input"
                         + (" (its first input)" if kind == "denoiser" else ""))
    image = images[0]
    shape = tuple(static_dims(image)[1:])
    if "srtool.input_shape" in meta:
        try:
            shape = tuple(int(v) for v in meta["srtool.input_shape"].split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise UsageError(f"{what}: srtool.input_shape must be C,H,W (three positive whole numbers)")
    output = proto.graph.output[0]
    out_dims = static_dims(output)
    if len(out_dims) != 4:
        raise UsageError(f"{what} must return N×C×H×W, it returns rank {len(out_dims)}")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    denoiser = Denoiser(kind=kind, path=path, proto=proto, sha256=sha256, opset=opset, input_name=image.name,
                        output_name=output.name, input_shape=shape)
    others = [i for i in inputs if i is not image]
    if kind == "denoiser":
        _read_level(denoiser, others, _meta_json(meta, "srtool.denoiser", path), what)
        expected = list(shape)
    else:
        _read_diffusion(denoiser, others, _meta_json(meta, "srtool.diffusion", path), what)
        expected = [shape[0] * (2 if denoiser.learn_sigma else 1), *shape[1:]]
    if any(a is not None and b is not None and a != b for a, b in zip(out_dims[1:], expected)):
        raise UsageError(f"{what} returns {'×'.join('?' if d is None else str(d) for d in out_dims[1:])} per "
                         f"image, but must return {'×'.join('?' if d is None else str(d) for d in expected)}"
                         + (" (ε, and as many variance channels with learn_sigma)" if kind == "diffusion" else
                            " (the shape of its input)"))
    return denoiser


def _read_level(denoiser: Denoiser, others: list, meta: dict, what: str) -> None:
    """A non-blind denoiser's noise-level input, and the metadata saying in which units it is fed."""
    if len(others) > 1:
        raise UsageError(f"{what} takes {len(others) + 1} inputs; a denoiser takes the image and at most a "
                         "noise level")
    scale = meta.get("sigma_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < math.inf:
        raise UsageError(f"{what}: srtool.denoiser sigma_scale must be a positive finite number")
    denoiser.sigma_scale = float(scale)
    if "sigma_range" in meta:
        low_high = meta["sigma_range"]
        if not (isinstance(low_high, list) and len(low_high) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in low_high)
                and 0 <= low_high[0] <= low_high[1] < math.inf):
            raise UsageError(f"{what}: srtool.denoiser sigma_range must be [low, high] in [0,1] pixel units")
        denoiser.sigma_range = (float(low_high[0]), float(low_high[1]))
    if others:
        level = others[0]
        dims = static_dims(level)[1:]
        if level.type.tensor_type.elem_type != TensorProto.FLOAT or None in dims:
            raise UsageError(f"{what}: its noise-level input {level.name!r} must be float32 with fixed sizes "
                             "after the batch axis")
        denoiser.level_input, denoiser.level_shape = level.name, tuple(dims)


def _read_diffusion(denoiser: Denoiser, others: list, meta: dict, what: str) -> None:
    """The UNet's timestep input and its schedule (srtool.diffusion metadata)."""
    steps_inputs = [i for i in others if len(static_dims(i)) == 1]
    if len(others) != 1 or not steps_inputs:
        raise UsageError(f"{what} must take two inputs: x_t (N×C×H×W) and the timestep t (N,)")
    step_type = steps_inputs[0].type.tensor_type.elem_type
    if step_type not in (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32):
        raise UsageError(f"{what}: the timestep input must be float32, int64 or int32")
    denoiser.timestep_input, denoiser.timestep_type = steps_inputs[0].name, step_type
    if not meta:
        raise UsageError(f"{what} has no srtool.diffusion metadata (its noise schedule); export it with "
                         "exporters.diffusion or see docs/denoised.md")
    if "alphas_cumprod" in meta:
        table = meta["alphas_cumprod"]
        ok = isinstance(table, list) and len(table) >= 1 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in table)
        alphas = np.asarray(table, dtype=np.float64) if ok else np.zeros(0)
        _check_alphas(alphas, f"{what}: srtool.diffusion alphas_cumprod")
        denoiser.schedule = {"alphas_cumprod": "table"}
    else:
        name, steps = meta.get("schedule"), meta.get("steps")
        if name not in SCHEDULES or not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 100_000:
            raise UsageError(f"{what}: srtool.diffusion needs schedule ({' or '.join(SCHEDULES)}) and steps "
                             "(a whole number), or alphas_cumprod")
        alphas = named_schedule(name, steps)
        _check_alphas(alphas, f"{what}: srtool.diffusion's {name} schedule of {steps} steps",
                      " (a linear schedule's β reaches 0.02·1000/steps: give it more steps)")
        denoiser.schedule = {"schedule": name, "steps": steps}
    data_range = meta.get("data_range", [-1, 1])
    if data_range != [-1, 1]:
        raise UsageError(f"{what}: srtool.diffusion data_range must be [-1, 1] (the range srtool maps noisy "
                         "copies to)")
    for flag in ("rescale_timesteps", "learn_sigma"):
        if not isinstance(meta.get(flag, False), bool):
            raise UsageError(f"{what}: srtool.diffusion {flag} must be true or false")
    denoiser.alphas_cumprod = alphas
    denoiser.rescale_timesteps = meta.get("rescale_timesteps", False)
    denoiser.learn_sigma = meta.get("learn_sigma", False)
    denoiser.schedule.update(rescale_timesteps=denoiser.rescale_timesteps, learn_sigma=denoiser.learn_sigma)


def _check_alphas(alphas: np.ndarray, what: str, hint: str = "") -> None:
    """ᾱ_t, tables and named schedules alike: every value in (0, 1] and strictly decreasing, or the
    one-shot step would take the square root of a negative number or divide by zero."""
    if not (alphas.size and np.all((alphas > 0) & (alphas <= 1)) and np.all(np.diff(alphas) < 0)):
        raise UsageError(f"{what} must give a strictly decreasing ᾱ_t in (0, 1]{hint}")


@dataclass(frozen=True)
class Denoising:
    """The denoising stage of one run: the model, σ and (diffusion) the step it runs at."""
    model: Denoiser
    sigma: float
    timestep: int | None = None

    @property
    def level(self) -> float:
        """What a non-blind denoiser's noise-level input is fed."""
        return self.sigma * self.model.sigma_scale

    @property
    def timestep_value(self) -> float:
        """What the UNet's timestep input is fed: t, or t·1000/T where the model rescales timesteps."""
        steps = len(self.model.alphas_cumprod)
        return self.timestep * 1000.0 / steps if self.model.rescale_timesteps else float(self.timestep)

    def coefficients(self) -> tuple[float, float]:
        """√ᾱ_t and √(1−ᾱ_t) at the stage's step."""
        alpha = float(self.model.alphas_cumprod[self.timestep])
        return math.sqrt(alpha), math.sqrt(1.0 - alpha)

    def describe(self) -> dict:
        return self.model.describe(self.sigma, self.timestep)


def denoising_for(model: Denoiser, sigma: float, timestep: int | None, image_shape) -> Denoising:
    """The stage for a run at σ on images of `image_shape`, every check made."""
    model.check_image(tuple(image_shape))
    model.check_sigma(sigma)
    return Denoising(model, float(sigma), model.timestep(sigma, timestep))
