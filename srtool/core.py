"""The library core: one frozen description of a run, and the functions that turn it into a pipeline.

    Run (what to certify, how: frozen, validated once)
      → start(run): model, dataset, plan, sampling graph, engine, results writer, inputs to do
      → Job.execute(on_row): pipeline.run, or the Ray engine's loop
      → Job.finish(): the single Parquet table

The command line parses its options into a `Run` and prints; the Python API (srtool.api) builds
one from keyword arguments; `--engine ray` ships the `Run` itself to its workers, which rebuild the
same engine from it. Every check happens in the dataclasses' `__post_init__` (ranges, choices) or in
`start` (what needs the model or the data), and raises a one-line UsageError before anything is
written. Messages name the command-line option (`--image-size`); the Python API raises them in
keyword spelling (`image_size=`), rewritten in one place (api.in_python_spelling, from FLAGS and CHOICES).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .errors import UsageError, shown

ASSETS = resources.files("srtool") / "assets"
DEFAULT_MODEL = "fmnist_cnn_sigma0.25.onnx"
DEFAULT_IMAGES = "fashion_mnist_sample.npz"
DEFAULT_VIDEO_MODEL = "video_demo_sigma0.25.onnx"
DEFAULT_VIDEOS = "video_demo"
# The off-the-shelf demo (docs/denoised.md): a classifier trained without noise, and a small DDPM in
# front of it; `--diffusion` with no file runs the UNet, and either denoiser without --model runs the
# clean classifier. Its σ when neither --sigma nor the model says (the clean model has no srtool.sigma).
DEFAULT_CLEAN_MODEL = "fmnist_cnn_clean.onnx"
DEFAULT_DIFFUSION = "fmnist_ddpm.onnx"
DEMO_SIGMA = 0.25
# n for the shipped data (the default image run takes about 16 s on 2 cores, the video demo about
# 20 s) and for the user's own (Cohen et al.'s n for images, the paper's video setting).
# --noise: "auto" is the exact discrete sampler wherever it applies (8-bit inputs, noise on the input),
# else the float one with a warning; "host" is the float Box–Muller sampler by name, "device" the GPU's.
NOISE_MODES = ("auto", "discrete", "host", "device")
DEMO_N = {"images": 1000, "videos": 500}
PAPER_N = {"images": 100_000, "videos": 1000}
DEFAULT_N0 = {"images": 100, "videos": 10}
# Views per ONNX Runtime call for --batch auto, in float32 values of model input: on CUDA about 64 M,
# so the GPU gets big calls; on the CPU about 128 K, so a call's input and first activations stay in
# the core's caches (the shipped model runs 17% faster at 128 copies per call than at 1000).
AUTO_BATCH_VALUES = {"cuda": 64 * 2**20, "cpu": 2**17}
# Videos: for --batch auto a cap of 16 M floats (64 MB) of noisy video or model input per call, so
# the copies per call shrink as videos get longer (a 300-frame 112×112 video runs one copy per call).
VIDEO_VALUES_PER_CALL = 16 * 2**20

# What the Python API needs to render an option of a message as a keyword (api.in_python_spelling):
# the options that take no value (`--overwrite` → `overwrite=True`) and the words each option takes
# (so that "--device cuda" is an option's value but "--n must" is not). The command line declares
# the same options; tests/test_papercuts.py holds the two together.
FLAGS = frozenset({"overwrite", "sequential", "quiet", "ensemble", "predict", "errors", "json", "ci", "compare",
                   "envelope"})
CHOICES = {"device": ("auto", "cpu", "cuda"), "noise": NOISE_MODES, "sampling": ("dense", "random"),
           "reduce": ("mean", "max"), "noise-space": ("input", "resized", "patch"), "engine": ("local", "ray"),
           "sequential-method": ("union", "staged"), "short": ("error", "loop"),
           "format": ("table", "markdown", "json", "cohen-tsv", "csv")}
KINDS = ("images", "videos")
MODES = ("certify", "predict")
# Upper bounds on options, far beyond any sensible run: past them srtool would hang or fail deep inside
# (a graph node per patch, one arange per sub-video frame, a thread per loop, int64 result columns).
MAX_PATCHES = 1024
MAX_SIDE = 16_384  # pixels: --image-size, --patch-size, --resize
MAX_FRAMES = 100_000
MAX_THREADS = 1024
MAX_COPIES = 2**63 - 1


def asset(name: str) -> Path:
    return Path(str(ASSETS / name))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _choice(value, choices, option: str) -> None:
    check(isinstance(value, str) and value in choices, f"{option} must be one of {', '.join(map(str, choices))}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def _whole(value, option: str) -> None:
    """1000.0 or "1000" is a mistake of type, not of size: say so rather than "must be at least 1"."""
    check(_is_int(value), f"{option} must be a whole number, not {shown(value)}")


def _number(value, option: str) -> None:
    """"0.25" or None where a number is meant: say what is wrong with it, not what range it misses."""
    check(_is_number(value), f"{option} must be a finite number, not {shown(value)}")


def _flag(value, option: str) -> None:
    """Python's truthiness would read "no" as yes: only True or False turn a mode on or off."""
    check(isinstance(value, bool), f"{option} must be True or False, not {shown(value)}")


def _path_or_none(value, option: str) -> None:
    check(value is None or isinstance(value, (str, os.PathLike)), f"{option} must be a file path, not {shown(value)}")


def _positive_or_none(value, option: str, most: int | None = None) -> None:
    if value is not None:
        _whole(value, option)
    check(value is None or value >= 1, f"{option} must be a positive integer")
    if most is not None:
        check(value is None or value <= most, f"{option} must be at most {most:,}")


def _plain(description) -> None:
    """Replace numpy scalars (np.int64(1000), np.float32(0.25)) in a frozen dataclass by Python's own,
    so that every later step (noise stream arithmetic, JSON metadata, messages) sees plain numbers."""
    for name in (f.name for f in dataclasses.fields(description)):
        value = getattr(description, name)
        if isinstance(value, np.generic):
            object.__setattr__(description, name, value.item())


# -- the description of a run ------------------------------------------------------------------------

@dataclass(frozen=True)
class ImagePlan:
    """How an image becomes the views the base model sees (Smooth-Reduce; patches=1 is plain RS)."""
    patches: int = 1
    patch_size: int | None = None  # default: the model's input size
    resize: int | None = None  # shorter side, in the graph, before cutting patches
    sampling: str = "dense"
    reduce: str = "mean"
    noise_space: str = "input"
    image_size: int | None = None  # resize on load (shorter side, centre crop); certificates hold for it

    def __post_init__(self):
        from .plan import NOISE_SPACES, REDUCERS, SAMPLINGS
        _plain(self)
        _whole(self.patches, "--patches")
        check(self.patches >= 1, "--patches must be at least 1")
        check(self.patches <= MAX_PATCHES, f"--patches must be at most {MAX_PATCHES:,}")
        _positive_or_none(self.patch_size, "--patch-size", MAX_SIDE)
        _positive_or_none(self.resize, "--resize", MAX_SIDE)
        _positive_or_none(self.image_size, "--image-size", MAX_SIDE)
        _choice(self.sampling, SAMPLINGS, "--sampling")
        _choice(self.reduce, REDUCERS, "--reduce")
        _choice(self.noise_space, NOISE_SPACES, "--noise-space")

    @property
    def smooth_reduce(self) -> bool:
        return self.patches > 1 or self.resize is not None or self.patch_size is not None

    def tag(self) -> str:
        """Short name for default output files: rs, mean4-input, …"""
        return f"{self.reduce}{self.patches}-{self.noise_space}" if self.smooth_reduce else "rs"


@dataclass(frozen=True)
class VideoPlan:
    """How a video becomes sub-videos of chunks (the paper's Smooth-Reduce-(t, m); None: whole video)."""
    subvideo: int | None = None  # frames per sub-video, a multiple of chunk; None: RS of the whole video
    chunk: int | None = None  # default: the model's frames
    stride: int | None = None  # default: half a sub-video
    reduce: str = "mean"
    noise_space: str = "input"
    short: str = "error"  # a video shorter than one sub-video: an error row, or "loop" from its start

    def __post_init__(self):
        from .plan import REDUCERS
        _plain(self)
        _positive_or_none(self.subvideo, "--subvideo", MAX_FRAMES)
        _positive_or_none(self.chunk, "--chunk", MAX_FRAMES)
        _positive_or_none(self.stride, "--stride")
        _choice(self.reduce, REDUCERS, "--reduce")
        _choice(self.noise_space, ("input", "patch"), "--noise-space")
        _choice(self.short, ("error", "loop"), "--short")


@dataclass(frozen=True)
class Statistics:
    """What decides the numbers: CERTIFY or PREDICT, σ, α, sample sizes and the seed of the noise."""
    mode: str = "certify"
    sigma: float | None = None  # default: the model's srtool.sigma
    alpha: float = 0.001
    n0: int | None = None  # default 100 (images) or 10 (videos); unused by predict
    n: int | None = None  # default Cohen's 100,000 (images) or 1,000 (videos); less on the shipped data
    seed: int = 0
    # Sequential CERTIFY (docs/sequential.md): n becomes the budget; stop once the answer is known.
    sequential: bool = False
    radii: tuple[float, ...] | None = None  # decide these radii (input space); None: estimate the radius
    tolerance: float = 0.02  # radius estimation: stop within this share of the best reachable radius
    sequential_method: str = "union"

    def __post_init__(self):
        _plain(self)
        _choice(self.mode, MODES, "mode")
        if self.sigma is not None:
            _number(self.sigma, "--sigma")
        check(self.sigma is None or self.sigma > 0, "--sigma must be positive")
        _number(self.alpha, "--alpha")
        check(0 < self.alpha < 1, "--alpha must lie strictly between 0 and 1")
        for option in ("n", "n0"):
            if getattr(self, option) is not None:
                _whole(getattr(self, option), f"--{option}")
        check(self.n is None or self.n >= 1, "--n must be at least 1")
        check(self.n0 is None or self.n0 >= 1, "--n0 must be at least 1")
        check(self.n is None or self.n <= MAX_COPIES, "--n must be at most 2^63-1")
        check(self.n0 is None or self.n0 <= MAX_COPIES, "--n0 must be at most 2^63-1")
        _whole(self.seed, "--seed")
        check(0 <= self.seed < 2**63, "--seed must be an integer from 0 to 2^63-1")
        from .sequential import METHODS
        _flag(self.sequential, "--sequential")
        check(not self.sequential or self.mode == "certify", "--sequential applies to certify only")
        if self.radii is not None:
            check(self.sequential, "--radii applies to --sequential runs (srtool report takes its own --radii)")
            given = np.atleast_1d(np.asarray(self.radii, dtype=object))
            check(given.ndim == 1 and all(_is_number(r) for r in given), "--radii must be positive numbers")
            radii = tuple(float(r) for r in given)
            check(radii and all(r > 0 for r in radii), "--radii must be positive numbers")
            object.__setattr__(self, "radii", tuple(sorted(set(radii))))
        _number(self.tolerance, "--tolerance")
        check(self.tolerance > 0, "--tolerance must be positive")
        _choice(self.sequential_method, METHODS, "--sequential-method")


@dataclass(frozen=True)
class Runtime:
    """Where and how fast: none of it changes a number in the table."""
    batch: int | str = "auto"  # noisy copies per ONNX Runtime call
    device: str = "auto"
    noise: str = "auto"  # NOISE_MODES: the sampler, resolved per run by noise_sampler()
    threads: int = 0  # CPU sampling loops (0: one per core)
    in_flight: int | None = None  # inputs the scheduler keeps open at most (None: engine.MAX_IN_FLIGHT)
    engine: str = "local"  # or "ray"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    session_options: dict = field(default_factory=dict, compare=False, hash=False)  # onnxruntime.SessionOptions attributes
    provider_options: dict = field(default_factory=dict, compare=False, hash=False)  # e.g. {"device_id": 1} for CUDA

    def __post_init__(self):
        from .engine import DEVICES
        _plain(self)
        if not (isinstance(self.batch, str) and self.batch == "auto"):
            check(_is_int(self.batch), f"--batch must be a positive integer or 'auto', not {shown(self.batch)}")
        check(self.batch == "auto" or self.batch >= 1,
              "--batch must be a positive integer or 'auto'")
        _choice(self.device, DEVICES, "--device")
        _choice(self.noise, NOISE_MODES, "--noise")
        _whole(self.threads, "--threads")
        check(self.threads >= 0, "--threads must be 0 (automatic) or more")
        check(self.threads <= MAX_THREADS, f"--threads must be at most {MAX_THREADS:,} (0: one per core)")
        check(self.in_flight is None or (_is_int(self.in_flight) and self.in_flight >= 1),
              "in_flight must be a positive integer")
        _choice(self.engine, ("local", "ray"), "--engine")
        if self.engine != "ray":
            given = [f"--{name.replace('_', '-')}" for name in ("address", "workers", "gpus_per_worker",
                                                                 "cpus_per_worker") if getattr(self, name) is not None]
            check(not given, f"{', '.join(given)}: for --engine ray only")
        if self.workers is not None:
            _whole(self.workers, "--workers")
        check(self.workers is None or self.workers >= 1, "--workers must be at least 1")
        for option in ("cpus_per_worker", "gpus_per_worker"):
            if getattr(self, option) is not None:
                _number(getattr(self, option), f"--{option.replace('_', '-')}")
        check(self.cpus_per_worker is None or self.cpus_per_worker > 0, "--cpus-per-worker must be positive")
        check(self.gpus_per_worker is None or self.gpus_per_worker >= 0, "--gpus-per-worker must be 0 or more")


@dataclass(frozen=True)
class Output:
    """Which inputs, and where their rows go."""
    out: str | None = None  # default: runs/<model>-<mode>-<what differs>.parquet
    overwrite: bool = False
    skip: int = 1
    max: int | None = None  # stop before this input index

    def __post_init__(self):
        _plain(self)
        _path_or_none(self.out, "--out")
        check(self.out is None or Path(self.out).suffix in ("", ".parquet"),
              f"--out {shown(str(self.out))}: srtool writes Parquet; name the file *.parquet (srtool show RUN "
              "--format csv|json converts it)")
        _flag(self.overwrite, "--overwrite")
        _whole(self.skip, "--skip")
        check(self.skip >= 1, "--skip must be at least 1")
        if self.max is not None:
            _whole(self.max, "--max")
        check(self.max is None or self.max >= 0, "--max must be 0 or more")


@dataclass(frozen=True)
class Run:
    """One run: model, data source, plan, statistics, runtime and output. Frozen; checked on creation."""
    kind: str = "images"  # or "videos"
    model: str | tuple[str, ...] | None = None  # default: the shipped model; several: an ensemble
    consensus: int | None = None  # ensembles: the first K members decide a copy where they agree
    # classifier ∘ denoiser (srtool.denoise): a Gaussian denoiser, or a diffusion UNet run once at the
    # step matching σ (or at `timestep`); shared by every view and ensemble member
    denoiser: str | None = None
    diffusion: str | None = None
    timestep: int | None = None
    data: str | None = None  # images or videos; default: the shipped sample / demo
    labels: str | None = None  # CSV of filename,label for a flat folder
    split: str | None = None  # videos: UCF-101 split list
    plan: ImagePlan | VideoPlan | None = None  # default: RS of the whole input
    statistics: Statistics = field(default_factory=Statistics)
    runtime: Runtime = field(default_factory=Runtime)
    output: Output = field(default_factory=Output)

    def __post_init__(self):
        _plain(self)
        _choice(self.kind, KINDS, "kind")
        if self.model is not None and not isinstance(self.model, (str, Path)):
            models = tuple(str(m) for m in self.model)
            check(len(models) >= 1, "--model: give at least one model")
            object.__setattr__(self, "model", models if len(models) > 1 else models[0])
        elif self.model is not None:
            object.__setattr__(self, "model", str(self.model))
        if self.consensus is not None:
            _whole(self.consensus, "--consensus")
            check(2 <= self.consensus < len(self.models),
                  "--consensus K needs an ensemble of more than K models and K ≥ 2")
        if self.plan is None:
            object.__setattr__(self, "plan", ImagePlan() if self.kind == "images" else VideoPlan())
        expected = ImagePlan if self.kind == "images" else VideoPlan
        check(isinstance(self.plan, expected), f"a {self.kind} run takes a {expected.__name__}")
        check(self.kind == "videos" or self.split is None, "--split applies to videos")
        for name in ("labels", "split", "denoiser", "diffusion"):  # file paths, kept as text: they go into
            _path_or_none(getattr(self, name), f"--{name}")              # the results' JSON metadata
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        check(self.denoiser is None or self.diffusion is None, "give --denoiser or --diffusion, not both")
        check(self.timestep is None or (_is_int(self.timestep) and self.timestep >= 0 and self.diffusion),
              "--timestep takes a step (0 or more) of a --diffusion model")
        if self.denoising_model:
            check(self.kind == "images", "--denoiser and --diffusion apply to images (srtool video has no "
                                         "denoiser stage; see docs/denoised.md)")
            check(self.plan.noise_space == "input",
                  f"--noise-space {self.plan.noise_space} with a denoiser has no radius proof: the noise must "
                  "be added to the input the denoiser sees (use --noise-space input)")

    @property
    def models(self) -> tuple[str, ...]:
        """The model files, one per ensemble member (empty: the shipped default)."""
        return () if self.model is None else (self.model,) if isinstance(self.model, str) else self.model

    @property
    def denoising_model(self) -> tuple[str, str] | None:
        """(kind, file) of the denoiser stage, or None."""
        if self.diffusion is not None:
            return "diffusion", self.diffusion
        return ("denoiser", self.denoiser) if self.denoiser is not None else None

    @property
    def demo(self) -> bool:
        """Running on the shipped data: the smaller default n."""
        return self.data is None

    def replace(self, **sections) -> "Run":
        return dataclasses.replace(self, **sections)


# -- from the description to a pipeline ------------------------------------------------------------

@dataclass
class Job:
    """A started run: everything checked and built, the writer open; `execute` does the work."""
    run: Run
    dataset: object
    plan: object  # a Plan (images) or a VideoLayout (videos: one plan per length)
    counter: object  # engine.VoteCounter
    settings: object  # pipeline.Settings
    writer: object  # results.ResultsWriter, None in a Ray worker
    todo: list[int]
    config: dict
    executor: Callable = None  # pipeline.run's signature: local, or the Ray engine's loop
    warnings: list = field(default_factory=list)  # said before the run: the CLI prints them, the API warns

    def execute(self, on_row: Callable[[dict], None] = lambda row: None) -> None:
        """Evaluate every input still to do, writing each row as it is done. Whatever stops it (Ctrl-C,
        an error) every finished row is kept, and the engine and the file's lock are freed."""
        try:
            self.executor(self.dataset, self.todo, self.plan, self.counter, self.settings, self.writer, on_row)
        except BaseException:
            try:
                self.writer.flush()  # every finished input is kept; the same run resumes
            except Exception:  # the disk is full, say: the error that stopped the run is the one to see
                pass
            self.close()
            raise

    def finish(self):
        """The single results table (pyarrow), sorted by index; the engine is closed."""
        self.counter.close()
        return self.writer.finish()

    def close(self) -> None:
        """Free the engine and the results file's lock; the rows written so far stay for a resume."""
        self.counter.close()
        if self.writer is not None:
            self.writer.close()


def start(run: Run, worker: bool = False, quiet: bool = False) -> Job:
    """Check every input and option and build plan, engine and writer; nothing is written before.

    `worker` (a Ray worker rebuilding the driver's engine): no writer, no inputs to do. `quiet`:
    the Ray engine says nothing about its workers.
    """
    if run.runtime.engine == "ray" and not worker:
        from .ray_engine import RayEngine
        return RayEngine(run, start, quiet).start()
    from .pipeline import run as run_locally
    job = _prepare_images(run, worker) if run.kind == "images" else _prepare_videos(run, worker)
    job.executor = run_locally
    return job


def load_run_models(run: Run) -> list:
    """The run's models (an ensemble's members agree on input and classes); the first sets defaults."""
    from .graph import check_members
    from .model import load_model

    default = DEFAULT_VIDEO_MODEL if run.kind == "videos" else DEFAULT_CLEAN_MODEL if run.denoising_model \
        else DEFAULT_MODEL
    sources = run.models or (asset(default),)
    models = [load_model(source) for source in sources]
    check_members(models)
    return models


def shipped_ensemble(sigma: float) -> list[Path]:
    """The shipped Fashion-MNIST model for σ and the members trained beside it (srtool/assets/ensemble)."""
    first = asset(f"fmnist_cnn_sigma{sigma:.2f}.onnx")
    members = sorted(Path(str(ASSETS / "ensemble")).glob(f"fmnist_cnn_sigma{sigma:.2f}_seed*.onnx"))
    check(first.is_file() and members, f"srtool ships no ensemble for σ = {sigma:g} (see models/fmnist_ensemble.md)")
    return [first, *members]


def settings_for(run: Run, model, noise_mode: str):
    """The statistical settings with the model's and the data's defaults filled in; `noise_mode` is the
    sampler noise_sampler() resolved for the run's data."""
    from .pipeline import Settings

    s = run.statistics
    sigma = s.sigma if s.sigma is not None else model.trained_sigma
    if sigma is None and run.demo:
        sigma = DEMO_SIGMA
    check(sigma is not None, "--sigma is required (the model has no srtool.sigma metadata)")
    n = s.n if s.n is not None else (DEMO_N if run.demo else PAPER_N)[run.kind]
    n0 = (s.n0 if s.n0 is not None else DEFAULT_N0[run.kind]) if s.mode == "certify" else 0
    return Settings(mode=s.mode, sigma=float(sigma), alpha=float(s.alpha), n0=n0, n=n, seed=int(s.seed),
                    sequential=s.sequential, radii=s.radii, tolerance=float(s.tolerance),
                    sequential_method=s.sequential_method,
                    noise="discrete" if noise_mode == "discrete" else "gaussian")


FLOAT_NOISE = "the radii do not hold in floating point (docs/soundness.md)"


def noise_sampler(run: Run, on_grid: bool) -> tuple[str, str | None]:
    """The sampler a run uses ("discrete", "host" or "device") and, for a float one, the warning to give.

    The exact discrete sampler (DESIGN: floating-point soundness) needs the noise on the input itself
    and inputs on the 1/255 grid (`on_grid`: 8-bit images and frames are); --noise auto takes it
    wherever both hold and says why it cannot otherwise. A float sampler asked for by name is used as asked,
    with the same warning: no float sampler is sound against a model crafted to read its structure.
    """
    mode = run.runtime.noise
    space = run.plan.noise_space if run.plan is not None else "input"
    if mode == "discrete":
        check(space == "input", f"--noise discrete draws on the input's 1/255 grid: use --noise-space input, "
                                f"not {space}")
        check(on_grid, "pixel values off the 1/255 grid: --noise discrete needs 8-bit images (or floats k/255); "
                       "use --noise host for other data")
        return "discrete", None
    if mode == "auto":
        if space == "input" and on_grid:
            return "discrete", None
        why = "inputs off the 1/255 grid" if space == "input" else f"noise added in the {space} space"
        return "host", f"float noise sampler ({why}): {FLOAT_NOISE}"
    asked = "asked for by name" if mode == "host" else "drawn on the device"
    return mode, f"float noise sampler ({asked}): {FLOAT_NOISE}"


def sigma_warnings(sigma: float, trained_sigma: float | None) -> list[str]:
    """What to say about a σ that is allowed but probably a mistake: σ is in [0,1] pixel units, so
    σ > 1 drowns any image (a σ meant for 0–255 pixels, say); a σ other than the model's own
    srtool.sigma certifies soundly but with a model that was not trained for that noise."""
    said = []
    if sigma > 1:
        said.append(f"σ = {sigma:g} is larger than the whole [0,1] pixel range (σ is in [0,1] pixel units, "
                    "not 0–255): the noise drowns the image, and radii can exceed the distance between any "
                    "two images")
    if trained_sigma is not None and not np.isclose(sigma, trained_sigma):
        said.append(f"σ = {sigma:g} differs from the σ = {trained_sigma:g} the model was trained with "
                    "(its srtool.sigma): the certificates hold, but expect more abstentions and smaller radii")
    return said


def image_model_shape(model) -> tuple[int, int, int] | None:
    shape = model.input_shape
    check(shape is None or len(shape) == 3, f"{model.path.name} takes videos (N×C×T×H×W): certify them with "
                                            "`srtool video` (srtool.certify(videos=…) in Python)")
    return shape


def image_plan(spec: ImagePlan, model, input_shape: tuple[int, int, int]):
    """The Plan for inputs of `input_shape` from the plan options and the model's input size."""
    from .plan import Plan

    model_shape = image_model_shape(model)
    h, w = input_shape[1:]
    if spec.patch_size is not None:
        patch_hw = (spec.patch_size, spec.patch_size)
        if model_shape is not None and tuple(model_shape[1:]) != patch_hw:
            raise UsageError(f"--patch-size {patch_hw[0]} does not fit the model, which takes "
                             f"{model_shape[1]}×{model_shape[2]}")
    elif model_shape is not None:
        patch_hw = tuple(model_shape[1:])
    else:
        raise UsageError(f"{model.path.name} does not declare its input size; pass --patch-size")
    if spec.resize is not None:
        scale = spec.resize / min(h, w)
        resized_hw = (round(h * scale), round(w * scale))
    else:
        resized_hw = (h, w)
    if not spec.smooth_reduce and patch_hw != (h, w):
        raise UsageError(f"images are {h}×{w} but the model takes {patch_hw[0]}×{patch_hw[1]}; pass "
                         f"--image-size {patch_hw[0]} to resize on load, or --patch-size/--patches to crop")
    return Plan(input_shape=tuple(input_shape), patch_hw=patch_hw, resized_hw=resized_hw, patches=spec.patches,
                sampling=spec.sampling, reduce=spec.reduce, noise_space=spec.noise_space)


def plan_warnings(plan) -> list[str]:
    """What to say about a plan that is allowed but wasteful: k views that are all the same crop (no
    --resize and no smaller --patch-size) cost k times RS for exactly RS's radius. With noise per patch
    they differ (the radius is divided by √k): sound, and said nothing of."""
    if plan.patches > 1 and tuple(plan.resized_hw) == tuple(plan.patch_hw) and plan.noise_space != "patch":
        ph, pw = plan.patch_hw
        return [f"--patches {plan.patches} cuts {plan.patches} identical {ph}×{pw} views of a "
                f"{plan.resized_hw[0]}×{plan.resized_hw[1]} image: {plan.patches}× the cost for exactly RS's radius "
                f"(pass --resize R with R above {min(plan.patch_hw)}, or --patch-size P below {min(plan.resized_hw)})"]
    return []


def auto_batch(plan, n: int, device: str) -> int:
    """Noisy copies per call so that one call's model input stays near AUTO_BATCH_VALUES floats."""
    from .engine import resolve_device

    per_copy = max(int(np.prod(plan.view_shape)) * plan.views_per_copy, int(np.prod(plan.noise_shape)))
    return int(max(1, min(1000, AUTO_BATCH_VALUES[resolve_device(device)] // per_copy, n)))


def vote_counter(run: Run, model, graph, plan, settings, noise_mode: str, values_per_call: int | None = None):
    """The engine for `graph`: batch size resolved, noise mode and ORT options applied; `model` is the
    (first) member whose output width gives the number of classes."""
    from .engine import MAX_IN_FLIGHT, VoteCounter, make_session
    from .model import infer_num_classes

    rt = run.runtime
    batch = auto_batch(plan, settings.n, rt.device) if rt.batch == "auto" else int(rt.batch)
    num_classes = infer_num_classes(model, make_session)
    return VoteCounter(graph, plan, num_classes, batch, rt.device, rt.threads,
                       values_per_call=values_per_call if rt.batch == "auto" else None,
                       device_noise_seed=settings.seed if noise_mode == "device" else None,
                       sigma=settings.sigma, session_options=rt.session_options,
                       provider_options=rt.provider_options,
                       in_flight=rt.in_flight if rt.in_flight is not None else MAX_IN_FLIGHT)


def default_out(run: Run, models: list, settings, method: str, input_shape, noise_mode: str, dataset) -> Path:
    """runs/<model>-<data>-<mode>-sigma<σ>-<method>-n<n>-<size>[-<noise>].parquet: every setting that
    usually differs between runs of one model, the data first, is in the name, so two runs rarely collide."""
    size = "x".join(map(str, input_shape[-2:]))
    noise = {"discrete": "", "host": "-float-noise", "device": "-device-noise"}[noise_mode]
    sequential = ""
    if settings.sequential:
        sequential = f"-seq-{settings.sequential_method}" + (
            "-r" + "_".join(f"{r:g}" for r in settings.radii) if settings.radii else f"-tol{settings.tolerance:g}")
    model = models[0].name + (f"-ens{len(models)}" if len(models) > 1 else "") + \
        (f"-c{run.consensus}" if run.consensus else "")
    return Path("runs") / (f"{model}-{data_tag(dataset)}-{settings.mode}-sigma{settings.sigma:g}-{method}-n{settings.n}"
                           f"-{size}{noise}{sequential}.parquet")


def data_tag(dataset) -> str:
    """The data in a default file name: the file or folder's name, or a digest of arrays from Python."""
    import re

    if dataset.in_memory:  # "array 500×28×28 uint8 sha256:…": the digest tells arrays apart
        return "array-" + dataset.source.rsplit(":", 1)[-1][:8]
    name = Path(dataset.source).name
    for suffix in (".gz", ".npz", ".parquet", ".tar"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^\w.+-]+", "_", name)[:40] or "data"


def _launch(run: Run, models: list, dataset, plan, graph, settings, method: str, extra: dict, worker: bool,
            noise_mode: str, float_noise: str | None, values_per_call: int | None = None) -> Job:
    """Engine, results writer and the inputs still to do: the last step before any work."""
    from .data import check_labels
    from .results import ResultsWriter

    model = models[0]
    sampler = discrete_sampler_metadata(settings.sigma, run, plan) if noise_mode == "discrete" else \
        {"kind": "float", "radii_hold_in_floating_point": False}
    counter = vote_counter(run, model, graph, plan, settings, noise_mode, values_per_call)
    check_labels(dataset, counter.num_classes)
    config = {
        "command": settings.mode, "sigma": settings.sigma, "alpha": settings.alpha,
        "n0": settings.n0 if settings.mode == "certify" else None, "n": settings.n, "seed": settings.seed,
        "noise": noise_mode, "sampler": sampler, **plan.describe(), **extra,
        "model": str(model.path), "model_sha256": model.sha256, "num_classes": counter.num_classes,
        "classes": model.classes or dataset.class_names,
        "dataset": dataset.source if dataset.in_memory else str(Path(dataset.source).resolve()),
        "labels": run.labels,
        "version": __version__, "device": counter.device, "batch": counter.batch, "threads": run.runtime.threads,
        "skip": run.output.skip, "max": run.output.max,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(models) > 1:  # only then (and below), so that the runs made before these options still resume
        config["members"] = [{"model": str(m.path), "model_sha256": m.sha256} for m in models]
        config["consensus"] = run.consensus
    if settings.sequential:
        config["sequential"] = {"budget": settings.n, "radii": list(settings.radii) if settings.radii else None,
                                "tolerance": settings.tolerance, "method": settings.sequential_method}
    if worker:  # a Ray worker rebuilding the driver's engine: only the driver writes
        return Job(run, dataset, plan, counter, settings, None, [], config)
    # behind a denoiser the classifier sees denoised copies: its training σ says nothing of σ then
    said = sigma_warnings(settings.sigma, None if run.denoising_model else model.trained_sigma)
    said += [float_noise] if float_noise else []
    out = Path(run.output.out) if run.output.out else default_out(run, models, settings, method, plan.input_shape,
                                                                    noise_mode, dataset)
    try:
        writer = ResultsWriter(out, config, overwrite=run.output.overwrite)  # makes out's folder
    except BaseException:
        counter.close()
        raise
    stop = len(dataset) if run.output.max is None else min(len(dataset), run.output.max)
    done = writer.done_indices
    todo = [i for i in range(0, stop, run.output.skip) if i not in done]
    return Job(run, dataset, plan, counter, settings, writer, todo, config, warnings=said)


# The results' metadata says it where an RGB model certifies grey images (docs/python.md).
GREY_TO_RGB = ("copied to 3 channels before the noise: radii hold for the 3-channel image; a change of the "
               "grey image alone is certified up to radius/√3")


def discrete_sampler_metadata(sigma: float, run: Run, plan) -> dict:
    """What the results record about the discrete sampler (docs/soundness.md). `rounded_on_load`:
    images resized on load (--image-size) or grey video frames, made off the grid and rounded to it."""
    from . import noise

    table = noise.discrete_table(sigma)
    if run.kind == "images":
        resized = run.plan is not None and getattr(run.plan, "image_size", None) is not None
    else:
        resized = plan.input_shape[0] == 1
    return {"kind": "discrete", "grid": noise.GRID, "clip": [-table.tail, noise.GRID + table.tail],
            "lumped_at": table.half_width, "threshold_bits": 64, "prefix_bits": noise.PREFIX_BITS,
            "cdf_digits": noise.CDF_DIGITS,
            "rounded_on_load": resized, "radii_hold_in_floating_point": True}


def _prepare_images(run: Run, worker: bool) -> Job:
    from .data import align_labels, open_images, stored_channels
    from .graph import sampling_graph

    models = load_run_models(run)
    model = models[0]
    dataset = open_images(run.data or asset(DEFAULT_IMAGES), run.labels)
    align_labels(dataset, model.classes)
    noise_mode, float_noise = noise_sampler(run, dataset.on_grid)
    settings = settings_for(run, model, noise_mode)
    spec = run.plan
    model_shape = image_model_shape(model)
    dataset.channels = model_shape[0] if model_shape else None
    dataset.size = spec.image_size
    dataset.grid = noise_mode == "discrete"  # resized or grey-converted images: rounded to the grid
    # The run's input shape: the first readable image, converted as the model and options ask.
    first, tried = None, []
    for i in range(min(len(dataset), 32)):
        item = dataset[i]
        if item.image is not None:
            first = item
            break
        tried.append(item.error)
    check(first is not None, f"{dataset.source}: none of the first {len(tried)} images could be read "
                             f"(the first: {tried[0] if tried else ''})")
    plan = image_plan(spec, model, first.image.shape)
    said = plan_warnings(plan)
    denoising = denoising_stage(run, settings.sigma, first.image.shape)
    graph = sampling_graph(models, plan, run.consensus, denoising)
    extra = {"image_size": spec.image_size}
    if dataset.channels == 3 and stored_channels(dataset, first.index) == 1:  # only then: older runs resume
        extra["grey_inputs"] = GREY_TO_RGB
    method = spec.tag()
    if denoising is not None:  # only then, so that the runs made before denoisers still resume
        extra["denoiser"] = denoising.describe()
        method = denoising_tag(denoising) + "-" + method
    job = _launch(run, models, dataset, plan, graph, settings, method, extra, worker, noise_mode, float_noise)
    job.warnings += said
    return job


def denoising_stage(run: Run, sigma: float, image_shape):
    """The run's denoiser stage for σ and images of `image_shape` (srtool.denoise), or None."""
    from .denoise import denoising_for, load_denoiser

    if run.denoising_model is None:
        return None
    kind, source = run.denoising_model
    model = load_denoiser(source, kind)
    return denoising_for(model, sigma, run.timestep, image_shape)


def denoising_tag(denoising) -> str:
    """dn-<denoiser> or dds-<unet>-t<step>, for default file names and report labels."""
    model = denoising.model
    return f"dds-{model.name}-t{denoising.timestep}" if model.kind == "diffusion" else f"dn-{model.name}"


def _prepare_videos(run: Run, worker: bool) -> Job:
    from . import video as vid

    models = load_run_models(run)
    model = models[0]
    dataset = vid.open_videos(run.data or asset(DEFAULT_VIDEOS), run.labels, run.split)
    vid.align_labels(dataset, model.classes)
    noise_mode, float_noise = noise_sampler(run, on_grid=True)  # decoded frames are 8-bit
    settings = settings_for(run, model, noise_mode)
    spec = run.plan
    layout = vid.make_layout(model, spec.subvideo, spec.chunk, spec.stride, spec.reduce, spec.noise_space,
                             spec.short)
    dataset.channels, dataset.frame_hw = layout.frame_shape[0], layout.frame_shape[1:]
    dataset.grid = noise_mode == "discrete"  # grey (luma) frames: rounded to the grid
    graph = vid.sampling_graph(models, layout, run.consensus)
    # The layout, not one plan, goes to the pipeline: it gives each video the plan for its length.
    job = _launch(run, models, dataset, layout.probe, graph, settings, vid.method_tag(layout),
                  {"split": dataset.split}, worker, noise_mode, float_noise, values_per_call=VIDEO_VALUES_PER_CALL)
    job.plan = layout
    return job
