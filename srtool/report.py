"""Summaries of runs: the metrics of DESIGN §2, as a table, markdown, JSON, Cohen's TSV or a plot.

Certified accuracy at radius r is mean(correct and radius ≥ r) over the labelled inputs that were
evaluated (abstentions count as wrong); ACR is mean(correct · radius) over the same inputs; the
abstention rate is mean(predict = -1) over every evaluated input. Unlabelled inputs (label -1) have
no accuracy: they are counted apart, and a run without labels shows predictions and radii only.
Inputs that could not be evaluated (an `error` row) are counted apart and left out of every mean.
Default radii scale with σ (0.5σ, σ, 1.5σ, 2σ), so a summary at σ = 0.05 is not all zeros.

No radius above σ·factor·Φ⁻¹(α^(1/n)) can be certified with n copies at level α (every vote for
the class still leaves p_lower = α^(1/n)); `max_radius` is that bound, and the table notes the
radius columns it caps, whose zeros say nothing about the model.

Runs are named by method, σ, and what else sets them apart (predict, sequential, an ensemble);
runs that still share a name get their file's stem (or, where stems agree, more of its path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.stats import norm

from .compare import certified_intervals, envelope, is_cohen_log, paired, read_cohen_log
from .errors import UsageError
from .results import read_results

SIGMA_MULTIPLES = (0.5, 1.0, 1.5, 2.0)  # default report radii, in units of the run's σ


def default_radii(config: dict) -> tuple[float, ...]:
    """A sequential run's own --radii (the radii it decided), else multiples of its σ."""
    decided = (config.get("sequential") or {}).get("radii")
    if decided:
        return tuple(float(r) for r in decided)
    sigma = config.get("sigma") or 0.5
    return tuple(round(m * sigma, 6) for m in SIGMA_MULTIPLES)


def method_name(config: dict) -> str:
    if config.get("kind") == "video":  # the paper's names: RS-16, Smooth-Mean-64,16 (+ stride)
        if config.get("subvideo") is None:
            return f"RS-{config.get('chunk')} video"
        name = (f"Smooth-{config.get('reduce', 'mean').title()}-{config['subvideo']},{config.get('chunk')}"
                f" s={config.get('stride')}")
        return name + ("" if config.get("noise_space", "input") == "input" else f" {config['noise_space']}-noise")
    if config.get("patches", 1) == 1 and not config.get("resize"):
        return "RS"
    name = f"Smooth-{config.get('reduce', 'mean').title()} k={config.get('patches')}"
    return name + ("" if config.get("noise_space", "input") == "input" else f" {config['noise_space']}-noise")


def run_label(config: dict) -> str:
    """A run's name in tables and legends: its own `label` where the writer gave one."""
    members = config.get("members")
    ensemble = f" ×{len(members)} models" if members else ""
    ensemble += f" K={config['consensus']}" if config.get("consensus") else ""
    stage = config.get("denoiser")  # classifier ∘ denoiser (docs/denoised.md)
    if stage:
        ensemble += (f" + DDS {Path(stage['model']).stem} t={stage['timestep']}" if stage["kind"] == "diffusion"
                     else f" + denoiser {Path(stage['model']).stem}")
    mode = " predict" if config.get("command") == "predict" else " sequential" if config.get("sequential") else ""
    # a float sampler's radii do not hold in floating point (docs/soundness.md): the one mark a run may carry
    inexact = "" if holds_in_floating_point(config) else " float-noise"
    return config.get("label") or f"{method_name(config)}{ensemble} σ={config.get('sigma'):g}{inexact}{mode}"


def holds_in_floating_point(config: dict) -> bool:
    """Whether the run drew its noise with the exact discrete sampler (runs made before it say "host")."""
    return config.get("noise") == "discrete"


def max_radius(config: dict, factor: float | None = None) -> float | None:
    """The largest radius a certify run's n and α allow: σ·factor·Φ⁻¹(α^(1/n)) (all n votes for the
    class); for a sequential run, at its budget. None for predict runs."""
    if config.get("command", "certify") != "certify" or not config.get("n") or not config.get("sigma"):
        return None
    alpha, n = config.get("alpha", 0.001), config["n"]
    factor = factor if factor is not None else (config.get("radius_factor") or 1.0)
    return float(config["sigma"] * factor * norm.ppf(alpha ** (1.0 / n)))


def summarize(table: pa.Table, config: dict, radii=None, partial: bool = False) -> dict:
    """The metrics of one run; `radii` default to multiples of its σ; `partial`: not finished."""
    radii = tuple(radii) if radii is not None else default_radii(config)
    errors = np.array([e is not None for e in table.column("error").to_pylist()], dtype=bool)
    valid = ~errors
    labels = np.array(table.column("label").to_pylist(), dtype=np.int64)[valid]
    labelled = labels >= 0
    correct = np.array(table.column("correct").to_pylist(), dtype=bool)[valid][labelled]
    predict = np.array(table.column("predict").to_pylist(), dtype=np.int64)[valid]
    radius = np.array([r if r is not None else 0.0 for r in table.column("radius").to_pylist()])[valid][labelled]
    factors = [f for f in table.column("radius_factor").to_pylist() if f is not None]
    count, scored = int(valid.sum()), int(labelled.sum())
    nan = float("nan")
    mean = (lambda a: float(np.mean(a))) if scored else (lambda a: nan)
    summary = {
        "run": run_label(config),
        "mode": config.get("command", "certify"),
        "method": method_name(config),
        "sigma": config.get("sigma"),
        "alpha": config.get("alpha"),
        "patches": config.get("patches"),
        "noise_space": config.get("noise_space"),
        "holds_in_floating_point": holds_in_floating_point(config),
        "n": config.get("n"),
        "inputs": count,
        "labelled": scored,
        "unlabelled": count - scored,
        "errors": int(errors.sum()),
        "partial": partial,
        "accuracy": mean(correct),
        "abstention": float(np.mean(predict == -1)) if count else nan,
        "radius_factor": (min(factors) if factors else config.get("radius_factor")),
        "radii": list(radii),
        "forward_per_input": _forward_per_input(table, config, valid),
        "invalid": _total(table, "invalid"),  # copies whose logits were not finite
        "rotated": _total(table, "rotated"),  # images turned upright by their EXIF orientation
        # ONNX Runtime calls and the noisy copies they carried, over the run and its resumes (files
        # written before srtool recorded them: None); copies per call against the batch is the fill.
        "calls": config.get("calls"),
        "copies": config.get("copies"),
        "copies_per_call": config["copies"] / config["calls"] if config.get("calls") else None,
        "batch": config.get("batch"),
    }
    if config.get("sequential") and count:  # what a fixed-n run of the same budget would have cost
        n0 = config.get("n0") or 0
        copies = np.array(table.column("n").to_pylist(), dtype=float)[valid] + n0
        summary["copies_per_input"] = float(copies.mean())
        summary["saving"] = (n0 + config["sequential"]["budget"]) / float(copies.mean())
    if summary["mode"] == "certify":
        summary["max_radius"] = max_radius(config, max(factors) if factors else None)
        summary["acr"] = mean(correct * radius)
        summary["certified"] = {f"{r:g}": mean(correct & (radius >= r)) for r in radii}
        # the test set's sampling error: 95% Clopper–Pearson over the labelled inputs (srtool/compare.py)
        summary["certified_interval"] = certified_intervals(table, radii)
        if count and not scored:  # no labels: what the radii are, not an accuracy
            all_radius = np.array([r or 0.0 for r in table.column("radius").to_pylist()])[valid]
            summary["mean_radius"] = float(np.mean(all_radius))
    return summary


def _forward_per_input(table: pa.Table, config: dict, valid: np.ndarray) -> float:
    """Mean forward passes of the base models per evaluated input: noisy copies (n0 + n drawn) times
    views per copy (patches, or sub-videos × chunks) times ensemble members; with --consensus the
    members past the first K count only on the copies that ran them (the `escalated` column)."""
    if not valid.any() or config.get("format") == "cohen-log":  # a published log does not say
        return float("nan")
    rows = [row for row, ok in zip(table.to_pylist(), valid) if ok]
    members = len(config.get("members") or [None])
    first = config.get("consensus") or members  # with consensus: the first K run on every copy
    n0 = config.get("n0") or 0
    if config.get("kind") == "video":
        chunk = config.get("chunk") or 1
        views = [(row.get("subvideos") or 1) * ((config.get("subvideo") or row.get("frames") or chunk) // chunk)
                 for row in rows]
    else:
        views = [config.get("patches") or 1] * len(rows)
    def passes(row: dict, views: int) -> float:
        copies = n0 + row["n"]
        escalated = row.get("escalated")
        if first == members or escalated is None:  # no consensus, or not counted: every member ran
            return copies * views * members
        return (copies * first + escalated * (members - first)) * views

    return float(np.mean([passes(row, v) for row, v in zip(rows, views)]))


def _total(table: pa.Table, column: str) -> int:
    if column not in table.column_names:
        return 0
    return int(sum(v for v in table.column(column).to_pylist() if v))


def summaries(loaded: list[tuple[pa.Table, dict, str]], radii=None) -> list[dict]:
    """One summary per loaded run, all at the same radii (default: the first run's σ multiples),
    each labelled so that runs of the same method and σ are told apart (by file name)."""
    if radii is None:
        radii = default_radii(loaded[0][1])
    labels = [run_label(config) for _, config, _ in loaded]
    labels = [f"{label} [{tag}]" if labels.count(label) > 1 else label
              for label, tag in zip(labels, _distinct_tags([path for _, _, path in loaded]))]
    return [summarize(table, config, radii, partial=_partial(path)) | {"label": label, "file": path}
            for (table, config, path), label in zip(loaded, labels)]


def _distinct_tags(paths: list[str]) -> list[str]:
    """For each path the shortest tail (stem, then parent/stem, …) that no other path shares."""
    parts = [Path(path).with_suffix("").parts or (str(path),) for path in paths]
    tags = []
    for own in parts:
        for length in range(1, len(own) + 1):
            tag = "/".join(own[-length:])
            if sum("/".join(other[-length:]) == tag for other in parts) == 1:
                break
        tags.append(tag)
    return tags


def _partial(path) -> bool:
    """A run still going or interrupted: its parts folder is there."""
    return Path(f"{path}.parts").is_dir()


def load(paths) -> list[tuple[pa.Table, dict, str]]:
    runs = []
    for path in paths:  # srtool results, or a published certify log (Cohen et al., DDS)
        table, config = read_cohen_log(path) if is_cohen_log(path) else read_results(path)
        runs.append((table, config, str(path)))
    if not runs:
        raise UsageError("give at least one results file")
    return runs


def _count(value) -> str:
    if value is None or value != value:
        return "-"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e4 else f"{value:,.0f}"


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}%"


def _fill(copies_per_call: float | None, batch) -> str:
    """Mean copies per ONNX Runtime call, and that as a share of the batch: '3,950 (96%)'."""
    if copies_per_call is None:
        return "-"
    share = f" ({copies_per_call / batch:.0%})" if isinstance(batch, int) and batch > 0 else ""
    return f"{copies_per_call:,.0f}{share}"


def rows_for_display(summaries: list[dict], radii=None) -> tuple[list[str], list[list[str]]]:
    """Short columns, so a summary fits an 80-column terminal; `acc` is certified accuracy at 0
    over the labelled inputs (`inputs` says how many are unlabelled, errors or still to do)."""
    radii = tuple(radii) if radii is not None else tuple(summaries[0]["radii"])
    header = ["run", "n", "inputs", "acc", "abstain", "ACR", "factor", "fwd/input", "copies/call"]
    header += [f"@{r:g}" for r in radii]
    rows = []
    for s in summaries:
        factor = s["radius_factor"]
        notes = [f"{s['unlabelled']} unlabelled"] if s.get("unlabelled") else []
        notes += [f"+{s['errors']} err"] if s["errors"] else []
        notes += ["partial"] if s.get("partial") else []
        certified = s.get("certified") or {}
        row = [s.get("label") or s["run"], "-" if s["n"] is None else f"{s['n']:,}",
               f"{s['inputs']}" + (f" ({', '.join(notes)})" if notes else ""),
               _pct(s["accuracy"]), _pct(s["abstention"]),
               "-" if s.get("acr") is None or s["acr"] != s["acr"] else f"{s['acr']:.3f}",  # none, or no labels
               "-" if factor is None else f"{factor:.4g}",
               _count(s.get("forward_per_input")) + (f" ({s['saving']:.1f}× less)" if s.get("saving", 1) >= 1.05 else ""),
               _fill(s.get("copies_per_call"), s.get("batch"))]
        cap = s.get("max_radius")
        row += [_pct(certified[f"{r:g}"]) + ("*" if cap is not None and r > cap else "") if f"{r:g}" in certified
                else "-" for r in radii]
        rows.append(row)
    return header, rows


def interval_rows(summaries: list[dict], radii=None) -> tuple[list[str], list[list[str]]]:
    """Certified accuracy with its 95% Clopper–Pearson interval over the test set, per run."""
    radii = tuple(radii) if radii is not None else tuple(summaries[0]["radii"])
    header = ["run", "labelled"] + [f"@{r:g} [95% CI]" for r in radii]
    rows = []
    for s in summaries:
        cells = []
        for r in radii:
            key = f"{r:g}"
            if key not in (s.get("certified") or {}) or s["certified"][key] != s["certified"][key]:
                cells.append("-")
                continue
            low, high = s["certified_interval"][key]
            cells.append(f"{_pct(s['certified'][key])} [{100 * low:.1f}, {100 * high:.1f}]")
        rows.append([s.get("label") or s["run"], str(s["labelled"])] + cells)
    return header, rows


def comparison_rows(loaded, summaries: list[dict], radii=None, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Each run against the first, paired on the same inputs: certified accuracy difference at each
    radius with the exact McNemar p, and the ACR difference with its seeded paired bootstrap 95% interval."""
    radii = tuple(radii) if radii is not None else tuple(summaries[0]["radii"])
    header = ["run − first", "pairs", "ΔACR [95% bootstrap]"] + [f"Δ@{r:g} (p)" for r in radii]
    rows = []
    base = loaded[0][0]
    for (table, _, _), s in zip(loaded[1:], summaries[1:]):
        c = paired(base, table, radii, seed=seed)
        low, high = c["acr_interval"]
        cells = [f"{100 * row['difference']:+.1f} ({row['p']:.3g})" for row in c["certified"]]
        pairs = f"{c['pairs']}" + (f" ({c['left_out']} left out)" if c["left_out"] else "")
        rows.append([s.get("label") or s["run"], pairs, f"{c['acr_difference']:+.3f} [{low:+.3f}, {high:+.3f}]"]
                    + cells)
    return header, rows


def envelope_row(summaries: list[dict], radii=None) -> tuple[list[str], list[list[str]]]:
    """The best certified accuracy of any run at each radius, and which run gives it."""
    radii = tuple(radii) if radii is not None else tuple(summaries[0]["radii"])
    best = envelope(summaries, radii)
    header = ["radius", "envelope", "run"]
    return header, [[f"{r:g}", _pct(best[f"{r:g}"][0]), best[f"{r:g}"][1] or "-"] for r in radii]


def cap_notes(summaries: list[dict], radii=None) -> list[str]:
    """One line per run whose radius columns lie past the largest radius its n and α allow (the
    cells marked * in rows_for_display)."""
    radii = tuple(radii) if radii is not None else tuple(summaries[0]["radii"])
    notes = []
    for s in summaries:
        cap = s.get("max_radius")
        if cap is None or not any(r > cap for r in radii):
            continue
        over = [f"@{r:g}" for r in radii if r > cap]
        if cap <= 0:  # even all n votes leave p_lower ≤ ½
            least = int(np.ceil(np.log(s.get("alpha", 0.001)) / np.log(0.5)))
            notes.append(f"* {s.get('label') or s['run']}: n = {s['n']:,} and α = {s.get('alpha', 0.001):g} certify no "
                         f"radius at all (every vote for the class still leaves p_lower ≤ ½; n must be at least {least})")
            continue
        sigma = f" = {cap / s['sigma']:.2f}σ" if s.get("sigma") else ""
        notes.append(f"* {s.get('label') or s['run']}: n = {s['n']:,} and α = {s.get('alpha', 0.001):g} certify no "
                     f"radius above {cap:.3g}{sigma} (σ·Φ⁻¹(α^(1/n))); {', '.join(over)} "
                     f"{'is' if len(over) == 1 else 'are'} 0 by construction, whatever the model "
                     "(a larger n reaches further)")
    inexact = [s.get("label") or s["run"] for s in summaries if not s["holds_in_floating_point"]]
    if inexact:
        notes.append(f"float-noise: {', '.join(inexact)} drew float noise, whose radii do not hold in floating "
                     "point (a model can be crafted to read the sampler; docs/soundness.md)")
    return notes


def per_input(results, errors_only: bool = False, for_people: bool = False) -> tuple[list[str], list[list]]:
    """`srtool show`: one row per input with class names where the model declares them. `for_people`
    (the table): an input under the run's dataset folder is named from there, not by a long absolute
    path (into site-packages for the shipped demo), and a radius that every one of the n votes went
    to is marked `*`: it is the largest n and α allow (see capped_note), not the model's limit."""
    config = results.config
    names = config.get("classes") or []
    root = Path(config.get("dataset") or "")

    def name(index: int) -> str:
        if index < 0:
            return "abstain"
        return names[index] if index < len(names) else str(index)

    header = ["input", "label", "predict", "radius", "p_lower", "error"]
    if config.get("command") == "predict":
        header[3:5] = ["p_value"]
    sequential = bool(config.get("sequential"))
    if sequential:  # each row drew its own number of copies, and stopped for a reason
        header[-1:-1] = ["n", "stop"]
    rows = []
    for row in results.table.to_pylist():
        if errors_only and row["error"] is None:
            continue
        where = row.get("path") or (str(row["index"]) if for_people else row["index"])
        if for_people and row.get("path") and Path(where).is_absolute() and root.is_absolute():
            where = _under(Path(where), root)
        label = name(row["label"]) if row["label"] >= 0 else "-"
        predicted = name(row["predict"]) if row["error"] is None else "-"
        numbers = [row.get("p_value")] if config.get("command") == "predict" else [row["radius"], row["p_lower"]]
        if for_people and _capped(row, config):
            numbers[0] = f"{row['radius']:.4g}*"
        if sequential:
            numbers += [row["n"], row.get("stop")]
        rows.append([where, label, predicted, *numbers, row["error"]])
    return header, rows


def _capped(row: dict, config: dict) -> bool:
    """A fixed-n CERTIFY row whose n votes all went to its class: its radius is max_radius."""
    return (config.get("command", "certify") == "certify" and not config.get("sequential") and row["error"] is None
            and row["n"] > 0 and row["count"] == row["n"] and (row["radius"] or 0) > 0)


def capped_note(results) -> str | None:
    """What the `*` of per_input's table means, where some row has one."""
    config = results.config
    capped = [row for row in results.table.to_pylist() if _capped(row, config)]
    if not capped:
        return None
    cap = max_radius(config, 1.0)
    factor = ", times the radius factor" if any(row["radius_factor"] != 1 for row in capped) else ""
    return (f"* {len(capped)} of {len(results)} inputs got every one of the n = {config['n']:,} votes: their radius "
            f"is the largest n and α = {config.get('alpha', 0.001):g} allow (σ·Φ⁻¹(α^(1/n)) = "
            f"{cap / config['sigma']:.2f}σ{factor}), not a limit of the model; a larger n certifies further")


def _under(path: Path, root: Path) -> str:
    """`path` relative to the dataset `root` (a folder), its name where `root` is the file itself."""
    if path == root:
        return path.name
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; a `|` in a cell (a run's file name, say) is escaped so it stays one cell."""
    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows])


def cohen_tsv(table: pa.Table) -> str:
    """Cohen et al.'s certify.py output: idx label predict radius correct time."""
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    for row in table.to_pylist():
        radius = row["radius"] if row["radius"] is not None else 0.0
        lines.append(f"{row['index']}\t{row['label']}\t{row['predict']}\t{radius:.3}\t"
                     f"{int(row['correct'])}\t{row['time_s']:.4f}")
    return "\n".join(lines)


def plot(runs, out: str | Path, with_envelope: bool = False) -> list[str]:
    """Certified accuracy against radius, one curve per certify run (the paper's figures). A run
    without labels has no accuracy: its curve is the share of its inputs certified at each radius,
    drawn dotted and named so. Returns what the caller should say about the runs drawn that way or
    left out (predict runs, runs with no evaluated input)."""
    if Path(out).is_dir() or not Path(out).suffix:  # matplotlib would write OUT.png, or ..png for "."
        raise UsageError(f"--plot {out}: give the plot's file name with its type, e.g. curves.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'srtool[plot]'") from None
    curves, said = [], []
    for table, config, label in runs:
        if config.get("command", "certify") != "certify":
            said.append(f"{label}: a predict run has no radii; not plotted")
            continue
        evaluated = np.array([e is None for e in table.column("error").to_pylist()], dtype=bool)
        labelled = np.array(table.column("label").to_pylist(), dtype=np.int64) >= 0
        radius = np.array([r or 0.0 for r in table.column("radius").to_pylist()], dtype=float)
        if (evaluated & labelled).any():  # accuracy over the labelled inputs, as srtool report's
            ok = evaluated & labelled
            hit, dotted = np.array(table.column("correct").to_pylist(), dtype=bool)[ok], False
        elif evaluated.any():  # no labels: which inputs are certified at all (abstentions are not)
            ok = evaluated
            hit, dotted = np.array(table.column("predict").to_pylist(), dtype=np.int64)[ok] >= 0, True
            said.append(f"{label}: no labels, so its curve is the share of inputs certified at each radius "
                        "(dotted), not an accuracy")
            label = f"{label} (unlabelled: share certified)"
        else:
            said.append(f"{label}: no evaluated inputs; not plotted")
            continue
        curves.append((radius[ok], hit, label, ":" if dotted else "--" if config.get("not_certificate") else "-"))
    if not curves:
        raise UsageError("--plot needs at least one certify run with evaluated inputs")
    figure, axes = plt.subplots(figsize=(9.6, 4.8), dpi=120)
    for radius, hit, label, style in curves:
        grid = np.linspace(0, max(radius.max(), 1e-6) * 1.05, 400)
        # Radii a writer marked as not certificates (benchmarks/quality.py) are drawn dashed.
        axes.plot(grid, [(hit & (radius >= r)).mean() for r in grid], label=label, linestyle=style)
    accuracy_curves = [c for c in curves if c[3] != ":"]
    if with_envelope and accuracy_curves:  # the best run at each radius, as papers draw one curve over σ
        grid = np.linspace(0, max(max(c[0].max() for c in accuracy_curves), 1e-6) * 1.05, 400)
        best = [max((hit & (radius >= r)).mean() for radius, hit, *_ in accuracy_curves) for r in grid]
        axes.plot(grid, best, color="black", linewidth=2.5, alpha=0.5, label="envelope (best run)")
    axes.set_xlabel("radius (ℓ2, input pixel space [0,1])")
    axes.set_ylabel("certified accuracy" if all(style != ":" for *_, style in curves)
                    else "certified accuracy (dotted: share certified)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    try:
        figure.savefig(out, bbox_inches="tight")
    except (ValueError, OSError) as error:  # a file type matplotlib cannot write, a missing folder
        raise UsageError(f"--plot {out}: {str(error).splitlines()[0]}") from None
    finally:
        plt.close(figure)
    return said


def to_json(summaries: list[dict]) -> str:
    return json.dumps(summaries, indent=2)
