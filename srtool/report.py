"""Summaries of runs: the metrics of DESIGN §2, as a table, markdown, JSON, Cohen's TSV or a plot.

Certified accuracy at radius r is mean(correct and radius ≥ r) over all inputs that were read
(abstentions count as wrong); ACR is mean(correct · radius); the abstention rate is mean(predict = -1).
Inputs that could not be read (an `error` row) are counted apart and left out of every mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from .errors import UsageError
from .results import read_results

DEFAULT_RADII = (0.25, 0.5, 0.75, 1.0)


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
    return config.get("label") or f"{method_name(config)} σ={config.get('sigma'):g}"


def summarize(table: pa.Table, config: dict, radii=DEFAULT_RADII) -> dict:
    errors = np.array([e is not None for e in table.column("error").to_pylist()], dtype=bool)
    valid = ~errors
    correct = np.array(table.column("correct").to_pylist(), dtype=bool)[valid]
    predict = np.array(table.column("predict").to_pylist())[valid]
    radius = np.array([r if r is not None else 0.0 for r in table.column("radius").to_pylist()])[valid]
    factors = [f for f in table.column("radius_factor").to_pylist() if f is not None]
    count = int(valid.sum())
    mean = (lambda a: float(np.mean(a))) if count else (lambda a: float("nan"))
    summary = {
        "run": run_label(config),
        "mode": config.get("command", "certify"),
        "method": method_name(config),
        "sigma": config.get("sigma"),
        "patches": config.get("patches"),
        "noise_space": config.get("noise_space"),
        "n": config.get("n"),
        "inputs": count,
        "errors": int(errors.sum()),
        "accuracy": mean(correct),
        "abstention": mean(predict == -1),
        "radius_factor": (min(factors) if factors else config.get("radius_factor")),
    }
    if summary["mode"] == "certify":
        summary["acr"] = mean(correct * radius)
        summary["certified"] = {f"{r:g}": mean(correct & (radius >= r)) for r in radii}
    return summary


def load(paths) -> list[tuple[pa.Table, dict, str]]:
    runs = []
    for path in paths:
        table, config = read_results(path)
        runs.append((table, config, str(path)))
    if not runs:
        raise UsageError("give at least one results file")
    return runs


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}%"


def rows_for_display(summaries: list[dict], radii) -> tuple[list[str], list[list[str]]]:
    """Short columns, so a summary fits an 80-column terminal; `acc` is certified accuracy at 0."""
    header = ["run", "n", "inputs", "acc", "abstain", "ACR", "factor"] + [f"@{r:g}" for r in radii]
    rows = []
    for s in summaries:
        factor = s["radius_factor"]
        row = [s.get("label") or s["run"], f"{s['n']:,}",
               f"{s['inputs']}" + (f" (+{s['errors']} err)" if s["errors"] else ""),
               _pct(s["accuracy"]), _pct(s["abstention"]),
               "-" if "acr" not in s else f"{s['acr']:.3f}",
               "-" if factor is None else f"{factor:.4g}"]
        row += [_pct(s["certified"][f"{r:g}"]) if "certified" in s else "-" for r in radii]
        rows.append(row)
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
        ok = np.array([e is None for e in table.column("error").to_pylist()], dtype=bool)
        correct = np.array(table.column("correct").to_pylist(), dtype=bool)[ok]
        radius = np.array(table.column("radius").to_pylist(), dtype=float)[ok]
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
    figure.savefig(out, bbox_inches="tight")
    plt.close(figure)


def to_json(summaries: list[dict]) -> str:
    return json.dumps(summaries, indent=2)
