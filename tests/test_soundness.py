"""Soundness: certified radii never exceed the truth beyond alpha's share, in every noise space.

Reference: a two-class linear base classifier. Whenever the reduced classifier's vote is decided by
the sign of an affine function of the noisy input whose noise term is symmetric, the smoothed
classifier has the *same* decision boundary as the noise-free reduced classifier, so the true
robust radius at x is exactly the distance d from x to that hyperplane (in x's own space):

- k identical patches (patch = whole image, so every crop is the same): mean and max reductions
  both decide by the sign of the (single) margin in input/resized space; in patch space by the
  sign of mean_i or max_i+min_i of k exchangeable margins. Either way symmetric about the plane.
- distinct crops with Smooth-Mean: mean of logits of linear views is linear; its normal vector is
  w̄ = (1/k) Σ_i (P_i U)ᵀ w, computed here with OpenCV's bilinear resize (independent of srtool).

A certificate is false when it names the wrong class, or the right class with radius > d. Each
trial's false-certificate event has probability at most alpha if srtool is sound, and the trials
are independent (distinct noise streams), so the count of false certificates in M trials is
stochastically below Binomial(M, alpha). The test allows the 1 - 1e-6 quantile of that binomial:
a sound implementation fails a configuration with probability below 1e-6, and since every seed is
fixed, the outcome is deterministic (it cannot flake). Without the radius factor, patch space with
k = 9 overclaims in almost every trial (the guard test below).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.stats import binom

from srtool import stats
from srtool.data import Item
from srtool.engine import VoteCounter
from srtool.graph import sampling_graph
from srtool.model import load_model
from srtool.pipeline import Settings, evaluate
from srtool.plan import Plan

ALPHA = 0.05
N0, N = 20, 200
SIGMA = 0.5
TRIALS = 120
SIDE = 6  # input images are 1×6×6


def allowed_failures(trials: int = TRIALS, alpha: float = ALPHA) -> int:
    """False certificates a sound srtool exceeds with probability below 1e-6 (over all trials:
    an abstention claims nothing, so each trial, certified or not, fails with probability ≤ alpha)."""
    return int(binom.ppf(1 - 1e-6, trials, alpha))


def cv2_resize_matrix(src: int, dst: int) -> np.ndarray:
    """The 1-D bilinear (half-pixel) resize matrix, probed through OpenCV, not srtool."""
    columns = [cv2.resize(np.eye(src, dtype=np.float64)[:, [j]], (1, dst), interpolation=cv2.INTER_LINEAR)[:, 0]
               for j in range(src)]
    return np.stack(columns, axis=1)


def tightest_view_normal(side: int, resized: int) -> np.ndarray:
    """The view-space normal w with ‖Uᵀw‖ = ‖U‖‖w‖ (U's top left singular vector): along it the
    resized-space and patch-space factors are exactly tight, so any factor that is too large, or
    missing, shows up as false certificates."""
    left = np.linalg.svd(cv2_resize_matrix(side, resized))[0][:, 0]
    return np.outer(left, left).ravel()


def reduced_normal(plan: Plan, w_view: np.ndarray) -> np.ndarray:
    """w̄ in input space for Smooth-Mean of a linear view classifier with view normal `w_view`."""
    u_h = cv2_resize_matrix(SIDE, plan.resized_hw[0])
    u_w = cv2_resize_matrix(SIDE, plan.resized_hw[1])
    ph, pw = plan.patch_hw
    total = np.zeros((SIDE, SIDE))
    for top, left in plan.dense_offsets:
        lifted = np.zeros(plan.resized_hw)
        lifted[top:top + ph, left:left + pw] = w_view.reshape(ph, pw)
        total += u_h.T @ lifted @ u_w  # (P_i U)ᵀ w
    return total.ravel() / plan.patches


def run_trials(model_path, plan: Plan, w_input: np.ndarray, bias: float, seed: int, factor_scale=1.0,
               noise: str = "gaussian"):
    """Certify TRIALS inputs at known distances; return (false certificates, certified count).
    With noise="discrete" each input is rounded to the 1/255 grid and its distance measured after."""
    model = load_model(model_path)
    counter = VoteCounter(sampling_graph(model, plan), plan, 2, batch=N, device="cpu", threads=1)
    if factor_scale != 1.0:  # simulate the uncorrected radius the paper's code would report
        original = plan.radius_factor
        object.__setattr__(plan, "radius_factor", lambda offsets: original(offsets) * factor_scale)
    settings = Settings("certify", SIGMA, ALPHA, N0, N, seed, noise=noise)
    rng = np.random.default_rng(seed)
    unit = w_input / np.linalg.norm(w_input)
    false, certified = 0, 0
    for trial in range(TRIALS):
        # A point on the plane w·x + bias = 0, moved a known signed distance along the normal.
        base = rng.uniform(0.2, 0.8, SIDE * SIDE)
        base -= unit * (w_input @ base + bias) / np.linalg.norm(w_input)
        distance = rng.choice([0.05, 0.25, 0.5, 1.0]) * SIGMA * rng.choice([-1, 1])
        x = (base + distance * unit).reshape(1, SIDE, SIDE).astype(np.float32)
        if noise == "discrete":
            x = (np.rint(np.clip(x, 0, 1) * 255) / np.float32(255)).astype(np.float32)
        true_class = 0 if w_input @ x.ravel() + bias > 0 else 1
        truth = abs(w_input @ x.ravel() + bias) / np.linalg.norm(w_input)
        row = evaluate(Item(trial, true_class, x), plan, counter, settings)
        if row["predict"] != stats.ABSTAIN:
            certified += 1
            if row["predict"] != true_class or row["radius"] > truth * (1 + 1e-6):
                false += 1
    counter.close()
    return false, certified


def two_class(w_view: np.ndarray, bias: float):
    """Class 0 minus class 1 logits = w_view · view + bias."""
    weights = np.stack([w_view / 2, -w_view / 2], axis=1)
    return weights, np.array([bias / 2, -bias / 2])


IDENTICAL = [(space, reduce, k) for space in ("input", "resized", "patch")
             for reduce in ("mean", "max") for k in (1, 4, 9)]


@pytest.mark.parametrize("space,reduce,k", IDENTICAL)
def test_identical_patches_never_overclaim(make_linear, space, reduce, k):
    """k copies of the whole (resized) image: the smoothed classifier is exact."""
    resized = 8 if space != "input" or k > 1 else SIDE
    plan = Plan((1, SIDE, SIDE), (resized, resized), (resized, resized), patches=k,
                reduce=reduce, noise_space=space)
    w_view = tightest_view_normal(SIDE, resized)
    bias = 0.3
    weights, biases = two_class(w_view, bias)
    path = make_linear(weights, biases, (1, resized, resized))
    # The view classifier on U x is linear in x with normal Uᵀ w (k identical views).
    w_input = reduced_normal(plan, w_view)
    false, certified = run_trials(path, plan, w_input, bias, seed=100 + k)
    assert certified >= TRIALS // 3, "too few certificates for the test to mean anything"
    assert false <= allowed_failures()


@pytest.mark.parametrize("space", ["input", "resized", "patch"])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_distinct_crops_smooth_mean_never_overclaims(make_linear, space, k):
    """Resize 6→8 and k distinct 5×5 crops (k=1: the centre crop); Smooth-Mean is linear in x."""
    plan = Plan((1, SIDE, SIDE), (5, 5), (8, 8), patches=k, reduce="mean", noise_space=space)
    rng = np.random.default_rng(10 + k)
    w_view = rng.standard_normal(25)
    bias = 0.2
    weights, biases = two_class(w_view, bias)
    path = make_linear(weights, biases, (1, 5, 5))
    false, certified = run_trials(path, plan, reduced_normal(plan, w_view), bias, seed=200 + k)
    assert certified >= TRIALS // 3
    assert false <= allowed_failures()


@pytest.mark.parametrize("space", ["resized", "patch"])
def test_guard_without_the_factor_radii_overclaim(make_linear, space):
    """Cohen's radius unchanged in resized or patch space (the paper's code) is not a certificate:
    with the factor removed, the tight identical-patch case gives false certificates far beyond
    alpha's share. If someone drops or weakens a factor, the tests above fail like this one."""
    k = 9
    plan = Plan((1, SIDE, SIDE), (8, 8), (8, 8), patches=k, reduce="mean", noise_space=space)
    factor = plan.radius_factor(plan.dense_offsets)
    norm_u = np.linalg.norm(cv2_resize_matrix(SIDE, 8), 2) ** 2
    assert factor == pytest.approx(1 / (norm_u * (3 if space == "patch" else 1)), rel=1e-5)
    w_view = tightest_view_normal(SIDE, 8)
    weights, biases = two_class(w_view, 0.3)
    path = make_linear(weights, biases, (1, 8, 8))
    false, certified = run_trials(path, plan, reduced_normal(plan, w_view), 0.3, seed=7,
                                  factor_scale=1 / factor)
    assert false > allowed_failures()
    assert false >= certified // 3


@pytest.mark.parametrize("space", ["resized", "patch"])
def test_guard_factors_are_not_one(space):
    """Both corrected spaces carry a factor below one for the paper's CIFAR plan (32→36, 4 crops)."""
    plan = Plan((3, 32, 32), (32, 32), (36, 36), patches=4, noise_space=space)
    assert plan.radius_factor(plan.dense_offsets) < 0.9


@pytest.mark.parametrize("k,crops", [(1, False), (4, False), (4, True)])
def test_discrete_noise_never_overclaims(make_linear, k, crops):
    """--noise discrete, input space: the smoothed classifier of f∘q. For x on the grid its votes are
    f(x + q(z)), q(z) symmetric, so on grid points its boundary is still the plane, and the wider
    spread of q(z) (σ² + 1/12 step²) only lowers p_A: the distance to the plane stays the reference."""
    if crops:  # Smooth-Mean over k distinct crops of the resized image: linear in x
        plan = Plan((1, SIDE, SIDE), (5, 5), (8, 8), patches=k, reduce="mean", noise_space="input")
        w_view = np.random.default_rng(30 + k).standard_normal(25)
    else:  # k identical views of the whole image
        plan = Plan((1, SIDE, SIDE), (SIDE, SIDE), (SIDE, SIDE), patches=k, reduce="mean", noise_space="input")
        w_view = tightest_view_normal(SIDE, SIDE)
    weights, biases = two_class(w_view, 0.2)
    path = make_linear(weights, biases, (1, *plan.patch_hw))
    false, certified = run_trials(path, plan, reduced_normal(plan, w_view), 0.2, seed=300 + k + crops,
                                  noise="discrete")
    assert certified >= TRIALS // 3
    assert false <= allowed_failures()
