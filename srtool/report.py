"""Summaries of runs: the metrics of DESIGN §2, as a table, markdown, JSON, Cohen's TSV or a plot.

Certified accuracy at radius r is mean(correct and radius ≥ r) over the labelled inputs that were
evaluated (abstentions count as wrong); ACR is mean(correct · radius) over the same inputs; the
abstention rate is mean(predict = -1) over every evaluated input. Unlabelled inputs (label -1) have
no accuracy: they are counted apart, and a run without labels shows predictions and radii only.
Inputs that could not be evaluated (an `error` row) are counted apart and left out of every mean.
Default radii scale with σ (0.5σ, σ, 1.5σ, 2σ), so a summary at σ = 0.05 is not all zeros.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from .errors import UsageError
from .results import read_results

SIGMA_MULTIPLES = (0.5, 1.0, 1.5, 2.0)  # default report radii, in units of the run's σ


def default_radii(config: dict) -> tuple[float, ...]:
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
    return config.get("label") or f"{method_name(config)}{ensemble} σ={config.get('sigma'):g}"


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
        "patches": config.get("patches"),
        "noise_space": config.get("noise_space"),
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
        summary["acr"] = mean(correct * radius)
        summary["certified"] = {f"{r:g}": mean(correct & (radius >= r)) for r in radii}
        if count and not scored:  # no labels: what the radii are, not an accuracy
            all_radius = np.array([r or 0.0 for r in table.column("radius").to_pylist()])[valid]
            summary["mean_radius"] = float(np.mean(all_radius))
    return summary


def _forward_per_input(table: pa.Table, config: dict, valid: np.ndarray) -> float:
    """Mean forward passes of the base models per evaluated input: noisy copies (n0 + n drawn) times
    views per copy (patches, or sub-videos × chunks) times ensemble members; with --consensus the
    members past the first K count only on the copies that ran them (the `escalated` column)."""
    if not valid.any():
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
    labels = [f"{label} [{Path(path).stem}]" if labels.count(label) > 1 else label
              for label, (_, _, path) in zip(labels, loaded)]
    return [summarize(table, config, radii, partial=_partial(path)) | {"label": label, "file": path}
            for (table, config, path), label in zip(loaded, labels)]


def _partial(path) -> bool:
    """A run still going or interrupted: its parts folder is there."""
    return Path(f"{path}.parts").is_dir()


def load(paths) -> list[tuple[pa.Table, dict, str]]:
    runs = []
    for path in paths:
        table, config = read_results(path)
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
        row = [s.get("label") or s["run"], f"{s['n']:,}",
               f"{s['inputs']}" + (f" ({', '.join(notes)})" if notes else ""),
               _pct(s["accuracy"]), _pct(s["abstention"]),
               "-" if "acr" not in s else f"{s['acr']:.3f}",
               "-" if factor is None else f"{factor:.4g}",
               _count(s.get("forward_per_input")) + (f" ({s['saving']:.1f}× less)" if "saving" in s else ""),
               _fill(s.get("copies_per_call"), s.get("batch"))]
        row += [_pct(certified[f"{r:g}"]) if f"{r:g}" in certified else "-" for r in radii]
        rows.append(row)
    return header, rows


def per_input(results, errors_only: bool = False) -> tuple[list[str], list[list]]:
    """`srtool show`: one row per input with class names where the model declares them."""
    config = results.config
    names = config.get("classes") or []

    def name(index: int) -> str:
        if index < 0:
            return "abstain"
        return names[index] if index < len(names) else str(index)

    header = ["input", "label", "predict", "radius", "p_lower", "error"]
    if config.get("command") == "predict":
        header[3:5] = ["p_value"]
    rows = []
    for row in results.table.to_pylist():
        if errors_only and row["error"] is None:
            continue
        where = row.get("path") or str(row["index"])
        label = name(row["label"]) if row["label"] >= 0 else "-"
        predicted = name(row["predict"]) if row["error"] is None else "-"
        numbers = [row.get("p_value")] if config.get("command") == "predict" else [row["radius"], row["p_lower"]]
        rows.append([where, label, predicted, *numbers, row["error"]])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cohen_tsv(table: pa.Table) -> str:
    """Cohen et al.'s certify.py output: idx label predict radius correct time."""
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    for row in table.to_pylist():
        radius = row["radius"] if row["radius"] is not None else 0.0
        lines.append(f"{row['index']}\t{row['label']}\t{row['predict']}\t{radius:.3}\t"
                     f"{int(row['correct'])}\t{row['time_s']:.4f}")
    return "\n".join(lines)


def plot(runs, out: str | Path) -> None:
    """Certified accuracy against radius, one curve per certify run (the paper's figures)."""
    if Path(out).is_dir() or not Path(out).suffix:  # matplotlib would write OUT.png, or ..png for "."
        raise UsageError(f"--plot {out}: give the plot's file name with its type, e.g. curves.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'srtool[plot]'") from None
    figure, axes = plt.subplots(figsize=(9.6, 4.8), dpi=120)
    drawn = 0
    for table, config, label in runs:
        if config.get("command", "certify") != "certify":
            continue
        ok = np.array([e is None and label >= 0 for e, label in
                       zip(table.column("error").to_pylist(), table.column("label").to_pylist())], dtype=bool)
        correct = np.array(table.column("correct").to_pylist(), dtype=bool)[ok]
        radius = np.array([r or 0.0 for r in table.column("radius").to_pylist()], dtype=float)[ok]
        if not len(radius):
            continue
        grid = np.linspace(0, max(radius.max(), 1e-6) * 1.05, 400)
        curve = [(correct & (radius >= r)).mean() for r in grid]
        # Radii a writer marked as not certificates (benchmarks/quality.py) are drawn dashed.
        axes.plot(grid, curve, label=label, linestyle="--" if config.get("not_certificate") else "-")
        drawn += 1
    if not drawn:
        raise UsageError("--plot needs at least one certify run")
    axes.set_xlabel("radius (ℓ2, input pixel space [0,1])")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    try:
        figure.savefig(out, bbox_inches="tight")
    except (ValueError, OSError) as error:  # a file type matplotlib cannot write, a missing folder
        raise UsageError(f"--plot {out}: {str(error).splitlines()[0]}") from None
    finally:
        plt.close(figure)


def to_json(summaries: list[dict]) -> str:
    return json.dumps(summaries, indent=2)
