"""Sequential certification: stop drawing estimation copies once the answer is known (issue 12).

CERTIFY (stats.py) bounds p_c on n fresh copies at once. Here the same copies are read in rounds:
at checkpoint k, after n_k copies of which S voted for c_hat, the lower bound is the one-sided
Clopper-Pearson bound at level alpha_k. Checkpoints and levels are fixed before any vote is seen
and sum to at most alpha, so for every p the union bound gives

    P(exists k: CP_lower(S_{n_k}, n_k, alpha_k) > p) <= sum_k alpha_k <= alpha,

and the bound at whichever checkpoint a stopping rule picks holds with probability 1 - alpha.
The rules only decide *when* to stop. They use an upper bound at level FUTILITY that is never
reported, so it costs no soundness. docs/sequential.md has the reasoning and the numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property, lru_cache

from scipy.stats import beta, binom, norm

from .errors import UsageError
from .stats import lower_confidence_bound

METHODS = ("union", "staged")
REASONS = ("certified", "futile", "abstain", "tolerance", "budget")
FIRST, RATIO = 100, 1.5  # union: geometric checkpoints 100, 150, 225, ... below the budget
BUDGET_SHARE, GRID_SHARE = 0.5, 0.25  # union: the shares of alpha at the budget and at the grid's checkpoints
STAGES = (1_000, 10_000, 125_000)  # staged: Horvath et al.'s stage sizes, capped at the budget
FUTILITY = 0.05  # level of the upper bound that only decides to give up (a cost, never a soundness, choice)


@lru_cache(maxsize=1 << 16)
def _lower(successes: int, trials: int, level: float) -> float:
    return lower_confidence_bound(successes, trials, level)


@lru_cache(maxsize=1 << 16)
def _upper(successes: int, trials: int, level: float) -> float:
    """One-sided (1 - level) Clopper-Pearson upper bound."""
    return 1.0 if successes >= trials else float(beta.isf(level, successes + 1, trials - successes))


@dataclass(frozen=True)
class SequentialTest:
    """The checkpoints, bounds and stopping rules for one input's estimation copies (radii: input space)."""

    alpha: float
    budget: int
    sigma: float
    factor: float = 1.0
    radii: tuple[float, ...] | None = None  # None: estimate the radius instead of deciding a grid
    tolerance: float = 0.02
    method: str = "union"

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise UsageError(f"alpha must be in (0, 1), got {self.alpha}")
        if isinstance(self.budget, bool) or int(self.budget) != self.budget or self.budget < 1:
            raise UsageError(f"the sequential budget (--n) must be a whole number >= 1, got {self.budget}")
        if not (0 < self.sigma < math.inf and 0 < self.factor < math.inf):
            raise UsageError(f"sigma and the radius factor must be positive, got {self.sigma}, {self.factor}")
        if self.radii is not None:
            radii = tuple(sorted({float(r) for r in self.radii}))
            if not radii or not all(0 < r < math.inf for r in radii):
                raise UsageError(f"radii must be positive numbers, got {self.radii}")
            object.__setattr__(self, "radii", radii)
        if not 0 < self.tolerance < math.inf:
            raise UsageError(f"tolerance must be positive, got {self.tolerance}")
        if self.method not in METHODS:
            raise UsageError(f"unknown sequential method {self.method!r}; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "budget", int(self.budget))

    def checkpoints(self) -> tuple[int, ...]:
        """Cumulative copy counts n_1 < ... < n_K = budget."""
        return self._schedule[0]

    def lower(self, k: int, successes: int) -> float:
        """Lower bound on p_c at checkpoint k, valid whatever rule chose to stop there."""
        return _lower(successes, self._trials(k, successes), self._schedule[1][k])

    def upper(self, k: int, successes: int) -> float:
        """Upper bound at level FUTILITY; for stopping only."""
        return _upper(successes, self._trials(k, successes), FUTILITY)

    def radius(self, k: int, successes: int) -> float:
        """sigma * Phi^-1(lower) * factor, or 0.0 (abstain) when lower <= 1/2."""
        p_lower = self.lower(k, successes)
        return self.sigma * float(norm.ppf(p_lower)) * self.factor if p_lower > 0.5 else 0.0

    def stop(self, k: int, successes: int) -> str | None:
        """None to draw the next round, else why to stop (one of REASONS):

        certified / futile -- with radii: each is certified now or out of reach; some / none certified;
        tolerance / abstain -- without: the radius is within tolerance of the best reachable / none is;
        budget -- the last checkpoint, whatever else holds.
        "Reachable" means at the last checkpoint, if the remaining copies voted at the upper bound's rate.
        """
        n, last = self._trials(k, successes), len(self.checkpoints()) - 1
        if k == last:
            return "budget"
        total = self.checkpoints()[last]
        best = min(total, successes + math.ceil(self.upper(k, successes) * (total - n)))
        if self.radii is None:
            now, reach = self.radius(k, successes), self.radius(last, best)
            if reach == 0.0:
                return "abstain"
            return "tolerance" if now > 0 and reach <= now * (1 + self.tolerance) else None
        need_now, need_last = self._needed[k], self._needed[last]
        if all(successes >= a or best < b for a, b in zip(need_now, need_last)):
            return "certified" if successes >= need_now[0] else "futile"
        return None

    @cached_property
    def _schedule(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(checkpoints, alpha_k): fixed from the fields alone, never from votes; sum(alpha_k) = alpha.

        staged: alpha / K at each stage. union: half of alpha at the budget, so a row that runs to it is
        nearly the fixed run's; a quarter shared by the grid's checkpoints, where confident inputs stop;
        the rest shared by the geometric ones. A share with no checkpoint of its own goes to the budget,
        and checkpoints that coincide add their shares.
        """
        if self.method == "staged":
            points = sorted({s for s in STAGES if s < self.budget} | {self.budget})
            return tuple(points), (self.alpha / len(points),) * len(points)
        radii = self.radii or ()
        geometric = [round(FIRST * RATIO**i) for i in range(64) if FIRST * RATIO**i * 1.5 <= self.budget]
        early = defaultdict(float)
        for n in geometric:
            early[n] += self.alpha * (1 - BUDGET_SHARE - (GRID_SHARE if radii else 0)) / len(geometric)
        for r in radii:
            level = self.alpha * GRID_SHARE / len(radii)
            n = self._all_votes_certify(r, level)
            if n < self.budget:
                early[n] += level
        points = sorted(early) + [self.budget]
        levels = [early[n] for n in points[:-1]] + [self.alpha - math.fsum(early.values())]
        return tuple(points), tuple(levels)

    def _all_votes_certify(self, r: float, level: float) -> int:
        """Smallest n at which n votes out of n certify r at this level (where confident inputs stop)."""
        p_star = norm.cdf(r / (self.sigma * self.factor))
        if p_star >= 1.0 or math.log(level) / math.log(p_star) >= self.budget:
            return self.budget
        n = max(1, math.ceil(math.log(level) / math.log(p_star)))
        while self.sigma * norm.ppf(_lower(n, n, level)) * self.factor < r:  # rounding, at most a step
            n += 1
        return n

    @cached_property
    def _needed(self) -> tuple[tuple[int, ...], ...]:
        """Per checkpoint, per radius (ascending): the fewest successes that certify it (n_k + 1: none).

        By the duality of Clopper-Pearson, lower >= p* iff P(Bin(n_k, p*) >= s) <= alpha_k; the count
        that gives is then checked against radius() itself, so the table and the rows agree exactly.
        """
        table = []
        for k, n in enumerate(self.checkpoints()):
            row = []
            for r in self.radii:
                p_star = float(norm.cdf(r / (self.sigma * self.factor)))
                s = min(n + 1, int(binom.isf(self._schedule[1][k], n, p_star)) + 1)
                while s > 0 and self.radius(k, s - 1) >= r:
                    s -= 1
                while s <= n and self.radius(k, s) < r:
                    s += 1
                row.append(s)
            table.append(tuple(row))
        return tuple(table)

    def _trials(self, k: int, successes: int) -> int:
        points = self.checkpoints()
        if not 0 <= k < len(points) or not 0 <= successes <= points[k]:
            raise ValueError(f"checkpoint {k} with {successes} successes is outside {points}")
        return points[k]
