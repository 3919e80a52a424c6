"""Errors a user can fix. The CLI prints them as one line and exits with code 2, no traceback."""


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
