"""Errors a user can fix. The CLI prints them as one line and exits with code 2, no traceback.

Messages are written once, naming options as the command line spells them (`pass --image-size 28`,
`use --overwrite`); the command line shows them as they are, and the Python API (srtool.api)
renders each option as its keyword argument (`image_size=28`, `overwrite=True`) from the facts
core declares about the options (core.FLAGS, core.CHOICES). This module imports nothing of
srtool's, so every module can raise these errors without an import circle.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or options: a missing file, an impossible plan, a results file that is not ours."""


class InputError(Exception):
    """One input that cannot be evaluated as asked (e.g. a video shorter than one sub-video).

    The pipeline turns it into an error row and the run goes on; `columns` are extra result columns
    that are still known (e.g. the frames that were read).
    """

    def __init__(self, message: str, columns: dict | None = None):
        super().__init__(message)
        self.columns = columns or {}


def shown(value, limit: int = 60) -> str:
    """A value as a message quotes it: its repr on one line, cut to `limit` characters (an array's
    repr runs over lines and pages)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
