"""Comparing runs as a paper must: intervals, paired tests, the envelope over σ, published logs.

- Every certified accuracy gets a two-sided 95% Clopper–Pearson interval over the labelled test
  inputs: the sampling error of the test set (the certificates themselves are taken as given).
- Two runs on the same inputs (same indices, same labels) are compared pair by pair: at each radius
  the difference of certified accuracy with an exact McNemar test (two-sided, from the binomial
  over the discordant pairs), and the ACR difference with a seeded paired bootstrap interval.
- The envelope over several runs is, at each radius, the best certified accuracy of any of them
  (how papers draw one curve over σ).
- Cohen et al.'s and the DDS code's certify logs (`idx label predict radius correct time`, tab-
  separated, one header line) are read as runs beside srtool's own results files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.stats import beta, binom

from .errors import UsageError
from .results import results_schema

LEVEL = 0.95  # confidence of every interval here
BOOTSTRAP = 2000  # paired bootstrap resamples for the ACR difference
COHEN_HEADER = ["idx", "label", "predict", "radius", "correct", "time"]


# -- intervals ------------------------------------------------------------------------------------

def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact two-sided binomial interval for successes/trials (nan, nan with no trials)."""
    if trials == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def _scored(table: pa.Table) -> dict:
    """Per labelled, evaluated input: index, label, correct, radius (0 where none)."""
    error = np.array([e is not None for e in table.column("error").to_pylist()], dtype=bool)
    label = np.array(table.column("label").to_pylist(), dtype=np.int64)
    keep = ~error & (label >= 0)
    radius = np.array([r if r is not None else 0.0 for r in table.column("radius").to_pylist()], dtype=float)
    index = np.array(table.column("index").to_pylist(), dtype=np.int64)[keep]
    order = np.argsort(index, kind="stable")  # in index order, for pairing by searchsorted
    return {"index": index[order], "label": label[keep][order],
            "correct": np.array(table.column("correct").to_pylist(), dtype=bool)[keep][order],
            "radius": radius[keep][order]}


def certified_intervals(table: pa.Table, radii) -> dict:
    """{radius: (low, high)}: the Clopper–Pearson interval of certified accuracy at each radius."""
    s = _scored(table)
    return {f"{r:g}": clopper_pearson(int((s["correct"] & (s["radius"] >= r)).sum()), len(s["index"]))
            for r in radii}


# -- paired comparison ----------------------------------------------------------------------------

def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: under no difference each discordant pair is A's or B's with
    probability ½, so p = min(1, 2·P[Binomial(b+c, ½) ≤ min(b, c)])."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(only_a, only_b), discordant, 0.5)))


def paired(table_a: pa.Table, table_b: pa.Table, radii, seed: int = 0, resamples: int = BOOTSTRAP) -> dict:
    """Run B against run A on the same inputs. Inputs either run could not score (an error row, no
    label) are left out of both (counted in `left_out`); other differences (indices, labels) are refused."""
    a, b = _scored(table_a), _scored(table_b)
    all_a = set(table_a.column("index").to_pylist())
    all_b = set(table_b.column("index").to_pylist())
    if all_a != all_b:
        raise UsageError(f"paired comparison needs the same inputs: {len(all_a ^ all_b)} indices are in one "
                         "run only (use --skip/--max alike)")
    common = np.intersect1d(a["index"], b["index"])
    ia, ib = np.searchsorted(a["index"], common), np.searchsorted(b["index"], common)
    if np.any(a["label"][ia] != b["label"][ib]):
        raise UsageError("paired comparison needs the same labels: "
                         f"{int(np.sum(a['label'][ia] != b['label'][ib]))} inputs are labelled differently")
    correct_a, radius_a = a["correct"][ia], a["radius"][ia]
    correct_b, radius_b = b["correct"][ib], b["radius"][ib]
    rows = []
    for r in radii:
        hit_a, hit_b = correct_a & (radius_a >= r), correct_b & (radius_b >= r)
        only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
        count = len(common)
        rows.append({"radius": float(r), "a": hit_a.mean() if count else float("nan"),
                     "b": hit_b.mean() if count else float("nan"),
                     "difference": (only_b - only_a) / count if count else float("nan"),
                     "only_a": only_a, "only_b": only_b, "p": mcnemar_exact(only_a, only_b)})
    score_a, score_b = correct_a * radius_a, correct_b * radius_b
    return {"pairs": len(common), "left_out": len(all_a) - len(common), "certified": rows,
            "acr_difference": float(np.mean(score_b - score_a)) if len(common) else float("nan"),
            "acr_interval": bootstrap_interval(score_b - score_a, seed, resamples), "seed": seed,
            "resamples": resamples, "level": LEVEL}


def bootstrap_interval(differences: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of per-input differences, resampling inputs (pairs kept
    together) with numpy's default_rng(seed)."""
    if len(differences) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


# -- envelope -------------------------------------------------------------------------------------

def envelope(summaries: list[dict], radii) -> dict:
    """At each radius the best certified accuracy of the certify runs with labels, and which run."""
    out = {}
    for r in radii:
        key = f"{r:g}"
        best = [(s["certified"][key], s.get("label") or s["run"]) for s in summaries
                if s.get("certified") and s["certified"].get(key) == s["certified"].get(key)]
        out[key] = max(best, key=lambda pair: pair[0]) if best else (float("nan"), None)
    return out


# -- Cohen / DDS logs -----------------------------------------------------------------------------

def is_cohen_log(path) -> bool:
    try:
        with open(path, "rb") as handle:
            first = handle.readline(200).decode("utf-8", "replace").split()
    except OSError:
        return False
    return first == COHEN_HEADER


def read_cohen_log(path) -> tuple[pa.Table, dict]:
    """A Cohen et al./DDS certify log as a results table: abstentions (predict -1) have radius 0;
    the σ and n it was run with are not in the file, so they stay unknown."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        handle.readline()
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            cells = line.split("\t")
            try:
                idx, label, predict = int(cells[0]), int(cells[1]), int(cells[2])
                radius, correct, seconds = float(cells[3]), int(cells[4]), _seconds(cells[5])
            except (ValueError, IndexError):
                raise UsageError(f"{path}:{number}: not a certify log line (idx label predict radius "
                                 "correct time, tab-separated)") from None
            rows.append({"index": idx, "label": label, "predict": predict,
                         "radius": radius if predict >= 0 else None, "correct": bool(correct), "time_s": seconds})
    schema = results_schema(("image",))
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    table = pa.Table.from_pydict(columns, schema=schema)
    config = {"command": "certify", "label": f"{Path(path).stem} (certify log)", "format": "cohen-log"}
    return table, config


def _seconds(text: str) -> float:
    """Cohen's logs write the time as h:mm:ss.ffffff (datetime.timedelta); some writers give seconds."""
    text = text.strip()
    if ":" in text:
        h, m, s = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    return float(text)
