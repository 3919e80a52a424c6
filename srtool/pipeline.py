"""One certification pipeline for every method: RS is the plan with one view, Smooth-Reduce has k.

For each input: patch positions → noise point → votes on n0 (selection) and n (estimation) noisy
copies from the input's own seeded streams → CERTIFY or PREDICT → one results row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from . import noise, stats
from .data import Dataset, Item
from .engine import VoteCounter
from .errors import InputError
from .plan import Plan
from .results import ResultsWriter

MODES = ("certify", "predict")


@dataclass(frozen=True)
class Settings:
    mode: str  # "certify" or "predict"
    sigma: float
    alpha: float
    n0: int
    n: int
    seed: int


def _error_row(item: Item, message: str, seconds: float, columns: dict | None = None) -> dict:
    return {"index": item.index, "label": item.label, "predict": stats.ABSTAIN, "radius": 0.0,
            "correct": False, "p_lower": None, "p_value": None, "count": 0, "n": 0, "counts": [],
            "radius_factor": None, "time_s": seconds, "path": item.path, "error": message,
            **(columns or {})}


def evaluate(item: Item, plan: Plan, counter: VoteCounter, settings: Settings) -> dict:
    """CERTIFY or PREDICT one input; the row that goes into the results table."""
    start = time.perf_counter()
    if item.error:
        return _error_row(item, item.error, time.perf_counter() - start)
    try:  # the plan for this input (videos: one per length); a misfit is an error row, not a crash
        plan = plan.for_input(item.image)
    except InputError as error:
        return _error_row(item, str(error), time.perf_counter() - start, error.columns)

    s = settings
    offsets = plan.offsets(s.seed, item.index)
    point = plan.noise_point(item.image, offsets)
    factor = plan.radius_factor(offsets)
    estimation = noise.Gaussian(s.seed, item.index, noise.ESTIMATION)
    if s.mode == "certify":
        counts0 = counter.count(point, offsets, s.n0, s.sigma, noise.Gaussian(s.seed, item.index, noise.SELECTION),
                                plan=plan)
        counts = counter.count(point, offsets, s.n, s.sigma, estimation, plan=plan)
        cert = stats.certify(counts0, counts, s.sigma, s.alpha, factor)
        predict, radius, p_lower, p_value, count = cert.predict, cert.radius, cert.p_lower, None, cert.count
    else:
        counts = counter.count(point, offsets, s.n, s.sigma, estimation, plan=plan)
        predict, count, p_value = stats.predict(counts, s.alpha)
        radius, p_lower = None, None
    return {"index": item.index, "label": item.label, "predict": predict, "radius": radius,
            "correct": bool(item.label >= 0 and predict == item.label), "p_lower": p_lower,
            "p_value": p_value, "count": count, "n": s.n, "counts": counts.tolist(),
            "radius_factor": factor, "time_s": time.perf_counter() - start, "path": item.path,
            "error": None, **plan.columns}  # videos: frames read, sub-videos used


def run(dataset: Dataset, indices: Iterable[int], plan: Plan, counter: VoteCounter,
        settings: Settings, writer: ResultsWriter, on_row: Callable[[dict], None] = lambda row: None) -> None:
    """Evaluate the given inputs in order, writing each row as it is done."""
    for index in indices:
        row = evaluate(dataset[index], plan, counter, settings)
        writer.add(row)
        on_row(row)
