"""The `srtool` command line: parse options into a core.Run, run it with progress, print.

Errors a user can fix print one line and exit with code 2 (UsageError); nothing is written before
every input has been checked. A run that finished with inputs it could not evaluate (error rows)
also exits with 2, after saving every row. Set SRTOOL_DEBUG=1 to see tracebacks of unexpected
failures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from . import core
from .errors import UsageError


SHOW_AFTER_RUN = 20  # runs of at most this many inputs print one line per input (as srtool show)
DEVICE_HELP = "ONNX Runtime device; 'cuda' fails if ONNX Runtime cannot use the GPU."
NOISE_HELP = ("The noise sampler. 'auto': the exact discretized Gaussian on the 1/255 grid, whose radii hold in "
              "floating point, wherever it applies (8-bit inputs, --noise-space input), else the float one "
              "with a warning; 'discrete': that sampler or a refusal; 'host': float32 Box–Muller on the host; "
              "'device': float noise drawn in the graph on the GPU (CUDA only; reproducible per run, not across "
              "resumes). Float radii do not hold in floating point (docs/soundness.md).")


def _apply(options: list, function):
    for option in reversed(options):
        function = option(function)
    return function


def run_options(inputs: str) -> list:
    """Statistics, runtime and output options shared by every command that runs the pipeline."""
    return [
        click.option("--consensus", type=int, default=None,
                     help="Ensembles: the first K models decide a noisy copy where they agree; the others "
                          "run only where they do not (Horváth et al.'s K-consensus)."),
        click.option("--sigma", type=float, default=None,
                     help="Noise level in [0,1] pixel units (default: the model's srtool.sigma metadata)."),
        click.option("--alpha", type=float, default=0.001, show_default=True,
                     help="Failure probability of the certificate / of the prediction test."),
        click.option("--batch", default="auto", show_default=True,
                     help="Noisy copies per ONNX Runtime call (fixed per input shape), or 'auto'."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help=f"Seed of the per-{inputs} noise streams; same seed, same results."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help=DEVICE_HELP),
        click.option("--noise", "noise_mode", type=click.Choice(core.NOISE_MODES), default="auto",
                     show_default=True, help=NOISE_HELP),
        click.option("--threads", type=int, default=0, show_default=True,
                     help="CPU sampling loops, one ONNX Runtime thread each (0 = one per core)."),
        click.option("--skip", type=int, default=1, show_default=True,
                     help=f"Evaluate every skip-th {inputs} (as Cohen's certify.py)."),
        click.option("--max", "max_index", type=int, default=None,
                     help=f"Stop before this {inputs} index (as Cohen's certify.py)."),
        click.option("--out", type=click.Path(), default=None,
                     help="Results Parquet file (default: runs/<model>-<mode>-sigma<σ>-<method>-n<n>-<size>.parquet)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run with a different configuration."),
        click.option("--quiet", is_flag=True, help="No progress bar and no summary."),
    ]


def plan_options(function):
    """Options shared by certify and predict (one pipeline, the same knobs)."""
    options = [
        click.option("--model", type=click.Path(), multiple=True,
                     help=f"ONNX classifier taking [0,1] pixels (default: shipped {core.DEFAULT_MODEL}); "
                          "several: an ensemble, reduced over every (model, view)."),
        click.option("--ensemble", is_flag=True,
                     help="The shipped ensemble: the Fashion-MNIST model for --sigma (default 0.25) and its "
                          "members trained with other seeds."),
        click.option("--denoiser", type=click.Path(), default=None,
                     help="ONNX Gaussian denoiser (image → image, [0,1] pixels) in front of the classifier "
                          "(docs/denoised.md); without --model, the shipped clean classifier."),
        click.option("--diffusion", type=click.Path(), default=None, is_flag=False,
                     flag_value=str(core.asset(core.DEFAULT_DIFFUSION)),
                     help="ONNX ε-prediction UNet run once at the step matching σ (one-shot diffusion "
                          "denoising) in front of the classifier; alone, the shipped Fashion-MNIST DDPM "
                          "and clean classifier."),
        click.option("--timestep", type=int, default=None,
                     help="With --diffusion: the step to denoise at (default: the first whose noise reaches σ)."),
        click.option("--images", type=click.Path(), default=None,
                     help="Folder (ImageFolder or flat), image file, CIFAR-10 batch, IDX file or .npz "
                          f"(default: shipped {core.DEFAULT_IMAGES}, 500 Fashion-MNIST test images)."),
        click.option("--labels", type=click.Path(), default=None,
                     help="CSV of filename,label for a flat image folder or one image (other formats carry their own labels)."),
        click.option("--image-size", type=int, default=None,
                     help="Resize images on load (shorter side, then centre crop) to this square size. "
                          "Certificates hold for the loaded image."),
        click.option("--n", "n", type=int, default=None,
                     help=f"Noisy copies for the estimate (default {core.PAPER_N['images']:,}; "
                          f"{core.DEMO_N['images']:,} on the shipped sample)."),
        *view_options(),
    ]
    return _apply(options + run_options("input"), function)


def view_options() -> list:
    """How a noisy copy becomes the views the model sees: certify, predict and bench alike."""
    return [
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


def engine_options(function):
    """--engine and the Ray options, for every command that runs a pipeline."""
    from .ray_engine import INSTALL_HINT

    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Run here, or shard the inputs over Ray workers (docs/ray.md; "
                          f"needs {INSTALL_HINT})."),
        click.option("--address", default=None,
                     help="Ray cluster to join (HEAD:6379, or 'auto'); default: a local Ray for this run."),
        click.option("--workers", type=int, default=None,
                     help="Ray workers (default: as many as the cluster's GPUs, or CPUs, allow)."),
        click.option("--gpus-per-worker", type=float, default=None,
                     help="GPUs per Ray worker (default: 1 where the cluster has GPUs and --device is "
                          "not cpu, else 0)."),
        click.option("--cpus-per-worker", type=float, default=None,
                     help="CPUs per Ray worker (default 1); also its ONNX Runtime threads when --threads is 0."),
    ]
    return _apply(options, function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="srtool")
def cli():
    """Certify classifiers with randomized smoothing and Smooth-Reduce on ONNX Runtime."""


def sequential_options(function):
    """Sequential CERTIFY (docs/sequential.md), for certify and video."""
    options = [
        click.option("--sequential", is_flag=True,
                     help="Draw estimation copies in rounds and stop once the answer is known; --n is the budget."),
        click.option("--radii", "seq_radii", default=None,
                     help="With --sequential: decide these comma-separated radii (certified or out of reach), "
                          "instead of estimating the radius."),
        click.option("--tolerance", type=float, default=0.02, show_default=True,
                     help="With --sequential and no --radii: stop when the radius is within this share of "
                          "the largest the budget could still reach."),
        click.option("--sequential-method", type=click.Choice(["union", "staged"]), default="union",
                     show_default=True,
                     help="Checkpoints: geometric plus the grid radii's (union), or Horváth et al.'s stages."),
    ]
    return _apply(options, function)


@cli.command()
@click.option("--n0", type=int, default=None,
              help="Noisy copies for selecting the class, never reused for the estimate  [default: 100]")
@plan_options
@sequential_options
@engine_options
def certify(**options):
    """Certified radii (Cohen et al.'s CERTIFY) for every input; writes a Parquet table."""
    _execute(_run_from_options("images", "certify", options), options["quiet"])


@cli.command()
@plan_options
@engine_options
def predict(**options):
    """Smoothed predictions with a binomial abstention test (Cohen et al.'s PREDICT)."""
    _execute(_run_from_options("images", "predict", options), options["quiet"])


def video_options(function):
    """Options of `srtool video` (one pipeline with the images; sub-videos are the patches)."""
    options = [
        click.option("--model", type=click.Path(), multiple=True,
                     help="ONNX video classifier taking N×C×m×H×W [0,1] RGB chunks "
                          f"(default: shipped {core.DEFAULT_VIDEO_MODEL}); several: an ensemble."),
        click.option("--videos", type=click.Path(), default=None,
                     help="Video file, UCF-101 folder (class folders, classInd.txt, testlist01.txt), "
                          f"class folders, or a flat folder (default: shipped {core.DEFAULT_VIDEOS}/)."),
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
        click.option("--n0", type=int, default=None,
                     help="Noisy copies for selecting the class (certify only; the paper's video setting)  "
                          f"[default: {core.DEFAULT_N0['videos']}]"),
        click.option("--n", "n", type=int, default=None,
                     help=f"Noisy copies for the estimate (default {core.PAPER_N['videos']:,}, the paper's "
                          f"video setting; {core.DEMO_N['videos']} on the shipped demo)."),
    ]
    return _apply(options + run_options("video"), function)


@cli.command()
@video_options
@sequential_options
@engine_options
def video(predict_mode, **options):
    """Certify (or --predict) video classifiers: RS of the whole video, or Smooth-Reduce over sub-videos.

    With no --model and --videos it runs the shipped demo (a tiny 3D CNN on synthetic moving sprites).
    """
    _execute(_run_from_options("videos", "predict" if predict_mode else "certify", options), options["quiet"])


def _batch(value: str) -> int | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise UsageError("--batch must be a positive integer or 'auto'") from None


def _subvideo(value: str) -> int | None:
    if str(value).strip().lower() in ("whole", "all", "none", "0"):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError("--subvideo must be a number of frames or 'whole'") from None


def _run_from_options(kind: str, mode: str, o: dict) -> core.Run:
    """The command's options as the library's frozen description of a run (checked there)."""
    if kind == "images":
        plan = core.ImagePlan(patches=o["patches"], patch_size=o["patch_size"], resize=o["resize"],
                              sampling=o["sampling"], reduce=o["reduce"], noise_space=o["noise_space"],
                              image_size=o["image_size"])
        data = o["images"]
    else:
        plan = core.VideoPlan(subvideo=_subvideo(o["subvideo"]), chunk=o["chunk"], stride=o["stride"],
                              reduce=o["reduce"], noise_space=o["noise_space"], short=o["short"])
        data = o["videos"]
    if mode == "predict" and o.get("n0") is not None:
        raise UsageError("--n0 applies to certify only")
    sequential = {}
    if "sequential" in o:
        core.check(o["sequential"] or (o["seq_radii"] is None and o["tolerance"] == 0.02
                                       and o["sequential_method"] == "union"),
                   "--radii, --tolerance and --sequential-method apply to --sequential runs")
        sequential = {"sequential": o["sequential"], "radii": _radii(o["seq_radii"]), "tolerance": o["tolerance"],
                      "sequential_method": o["sequential_method"]}
    models = o["model"] or None
    if o.get("ensemble"):
        core.check(not models, "--ensemble runs the shipped models; give either --ensemble or --model")
        models = core.shipped_ensemble(o["sigma"] if o["sigma"] is not None else 0.25)
    return core.Run(
        kind=kind, model=models, consensus=o["consensus"], denoiser=o.get("denoiser"),
        diffusion=o.get("diffusion"), timestep=o.get("timestep"), data=data, labels=o["labels"], split=o.get("split"), plan=plan,
        statistics=core.Statistics(mode=mode, sigma=o["sigma"], alpha=o["alpha"], n0=o.get("n0"), n=o["n"],
                                   seed=o["seed"], **sequential),
        runtime=core.Runtime(batch=_batch(o["batch"]), device=o["device"], noise=o["noise_mode"],
                             threads=o["threads"], engine=o["engine"], address=o["address"],
                             workers=o["workers"], gpus_per_worker=o["gpus_per_worker"],
                             cpus_per_worker=o["cpus_per_worker"]),
        output=core.Output(out=o["out"], overwrite=o["overwrite"], skip=o["skip"], max=o["max_index"]))


def _execute(run: core.Run, quiet: bool) -> None:
    """Start (all checks), evaluate with progress, merge the results, summarize."""
    from .progress import execute_with_progress
    from .report import summarize

    job = core.start(run, quiet=quiet)
    for warning in job.warnings + getattr(job.writer, "warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if not quiet:
        done = len(job.writer.done_indices)
        where = f"{done} done, " if done else ""
        command = ("video" + (" --predict" if job.settings.mode == "predict" else "") if run.kind == "videos"
                   else job.settings.mode)
        stage = job.config.get("denoiser")
        front = f" behind {Path(stage['model']).name}" if stage else ""
        click.echo(f"srtool {command}: {Path(job.config['model']).name}{front} on {job.config['device']}, "
                   f"σ={job.settings.sigma:g}, n={job.settings.n:,}, {where}{len(job.todo)} to go → {job.writer.path}",
                   err=True)
    try:
        if quiet:
            job.execute()
        else:
            execute_with_progress(job)
    except KeyboardInterrupt:
        job.close()  # stops the calls in flight now rather than waiting for them at exit
        click.echo("\ninterrupted: finished inputs are saved; run the same command to resume", err=True)
        sys.exit(130)
    table = job.finish()
    summary = summarize(table, job.config)
    if not quiet:
        if table.num_rows <= SHOW_AFTER_RUN:  # a handful of photos: say what each one got
            _show_table(job.writer.path)
        _print_summary([summary])
        _print_notes([summary])
        click.echo(f"results: {job.writer.path}", err=True)
    if summary["rotated"]:
        click.echo(f"note: {summary['rotated']} images were turned upright as their EXIF orientation says "
                   "(column `rotated`)", err=True)
    if summary["invalid"]:
        click.echo(f"warning: {summary['invalid']:,} noisy copies gave logits that are not finite (NaN or inf) "
                   "and voted for no class; they count against the certificates (column `invalid`)", err=True)
    if summary["errors"]:
        raise UsageError(f"{_errors_line(table)}; every row is saved in {job.writer.path} "
                         f"(list them: srtool show {job.writer.path} --errors)")


def _errors_line(table) -> str:
    """'3 of 500 inputs could not be evaluated (2× reason A; 1× reason B)'."""
    from collections import Counter

    errors = [e for e in table.column("error").to_pylist() if e is not None]
    reasons = Counter(errors).most_common(2)
    shown = "; ".join(f"{count}× {reason}" for reason, count in reasons)
    more = f"; {len(set(errors)) - 2} other reasons" if len(set(errors)) > 2 else ""
    return f"{len(errors)} of {table.num_rows} inputs could not be evaluated ({shown}{more})"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """A table for people. Cells are text, never rich markup (a run named `RS [a]` keeps its `[a]`).
    Where the terminal is narrow, the first column (run or input name) folds onto more lines; the
    others (class names, numbers) are never cut."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for i, name in enumerate(header):
        widest = max([len(str(name))] + [len(str(row[i])) for row in rows])
        folds = i == 0 or name == "error"  # names and messages fold onto more lines; the rest stays whole
        table.add_column(escape(name), overflow="fold", no_wrap=not folds,
                         min_width=min(widest, 12) if folds else widest, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    console = Console()
    if not console.is_terminal:  # piped or in CI: do not squeeze the table into 80 columns
        console = Console(width=160)
    narrowest = sum(column.min_width + 2 for column in table.columns)
    if narrowest > console.width:  # rich would drop whole columns: let the terminal wrap the lines instead
        console = Console(width=narrowest)
    console.print(table)


def _print_summary(summaries: list[dict], radii=None) -> None:
    from .report import rows_for_display

    _print_table(*rows_for_display(summaries, radii))


def _print_notes(summaries: list[dict], radii=None) -> None:
    """What the table cannot say in a cell: radius columns past what n and α allow."""
    from .report import cap_notes

    for note in cap_notes(summaries, radii):
        click.echo(note, err=True)


def _radii(text: str | None):
    if text is None:
        return None
    try:
        radii = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise UsageError("--radii must be comma-separated numbers") from None
    core.check(radii and all(r >= 0 for r in radii), "--radii must be comma-separated numbers ≥ 0")
    return radii


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--radii", default=None,
              help="Comma-separated radii for certified accuracy (default: 0.5σ, σ, 1.5σ, 2σ of the first run).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json", "cohen-tsv"]),
              default="table", show_default=True)
@click.option("--plot", type=click.Path(), default=None, help="Write certified accuracy vs radius to this image.")
@click.option("--ci", is_flag=True, help="Also each certified accuracy with its 95% Clopper–Pearson interval "
              "over the test set.")
@click.option("--compare", is_flag=True, help="Compare every run with the first on the same inputs: "
              "difference at each radius with an exact McNemar p, ACR difference with a paired bootstrap 95% interval.")
@click.option("--envelope", is_flag=True, help="The best run at each radius (the envelope over σ); "
              "drawn on --plot too.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --compare's bootstrap.")
def report(runs, radii, fmt, plot, ci, compare, envelope, seed):
    """Summarize results files (or Cohen/DDS certify logs): accuracy, certified accuracy at radii,
    ACR, abstention."""
    from . import report as rep

    radii = _radii(radii)
    loaded = rep.load(runs)
    summaries = rep.summaries(loaded, radii)
    if fmt == "cohen-tsv":
        core.check(len(loaded) == 1, "--format cohen-tsv takes one results file")
        click.echo(rep.cohen_tsv(loaded[0][0]))
    elif fmt == "json":
        click.echo(rep.to_json(summaries))
    elif fmt == "markdown":
        click.echo(rep.markdown(*rep.rows_for_display(summaries, radii)))
    else:
        _print_summary(summaries, radii)
    if fmt in ("table", "markdown"):
        _print_notes(summaries, radii)
    core.check(fmt in ("table", "markdown") or not (compare or envelope),
               "--compare and --envelope print tables (--format table or markdown); from Python: Results.compare")
    extra = []
    if ci and fmt != "json":  # the JSON summaries carry the intervals already
        extra.append(rep.interval_rows(summaries, radii))
    if compare:
        core.check(len(loaded) >= 2, "--compare needs two runs or more (each is compared with the first)")
        extra.append(rep.comparison_rows(loaded, summaries, radii, seed=seed))
    if envelope:
        extra.append(rep.envelope_row(summaries, radii))
    for header, rows in extra:
        if fmt == "markdown":
            click.echo("\n" + rep.markdown(header, rows))
        else:
            click.echo("")
            _print_table(header, rows)
    for summary in summaries:
        if summary["errors"] and fmt == "table":
            click.echo(f"{summary['label']}: {summary['errors']} error rows (srtool show {summary['file']} --errors)",
                       err=True)
    if plot:
        said = rep.plot([(table, config, s["label"]) for (table, config, _), s in zip(loaded, summaries)], plot,
                        with_envelope=envelope)
        for line in said:
            click.echo(f"plot: {line}", err=True)
        click.echo(f"plot: {plot}", err=True)


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--errors", "errors_only", is_flag=True, help="Only the inputs that could not be evaluated.")
def show(run, fmt, errors_only):
    """One line per input: path or index, label and predicted class names, radius, p_lower, error."""
    from .api import read_results

    results = read_results(run)
    if results.partial:
        click.echo(f"{run}: a partial run (interrupted or still going): {len(results)} inputs so far", err=True)
    if fmt == "table":
        _show_table(run, errors_only, results)
        return
    from .report import per_input

    header, rows = per_input(results, errors_only)
    if fmt == "csv":
        import csv
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    else:
        import json
        click.echo(json.dumps([dict(zip(header, row)) for row in rows], indent=1))


def _show_table(path, errors_only: bool = False, results=None) -> None:
    from .api import read_results
    from .report import capped_note, per_input

    results = results or read_results(path)
    header, rows = per_input(results, errors_only, for_people=True)
    if errors_only and not rows:
        click.echo(f"{path}: every one of its {len(results)} inputs was evaluated; no errors")
        return
    _print_table(header, [["-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
                          for row in rows])
    note = None if errors_only else capped_note(results)  # the * marks rows that --errors does not list
    if note:
        click.echo(note, err=True)


@cli.command()
@click.option("--model", type=click.Path(), default=None,
              help=f"ONNX model (default: shipped {core.DEFAULT_MODEL}).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--batch", default="auto", show_default=True,
              help="Noisy copies per ONNX Runtime call of the pipeline ('auto': the best of a sweep; the bare "
                   "model is always swept).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="CPU sampling loops, one ONNX Runtime thread each (0 = one per core).")
@click.option("--image-size", type=int, default=None,
              help="Edge of the square images measured (default: the model's input size).")
@lambda function: _apply(view_options(), function)
@click.option("--noise", "noise_mode", type=click.Choice(core.NOISE_MODES), default="auto",
              show_default=True, help=NOISE_HELP)
@click.option("--denoiser", type=click.Path(), default=None, help="A Gaussian denoiser in front (docs/denoised.md).")
@click.option("--diffusion", type=click.Path(), default=None, is_flag=False,
              flag_value=str(core.asset(core.DEFAULT_DIFFUSION)),
              help="An ε-prediction UNet in front, one step at σ's t* (alone: the shipped DDPM).")
@click.option("--timestep", type=int, default=None, help="With --diffusion: the step (default: t* for --sigma).")
@click.option("--sigma", type=float, default=None, help="σ the pipeline adds (default: the model's, or 0.25).")
@click.option("--seconds", type=float, default=3.0, show_default=True,
              help="Time budget of each measurement (bare model, pipeline, denoiser), each swept over batch "
                   "sizes in rounds that alternate them; the whole takes a few times this.")
@click.option("--run", "run_file", type=click.Path(), default=None,
              help="Also project the time per input of this results file's run (e.g. a --sequential one) "
                   "from its mean noisy copies per input.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(**o):
    """Throughput: the bare model vs srtool's full sampling pipeline, on this machine."""
    import json

    from . import bench as benchmark
    from .engine import make_session
    from .model import infer_num_classes

    spec = core.ImagePlan(patches=o["patches"], patch_size=o["patch_size"], resize=o["resize"],
                          sampling=o["sampling"], reduce=o["reduce"], noise_space=o["noise_space"],
                          image_size=o["image_size"])
    runtime = core.Runtime(batch=_batch(o["batch"]), device=o["device"], noise=o["noise_mode"], threads=o["threads"])
    core.check(0 < o["seconds"] <= 3600, "--seconds must be positive and at most 3600 (an hour)")
    measured = benchmark.run_fill(o["run_file"]) if o["run_file"] else None
    bench_run = core.Run(model=o["model"], plan=spec, denoiser=o["denoiser"], diffusion=o["diffusion"],
                         timestep=o["timestep"])
    model = core.load_run_models(bench_run)[0]
    model_shape = core.image_model_shape(model)
    core.check(model_shape is not None, f"{model.path.name} does not declare its input size")
    edge = spec.image_size
    input_shape = (model_shape[0], edge, edge) if edge else tuple(model_shape)
    plan = core.image_plan(spec, model, input_shape)
    batch = core.auto_batch(plan, 1000, runtime.device) if runtime.batch == "auto" else runtime.batch
    num_classes = infer_num_classes(model, make_session)
    sigma = o["sigma"] or model.trained_sigma or core.DEMO_SIGMA
    denoising = core.denoising_stage(bench_run, sigma, input_shape)
    noise_mode, float_noise = core.noise_sampler(bench_run.replace(plan=spec, runtime=runtime), on_grid=True)
    if float_noise:
        click.echo(f"warning: {float_noise}", err=True)
    from .progress import bench_progress

    with bench_progress(quiet=o["as_json"]) as on_step:
        result = benchmark.run(model, plan, num_classes, None if runtime.batch == "auto" else runtime.batch,
                               runtime.device, runtime.threads, o["seconds"], sigma=sigma, noise_mode=noise_mode,
                               denoising=denoising, on_step=on_step)
    if measured is not None:
        result["run"] = benchmark.project(measured, result, model, plan, num_classes, runtime, o["seconds"],
                                          sigma, denoising)
    if o["as_json"]:
        click.echo(json.dumps(result, indent=2))
        return
    rate = benchmark.readable
    click.echo(f"{Path(result['model']).name} on {result['provider']}, {result['views_per_copy']} view(s) per noisy "
               f"copy, {result['noise']} noise, {result['sampling_loops']} sampling loops; each at its best batch "
               f"(medians of {result['rounds']} rounds, {result['seconds']:.1f} s)")
    click.echo(f"  bare model          {rate(result['raw_forward_per_s']):>12} forward passes/s  "
               f"(batch {result['raw_best_batch']})")
    if "denoiser" in result:
        stage = result["denoiser"]
        step = f", t={stage['timestep']}" if "timestep" in stage else ""
        click.echo(f"  bare {stage['kind']:<14} {rate(result['denoiser_copies_per_s']):>10} noisy copies/s    "
                   f"(batch {result['denoiser_best_batch']}; {Path(stage['model']).name}{step}, σ={sigma:g})")
        click.echo(f"  bare, one after the other {rate(result['bare_composed_copies_per_s']):>6} noisy copies/s")
    click.echo(f"  srtool pipeline     {rate(result['pipeline_forward_per_s']):>12} forward passes/s  "
               f"(batch {result['batch']}; {rate(result['pipeline_copies_per_s'])} noisy copies/s)")
    click.echo(f"  pipeline / {'bare parts' if 'denoiser' in result else 'model     '} {result['ratio']:>9.2f}  "
               "(best over best)")
    click.echo(f"  host noise alone    {rate(result['host_noise_copies_per_s']):>12} noisy copies/s")
    click.echo(f"  projected per input at n0=100, n=100,000: {result['projected_s_per_input_n100k']:,.1f} s")
    if measured is not None:
        run = result["run"]
        fill = (f", {run['copies_per_call']:,.0f} copies per call as it ran, measured here at that size"
                if run["copies_per_call"] is not None else "")
        click.echo(f"  projected per input of {Path(o['run_file']).name} ({run['copies_per_input']:,.0f} noisy copies "
                   f"per input{fill}): {run['projected_s_per_input']:.2f} s")


# -- export: PyTorch → ONNX, delegating to the exporters package (shipped in the wheel) ------------

EXPORTERS = {
    "smoothing": "Cohen et al. / SmoothAdv checkpoints (CIFAR-10, ImageNet, ImageNet-32 ResNets).",
    "mars": "MARS RGB-stream 3-D ResNeXt-101 video classifiers.",
    "diffusion": "improved-/guided-diffusion ε-prediction UNets, for certify --diffusion.",
    "factory": "Any PyTorch classifier, denoiser or diffusion UNet built by package.module:callable.",
}


@cli.group()
def export():
    """Export PyTorch checkpoints to ONNX models srtool runs (needs torch: pip install 'srtool[export]').

    Each command takes the arguments of its exporter (srtool export NAME --help); with no -o the
    model is written into the current directory."""


def _add_exporter(name: str, summary: str) -> None:
    @export.command(name=name, help=summary + f" Arguments: srtool export {name} --help.",
                    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                    add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args):
        import importlib
        import importlib.util

        missing = [m for m in ("torch", "onnxscript") if importlib.util.find_spec(m) is None]
        core.check(not missing, f"srtool export needs {' and '.join(missing)}: pip install 'srtool[export]'")
        from exporters import common

        module = importlib.import_module(f"exporters.{name}")
        common.COMMAND = f"srtool export {name}"  # usage lines and errors name the command as typed
        raise click.exceptions.Exit(common.run_cli(module.main, list(args)))


for _name, _summary in EXPORTERS.items():
    _add_exporter(_name, _summary)


def _terminated(signum, frame) -> None:
    """SIGTERM (a `timeout`, a cluster's preemption) unwinds like Ctrl-C: finished rows are kept and
    temporary model graphs removed."""
    raise KeyboardInterrupt


def main(argv=None) -> None:
    import signal

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _terminated)
        except ValueError:  # not the main thread (srtool run from a thread of someone's program)
            pass
    try:
        cli.main(args=argv, prog_name="srtool", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as error:  # No such option, a bad value: one line, as srtool's own errors
        command = error.ctx.command_path if error.ctx is not None else "srtool"
        click.echo(f"error: {error.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
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
        from .engine import runtime_failure
        if runtime_failure(error):  # a model that fails in ONNX Runtime (srtool bench, say): the model's fault
            click.echo(f"error: the model failed in ONNX Runtime: {runtime_failure(error)}", err=True)
            sys.exit(2)
        click.echo(f"error: unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
                   "(set SRTOOL_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
