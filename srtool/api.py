"""The Python API: certify one numpy image in three lines, or a dataset in one call.

    smooth = srtool.Smooth("model.onnx", sigma=0.25)
    label, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001)      # Cohen's CERTIFY
    results = srtool.certify("model.onnx", images="test_batch", sigma=0.25, out="runs/rs.parquet")

`Smooth` mirrors Cohen et al.'s `Smooth` (code/core.py): `certify` and `predict` on one C×H×W image,
or on a batch N×C×H×W, which gives arrays (as IBM ART does). It runs the same plan, sampling graph,
engine and statistics as the command line (srtool.core, srtool.pipeline), so the same seed gives
the same numbers: the image at position i of a batch uses the noise streams of input `index + i`,
as the command line uses those of dataset index i. `certify` / `predict` at module level run a
whole dataset through core.Run with the command line's resumable writer and return `Results`.

Every public function raises the command line's one-line UsageErrors, with options spelled as the
keyword arguments they are here (python_spelling, below); numpy integers and floats are accepted
wherever Python's are (core's dataclasses turn them into Python's own).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import core
from .errors import UsageError, shown
from .stats import ABSTAIN

__all__ = ["ABSTAIN", "Certificate", "Prediction", "Results", "Smooth", "certify", "load_images", "predict",
           "read_results", "shipped"]


# -- messages in Python's spelling -----------------------------------------------------------------------

# `--name`, then maybe its value: a number, a one-letter placeholder (K), or a word (checked below
# against the option's choices, so that "--device cuda" is a value but "--n must" is not).
_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: (-?\d[\d.,_]*(?:e-?\d+)?(?![\w.])|[A-Z]\b|[a-z]+\b))?")
# Words after an option that make it the subject of the sentence: "n must be at least 1", "labels and
# split apply to …", "noise_space for videos must be …".
_VERB = r"(?:must|applies|apply|needs|need|takes|names|is|was|does)\b"
_SUBJECT = re.compile(rf"\s*(?:[:,]|{_VERB}|for \w+ {_VERB}|and --[a-z][a-z0-9-]* {_VERB})")


def in_python_spelling(message: str) -> str:
    """A message about command-line options, as it reads for a Python caller:
    "pass --image-size 28" → "pass image_size=28", "use --overwrite" → "use overwrite=True",
    "--device cuda" → 'device="cuda"', "--n must be at least 1" → "n must be at least 1"."""
    flags, choices = core.FLAGS, core.CHOICES

    def keyword(match: re.Match) -> str:
        option, value = match.group(1), match.group(2)
        command = message.rfind("srtool ", 0, match.start())
        if command >= 0 and not re.search(r"[;()]", message[command:match.start()]):
            return match.group(0)  # part of a shell command the message quotes ("srtool show RUN --errors")
        name = option.replace("-", "_")
        if value is not None and value.isalpha() and len(value) > 1 and value not in choices.get(option, ()):
            value = None  # an ordinary word that follows the option, not its value
        rest = message[match.end(1) if value is None else match.end():]
        if value is None:
            subject = _SUBJECT.match(rest) is not None or message[:match.start()].rstrip().endswith("(")
            word = "" if subject else ("=True" if option in flags else "=")
            return name + word + ("" if match.group(2) is None else " " + match.group(2))
        if value.isalpha() and len(value) > 1:
            return f'{name}="{value}"'
        return f"{name}={value.rstrip('.,')}" + value[len(value.rstrip('.,')):]

    return _OPTION.sub(keyword, message)


# Other libraries' names for Smooth's keywords (Cohen et al.'s `num`, IBM ART's `n_samples` /
# `sample_size`): told the name here, as any near miss is.
ALIASES = {"n_samples": "n", "num": "n", "num_samples": "n", "sample_size": "n", "N": "n", "N0": "n0",
           "batch_size": "batch", "noise_sd": "sigma"}


def unknown_keyword(key: str, known) -> UsageError:
    """The one answer to a keyword argument that is not ours: its name and, where one is close, ours."""
    close = ALIASES.get(key) or next(iter(difflib.get_close_matches(key, list(known), n=1)), None)
    hint = "" if close is None else " (use batch)" if close == "batch" and key == "batch_size" \
        else f" (did you mean {close}?)"
    return UsageError(f"unknown argument {key!r}{hint}")


def python_spelling(function):
    """Decorator for the Python API: its UsageErrors name keyword arguments, not command-line flags,
    and a keyword it does not take is answered as srtool.certify answers one (not a TypeError)."""
    signature = inspect.signature(function)
    named = [p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            if not open_ended:
                for key in kwargs:
                    if key not in named:
                        raise unknown_keyword(key, named)
            return function(*args, **kwargs)
        except UsageError as error:
            raise UsageError(in_python_spelling(str(error))) from None
    return wrapper


@python_spelling
def shipped(name: str = core.DEFAULT_MODEL) -> Path:
    """The path of a file shipped with srtool: the models (fmnist_cnn_sigma0.12/0.25/0.50.onnx,
    fmnist_cnn_clean.onnx trained without noise, fmnist_ddpm.onnx for diffusion=,
    video_demo_sigma0.25.onnx), the Fashion-MNIST sample (fashion_mnist_sample.npz), video_demo/."""
    path = core.asset(name)
    core.check(path.exists(), f"srtool ships no {name}")
    return path


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer; `label, radius = cert` as Cohen's tuple. Arrays for a batch of images."""
    label: int | np.ndarray  # the class, or ABSTAIN (-1)
    radius: float | np.ndarray  # certified ℓ2 radius in the input's [0,1] pixel space; 0 when abstaining
    p_lower: float | np.ndarray  # lower confidence bound on the selected class's probability
    count: int | np.ndarray  # estimation votes for the selected class
    counts: np.ndarray  # estimation votes per class (N×classes for a batch)
    n: int | np.ndarray  # estimation copies drawn
    radius_factor: float | np.ndarray  # what the plan's noise space multiplies Cohen's radius by
    invalid: int | np.ndarray = 0  # copies whose logits were not finite (a vote for no class)
    stop: str | np.ndarray | None = None  # sequential: why sampling stopped

    def __iter__(self):
        return iter((self.label, self.radius))

    def __getitem__(self, item):  # cert[0], cert[1]: Cohen's tuple (prediction, radius)
        return (self.label, self.radius)[item]

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return _short_repr(self, ("label", "radius", "p_lower", "count", "n", "radius_factor", "invalid", "stop"))


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer: the class or ABSTAIN, the binomial test's p-value, the votes."""
    label: int | np.ndarray
    p_value: float | np.ndarray
    count: int | np.ndarray
    counts: np.ndarray
    n: int | np.ndarray
    invalid: int | np.ndarray = 0

    def __iter__(self):
        return iter((self.label, self.p_value))

    def __getitem__(self, item):
        return (self.label, self.p_value)[item]

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return _short_repr(self, ("label", "p_value", "count", "n", "invalid"))


def _short_repr(answer, fields: tuple[str, ...]) -> str:
    """One line: the fields that say something (no zero `invalid`, no `stop` of a fixed-n run), long
    arrays cut to their ends, and the votes per class as their shape (they are in `.counts`)."""
    def short(value) -> str:
        if isinstance(value, np.ndarray):
            return np.array2string(value, precision=4, threshold=6, edgeitems=2, separator=", ")
        return f"{value:.4g}" if isinstance(value, float) else repr(value)

    shown = [f"{name}={short(getattr(answer, name))}" for name in fields
             if not (name == "invalid" and not np.any(getattr(answer, name)))
             and not (name == "stop" and (getattr(answer, name) is None
                                          or not np.any(np.asarray(getattr(answer, name)) != None)))]  # noqa: E711
    counts = np.asarray(answer.counts)
    what = (f"{counts.shape[0]} images × {counts.shape[1]} classes" if counts.ndim == 2
            else f"{counts.shape[0]} classes")
    return f"{type(answer).__name__}({', '.join(shown)}, counts=<{what}>)"


def _load(model, role: str = "model"):
    """A Model from a path, serialized bytes or an onnx.ModelProto; `role` names it in messages."""
    from .model import load_model

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    if isinstance(model, (bytes, bytearray, memoryview)):
        return load_model(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        core.check(Path(model).is_file(), f"{role} not found: {model}")
        return load_model(model)
    raise UsageError(f"{role} must be a path, bytes or an onnx.ModelProto, not {type(model).__name__}")


def as_array(x, name: str = "x") -> np.ndarray:
    """x as a numpy array: a torch tensor (on any device, tracking gradients or not) is detached and
    copied to the host; a list of file names is pointed to the way srtool reads files."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except ValueError:  # a ragged list: images of several sizes
        raise UsageError(f"{name}: one array of images of one size (resize them first, e.g. with "
                         "srtool.load_images(path, image_size=…))") from None
    if array.dtype.kind in "USO":
        raise UsageError(f"{name}: an array of pixels (uint8 0–255 or float in [0,1]), not {array.dtype.kind == 'U' and 'file names' or array.dtype}; "
                         "for files give one path (an image, a folder, a dataset file)")
    return array


class Smooth:
    """The smoothed classifier of an ONNX image model: randomized smoothing, or Smooth-Reduce with
    `patches` > 1 (or a resize / patch size); a list of models is an ensemble reduced over every
    (model, view), with `consensus` K as --consensus. `image_size` resizes every image on load as
    the command line's does. `denoiser` (a Gaussian denoiser's ONNX file) or `diffusion` (an
    ε-prediction UNet's, run once at the step matching σ, or at `timestep`) puts a denoiser in front
    of the classifier (docs/denoised.md). Sessions are built per input shape and batch size and kept;
    `close()` (or a `with` block) frees them."""

    @python_spelling
    def __init__(self, model, sigma: float | None = None, *, consensus: int | None = None,
                 patches: int = 1, patch_size: int | None = None,
                 resize: int | None = None, sampling: str = "dense", reduce: str = "mean",
                 noise_space: str = "input", image_size: int | None = None, device: str = "auto", seed: int = 0,
                 threads: int = 0, noise: str = "auto", session_options: dict | None = None,
                 provider_options: dict | None = None, denoiser=None, diffusion=None, timestep: int | None = None):
        self.plan_spec = core.ImagePlan(patches=patches, patch_size=patch_size, resize=resize, sampling=sampling,
                                        reduce=reduce, noise_space=noise_space, image_size=image_size)
        self.runtime = core.Runtime(device=device, noise=noise, threads=threads,
                                    session_options=dict(session_options or {}),
                                    provider_options=dict(provider_options or {}))
        checked = core.Statistics(sigma=sigma, seed=seed)  # the same checks and messages as the command line
        # classifier ∘ denoiser (docs/denoised.md): checked as the command line checks --denoiser/--diffusion
        self.denoising = dict(denoiser=denoiser, diffusion=diffusion, timestep=timestep)
        core.Run(plan=self.plan_spec, **self.denoising)
        from .graph import check_members

        members = model if isinstance(model, (list, tuple)) else [model]
        core.check(len(members) >= 1, "model: give at least one model")
        consensus = core.Run(model=tuple(f"member{i}" for i in range(len(members))),
                             consensus=consensus).consensus  # checks K (and makes a numpy K plain)
        for role, path in (("denoiser", denoiser), ("diffusion", diffusion)):  # every path checked now, by role
            core.check(path is None or Path(path).is_file(), f"{role} model not found: {path}")
        self.models = [_load(member, f"ensemble member {i + 1}" if len(members) > 1 else "model")
                       for i, member in enumerate(members)]
        check_members(self.models)
        self.model, self.consensus = self.models[0], consensus
        core.image_model_shape(self.model)
        self.sigma = checked.sigma if checked.sigma is not None else self.model.trained_sigma
        core.check(self.sigma is not None, "sigma is required (the model has no srtool.sigma metadata)")
        trained = None if denoiser or diffusion else self.model.trained_sigma  # a denoiser in front: moot
        for said in core.sigma_warnings(self.sigma, trained):
            warnings.warn(said, UserWarning, stacklevel=3)
        self.seed = checked.seed
        self._engines: dict = {}  # (input shape, batch) → (plan, VoteCounter)

    # -- Cohen's two procedures ------------------------------------------------------------------------
    @python_spelling
    def certify(self, x, n0: int = 100, n: int = 100_000, alpha: float = 0.001, batch: int | str = "auto",
                index: int = 0, sequential: bool = False, radii=None, tolerance: float = 0.02,
                sequential_method: str = "union", batch_size=None) -> Certificate:
        """CERTIFY x (C×H×W, or N×C×H×W for arrays): label, certified radius, and the evidence.

        `sequential`: n is a budget; copies are drawn in rounds until the answer is known (decide
        `radii`, or estimate the radius to `tolerance`); `.n` says how many were drawn, `.stop` why.
        `batch`: noisy copies per ONNX Runtime call (`batch_size` is its old, deprecated name).
        """
        rows = self._evaluate(x, core.Statistics(mode="certify", sigma=self.sigma, alpha=alpha, n0=n0, n=n,
                                                 seed=self.seed, sequential=sequential, radii=radii,
                                                 tolerance=tolerance, sequential_method=sequential_method),
                              _batch(batch, batch_size), index)
        return _gather(Certificate, rows, x, label="predict", radius="radius", p_lower="p_lower", count="count",
                       counts="counts", n="n", radius_factor="radius_factor", invalid="invalid", stop="stop")

    @python_spelling
    def predict(self, x, n: int = 100_000, alpha: float = 0.001, batch: int | str = "auto",
                index: int = 0, batch_size=None) -> Prediction:
        """PREDICT x: the smoothed class, or ABSTAIN when the binomial test does not pass at alpha."""
        rows = self._evaluate(x, core.Statistics(mode="predict", sigma=self.sigma, alpha=alpha, n=n,
                                                 seed=self.seed), _batch(batch, batch_size), index)
        return _gather(Prediction, rows, x, label="predict", p_value="p_value", count="count", counts="counts",
                       n="n", invalid="invalid")

    # -- one pipeline, as the command line's -----------------------------------------------------------
    def _evaluate(self, x, statistics: core.Statistics, batch, index: int) -> list[dict]:
        from .data import Item
        from .pipeline import evaluate_all

        core.check(core._is_int(index), f"index must be a whole number, not {shown(index)}")
        core.check(index >= 0, "index must be 0 or more")
        index = int(index)
        batch = core.Runtime(batch=batch).batch  # checked like --batch; numpy integers made plain
        run = core.Run(plan=self.plan_spec, statistics=statistics, runtime=self.runtime, **self.denoising)
        images, noise_mode = self._images(x, run)
        settings = core.settings_for(run, self.model, noise_mode)
        # Every image of a batch has one shape, so one engine: the scheduler fills its calls from all of them.
        plan, counter = self._engine(images[0].shape, batch, run, settings, noise_mode)
        items = [Item(index + offset, -1, image) for offset, image in enumerate(images)]
        rows = sorted(evaluate_all(items, plan, counter, settings), key=lambda row: row["index"])
        for row in rows:
            if row["error"] is not None:
                raise UsageError(row["error"])
        return rows

    def _images(self, x, run: core.Run) -> tuple[list[np.ndarray], str]:
        """x as float32 C×H×W images in [0,1] with the model's channels, and the noise sampler for them
        (core.noise_sampler: the exact discrete one where x is on the 1/255 grid)."""
        from .data import PixelError, conform, to_unit_chw
        from .noise import grid_integers

        x = as_array(x)
        core.check(x.ndim in (3, 4), f"x must be one C×H×W image or a batch N×C×H×W, not shape {x.shape}")
        core.check(x.size > 0, f"x holds no images (shape {x.shape})")
        core.check(x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating),
                   f"x must hold uint8 (0–255) or float ([0,1]) pixels, not {x.dtype}")
        channels = self.model.input_shape[0] if self.model.input_shape else None
        if x.ndim == 3 and channels is not None and x.shape[0] not in (1, channels):  # never guess a layout
            shape = "×".join(map(str, x.shape))
            raise UsageError(f"x of shape {shape} is ambiguous for a {channels}-channel model: one image C×H×W "
                             f"({channels}×{x.shape[1]}×{x.shape[2]}) or a batch N×C×H×W "
                             f"({x.shape[0]}×{channels}×{x.shape[1]}×{x.shape[2]}, e.g. x[:, None]); pass one of those")
        units = []
        for image in (x if x.ndim == 4 else x[None]):
            core.check(image.shape[0] in (1, 3, 4), f"x must be C×H×W with 1, 3 or 4 channels first, "
                                                    f"not {'×'.join(map(str, image.shape))}")
            try:  # as H×W×C, which to_unit_chw reads without guessing the layout
                units.append(to_unit_chw(np.moveaxis(image, 0, -1)))
            except PixelError as error:
                raise UsageError(f"x: {error}") from None
        noise_mode, float_noise = core.noise_sampler(run, all(grid_integers(u) is not None for u in units))
        if float_noise:
            warnings.warn(float_noise, UserWarning, stacklevel=4)
        grid = noise_mode == "discrete"  # images resized on load (image_size) are rounded to the grid
        return [conform(unit, channels, self.plan_spec.image_size, grid) for unit in units], noise_mode

    def _engine(self, shape, batch, run: core.Run, settings, noise_mode: str):
        key = (shape, batch, settings.n if batch == "auto" else None, noise_mode)
        if key not in self._engines:
            from .graph import sampling_graph

            plan = core.image_plan(self.plan_spec, self.model, shape)
            for said in core.plan_warnings(plan):
                warnings.warn(in_python_spelling(said), UserWarning, stacklevel=5)
            run = run.replace(runtime=dataclasses.replace(self.runtime, batch=batch))
            graph = sampling_graph(self.models, plan, self.consensus,
                                   core.denoising_stage(run, settings.sigma, shape))
            counter = core.vote_counter(run, self.model, graph, plan, settings, noise_mode)
            self._engines[key] = plan, counter
        return self._engines[key]

    @python_spelling
    def close(self) -> None:
        for _, counter in self._engines.values():
            counter.close()
        self._engines.clear()

    def __enter__(self) -> "Smooth":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _batch(batch, batch_size):
    """`batch`, or the value of the deprecated `batch_size` (Smooth's name before srtool.certify's won)."""
    if batch_size is None:
        return batch
    warnings.warn("batch_size is deprecated: use batch= (as srtool.certify and --batch)", DeprecationWarning,
                  stacklevel=4)
    core.check(isinstance(batch, str) and batch == "auto", "give batch or batch_size (its old name), not both")
    return batch_size


def _gather(kind, rows: list[dict], x, **columns):
    """One answer from one row; for a batch, each field as an array over the rows."""
    if as_array(x).ndim == 3:
        row = rows[0]
        return kind(**{field: (np.asarray(row[c]) if c == "counts" else row.get(c)) for field, c in columns.items()})
    return kind(**{field: np.array([row.get(c) if row.get(c) is not None or c == "stop" else np.nan for row in rows])
                   for field, c in columns.items()})


# -- datasets -----------------------------------------------------------------------------------------

class Results:
    """A results file: the table, its configuration, and the summary metrics of srtool report."""

    def __init__(self, table, config: dict, path: str | Path | None = None, partial: bool = False):
        self.table = table  # pyarrow.Table with the public columns
        self.config = config
        self.path = Path(path) if path is not None else None
        self.partial = partial  # an interrupted (or still running) run: rows so far

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        state = ", partial" if self.partial else ""
        return f"Results({self.path}, {len(self)} rows{state})"

    def to_pandas(self):
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise UsageError("to_pandas needs pandas: pip install 'srtool[pandas]'") from None
        return self.table.to_pandas()

    @python_spelling
    def summary(self, radii=None) -> dict:
        """Accuracy over labelled inputs, abstention, ACR and certified accuracy at `radii`
        (default 0.5σ, σ, 1.5σ, 2σ), as srtool report computes them."""
        from .report import summarize
        return summarize(self.table, self.config, None if radii is None else _radii(radii), partial=self.partial)

    @python_spelling
    def certified_accuracy(self, radius):
        """Certified accuracy at `radius` (a number), or at each of several (a list or array: an array)."""
        radii = _radii(radius)
        certified = self._certify_metric("certified accuracy", radii)["certified"]
        values = np.array([certified[f"{r:g}"] for r in radii])
        return float(values[0]) if np.ndim(radius) == 0 else values

    @python_spelling
    def acr(self) -> float:
        """Average certified radius: mean(correct · radius) over the labelled inputs."""
        return self._certify_metric("ACR", ())["acr"]

    def compare(self, other: "Results", radii=None, seed: int = 0) -> dict:
        """`other` against this run on the same inputs (same indices and labels): at each radius the
        certified accuracy difference (other − this) with an exact McNemar p, and the ACR difference
        with a seeded paired bootstrap 95% interval, as `srtool report --compare` prints them."""
        from .compare import paired
        from .report import default_radii
        radii = default_radii(self.config) if radii is None else _radii(radii)
        for run in (self, other):
            core.check(run.config.get("command", "certify") == "certify",
                       f"compare needs certify runs; {run.path or 'one'} is a predict run")
        return paired(self.table, other.table, radii, seed=seed)

    def _certify_metric(self, what: str, radii) -> dict:
        """The summary, once it is sure to hold `what`: a predict run has no radii (refused), a run
        without labels has no accuracy (NaN, with a warning that says so)."""
        summary = self.summary(radii)
        core.check(summary["mode"] == "certify", f"{what} needs a certify run; {self.path or 'this'} is a "
                                                 f"{summary['mode']} run, which has no radii")
        if not summary["labelled"]:
            warnings.warn(f"{what} is NaN: none of the {summary['inputs']} evaluated inputs of "
                          f"{self.path or 'this run'} has a label (summary()['mean_radius'] is their mean radius)",
                          UserWarning, stacklevel=4)
        return summary


def _radii(radii) -> tuple[float, ...]:
    """One radius or several, as floats ≥ 0 (a bad one is refused in one line)."""
    values = np.atleast_1d(np.asarray(radii, dtype=object))
    core.check(values.ndim == 1 and all(core._is_number(r) and r >= 0 for r in values),
               f"radii must be numbers ≥ 0, not {shown(radii)}")
    return tuple(float(r) for r in values)


@python_spelling
def read_results(path: str | Path) -> Results:
    """A finished run, or the rows so far of one still running or interrupted (`partial`)."""
    from . import results
    from .compare import is_cohen_log, read_cohen_log
    from .report import _partial

    # a Cohen et al./DDS certify log reads as a run too, beside srtool's own
    table, config = read_cohen_log(path) if is_cohen_log(path) else results.read_results(path)
    return Results(table, config, path, partial=_partial(path))


@python_spelling
def load_images(path: str | Path, image_size: int | None = None, *, model=None, channels: int | None = None,
                labels: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images of `path` as `srtool certify --images PATH` loads them: (x, y), x float32
    N×C×H×W in [0,1], y the labels (-1: none). `image_size` resizes the shorter side and crops the
    centre square, as --image-size does; the channels are the model's (or `channels`; grey is
    copied to RGB, RGB turned grey by luma), as stored without either."""
    from .data import load_images as load

    core.check(isinstance(path, (str, os.PathLike)), f"load_images takes a path (an image, a folder or a dataset "
                                                     f"file), not {type(path).__name__}; arrays need no loading")
    if model is not None:
        core.check(channels is None, "give model or channels, not both")
        shape = core.image_model_shape(_load(model))
        channels = shape[0] if shape else None
    return load(path, image_size, channels, labels)


# Keywords of srtool.certify/predict that are fields of core.Run itself, not of one of its sections.
TOP_LEVEL = ("labels", "split", "consensus", "denoiser", "diffusion", "timestep")


def _run(mode: str, model, images, videos, kwargs: dict) -> core.Run:
    """A core.Run from the keyword arguments of certify / predict (the command line's options)."""
    from .data import InMemoryImages

    core.check(images is None or videos is None, "give images or videos, not both")
    if images is not None and not isinstance(images, (str, os.PathLike)):  # arrays: N×C×H×W, labels= beside them
        core.check(kwargs.get("engine", "local") == "local",
                   "images as an array run locally; for --engine ray save them (np.savez(path, x=x, y=y)) "
                   "and pass the path")
        images = InMemoryImages(as_array(images, "images"), kwargs.get("labels"))
        kwargs = {k: v for k, v in kwargs.items() if k != "labels"}
    core.check(videos is None or isinstance(videos, (str, os.PathLike)), "videos must be a path (file or folder)")
    if kwargs.pop("ensemble", False):  # as --ensemble: the shipped models for σ
        core.check(model is None, "ensemble runs the shipped models; give either ensemble=True or model")
        sigma = kwargs.get("sigma")
        model = core.shipped_ensemble(sigma if sigma is not None else 0.25)
    if isinstance(model, (list, tuple)):
        model = tuple(str(m) for m in model)
    elif model is not None:
        model = str(model)
    kind = "videos" if videos is not None else "images"
    sections = {name: {} for name in ("plan", "statistics", "runtime", "output")}
    owners = {"plan": core.ImagePlan if kind == "images" else core.VideoPlan, "statistics": core.Statistics,
              "runtime": core.Runtime, "output": core.Output}
    top = {}
    for key, value in kwargs.items():
        section = next((s for s, cls in owners.items() if key in cls.__dataclass_fields__), None)
        if key in TOP_LEVEL:
            top[key] = value
        elif section is None or key == "mode":
            raise unknown_keyword(key, [k for cls in owners.values() for k in cls.__dataclass_fields__ if k != "mode"]
                                  + list(TOP_LEVEL) + ["ensemble"])
        else:
            sections[section][key] = value
    data = images if images is not None else videos
    return core.Run(kind=kind, model=model, data=data if data is None or isinstance(data, InMemoryImages)
                    else str(data), **top,
                    plan=owners["plan"](**sections["plan"]),
                    statistics=core.Statistics(mode=mode, **sections["statistics"]),
                    runtime=core.Runtime(**sections["runtime"]), output=core.Output(**sections["output"]))


@python_spelling
def certify(model=None, images=None, videos=None, progress: bool = False, **options) -> Results:
    """CERTIFY every input of a dataset, as `srtool certify` / `srtool video` does, into a resumable
    Parquet file (`out`, default under runs/). Options are the command line's, in Python spelling:
    sigma, alpha, n0, n, seed, patches, patch_size, resize, sampling, reduce, noise_space,
    image_size, denoiser, diffusion, timestep (images); subvideo, chunk, stride, short, split (videos);
    batch, device, noise, threads, engine, …; out, overwrite, skip, max; labels. `images` is a path, or
    an N×C×H×W (or N×H×W) array with its labels in `labels=`."""
    return _execute(_run("certify", model, images, videos, options), progress)


@python_spelling
def predict(model=None, images=None, videos=None, progress: bool = False, **options) -> Results:
    """PREDICT every input of a dataset (Cohen's smoothed prediction with abstention); as certify."""
    return _execute(_run("predict", model, images, videos, options), progress)


def _execute(run: core.Run, progress: bool) -> Results:
    from .progress import execute_with_progress

    job = core.start(run, quiet=not progress)
    for said in job.warnings + getattr(job.writer, "warnings", []):
        warnings.warn(in_python_spelling(said), UserWarning, stacklevel=4)
    execute_with_progress(job) if progress else job.execute()  # frees everything if it fails
    table = job.finish()
    return Results(table, job.config, job.writer.path)
