"""The plan: how one input becomes the k views the base classifier sees, and what that costs the radius.

An input x (C×H×W, the user's own resolution) is optionally resized by U to R_h×R_w, and k patches
P_i of size P_h×P_w are cut from it, at a dense grid of positions or at positions drawn uniformly per
input. Standard randomized smoothing is the plan with k = 1, no resize and the patch equal to the image.

Where the Gaussian noise is added decides the radius (DESIGN §3), and the plan says where:

- ``input``:   noise on x itself; Cohen's theorem applies as is (factor 1).
- ``resized``: noise on U x; a perturbation δ of x moves U x by at most ‖U‖₂‖δ‖, so factor 1/‖U‖₂.
- ``patch``:   independent noise on every patch, i.e. on A x with A = [P_1 U; …; P_k U];
  factor 1/‖A‖₂. This is the paper's own placement; without the factor it overclaims.

The *noise point* is the vector the noise is added to (x, U x, or A x); the sampling graph maps a
noisy noise point to one vote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import noise
from .errors import InputError, UsageError
from .resize import Resizer, resize_norm, stacked_crop_norm

NOISE_SPACES = ("input", "resized", "patch")
SAMPLINGS = ("dense", "random")
REDUCERS = ("mean", "max")


def _grid_shape(k: int) -> tuple[int, int]:
    """The most square rows×columns grid with exactly k cells."""
    rows = max(d for d in range(1, int(np.sqrt(k)) + 1) if k % d == 0)
    return rows, k // rows


def _spread(count: int, room: int) -> np.ndarray:
    """`count` positions spread evenly over 0..room (centred when there is only one)."""
    if count == 1:
        return np.array([room // 2])
    return np.rint(np.linspace(0, room, count)).astype(np.int64)


@dataclass(frozen=True)
class Plan:
    input_shape: tuple[int, int, int]  # C, H, W of the inputs as given
    patch_hw: tuple[int, int]  # what the base model takes
    resized_hw: tuple[int, int]  # after the plan's resize (== input H, W when there is none)
    patches: int = 1
    sampling: str = "dense"
    reduce: str = "mean"
    noise_space: str = "input"
    _factors: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.noise_space not in NOISE_SPACES:
            raise UsageError(f"--noise-space must be one of {', '.join(NOISE_SPACES)}")
        if self.sampling not in SAMPLINGS:
            raise UsageError(f"--sampling must be one of {', '.join(SAMPLINGS)}")
        if self.reduce not in REDUCERS:
            raise UsageError(f"--reduce must be one of {', '.join(REDUCERS)}")
        if self.patches < 1:
            raise UsageError("--patches must be at least 1")
        if any(p > r for p, r in zip(self.patch_hw, self.resized_hw)):
            raise UsageError(
                f"patch {self.patch_hw[0]}×{self.patch_hw[1]} is larger than the "
                f"{'resized ' if self.has_resize else ''}image "
                f"{self.resized_hw[0]}×{self.resized_hw[1]}")

    # -- one input ---------------------------------------------------------------------------------
    def for_input(self, image: np.ndarray) -> "Plan":
        """The plan for this input: this one, if the image has the run's shape (videos differ)."""
        if image.shape != self.input_shape:
            shape, expected = "×".join(map(str, image.shape)), "×".join(map(str, self.input_shape))
            raise InputError(f"image is {shape}, the run's inputs are {expected} (see --image-size)")
        return self

    @property
    def columns(self) -> dict:
        """Extra result columns this plan fills (none for images)."""
        return {}

    # -- layout --------------------------------------------------------------------------------
    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    @property
    def has_resize(self) -> bool:
        return self.resized_hw != self.input_hw

    @property
    def crops(self) -> bool:
        """False when the single view is the whole (resized) image, so no crop is needed."""
        return not (self.patches == 1 and self.patch_hw == self.resized_hw)

    @property
    def room(self) -> tuple[int, int]:
        return self.resized_hw[0] - self.patch_hw[0], self.resized_hw[1] - self.patch_hw[1]

    @cached_property
    def dense_offsets(self) -> np.ndarray:
        rows, cols = _grid_shape(self.patches)
        tops, lefts = _spread(rows, self.room[0]), _spread(cols, self.room[1])
        return np.array([(t, l) for t in tops for l in lefts], dtype=np.int64)

    def offsets(self, seed: int, index: int) -> np.ndarray:
        """The k patch positions (top, left) used for input `index`, shape (k, 2).

        Random positions are drawn once per input from their own seeded stream and used for every
        noisy copy of that input, so the smoothed classifier of that input is one fixed function.
        """
        if self.sampling == "dense" or not self.crops:
            return self.dense_offsets
        rng = noise.stream(seed, index, noise.POSITIONS)
        high = np.array(self.room) + 1
        return rng.integers(0, high, size=(self.patches, 2)).astype(np.int64)

    @property
    def views_per_copy(self) -> int:
        return self.patches

    @property
    def view_shape(self) -> tuple[int, ...]:
        """What the base model takes for one view."""
        return (self.input_shape[0], *self.patch_hw)

    # -- noise space ---------------------------------------------------------------------------
    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one noise point (one noisy copy) for this noise space."""
        c = self.input_shape[0]
        if self.noise_space == "input":
            return self.input_shape
        if self.noise_space == "resized":
            return (c, *self.resized_hw)
        return (self.patches, c, *self.patch_hw)

    @cached_property
    def _resizer(self) -> Resizer:
        return Resizer(self.resized_hw)

    def noise_point(self, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The clean vector the noise is added to: x, U x or the stacked patches A x."""
        if self.noise_space == "input":
            return np.ascontiguousarray(x, dtype=np.float32)
        resized = self._resizer(x[None])[0] if self.has_resize else x.astype(np.float32)
        if self.noise_space == "resized":
            return resized
        ph, pw = self.patch_hw
        return np.stack([resized[:, t:t + ph, l:l + pw] for t, l in offsets])

    def radius_factor(self, offsets: np.ndarray) -> float:
        """What Cohen's radius, computed in the noise space, is multiplied by to hold in x's space."""
        if self.noise_space == "input":
            return 1.0
        key = (self.noise_space, offsets.tobytes())
        if key not in self._factors:
            if self.noise_space == "resized":
                norm = resize_norm(self.input_hw, self.resized_hw)
            else:
                norm = stacked_crop_norm(self.input_hw, self.resized_hw, self.patch_hw, offsets)
            self._factors[key] = 1.0 / norm
        return self._factors[key]

    @property
    def radius_factor_varies(self) -> bool:
        """Random positions in patch space give every input its own factor."""
        return self.noise_space == "patch" and self.sampling == "random" and self.crops

    def describe(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "resize": list(self.resized_hw) if self.has_resize else None,
            "patch_size": list(self.patch_hw),
            "patches": self.patches,
            "sampling": self.sampling,
            "reduce": self.reduce,
            "noise_space": self.noise_space,
            "radius_factor": None if self.radius_factor_varies else self.radius_factor(self.dense_offsets),
        }
