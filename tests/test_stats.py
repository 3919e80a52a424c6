"""The statistics against exact computations (no sampling)."""

import numpy as np
import pytest
from scipy.stats import binom, binomtest, norm

from srtool import stats


@pytest.mark.parametrize("n", [1, 3, 10, 50, 200, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.2])
def test_clopper_pearson_covers_every_true_p(n, alpha):
    """P(lower bound > p) summed exactly over the binomial pmf stays at or below alpha, for all p."""
    bounds = np.array([stats.lower_confidence_bound(k, n, alpha) for k in range(n + 1)])
    assert np.all(np.diff(bounds) > 0)  # more successes, higher bound
    worst = 0.0
    for p in np.concatenate([np.linspace(0.001, 0.999, 199), bounds[1:] - 1e-12, bounds[1:] + 1e-12]):
        if not 0 < p < 1:
            continue
        miss = binom.pmf(np.arange(n + 1), n, p)[bounds > p].sum()
        worst = max(worst, miss)
    assert worst <= alpha * (1 + 1e-9)
    # Not vacuous: just below a bound the miss probability comes close to alpha.
    assert worst >= alpha * 0.5 or n < 10


@pytest.mark.parametrize("successes,n", [(1, 1), (7, 10), (990, 1000), (100, 100), (37, 250)])
def test_clopper_pearson_is_the_exact_tail_root(successes, n):
    """The bound p solves P(X >= successes | p) = alpha (its defining equation)."""
    alpha = 0.001
    bound = stats.lower_confidence_bound(successes, n, alpha)
    assert binom.sf(successes - 1, n, bound) == pytest.approx(alpha, rel=1e-6)


def test_clopper_pearson_zero_successes():
    assert stats.lower_confidence_bound(0, 100, 0.001) == 0.0


def test_certify_radius_and_abstain():
    counts0 = np.array([2, 95, 3])
    counts = np.array([10, 980, 10])
    cert = stats.certify(counts0, counts, sigma=0.5, alpha=0.001)
    p = stats.lower_confidence_bound(980, 1000, 0.001)
    assert cert.predict == 1 and cert.count == 980 and cert.p_lower == pytest.approx(p)
    assert cert.radius == pytest.approx(0.5 * norm.ppf(p))
    assert stats.certify(counts0, counts, 0.5, 0.001, radius_factor=0.25).radius == pytest.approx(cert.radius / 4)
    # The selected class comes from counts0 only: here it gets few estimation votes, so abstain.
    abstain = stats.certify(np.array([90, 10, 0]), np.array([10, 980, 10]), 0.5, 0.001)
    assert abstain.predict == stats.ABSTAIN and abstain.radius == 0.0 and abstain.count == 10


def test_certify_abstains_at_exactly_one_half():
    # 14 of 14 at alpha=0.5**14 gives p_lower = 0.5 exactly: no certificate.
    cert = stats.certify(np.array([0, 1]), np.array([0, 14]), 1.0, 0.5 ** 14)
    assert cert.p_lower == pytest.approx(0.5) and cert.predict == stats.ABSTAIN


def test_predict_uses_two_sided_binomial_test():
    counts = np.array([3, 60, 37])
    label, top, p_value = stats.predict(counts, alpha=0.05)
    assert top == 60 and p_value == pytest.approx(binomtest(60, 97, 0.5).pvalue)
    assert label == (1 if p_value <= 0.05 else stats.ABSTAIN)
    assert stats.predict(np.array([50, 50]), 0.05)[0] == stats.ABSTAIN
    assert stats.predict(np.array([0, 100, 0]), 0.001)[0] == 1
