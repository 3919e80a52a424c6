"""Sequential certification (issue 12) against Cohen's fixed-n CERTIFY on real Fashion-MNIST.

Runs srtool's own CLI on every 50th of the 10,000 Fashion-MNIST test images (Debian's
dataset-fashion-mnist: 200 images, indices 0, 50, ..., 9950) with the shipped models at σ = 0.25
and 0.50 (σ from the models' metadata), n0 = 100, alpha = 0.001, a budget of n = 100,000, and
writes benchmarks/RESULTS-sequential.md plus benchmarks/sequential-cdf.png. Per σ:

- rs-fixed     Cohen's CERTIFY, n = 100,000: the reference;
- rs-union     --sequential --radii σ,2σ,3σ (union schedule, the default);
- rs-staged    the same with --sequential-method staged (Horváth et al.'s 1k/10k/100k stages);
- rs-estimate  --sequential without --radii: radius estimation to within --tolerance 2%;
- rs-estimate5, rs-estimate10: the same with --tolerance 5% and 10% (the trade-off; run last);
- k4-fixed     Smooth-Mean k = 4 (--resize 32 --patches 4 --reduce mean, noise on the input), n = 100,000;
- k4-union     the same with --sequential --radii σ,2σ,3σ.
The k = 4 runs cost 4 forward passes per noisy copy; by default they use every 100th image
(--k4-skip 100: 100 images, indices 0, 100, ..., 9900), to fit the CPU time.

Every run is a resumable srtool run under benchmarks/runs/sequential/ (git-ignored): run the
script again after an interruption and it continues; finished runs are not run again. The
report compares each run with the fixed run of the same plan and σ on the same inputs, rows
matched by index.

    python benchmarks/sequential.py                     # about 4-5 hours on 2 busy CPU cores
    python benchmarks/sequential.py --report-only       # tables and plot from the runs so far
    python benchmarks/sequential.py --n 2000 --skip 1000 --k4-skip 2000 --runs /tmp/seq --out /tmp/seq.md
                                                        # a one-minute smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
MODELS = ROOT / "srtool" / "assets"
SMOOTH_MEAN = ["--resize", "32", "--patches", "4", "--reduce", "mean"]
GRID = (1.0, 2.0, 3.0)  # grid radii, in units of σ
REPORT = (0.5, 1.0, 2.0, 3.0)  # certified accuracy is reported at these multiples of σ
TOLERANCES = (0.05, 0.10)  # radius estimation: looser tolerances than the default 2%, for the trade-off
REASONS = ("certified", "futile", "tolerance", "abstain", "budget")  # sequential stop reasons, in table order
CONCLUSION = "<!-- conclusion: written by hand, kept when the script rewrites the tables -->"


@dataclass(frozen=True)
class Spec:
    sigma: str
    name: str  # rs-fixed, rs-union, ...
    label: str
    extra: tuple[str, ...]
    skip: int
    patches: int
    reference: str  # the fixed run this one is compared with

    @property
    def key(self) -> str:
        return f"sigma{self.sigma}-{self.name}"

    @property
    def sequential(self) -> bool:
        return "--sequential" in self.extra

    @property
    def method(self) -> str:
        return self.name.split("-", 1)[1]


def specs(sigma: str, args) -> list[Spec]:
    s = float(sigma)
    radii = ",".join(f"{m * s:g}" for m in GRID)
    n = ("--n", str(args.n))
    seq = ("--sequential", "--radii", radii)
    return [
        Spec(sigma, "rs-fixed", "RS fixed n", n, args.skip, 1, "rs-fixed"),
        Spec(sigma, "rs-union", "RS sequential union, radii", (*n, *seq), args.skip, 1, "rs-fixed"),
        Spec(sigma, "rs-staged", "RS sequential staged, radii", (*n, *seq, "--sequential-method", "staged"),
             args.skip, 1, "rs-fixed"),
        Spec(sigma, "rs-estimate", "RS sequential estimation, tol 2%", (*n, "--sequential", "--tolerance", "0.02"),
             args.skip, 1, "rs-fixed"),
        *(Spec(sigma, f"rs-estimate{round(100 * t)}", f"RS sequential estimation, tol {100 * t:g}%",
               (*n, "--sequential", "--tolerance", f"{t:g}"), args.skip, 1, "rs-fixed") for t in TOLERANCES),
        Spec(sigma, "k4-fixed", "Smooth-Mean k=4 fixed n", (*n, *SMOOTH_MEAN), args.k4_skip, 4, "k4-fixed"),
        Spec(sigma, "k4-union", "Smooth-Mean k=4 sequential union, radii", (*n, *SMOOTH_MEAN, *seq),
             args.k4_skip, 4, "k4-fixed"),
    ]


def order(all_specs: list[Spec]) -> list[Spec]:
    """The fixed RS runs first (the reference, and the largest cost), then the cheap sequential
    runs, then the k = 4 runs (sequential before fixed, so its numbers come early)."""
    rank = {"rs-fixed": 0, "rs-union": 1, "rs-staged": 1, "rs-estimate": 1, "k4-union": 2, "k4-fixed": 3}
    return sorted(all_specs, key=lambda s: rank.get(s.name, 4))  # then the looser tolerances


def model(spec: Spec, args) -> Path:
    return args.models / f"fmnist_cnn_sigma{spec.sigma}.onnx"


def out_path(spec: Spec, args) -> Path:
    return args.runs / f"{spec.key}.parquet"


def command(spec: Spec, args, shown: bool = False) -> list[str]:
    """The srtool command line; `shown`: as typed from the repository root."""
    def where(p: Path) -> str:
        p = p.resolve()
        return str(p.relative_to(ROOT)) if shown and p.is_relative_to(ROOT) else str(p)
    return ["certify", "--model", where(model(spec, args)), "--images", args.images, "--skip", str(spec.skip),
            "--n0", "100", "--alpha", "0.001", *spec.extra, "--threads", str(args.threads),
            "--out", where(out_path(spec, args)), "--quiet"]


def finished(path: Path) -> bool:
    return path.is_file() and not Path(f"{path}.parts").exists()


def run_all(todo: list[Spec], args) -> None:
    times_file = args.runs / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    env = dict(os.environ)
    if args.srtool:  # a frozen copy of the source: PYTHONPATH wins over the editable install
        env["PYTHONPATH"] = str(args.srtool.resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    for spec in todo:
        out = out_path(spec, args)
        if finished(out):
            print(f"{spec.key}: done", flush=True)
            continue
        print(f"{spec.key}: srtool {shlex.join(command(spec, args, shown=True))}", flush=True)
        start = time.time()
        # cwd outside the repository, so that `python -m srtool` does not import ./srtool first
        result = subprocess.run([sys.executable, "-m", "srtool", *command(spec, args)], cwd=args.runs, env=env,
                                capture_output=True, text=True)
        wall = time.time() - start
        entry = times.setdefault(spec.key, {"wall_s": 0.0, "invocations": 0})
        entry["wall_s"] += wall
        entry["invocations"] += 1
        times_file.write_text(json.dumps(times, indent=2) + "\n")
        if result.returncode != 0:
            sys.exit(f"{spec.key} failed ({result.returncode}): {result.stderr.strip()}")
        print(f"{spec.key}: {wall:.0f} s wall", flush=True)


# -- analysis --------------------------------------------------------------------------------------

def load(spec: Spec, args):
    import srtool
    path = out_path(spec, args)
    if not path.exists() and not Path(f"{path}.parts").is_dir():
        return None
    return srtool.read_results(path)


def radii_of(sigma: str) -> list[float]:
    return [round(m * float(sigma), 6) for m in REPORT]


def by_index(results) -> dict[int, dict]:
    return {row["index"]: row for row in results.table.to_pylist() if row["error"] is None}


def metrics(spec: Spec, results, reference, times: dict) -> dict:
    """The numbers of one run, against its fixed reference on the same inputs."""
    radii = radii_of(spec.sigma)
    mine = by_index(results)
    s = results.summary(radii=radii)
    m = {"spec": spec, "inputs": s["inputs"], "partial": results.partial, "accuracy": s["accuracy"],
         "abstention": s["abstention"], "acr": s["acr"], "certified": s["certified"],
         "forward": s["forward_per_input"], "copies": s["forward_per_input"] / spec.patches,
         "time_s": float(sum(results.table.column("time_s").to_pylist())),
         "wall_s": times.get(spec.key, {}).get("wall_s")}
    if spec.sequential:
        m["stops"] = Counter(row["stop"] for row in mine.values())
        m["srtool_saving"] = s.get("saving")
    if reference is None or spec.name == spec.reference:
        return m
    ref_rows = by_index(reference)
    common = sorted(set(mine) & set(ref_rows))
    m["common"] = len(common)
    # The reference's summary on exactly the inputs this run has (a partial run has fewer).
    import srtool
    ref_table = reference.table.filter(np.isin(np.array(reference.table.column("index").to_pylist()), common))
    ref = srtool.Results(ref_table, reference.config).summary(radii=radii)
    own_table = results.table.filter(np.isin(np.array(results.table.column("index").to_pylist()), common))
    own = srtool.Results(own_table, results.config).summary(radii=radii)
    m["ref_forward"] = ref["forward_per_input"]
    m["saving"] = ref["forward_per_input"] / own["forward_per_input"]
    m["delta"] = {k: own["certified"][k] - ref["certified"][k] for k in own["certified"]}
    grid = [f"{round(g * float(spec.sigma), 6):g}" for g in GRID]
    m["max_grid_delta"] = max(abs(m["delta"][k]) for k in grid)
    m["acr_ref"] = ref["acr"]
    m["acr_loss"] = (ref["acr"] - own["acr"]) / ref["acr"] if ref["acr"] else float("nan")
    # Certificates at the grid radii lost / gained against the fixed run, input by input.
    m["lost"], m["gained"] = {}, {}
    for k in grid:
        r = float(k)
        have = {i for i in common if mine[i]["correct"] and (mine[i]["radius"] or 0.0) >= r}
        had = {i for i in common if ref_rows[i]["correct"] and (ref_rows[i]["radius"] or 0.0) >= r}
        m["lost"][k], m["gained"][k] = len(had - have), len(have - had)
    # Inputs that stopped before the budget: how much smaller is their radius than the fixed run's?
    budget = results.config.get("sequential", {}).get("budget", results.config.get("n"))
    early = [i for i in common if mine[i]["n"] < budget]
    diff = np.array([(ref_rows[i]["radius"] or 0.0) - (mine[i]["radius"] or 0.0) for i in early])
    rel = np.array([d / ref_rows[i]["radius"] for d, i in zip(diff, early) if ref_rows[i]["radius"]])
    m["early"] = len(early)
    m["by_reason"] = {}  # reason: (inputs, their share of the run's forward passes, mean / max radius smaller)
    n0 = results.config.get("n0") or 0
    total = sum(n0 + mine[i]["n"] for i in common)
    for reason in sorted({mine[i]["stop"] for i in common}, key=lambda r: REASONS.index(r)):
        rows = [i for i in common if mine[i]["stop"] == reason]
        d = np.array([(ref_rows[i]["radius"] or 0.0) - (mine[i]["radius"] or 0.0) for i in rows])
        m["by_reason"][reason] = (len(rows), sum(n0 + mine[i]["n"] for i in rows) / total,
                                  float(d.mean()), float(d.max()))
    m["early_diff"] = (float(diff.mean()), float(diff.max()), float(diff.min())) if len(early) else None
    m["early_rel"] = (float(rel.mean()), float(rel.max())) if len(rel) else None
    return m


def hindsight(reference, savings=(1.5, 2.0, 3.0, 5.0)) -> list[tuple[float, float]]:
    """The least ACR loss at each saving that a rule knowing every input's p in advance could reach.

    With p taken from the fixed run (count / n), input i certified at m_i copies gets the radius of
    the fixed-n bound at the full alpha with the expected count p·m_i: no union bound, no luck needed.
    Choosing all m_i to maximise the summed radius for a total number of copies is a knapsack whose
    best points are found by a price per copy (a Lagrange multiplier): each input takes the m that
    maximises radius(m) - price·m. A real sequential rule must learn p from the copies it draws and
    split alpha over its looks, so it should not be expected to do better: a target well beyond this
    frontier is out of reach for any stopping rule, not only for ours.
    """
    from scipy.stats import beta, norm
    config = reference.config
    alpha, n, n0 = config["alpha"], config["n"], config.get("n0") or 0
    rows = [row for row in reference.table.to_pylist() if row["error"] is None]
    sigma = float(config["sigma"])
    factor = np.array([row["radius_factor"] or 1.0 for row in rows])
    p = np.array([row["count"] / row["n"] for row in rows])
    correct = np.array([bool(row["correct"]) for row in rows])
    ms = np.unique(np.geomspace(10, n, 400).round().astype(int))
    s = np.floor(p[:, None] * ms[None, :])
    lower = np.where(s > 0, beta.ppf(alpha, np.maximum(s, 1), ms[None, :] - s + 1), 0.0)
    radius = np.where(lower > 0.5, sigma * norm.ppf(np.minimum(lower, 1 - 1e-16)), 0.0) * factor[:, None]
    radius *= correct[:, None]
    full = radius[:, -1].mean()
    curve = []  # (saving, ACR loss) as the price per copy rises
    for price in np.geomspace(1e-9, 1e-3, 300):
        pick = np.argmax(radius - price * ms[None, :], axis=1)
        curve.append(((n0 + n) / (n0 + ms[pick]).mean(), 1 - radius[np.arange(len(rows)), pick].mean() / full))
    return [(x, min(loss for saving, loss in curve if saving >= x)) for x in savings
            if any(saving >= x for saving, _ in curve)]


def pct(x: float) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def signed_pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def count(x: float) -> str:
    return f"{x:,.0f}"


def minutes(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def tables(sigma: str, rows: list[dict], frontier: list[tuple[float, float]]) -> list[str]:
    s = float(sigma)
    radii = [f"{r:g}" for r in radii_of(sigma)]
    names = ["0.5σ", "σ", "2σ", "3σ"]
    lines = ["| run | images | clean acc % | abstain % | ACR | " + " | ".join(
        f"cert. acc % @{n} ({r})" for n, r in zip(names, radii)) +
        " | fwd passes / input | saving vs fixed | max \\|Δ\\| at grid radii (pts) | compute min | wall min |",
        "|---|" + "---|" * (10 + len(radii) - 1)]
    for m in rows:
        spec = m["spec"]
        note = " (partial)" if m["partial"] else ""
        saving = "ref." if "saving" not in m else f"{m['saving']:.1f}×"
        delta = "-" if "max_grid_delta" not in m else f"{100 * m['max_grid_delta']:.1f}"
        cert = []
        for r in radii:
            c = pct(m["certified"][r])
            if "delta" in m:
                c += f" ({signed_pts(m['delta'][r])})"
            cert.append(c)
        lines.append(f"| {spec.label} | {m['inputs']}{note} | {pct(m['accuracy'])} | {pct(m['abstention'])} | "
                     f"{m['acr']:.3f} | " + " | ".join(cert) +
                     f" | {count(m['forward'])} | {saving} | {delta} | {minutes(m['time_s'])} | "
                     f"{minutes(m['wall_s'])} |")
    lines += ["", "Certified accuracy in brackets: the difference from the fixed run of the same plan "
              "(percentage points, same images). Forward passes per input are n0 + copies drawn, ×4 for "
              "k = 4; the fixed run's are 100,100 (×4). Compute minutes: the sum of the rows' `time_s`; "
              "wall minutes: the script's invocations of srtool (start-up included).", ""]
    seq = [m for m in rows if m["spec"].sequential and "early" in m]
    if seq:
        lines += ["| run | stop reasons | stopped early | their radius vs fixed run: mean / max smaller "
                  "(relative mean / max) | grid certificates lost / gained (σ, 2σ, 3σ) |", "|---|---|---|---|---|"]
        for m in seq:
            stops = ", ".join(f"{k} {v}" for k, v in sorted(m["stops"].items(), key=lambda kv: -kv[1]))
            if m["early_diff"]:
                mean, worst, best = m["early_diff"]
                early = f"{mean:.3f} / {worst:.3f}"
                if m["early_rel"]:
                    early += f" ({100 * m['early_rel'][0]:.0f}% / {100 * m['early_rel'][1]:.0f}%)"
                if best < 0:
                    early += f"; largest gain {-best:.3f}"
            else:
                early = "-"
            grid = ", ".join(f"{m['lost'][k]}/{m['gained'][k]}" for k in m["lost"])
            lines.append(f"| {m['spec'].label} | {stops} | {m['early']} of {m['common']} | {early} | {grid} |")
        lines += ["", "Radius differences are fixed-run radius minus sequential radius for the same input "
                  "(abstention = 0), in input-space ℓ2 units; positive means the sequential radius is smaller. "
                  "Certificates lost / gained: inputs certified (correct, radius ≥ r) by the fixed run but not "
                  "the sequential one, and the reverse.", ""]
    if seq:
        lines += ["By stop reason: how many inputs, their share of the run's forward passes, and how much smaller "
                  "their radius is than the fixed run's (mean / max):",
                  "", "| run | reason | inputs | share of fwd passes | radius smaller: mean / max |",
                  "|---|---|---|---|---|"]
        for m in seq:
            for reason, (k, share, mean, worst) in m["by_reason"].items():
                lines.append(f"| {m['spec'].label} | {reason} | {k} | {100 * share:.0f}% | {mean:.3f} / {worst:.3f} |")
        lines.append("")
    estimation = [m for m in rows if m["spec"].name.startswith("rs-estimate") and "saving" in m]
    if estimation:
        lines += ["Radius estimation, the trade-off (forward passes saved against ACR lost, both against the "
                  "fixed run):", "",
                  "| tolerance | fwd passes / input | saving | ACR | ACR lost | stopped early |",
                  "|---|---|---|---|---|---|"]
        for m in sorted(estimation, key=lambda m: float(m["spec"].extra[m["spec"].extra.index("--tolerance") + 1])):
            tol = float(m["spec"].extra[m["spec"].extra.index("--tolerance") + 1])
            lines.append(f"| {100 * tol:g}% | {count(m['forward'])} | {m['saving']:.2f}× | {m['acr']:.3f} "
                         f"(fixed {m['acr_ref']:.3f}) | {100 * m['acr_loss']:.2f}% | {m['early']} of {m['common']} |")
        lines.append("")
    if frontier:
        lines += ["The hindsight frontier: the least ACR loss at which a rule that knew every input's p in advance "
                  "(taken from the fixed run) could save this much, each input spending the copies that pay most "
                  "(`hindsight()` in the script). A rule that must learn p from its copies should not be expected to do "
                  "better.",
                  "", "| saving | " + " | ".join(f"{x:g}×" for x, _ in frontier) + " |",
                  "|---|" + "---|" * len(frontier),
                  "| least ACR loss | " + " | ".join(f"{100 * loss:.1f}%" for _, loss in frontier) + " |", ""]
    return lines


def targets(by_sigma: dict[str, list[dict]], frontiers: dict[str, list[tuple[float, float]]]) -> list[str]:
    lines = ["## Targets", ""]
    for sigma, rows in by_sigma.items():
        at3 = [loss for saving, loss in frontiers.get(sigma, []) if saving == 3.0]
        if at3:
            lines.append(f"- σ = {sigma}, hindsight frontier: a 3× saving costs at least {100 * at3[0]:.1f}% of the "
                         f"ACR ({'inside' if at3[0] <= 0.02 else 'outside'} the ≤ 2% target).")
        for m in rows:
            spec = m["spec"]
            if "saving" not in m:
                continue
            if spec.method in ("union", "staged"):
                fwd_ok, aim = m["saving"] >= 10, m["saving"] >= 25
                acc_ok = m["max_grid_delta"] <= 0.01 + 1e-12
                lines.append(f"- σ = {sigma}, {spec.label}: {m['saving']:.1f}× fewer forward passes "
                             f"({'met' if fwd_ok else 'NOT met'}: ≥ 10×; aim 25× {'reached' if aim else 'not reached'}); "
                             f"largest certified-accuracy difference at the grid radii {100 * m['max_grid_delta']:.1f} "
                             f"points ({'met' if acc_ok else 'NOT met'}: ≤ 1 point)"
                             + (" — partial run" if m["partial"] else "") + ".")
            elif spec.method.startswith("estimate"):
                ok = m["saving"] >= 3 and m["acr_loss"] <= 0.02
                lines.append(f"- σ = {sigma}, {spec.label}: {m['saving']:.2f}× fewer forward passes at "
                             f"{100 * m['acr_loss']:.2f}% lower ACR ({m['acr']:.3f} vs {m['acr_ref']:.3f}) "
                             f"({'met' if ok else 'NOT met'}: ≥ 3× at ≤ 2% ACR loss)"
                             + (" — partial run" if m["partial"] else "") + ".")
    return lines + [""]


def plot(by_sigma: dict[str, list[dict]], loaded: dict, out: Path, n: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"rs-union": "tab:blue", "rs-staged": "tab:orange", "rs-estimate": "tab:green",
              "rs-estimate10": "tab:olive", "k4-union": "tab:purple"}
    styles = {"0.25": "-", "0.50": "--"}
    figure, axes = plt.subplots(figsize=(9.6, 5.2), dpi=120)
    for sigma, rows in by_sigma.items():
        for m in rows:
            spec = m["spec"]
            if spec.name not in colors:
                continue
            results = loaded[spec.key]
            forward = np.sort(np.array([(100 + row["n"]) * spec.patches for row in results.table.to_pylist()
                                        if row["error"] is None], dtype=float))
            label = f"{spec.label}, σ={sigma} (mean {forward.mean():,.0f})"
            share = np.arange(0, len(forward) + 1) / len(forward)  # the curve rises from 0 at the first input
            forward = np.concatenate([forward[:1], forward])
            axes.step(forward, share, where="post", color=colors.get(spec.name), linestyle=styles.get(sigma, ":"),
                      label=label)
    for x, text in ((100 + n, f"fixed RS\n{100 + n:,}"), (4 * (100 + n), f"fixed k=4\n{4 * (100 + n):,}")):
        axes.axvline(x, color="grey", linestyle=":", linewidth=1)
        axes.text(x * 0.93, 0.03, text, ha="right", va="bottom", fontsize=8, color="grey")
    axes.set_xscale("log")
    axes.set_xlim(100, 6 * (100 + n))
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("forward passes for the input (n0 + copies drawn, ×4 for k = 4; log scale)")
    axes.set_ylabel("share of inputs done")
    axes.set_title(f"Sequential certification, Fashion-MNIST, budget n = {n:,}, α = 0.001")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.savefig(out, bbox_inches="tight")
    plt.close(figure)


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                   if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores"


def report(all_specs: list[Spec], args) -> None:
    times_file = args.runs / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    loaded = {spec.key: load(spec, args) for spec in all_specs}
    by_sigma: dict[str, list[dict]] = {}
    for spec in all_specs:
        if loaded[spec.key] is None or not len(loaded[spec.key]):
            continue
        reference = loaded.get(f"sigma{spec.sigma}-{spec.reference}")
        by_sigma.setdefault(spec.sigma, []).append(metrics(spec, loaded[spec.key], reference, times))
    if not by_sigma:
        sys.exit("no runs to report yet")
    plot_file = args.out.with_name("sequential-cdf.png")
    plot(by_sigma, loaded, plot_file, args.n)

    previous = args.out.read_text() if args.out.exists() else ""
    conclusion = previous[previous.index(CONCLUSION):] if CONCLUSION in previous else CONCLUSION + "\n"
    total = sum(m["time_s"] for rows in by_sigma.values() for m in rows)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                     (("n", args.n), ("skip", args.skip), ("k4_skip", args.k4_skip)) if v != DEFAULTS[k])
    source = ""
    if args.srtool:
        head = args.srtool / "HEAD"
        diff = args.srtool / "srtool.diff"
        source = (f" srtool ran from a frozen copy of the working tree (`--srtool`, commit "
                  f"{head.read_text().strip()[:10] if head.exists() else '?'}"
                  f"{' plus the uncommitted changes in srtool.diff' if diff.exists() and diff.stat().st_size else ''}"
                  "), so that edits made meanwhile could not change a run halfway.")
    lines = [
        "# Sequential certification against fixed-n CERTIFY (issue 12)",
        "",
        f"Generated by `python benchmarks/sequential.py{(' ' + flags) if flags else ''}` on "
        f"{datetime.date.today().isoformat()}; machine: {machine()}, shared with other jobs (times are indicative; "
        f"the forward-pass counts are exact), srtool with `--threads {args.threads}`.{source} "
        f"{total / 3600:.1f} hours of compute in all (summed `time_s`).",
        "",
        f"Data: Fashion-MNIST test set (`{args.images}`, labels from the file beside it). RS runs: every "
        f"{args.skip}th image ({10000 // args.skip} images, indices 0, {args.skip}, …). Smooth-Mean k = 4 runs: every "
        f"{args.k4_skip}th image ({10000 // args.k4_skip} images, indices 0, {args.k4_skip}, …)"
        + (" — half of the RS images, to fit the CPU time; the k = 4 rows are compared with a k = 4 "
           "fixed run on the same images." if args.k4_skip != args.skip else ".") +
        f" Models: the shipped `fmnist_cnn_sigma0.25.onnx` and `fmnist_cnn_sigma0.50.onnx` (σ from their "
        f"metadata). n0 = 100, α = 0.001, n = {args.n:,} (the budget of the sequential runs). Grid radii: σ, 2σ, 3σ.",
        "",
        "## Commands",
        "",
        "```",
        *(f"srtool {shlex.join(command(spec, args, shown=True))}" for spec in all_specs),
        "```",
        "",
    ]
    frontiers: dict[str, list[tuple[float, float]]] = {}
    for sigma, rows in by_sigma.items():
        reference = loaded.get(f"sigma{sigma}-rs-fixed")
        frontier = hindsight(reference) if reference is not None and not reference.partial else []
        frontiers[sigma] = frontier
        lines += [f"## σ = {sigma}", "", *tables(sigma, rows, frontier)]
    lines += targets(by_sigma, frontiers)
    lines += ["## Forward passes per input", "", f"![CDF of forward passes per input]({plot_file.name})", ""]
    args.out.write_text("\n".join(lines) + "\n" + conclusion)
    print("\n".join(lines))
    print(f"wrote {args.out} and {plot_file}")


DEFAULTS = {"n": 100_000, "skip": 50, "k4_skip": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=DEFAULTS["n"], help="estimation copies (the sequential budget)")
    parser.add_argument("--skip", type=int, default=DEFAULTS["skip"], help="RS runs: every skip-th test image")
    parser.add_argument("--k4-skip", type=int, default=DEFAULTS["k4_skip"],
                        help="Smooth-Mean k=4 runs: every skip-th test image")
    parser.add_argument("--sigmas", default="0.25,0.50")
    parser.add_argument("--images", default=IMAGES)
    parser.add_argument("--models", type=Path, default=MODELS, help="folder of fmnist_cnn_sigma*.onnx")
    parser.add_argument("--threads", type=int, default=2, help="srtool --threads")
    parser.add_argument("--only", help="comma-separated run names (rs-fixed, rs-union, rs-staged, rs-estimate, "
                                       "rs-estimate5, rs-estimate10, k4-fixed, k4-union) to run; default all")
    parser.add_argument("--srtool", type=Path, help="run srtool from this copy of its source (a folder holding "
                                                    "srtool/), instead of the installed one")
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "sequential")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-sequential.md")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the runs so far")
    args = parser.parse_args()
    args.runs = args.runs.resolve()
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.srtool:
        sys.path.insert(0, str(args.srtool.resolve()))  # read the results with the same srtool

    all_specs = [spec for sigma in args.sigmas.split(",") for spec in specs(sigma, args)]
    if not args.report_only:
        only = set(args.only.split(",")) if args.only else None
        run_all([s for s in order(all_specs) if only is None or s.name in only], args)
    report(all_specs, args)


if __name__ == "__main__":
    main()
