"""The statistics of randomized smoothing, as in Cohen et al. (2019), Section 3.2.

Everything here works on vote counts; nothing samples. The two procedures mirror the paper:

- CERTIFY: the class is chosen on a selection sample (`counts0`) and its probability bounded on a
  fresh estimation sample (`counts`); the radius is sigma * Phi^-1(p_lower) times the plan's factor.
- PREDICT: abstain unless the top class beats the runner-up in a two-sided binomial test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    Equal to statsmodels' proportion_confint(successes, trials, alpha=2*alpha, method="beta")[0].
    """
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


@dataclass(frozen=True)
class Certificate:
    predict: int  # class index, or ABSTAIN
    radius: float  # 0.0 when abstaining
    p_lower: float  # Clopper-Pearson bound on the selected class's probability
    count: int  # estimation votes for the selected class


def certify(counts0: np.ndarray, counts: np.ndarray, sigma: float, alpha: float,
            radius_factor: float = 1.0, n: int | None = None, p_lower: float | None = None) -> Certificate:
    """CERTIFY from the selection counts (n0 votes) and the fresh estimation counts (n votes).

    `n` is the number of estimation copies where some voted for no class (non-finite logits), so
    that they count against the selected class; `p_lower` is a bound computed elsewhere (a
    sequential run's anytime-valid one) in place of Clopper–Pearson at alpha on all n copies.
    """
    selected = int(np.argmax(counts0))
    n = int(counts.sum()) if n is None else n
    count = int(counts[selected])
    if p_lower is None:
        p_lower = lower_confidence_bound(count, n, alpha)
    if p_lower <= 0.5:
        return Certificate(ABSTAIN, 0.0, p_lower, count)
    radius = sigma * float(norm.ppf(p_lower)) * radius_factor
    return Certificate(selected, radius, p_lower, count)


def predict(counts: np.ndarray, alpha: float) -> tuple[int, int, float]:
    """PREDICT from n votes: (class or ABSTAIN, votes for the top class, the test's p-value)."""
    order = np.argsort(counts, kind="stable")[::-1]
    top, runner_up = int(order[0]), int(order[1]) if len(order) > 1 else None
    n_top = int(counts[top])
    n_second = int(counts[runner_up]) if runner_up is not None else 0
    p_value = float(binomtest(n_top, n_top + n_second, 0.5).pvalue) if n_top + n_second else 1.0
    return (ABSTAIN if p_value > alpha else top), n_top, p_value
