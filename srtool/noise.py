"""Seeded Gaussian noise on the host.

Every input gets its own independent streams, derived from (seed, input index) with numpy's
SeedSequence, so an input's noise does not depend on which inputs ran before it, on the batch size,
on the number of workers or on a resume. Separate streams for the selection sample, the estimation
sample and the patch positions keep the n0 and n samples independent (Cohen's CERTIFY needs fresh
samples for the estimate) and make the noise of one stage independent of the other stage's size.

ORT's CPU RandomNormal must never be used for certification: its engine has period 2^31.
"""

from __future__ import annotations

import numpy as np

SELECTION, ESTIMATION, POSITIONS = 0, 1, 2


def stream(seed: int, index: int, purpose: int) -> np.random.Generator:
    """The generator for one purpose (SELECTION, ESTIMATION, POSITIONS) of one input."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=(index, purpose))))


def fill_noisy(out: np.ndarray, clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Write clean + sigma * z into the preallocated `out` (rows of `out` are noisy copies of `clean`)."""
    rng.standard_normal(dtype=np.float32, out=out)
    out *= np.float32(sigma)
    out += clean
    return out
