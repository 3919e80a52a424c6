"""The `srtool` command line: certify, predict, report.

Errors a user can fix print one line and exit with code 2 (UsageError); nothing is written before
every input has been checked. Set SRTOOL_DEBUG=1 to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import datetime
import os
import sys
from importlib import resources
from pathlib import Path

import click

from . import __version__
from .errors import UsageError
from .ray_engine import engine_options

ASSETS = resources.files("srtool") / "assets"
DEFAULT_MODEL = "fmnist_cnn_sigma0.25.onnx"
DEFAULT_IMAGES = "fashion_mnist_sample.npz"
DEMO_N = 1000  # n for the shipped sample: the default run takes about 16 s on 2 cores
PAPER_N = 100_000
# Views per ONNX Runtime call for --batch auto, in float32 values of model input: on CUDA about 64 M,
# so the GPU gets big calls; on the CPU about 128 K, so a call's input and first activations stay in
# the core's caches (the shipped model runs 17% faster at 128 copies per call than at 1000).
AUTO_BATCH_VALUES = {"cuda": 64 * 2**20, "cpu": 2**17}
# Videos (srtool video): the shipped demo, the paper's video settings (n0=10, n=1000, alpha=0.001),
# and for --batch auto a cap of 16 M floats (64 MB) of noisy video or model input per call, so the
# copies per call shrink as videos get longer (a 300-frame 112×112 video runs one copy per call).
DEFAULT_VIDEO_MODEL = "video_demo_sigma0.25.onnx"
DEFAULT_VIDEOS = "video_demo"
VIDEO_DEMO_N = 500  # the shipped demo in about 20 s on 2 cores; the paper's n for user videos
VIDEO_PAPER_N = 1000
VIDEO_VALUES_PER_CALL = 16 * 2**20


def _asset(name: str) -> Path:
    return Path(str(ASSETS / name))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _apply(options: list, function):
    for option in reversed(options):
        function = option(function)
    return function


def run_options(inputs: str) -> list:
    """Statistics, runtime and output options shared by every command that runs the pipeline."""
    return [
        click.option("--sigma", type=float, default=None,
                     help="Noise level in [0,1] pixel units (default: the model's srtool.sigma metadata)."),
        click.option("--alpha", type=float, default=0.001, show_default=True,
                     help="Failure probability of the certificate / of the prediction test."),
        click.option("--batch", default="auto", show_default=True,
                     help="Noisy copies per ONNX Runtime call (fixed per input shape), or 'auto'."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help=f"Seed of the per-{inputs} noise streams; same seed, same results."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="ONNX Runtime device; 'cuda' fails if ONNX Runtime cannot use the GPU."),
        click.option("--noise", "noise_mode", type=click.Choice(["host", "device"]), default="host",
                     show_default=True,
                     help="Draw noise on the host (per-input seeded streams) or inside the graph on "
                          "the GPU (CUDA only; reproducible per run, not across resumes)."),
        click.option("--threads", type=int, default=0, show_default=True,
                     help="CPU sampling loops, one ONNX Runtime thread each (0 = one per core)."),
        click.option("--skip", type=int, default=1, show_default=True,
                     help=f"Evaluate every skip-th {inputs} (as Cohen's certify.py)."),
        click.option("--max", "max_index", type=int, default=None,
                     help=f"Stop before this {inputs} index (as Cohen's certify.py)."),
        click.option("--out", type=click.Path(), default=None,
                     help="Results Parquet file (default: runs/<model>-<mode>-<method>.parquet)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run with a different configuration."),
        click.option("--quiet", is_flag=True, help="No progress bar and no summary."),
    ]


def plan_options(function):
    """Options shared by certify and predict (one pipeline, the same knobs)."""
    options = [
        click.option("--model", type=click.Path(), default=None,
                     help=f"ONNX classifier taking [0,1] pixels (default: shipped {DEFAULT_MODEL})."),
        click.option("--images", type=click.Path(), default=None,
                     help="Folder (ImageFolder or flat), image file, CIFAR-10 batch, IDX file or .npz "
                          f"(default: shipped {DEFAULT_IMAGES}, 500 Fashion-MNIST test images)."),
        click.option("--labels", type=click.Path(), default=None,
                     help="CSV of filename,label for a flat image folder."),
        click.option("--image-size", type=int, default=None,
                     help="Resize images on load (shorter side, then centre crop) to this square size. "
                          "Certificates hold for the loaded image."),
        click.option("--n", "n", type=int, default=None,
                     help=f"Noisy copies for the estimate (default {PAPER_N:,}; {DEMO_N:,} on the shipped sample)."),
        click.option("--patches", type=int, default=1, show_default=True,
                     help="k views per noisy copy (1 = standard randomized smoothing)."),
        click.option("--patch-size", type=int, default=None,
                     help="Square patch edge (default: the model's input size)."),
        click.option("--resize", type=int, default=None,
                     help="Resize (bilinear, inside the graph) the shorter side to this before cutting patches."),
        click.option("--sampling", type=click.Choice(["dense", "random"]), default="dense", show_default=True,
                     help="Patch positions: an even grid, or drawn uniformly once per input."),
        click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
                     help="Smooth-Mean (mean of logits) or Smooth-Max (max of softmax) over the k views."),
        click.option("--noise-space", type=click.Choice(["input", "resized", "patch"]), default="input",
                     show_default=True,
                     help="Where the noise goes; the radius is corrected to hold for the input (docs/soundness.md)."),
    ]
    return _apply(options + run_options("input"), function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="srtool")
def cli():
    """Certify classifiers with randomized smoothing and Smooth-Reduce on ONNX Runtime."""


@cli.command()
@click.option("--n0", type=int, default=100, show_default=True,
              help="Noisy copies for selecting the class (never reused for the estimate).")
@plan_options
@engine_options
def certify(**options):
    """Certified radii (Cohen et al.'s CERTIFY) for every input; writes a Parquet table."""
    _run("certify", options)


@cli.command()
@plan_options
@engine_options
def predict(**options):
    """Smoothed predictions with a binomial abstention test (Cohen et al.'s PREDICT)."""
    _run("predict", {**options, "n0": 0})


def _auto_batch(plan, n: int, device: str) -> int:
    """Noisy copies per call so that one call's model input stays near AUTO_BATCH_VALUES floats."""
    import numpy as np

    from .engine import resolve_device

    per_copy = max(int(np.prod(plan.view_shape)) * plan.views_per_copy, int(np.prod(plan.noise_shape)))
    return int(max(1, min(1000, AUTO_BATCH_VALUES[resolve_device(device)] // per_copy, n)))


def _settings(mode: str, o: dict, model, demo_n: int, paper_n: int):
    """The statistical settings, checked; shared by images and videos."""
    from .pipeline import Settings

    sigma = o["sigma"] if o["sigma"] is not None else model.trained_sigma
    n = o["n"] if o["n"] is not None else (demo_n if o["demo"] else paper_n)
    _check(sigma is not None, "--sigma is required (the model has no srtool.sigma metadata)")
    _check(sigma > 0, "--sigma must be positive")
    _check(0 < o["alpha"] < 1, "--alpha must lie strictly between 0 and 1")
    _check(n >= 1, "--n must be at least 1")
    _check(mode == "predict" or o["n0"] >= 1, "--n0 must be at least 1")
    _check(o["skip"] >= 1, "--skip must be at least 1")
    _check(o["threads"] >= 0, "--threads must be 0 (automatic) or more")
    return Settings(mode=mode, sigma=sigma, alpha=o["alpha"], n0=o["n0"], n=n, seed=o["seed"])


def _image_model_shape(o: dict, model):
    model_shape = model.input_shape
    _check(model_shape is None or len(model_shape) == 3,
           f"{model.path.name} takes videos (N×C×T×H×W); use srtool video")
    _check(o["image_size"] is None or o["image_size"] >= 1, "--image-size must be positive")
    return model_shape


def _image_input_shape(o: dict, model, dataset) -> tuple[int, int, int]:
    """The run's input shape: the first readable image, converted as the model and options ask."""
    model_shape = _image_model_shape(o, model)
    dataset.channels = model_shape[0] if model_shape else None
    dataset.size = o["image_size"]
    first = next((item for item in (dataset[i] for i in range(min(len(dataset), 32)))
                  if item.image is not None), None)
    _check(first is not None, f"{dataset.source}: none of the first images could be read")
    return first.image.shape


def _image_plan(o: dict, model, input_shape: tuple[int, int, int]):
    """The image plan from the options, the model's input size and the inputs' shape."""
    from .plan import Plan

    model_shape = _image_model_shape(o, model)
    h, w = input_shape[1:]

    if o["patch_size"] is not None:
        _check(o["patch_size"] >= 1, "--patch-size must be positive")
        patch_hw = (o["patch_size"], o["patch_size"])
        if model_shape is not None and tuple(model_shape[1:]) != patch_hw:
            raise UsageError(f"--patch-size {patch_hw[0]} does not fit the model, which takes "
                             f"{model_shape[1]}×{model_shape[2]}")
    elif model_shape is not None:
        patch_hw = tuple(model_shape[1:])
    else:
        raise UsageError(f"{model.path.name} does not declare its input size; pass --patch-size")
    if o["resize"] is not None:
        _check(o["resize"] >= 1, "--resize must be positive")
        scale = o["resize"] / min(h, w)
        resized_hw = (round(h * scale), round(w * scale))
    else:
        resized_hw = (h, w)
    smooth_reduce = o["patches"] > 1 or o["resize"] is not None or o["patch_size"] is not None
    if not smooth_reduce and patch_hw != (h, w):
        raise UsageError(f"images are {h}×{w} but the model takes {patch_hw[0]}×{patch_hw[1]}; pass "
                         f"--image-size {patch_hw[0]} to resize on load, or --patch-size/--patches to crop")
    plan = Plan(input_shape=input_shape, patch_hw=patch_hw, resized_hw=resized_hw, patches=o["patches"],
                sampling=o["sampling"], reduce=o["reduce"], noise_space=o["noise_space"])
    method = f"{o['reduce']}{o['patches']}-{o['noise_space']}" if smooth_reduce else "rs"
    return plan, method


def _launch(mode: str, o: dict, model, dataset, plan, graph, settings, method: str, extra: dict,
            values_per_call: int | None = None):
    """Engine, results writer and the inputs still to do: the last step before any work.

    `values_per_call` (videos) lets --batch auto run fewer copies per call for long inputs.
    """
    from .engine import VoteCounter, make_session
    from .model import infer_num_classes
    from .results import ResultsWriter

    if o["batch"] == "auto":
        batch = _auto_batch(plan, settings.n, o["device"])
    else:
        try:
            batch = int(o["batch"])
        except ValueError:
            raise UsageError("--batch must be a positive integer or 'auto'") from None
        _check(batch >= 1, "--batch must be a positive integer or 'auto'")
    num_classes = infer_num_classes(model, make_session)
    counter = VoteCounter(graph, plan, num_classes, batch, o["device"], o["threads"],
                          values_per_call=values_per_call if o["batch"] == "auto" else None,
                          device_noise_seed=settings.seed if o["noise_mode"] == "device" else None,
                          sigma=settings.sigma)
    out = Path(o["out"] or f"runs/{model.name}-{mode}-sigma{settings.sigma:g}-{method}.parquet")
    config = {
        "command": mode, "sigma": settings.sigma, "alpha": settings.alpha,
        "n0": settings.n0 if mode == "certify" else None, "n": settings.n, "seed": settings.seed,
        "noise": o["noise_mode"], **plan.describe(), **extra,
        "model": str(model.path), "model_sha256": model.sha256, "num_classes": num_classes,
        "classes": model.classes or dataset.class_names,
        "dataset": str(Path(dataset.source).resolve()), "labels": o["labels"],
        "version": __version__, "device": counter.device, "batch": batch, "threads": o["threads"],
        "skip": o["skip"], "max": o["max_index"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if o.get("worker"):  # a Ray worker rebuilding this engine (ray_engine.py): only the driver writes
        return counter, None, None, config
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = ResultsWriter(out, config, overwrite=o["overwrite"])
    stop = len(dataset) if o["max_index"] is None else min(len(dataset), o["max_index"])
    todo = [i for i in range(0, stop, o["skip"]) if i not in writer.done_indices]
    return counter, writer, todo, config


def _prepare_images(mode: str, o: dict):
    """Check every input and option, build plan and engine; nothing is written before this returns."""
    from .data import align_labels, open_images
    from .graph import sampling_graph
    from .model import load_model

    o["demo"] = o["images"] is None
    model = load_model(o["model"] or _asset(DEFAULT_MODEL))
    dataset = open_images(o["images"] or _asset(DEFAULT_IMAGES), o["labels"])
    align_labels(dataset, model.classes)
    settings = _settings(mode, o, model, DEMO_N, PAPER_N)
    plan, method = _image_plan(o, model, _image_input_shape(o, model, dataset))
    graph = sampling_graph(model, plan)
    counter, writer, todo, config = _launch(mode, o, model, dataset, plan, graph, settings, method,
                                            {"image_size": o["image_size"]})
    return dataset, plan, counter, settings, writer, todo, config


def video_options(function):
    """Options of `srtool video` (one pipeline with the images; sub-videos are the patches)."""
    options = [
        click.option("--model", type=click.Path(), default=None,
                     help="ONNX video classifier taking N×C×m×H×W [0,1] RGB chunks "
                          f"(default: shipped {DEFAULT_VIDEO_MODEL})."),
        click.option("--videos", type=click.Path(), default=None,
                     help="Video file, UCF-101 folder (class folders, classInd.txt, testlist01.txt), "
                          f"class folders, or a flat folder (default: shipped {DEFAULT_VIDEOS}/)."),
        click.option("--labels", type=click.Path(), default=None,
                     help="CSV of filename,label for a flat folder of videos."),
        click.option("--split", default=None,
                     help="UCF-101 list of videos to use (default: testlist01.txt beside classInd.txt, if any)."),
        click.option("--subvideo", default="whole", show_default=True,
                     help="Frames per sub-video (a multiple of --chunk) for Smooth-Reduce, or 'whole' "
                          "for standard randomized smoothing of the whole video."),
        click.option("--chunk", type=int, default=None,
                     help="Frames per chunk the model takes (default: the model's); chunk logits are averaged."),
        click.option("--stride", type=int, default=None,
                     help="Frames between sub-video starts (default: half a sub-video)."),
        click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
                     help="Smooth-Mean (mean of logits) or Smooth-Max (max of softmax) over the sub-videos."),
        click.option("--noise-space", type=click.Choice(["input", "patch"]), default="input", show_default=True,
                     help="One noise draw on the video shared by overlapping sub-videos, or independent "
                          "noise per sub-video with the radius divided by ‖A‖₂ (docs/video.md)."),
        click.option("--short", type=click.Choice(["error", "loop"]), default="error", show_default=True,
                     help="A video shorter than one sub-video (or chunk): an error row, or repeat it "
                          "from its start as MARS does."),
        click.option("--predict", "predict_mode", is_flag=True,
                     help="PREDICT (smoothed prediction with a binomial abstention test) instead of CERTIFY."),
        click.option("--n0", type=int, default=10, show_default=True,
                     help="Noisy copies for selecting the class (certify only; the paper's video setting)."),
        click.option("--n", "n", type=int, default=None,
                     help=f"Noisy copies for the estimate (default {VIDEO_PAPER_N:,}, the paper's video setting; "
                          f"{VIDEO_DEMO_N} on the shipped demo)."),
    ]
    return _apply(options + run_options("video"), function)


@cli.command()
@video_options
@engine_options
def video(predict_mode, **options):
    """Certify (or --predict) video classifiers: RS of the whole video, or Smooth-Reduce over sub-videos.

    With no --model and --videos it runs the shipped demo (a tiny 3D CNN on synthetic moving sprites).
    """
    mode = "predict" if predict_mode else "certify"
    _run(mode, {**options, "n0": 0} if mode == "predict" else options, prepare=_prepare_videos)


def _prepare_videos(mode: str, o: dict):
    """Like _prepare_images: every check, layout, graph and engine before anything is written."""
    from . import video as vid
    from .model import load_model

    o["demo"] = o["videos"] is None
    model = load_model(o["model"] or _asset(DEFAULT_VIDEO_MODEL))
    dataset = vid.open_videos(o["videos"] or _asset(DEFAULT_VIDEOS), o["labels"], o["split"])
    vid.align_labels(dataset, model.classes)
    settings = _settings(mode, o, model, VIDEO_DEMO_N, VIDEO_PAPER_N)
    if str(o["subvideo"]).lower() in ("whole", "all", "none", "0"):
        subvideo = None
    else:
        try:
            subvideo = int(o["subvideo"])
        except ValueError:
            raise UsageError("--subvideo must be a number of frames or 'whole'") from None
        _check(subvideo >= 1, "--subvideo must be positive (or 'whole')")
    layout = vid.make_layout(model, subvideo, o["chunk"], o["stride"], o["reduce"], o["noise_space"], o["short"])
    dataset.channels, dataset.frame_hw = layout.frame_shape[0], layout.frame_shape[1:]
    graph = vid.sampling_graph(model, layout)
    counter, writer, todo, config = _launch(mode, o, model, dataset, layout.probe, graph, settings,
                                            vid.method_tag(layout), {"split": dataset.split},
                                            values_per_call=VIDEO_VALUES_PER_CALL)
    # The layout, not one plan, goes to the pipeline: it gives each video the plan for its length.
    return dataset, layout, counter, settings, writer, todo, config


def _run(mode: str, o: dict, prepare=_prepare_images) -> None:
    """Prepare (all checks), then evaluate with progress, then merge the results and summarize."""
    from .ray_engine import select_engine
    from .report import summarize

    prepare, execute = select_engine(mode, o, prepare)  # pipeline.run, or the Ray engine's loop
    dataset, plan, counter, settings, writer, todo, config = prepare(mode, o)
    quiet = o["quiet"]
    if not quiet:
        where = f"{len(writer.done_indices)} done, " if writer.done_indices else ""
        click.echo(f"srtool {mode}: {Path(config['model']).name} on {config['device']}, "
                   f"σ={settings.sigma:g}, n={settings.n:,}, {where}{len(todo)} to go → {writer.path}",
                   err=True)
    try:
        if quiet:
            execute(dataset, todo, plan, counter, settings, writer)
        else:
            _run_with_progress(dataset, todo, plan, counter, settings, writer, mode, execute)
    except KeyboardInterrupt:
        writer.flush()  # every finished input is kept; the same command resumes
        click.echo(f"\ninterrupted: finished inputs are saved; run the same command to resume", err=True)
        sys.exit(130)
    finally:
        counter.close()
    table = writer.finish()
    if not quiet:
        _print_summary([summarize(table, config)])
        click.echo(f"results: {writer.path}", err=True)


def _run_with_progress(dataset, todo, plan, counter, settings, writer, mode, execute=None) -> None:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from .pipeline import run

    tally = {"done": 0, "correct": 0, "radius": 0.0}

    def status() -> str:
        if not tally["done"]:
            return ""
        accuracy = tally["correct"] / tally["done"]
        if mode == "certify":
            return f"acc {accuracy:.1%}  ACR {tally['radius'] / tally['done']:.3f}"
        return f"acc {accuracy:.1%}"

    with Progress(TextColumn(f"[bold]{mode}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False) as progress:
        task = progress.add_task(mode, total=len(todo), status="")

        def on_row(row: dict) -> None:
            if row["error"] is None:
                tally["done"] += 1
                tally["correct"] += row["correct"]
                tally["radius"] += (row["radius"] or 0.0) * row["correct"]
            progress.update(task, advance=1, status=status())

        (execute or run)(dataset, todo, plan, counter, settings, writer, on_row)


def _print_summary(summaries: list[dict], radii=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import DEFAULT_RADII, rows_for_display

    header, rows = rows_for_display(summaries, radii or DEFAULT_RADII)
    table = Table(box=None, header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, no_wrap=i == 0, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:  # piped or in CI: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--radii", default="0.25,0.5,0.75,1.0", show_default=True,
              help="Comma-separated radii for certified accuracy.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json", "cohen-tsv"]),
              default="table", show_default=True)
@click.option("--plot", type=click.Path(), default=None, help="Write certified accuracy vs radius to this image.")
def report(runs, radii, fmt, plot):
    """Summarize results files: accuracy, certified accuracy at radii, ACR, abstention."""
    from . import report as rep

    try:
        radii = tuple(float(r) for r in radii.split(",") if r.strip())
    except ValueError:
        raise UsageError("--radii must be comma-separated numbers") from None
    loaded = rep.load(runs)
    labels = [rep.run_label(config) for _, config, _ in loaded]
    labels = [f"{label} [{Path(path).stem}]" if labels.count(label) > 1 else label
              for label, (_, _, path) in zip(labels, loaded)]
    summaries = [rep.summarize(table, config, radii) | {"label": label, "file": path}
                 for (table, config, path), label in zip(loaded, labels)]
    if fmt == "cohen-tsv":
        _check(len(loaded) == 1, "--format cohen-tsv takes one results file")
        click.echo(rep.cohen_tsv(loaded[0][0]))
    elif fmt == "json":
        click.echo(rep.to_json(summaries))
    elif fmt == "markdown":
        click.echo(rep.markdown(*rep.rows_for_display(summaries, radii)))
    else:
        _print_summary(summaries, radii)
    if plot:
        rep.plot([(table, config, label) for (table, config, _), label in zip(loaded, labels)], plot)
        click.echo(f"plot: {plot}", err=True)


@cli.command()
@click.option("--model", type=click.Path(), default=None, help=f"ONNX model (default: shipped {DEFAULT_MODEL}).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch", default="auto", show_default=True, help="Noisy copies per ONNX Runtime call.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="CPU sampling loops, one ONNX Runtime thread each (0 = one per core).")
@click.option("--image-size", type=int, default=None, help="Input edge (default: the model's input size).")
@click.option("--patches", type=int, default=1, show_default=True)
@click.option("--patch-size", type=int, default=None)
@click.option("--resize", type=int, default=None)
@click.option("--sampling", type=click.Choice(["dense", "random"]), default="dense", show_default=True)
@click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True)
@click.option("--noise-space", type=click.Choice(["input", "resized", "patch"]), default="input", show_default=True)
@click.option("--noise", "noise_mode", type=click.Choice(["host", "device"]), default="host", show_default=True)
@click.option("--seconds", type=float, default=3.0, show_default=True,
              help="Time per measurement, in three rounds that alternate model and pipeline.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(**o):
    """Throughput: the bare model vs srtool's full sampling pipeline, on this machine."""
    import json

    from . import bench as benchmark
    from .engine import make_session
    from .model import infer_num_classes, load_model

    model = load_model(o["model"] or _asset(DEFAULT_MODEL))
    model_shape = _image_model_shape(o, model)
    _check(model_shape is not None, f"{model.path.name} does not declare its input size")
    _check(o["seconds"] > 0, "--seconds must be positive")
    _check(o["threads"] >= 0, "--threads must be 0 (automatic) or more")
    edge = o["image_size"]
    input_shape = (model_shape[0], edge, edge) if edge else tuple(model_shape)
    plan, _ = _image_plan(o, model, input_shape)
    if o["batch"] == "auto":
        batch = _auto_batch(plan, 1000, o["device"])
    else:
        _check(str(o["batch"]).isdigit() and int(o["batch"]) >= 1, "--batch must be a positive integer or 'auto'")
        batch = int(o["batch"])
    num_classes = infer_num_classes(model, make_session)
    result = benchmark.run(model, plan, num_classes, batch, o["device"], o["threads"], o["seconds"],
                           noise_mode=o["noise_mode"])
    if o["as_json"]:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{Path(result['model']).name} on {result['provider']}, batch {batch}, "
               f"{result['views_per_copy']} view(s) per noisy copy, {result['noise']} noise, "
               f"{result['sampling_loops']} sampling loops; medians of {result['rounds']} rounds")
    click.echo(f"  bare model          {result['raw_forward_per_s']:>12,.0f} forward passes/s")
    click.echo(f"  srtool pipeline     {result['pipeline_forward_per_s']:>12,.0f} forward passes/s "
               f"({result['pipeline_copies_per_s']:,.0f} noisy copies/s)")
    click.echo(f"  pipeline / model    {result['ratio']:>12.2f}")
    click.echo(f"  host noise alone    {result['host_noise_copies_per_s']:>12,.0f} noisy copies/s")
    click.echo(f"  projected per input at n0=100, n=100,000: {result['projected_s_per_input_n100k']:.1f} s")


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="srtool", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except UsageError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:
        if os.environ.get("SRTOOL_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
                   "(set SRTOOL_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
