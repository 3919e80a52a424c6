"""Sequential certification: exact coverage under optional stopping, and the stopping rules."""

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from srtool import stats
from srtool.errors import UsageError
from srtool.sequential import BUDGET_SHARE, FUTILITY, GRID_SHARE, METHODS, REASONS, SequentialTest


def fewest(holds, n):
    """The smallest s in 0..n for which the monotone predicate holds (n + 1 when none), by bisection."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid + 1, hi)
    return lo


def crossing_probability(test, p):
    """P(lower(k, S_{n_k}) > p at SOME checkpoint) for a Bernoulli(p) stream, by dynamic programming.

    `alive[i]` = P(S = offset + i and no crossing so far). Between checkpoints the count grows by a
    Binomial(m, p) increment (a convolution); mass at or above the crossing count is absorbed.
    Increments are cut to mean +- (12 sd + 20), which drops far less than 1e-15 of mass.
    """
    alive, offset, crossed, drawn = np.ones(1), 0, 0.0, 0
    for k, n in enumerate(test.checkpoints()):
        m, drawn = n - drawn, n
        spread = 12 * math.sqrt(m * p * (1 - p)) + 20
        lo, hi = max(0, math.floor(m * p - spread)), min(m, math.ceil(m * p + spread))
        alive = np.convolve(alive, binom.pmf(np.arange(lo, hi + 1), m, p))
        offset += lo
        cut = max(0, fewest(lambda s: test.lower(k, s) > p, n) - offset)
        crossed += alive[cut:].sum()
        alive = alive[:cut]
    assert crossed + alive.sum() == pytest.approx(1.0, abs=1e-12)  # nothing lost by the window
    return crossed


def p_grid(test):
    """Where coverage is tightest: thresholds of grid radii, just below attainable bounds, 1/2, 1."""
    sigma = test.sigma * test.factor
    ps = [0.5, 0.5 + 1e-4, 0.51, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 1 - 1e-6]
    ps += [float(norm.cdf(r / sigma)) for r in (0.25, 0.5, 1.0, 2.0, 3.0, *(test.radii or ()))]
    for k, n in enumerate(test.checkpoints()):  # just below a bound the miss probability peaks
        ps += [test.lower(k, s) - 1e-12 for s in {n, n - 1, int(0.9 * n), int(0.75 * n), int(0.6 * n)}]
    return sorted({p for p in ps if 0 < p < 1})


CONFIGS = [(method, alpha, budget, radii) for method in METHODS for alpha in (0.05, 0.01, 0.001)
           for budget, radii in ((3000, None), (2000, (0.25, 0.5, 1.0, 2.0)))]


@pytest.mark.parametrize("method,alpha,budget,radii", CONFIGS)
def test_anytime_coverage_is_exact_and_at_most_alpha(method, alpha, budget, radii):
    test = SequentialTest(alpha, budget, sigma=0.5, radii=radii, method=method)
    worst = max(crossing_probability(test, p) for p in p_grid(test))
    assert worst <= alpha * (1 + 1e-9)
    assert worst >= alpha / len(test.checkpoints()) / 2  # not vacuous


@pytest.mark.parametrize("method", METHODS)
def test_anytime_coverage_at_the_paper_defaults(method):
    """alpha = 0.001 and a budget of 100,000 with the 1/2/3 sigma grid: the schedule actually shipped."""
    test = SequentialTest(0.001, 100_000, sigma=1.0, radii=(1.0, 2.0, 3.0), method=method)
    ps = [0.5 + 1e-4, 0.9, float(norm.cdf(1)), float(norm.cdf(2)), float(norm.cdf(3)), 0.9999]
    ps += [test.lower(k, n) - 1e-12 for k, n in enumerate(test.checkpoints())]
    assert max(crossing_probability(test, p) for p in ps) <= 0.001 * (1 + 1e-9)


class RecheckedClopperPearson:
    """The naive scheme: the fixed-n bound at the full alpha, looked at after every round."""

    def __init__(self, alpha, points):
        self.alpha, self.points = alpha, tuple(points)

    def checkpoints(self):
        return self.points

    def lower(self, k, successes):
        return stats.lower_confidence_bound(successes, self.points[k], self.alpha)


def test_rechecking_clopper_pearson_is_caught():
    """Same DP, same 11 checkpoints as the union schedule, but every check at the full alpha = 0.05."""
    points = SequentialTest(0.05, 100_000, sigma=1.0).checkpoints()
    assert len(points) >= 10
    naive = RecheckedClopperPearson(0.05, points)
    worst = max(crossing_probability(naive, p) for p in (float(norm.cdf(1.0)), 0.9, 0.99))
    assert worst > 5 * 0.05  # 0.26 at p = Phi(1): a radius of 1 sigma "certified" where the truth is 1 sigma
    assert crossing_probability(SequentialTest(0.05, 100_000, sigma=1.0), float(norm.cdf(1.0))) <= 0.05


def run(test, p):
    """Feed the expected counts of a stream at rate p; return (checkpoint, reason) where it stops."""
    for k, n in enumerate(test.checkpoints()):
        reason = test.stop(k, round(p * n))
        if reason is not None:
            return k, reason


def test_all_votes_stop_where_the_largest_grid_radius_is_certified():
    test = SequentialTest(0.001, 100_000, sigma=1.0, radii=(1.0, 2.0, 3.0))
    points = test.checkpoints()
    first = [next(n for k, n in enumerate(points) if test.radius(k, n) >= r) for r in (1, 2, 3)]
    assert first == [55, 409, 6954]  # fixed-n Cohen: 40, 301, 5114 (ln alpha / ln Phi(r))
    k, reason = run(test, 1.0)
    assert (points[k], reason) == (6954, "certified")
    assert all(test.stop(j, n) is None for j, n in enumerate(points[:k]))
    # Horvath's stages: the 3 sigma radius waits for the 10,000 stage.
    staged = SequentialTest(0.001, 100_000, sigma=1.0, radii=(1.0, 2.0, 3.0), method="staged")
    assert staged.checkpoints() == (1000, 10_000, 100_000)
    k, reason = run(staged, 1.0)
    assert (staged.checkpoints()[k], reason) == (10_000, "certified")


def test_a_hopeless_grid_radius_is_given_up_at_once():
    test = SequentialTest(0.001, 100_000, sigma=1.0, radii=(3.0,))
    assert run(test, 0.6) == (0, "futile")
    # Both decided early: 1 sigma certified, 3 sigma out of reach at p = 0.9.
    test = SequentialTest(0.001, 100_000, sigma=1.0, radii=(1.0, 3.0))
    k, reason = run(test, 0.9)
    assert (test.checkpoints()[k], reason) == (759, "certified")


def test_radius_estimation_stops_by_tolerance_or_abstains():
    test = SequentialTest(0.001, 100_000, sigma=0.5)
    k, reason = run(test, 0.9)
    assert reason == "tolerance" and k < len(test.checkpoints()) - 1
    n = test.checkpoints()[k]
    final = test.radius(len(test.checkpoints()) - 1, 90_000)
    assert final >= test.radius(k, round(0.9 * n)) >= final / 1.02  # what stopping gave up
    assert run(test, 0.3) == (0, "abstain")


def test_an_undecided_stream_runs_to_the_budget():
    test = SequentialTest(0.001, 20_000, sigma=1.0, radii=(1.0,))
    last = len(test.checkpoints()) - 1
    barely = fewest(lambda s: test.radius(last, s) >= 1.0, 20_000) / 20_000  # certified at the end only
    assert run(test, barely) == (last, "budget")
    assert test.radius(last, round(barely * 20_000)) >= 1.0
    # Exactly on the threshold the radius is out of reach: given up before the budget.
    k, reason = run(test, float(norm.cdf(1.0)))
    assert reason == "futile" and k < last
    # Radius estimation at p = 0.6: the radius keeps growing by more than 2% per checkpoint.
    test = SequentialTest(0.001, 20_000, sigma=1.0)
    assert run(test, 0.6) == (len(test.checkpoints()) - 1, "budget")


@pytest.mark.parametrize("radii", [None, (3.0,)])
def test_one_checkpoint_is_the_fixed_n_certificate(radii):
    test = SequentialTest(0.001, 100, sigma=0.25, radii=radii)
    assert test.checkpoints() == (100,)
    for s in range(101):
        assert test.lower(0, s) == stats.lower_confidence_bound(s, 100, 0.001)
        cert = stats.certify(np.array([0, 9]), np.array([100 - s, s]), 0.25, 0.001)
        assert test.radius(0, s) == cert.radius
    assert test.stop(0, 100) == "budget"


def test_schedules():
    union = SequentialTest(0.01, 1000, sigma=1.0)
    assert union.checkpoints() == (100, 150, 225, 338, 506, 1000)
    staged = SequentialTest(0.01, 200_000, 1.0, method="staged")
    assert staged.checkpoints() == (1000, 10_000, 125_000, 200_000)
    assert SequentialTest(0.01, 500, 1.0, method="staged").checkpoints() == (500,)
    for test in (union, SequentialTest(0.001, 100_000, 0.12, factor=0.5, radii=(0.05, 0.1, 0.9))):
        points = test.checkpoints()
        assert all(a < b for a, b in zip(points, points[1:])) and points[-1] == test.budget
    assert set(REASONS) == {"certified", "futile", "abstain", "tolerance", "budget"}


def levels(test):
    """alpha_k per checkpoint, recovered from the bound itself: CP_lower(n, n, a) = a ** (1 / n)."""
    return [test.lower(k, n) ** n for k, n in enumerate(test.checkpoints())]


def test_the_split_of_alpha():
    grid = SequentialTest(0.001, 100_000, sigma=1.0, radii=(1.0, 2.0, 3.0))
    split = levels(grid)
    assert math.fsum(split) == pytest.approx(0.001, rel=1e-9)
    assert split[-1] == pytest.approx(BUDGET_SHARE * 0.001, rel=1e-9)  # the budget's half
    at_grid = [a for n, a in zip(grid.checkpoints(), split) if n in (55, 409, 6954)]
    assert at_grid == pytest.approx([GRID_SHARE * 0.001 / 3] * 3, rel=1e-9)
    # No grid: the geometric checkpoints share the other half. One checkpoint: the budget takes all.
    assert math.fsum(levels(SequentialTest(0.001, 100_000, sigma=1.0))[:-1]) == pytest.approx(0.0005, rel=1e-9)
    assert levels(SequentialTest(0.01, 120, sigma=1.0, radii=(3.0,))) == pytest.approx([0.01], rel=1e-9)


def test_the_upper_bound_is_clopper_pearson():
    test = SequentialTest(0.01, 1000, sigma=1.0)
    assert test.upper(0, 100) == 1.0
    assert binom.cdf(60, 100, test.upper(0, 60)) == pytest.approx(FUTILITY, rel=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(alpha=0.0), dict(alpha=1.0), dict(budget=0), dict(budget=10.5), dict(sigma=-1.0),
    dict(radii=()), dict(radii=(1.0, -0.5)), dict(radii=(math.nan,)), dict(tolerance=0.0),
    dict(method="bayes"),
])
def test_arguments_are_checked(kwargs):
    with pytest.raises(UsageError):
        SequentialTest(**{"alpha": 0.001, "budget": 1000, "sigma": 0.5, **kwargs})
    with pytest.raises(ValueError):
        SequentialTest(0.001, 1000, 0.5).lower(0, 101)


def test_reasons_agree_with_the_reported_radius():
    """"certified" means the row's own radius reaches the smallest grid radius; "futile" means it does not."""
    test = SequentialTest(0.01, 3000, sigma=0.5, factor=0.8, radii=(0.2, 0.5, 1.0))
    for k, n in enumerate(test.checkpoints()[:-1]):
        for s in range(0, n + 1, max(1, n // 200)):
            reason = test.stop(k, s)
            assert reason in (None, "certified", "futile")
            if reason is not None:
                assert (test.radius(k, s) >= 0.2) == (reason == "certified")
