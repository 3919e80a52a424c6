"""One certification pipeline for every method: RS is the plan with one view, Smooth-Reduce has k.

For each input: patch positions → noise point → votes on n0 (selection) and n (estimation) noisy
copies from the input's own seeded streams → CERTIFY or PREDICT → one results row. Each input is a
small state machine (`certify_steps`, a generator that asks for copies and is sent their votes), so
the engine's scheduler can keep many inputs in flight and fill every ONNX Runtime call from several
of them; the rows do not depend on how copies are grouped into calls (engine's docstring).

Sequential CERTIFY (docs/sequential.md) reads the same estimation stream in rounds, up to the
checkpoints of a sequential.SequentialTest, and stops when its rule says the answer is known; copy j
is the fixed run's copy j, so a sequential row draws a prefix of the fixed run's copies. Copies whose
logits were not finite vote for no class: they count against the selected class, never for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from . import noise, stats
from .sequential import SequentialTest
from .data import Dataset, Item
from .engine import Request, Scheduler, Source, VoteCounter
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
    n: int  # sequential: the budget, the most estimation copies an input may use
    seed: int
    sequential: bool = False
    radii: tuple[float, ...] | None = None  # sequential: decide these radii (None: estimate the radius)
    tolerance: float = 0.02
    sequential_method: str = "union"
    noise: str = "gaussian"  # the host sampler (noise.KINDS): "discrete" is exact on the 1/255 grid

    def sequential_test(self, factor: float) -> SequentialTest:
        return SequentialTest(alpha=self.alpha, budget=self.n, sigma=self.sigma, factor=factor, radii=self.radii,
                              tolerance=self.tolerance, method=self.sequential_method)


def _error_row(item: Item, message: str, seconds: float, columns: dict | None = None) -> dict:
    return {"index": item.index, "label": item.label, "predict": stats.ABSTAIN, "radius": 0.0,
            "correct": False, "p_lower": None, "p_value": None, "count": 0, "n": 0, "counts": [],
            "invalid": None, "radius_factor": None, "time_s": seconds, "path": item.path, "error": message,
            **(columns or {})}


def certify_steps(item: Item, plan: Plan, settings: Settings, counts_escalations: bool = False):
    """One input's state machine: a generator that yields engine.Requests for noisy copies, is sent
    their votes per class, and returns the input's row (CERTIFY or PREDICT). `time_s` runs from the
    input's start to its row: with several inputs in flight it includes calls shared with others."""
    start = time.perf_counter()
    if item.error:
        return _error_row(item, item.error, time.perf_counter() - start)
    try:  # the plan for this input (videos: one per length); a misfit is an error row, not a crash
        plan = plan.for_input(item.image)
    except InputError as error:
        return _error_row(item, str(error), time.perf_counter() - start, error.columns)

    s = settings

    def stream(purpose: int):  # the one place this input's noise streams are made
        return noise.sampler(s.noise, s.seed, item.index, purpose)

    offsets = plan.offsets(s.seed, item.index)
    point = plan.noise_point(item.image, offsets)
    if s.noise == "discrete" and noise.grid_integers(point) is None:
        return _error_row(item, "off the 1/255 grid, which --noise discrete needs (8-bit images and frames "
                                "are on it)", time.perf_counter() - start)
    source = Source(point, offsets, plan)
    factor = plan.radius_factor(offsets)
    estimation = stream(noise.ESTIMATION)

    extra = {}
    if s.mode == "certify":
        counts0 = yield Request(source, stream(noise.SELECTION), 0, s.n0)
        if s.sequential:
            counts, n, p_lower, extra["stop"] = yield from _sequential(source, estimation, int(np.argmax(counts0)),
                                                                       s.sequential_test(factor))
        else:
            counts, n = (yield Request(source, estimation, 0, s.n)), s.n
        cert = stats.certify(counts0, counts, s.sigma, s.alpha, factor, n=n,
                             p_lower=p_lower if s.sequential else None)
        predict, radius, p_lower, p_value, count = cert.predict, cert.radius, cert.p_lower, None, cert.count
        invalid = s.n0 + n - int(counts0.sum() + counts.sum())
    else:
        counts, n = (yield Request(source, estimation, 0, s.n)), s.n
        predict, count, p_value = stats.predict(counts, s.alpha)
        radius, p_lower = None, None
        invalid = n - int(counts.sum())
    if counts_escalations:  # an ensemble with consensus: copies that ran every member
        extra["escalated"] = source.escalated
    return {"index": item.index, "label": item.label, "predict": predict, "radius": radius,
            "correct": bool(item.label >= 0 and predict == item.label), "p_lower": p_lower,
            "p_value": p_value, "count": count, "n": n, "counts": counts.tolist(), "invalid": invalid,
            "radius_factor": factor, "time_s": time.perf_counter() - start, "path": item.path,
            "error": None, **extra, **plan.columns,  # videos: frames read, sub-videos used
            **({"rotated": True} if item.rotated else {})}


def _sequential(source: Source, estimation, selected: int, test: SequentialTest):
    """Estimation copies in rounds up to the test's checkpoints, until its rule stops: (counts,
    copies drawn, the anytime-valid lower bound on p_selected, why it stopped)."""
    counts, drawn = None, 0
    for k, upto in enumerate(test.checkpoints()):
        more = yield Request(source, estimation, drawn, upto - drawn)
        counts, drawn = more if counts is None else counts + more, upto
        reason = test.stop(k, int(counts[selected]))
        if reason is not None:
            return counts, drawn, test.lower(k, int(counts[selected])), reason
    raise AssertionError("the last checkpoint always stops")


def evaluate_all(items: Iterable[Item], plan: Plan, counter: VoteCounter, settings: Settings) -> Iterator[dict]:
    """The rows of `items`, each as soon as its input is done (not in input order): the scheduler
    keeps several inputs in flight and fills every call from them (engine.Scheduler)."""
    tasks = (certify_steps(item, plan, settings, counter.counts_escalations) for item in items)
    return Scheduler(counter, settings.sigma).results(tasks)


def evaluate(item: Item, plan: Plan, counter: VoteCounter, settings: Settings) -> dict:
    """The row of one input on its own (its calls carry its copies only)."""
    return next(evaluate_all([item], plan, counter, settings))


def run(dataset: Dataset, indices: Iterable[int], plan: Plan, counter: VoteCounter,
        settings: Settings, writer: ResultsWriter, on_row: Callable[[dict], None] = lambda row: None) -> None:
    """Evaluate the given inputs, writing each row as it is done, with the calls and copies it took.

    An input is read when the scheduler takes it in, so at most the inputs in flight are in memory."""
    calls, copies = counter.calls, counter.copies
    for row in evaluate_all((dataset[index] for index in indices), plan, counter, settings):
        writer.count_calls(counter.calls - calls, counter.copies - copies)
        calls, copies = counter.calls, counter.copies
        writer.add(row)
        on_row(row)
