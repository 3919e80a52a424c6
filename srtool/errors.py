"""Errors a user can fix. The CLI prints them as one line and exits with code 2, no traceback."""


class UsageError(Exception):
    """Bad input or options: a missing file, an impossible plan, a results file that is not ours."""
