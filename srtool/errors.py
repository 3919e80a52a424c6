"""Errors a user can fix. The CLI prints them as one line and exits with code 2, no traceback.

Messages are written once, naming command-line options (`pass --image-size 28`, `use --overwrite`).
Python callers meet the same checks through srtool.api, which re-raises every UsageError through
`in_python_spelling`: each option becomes the keyword argument it is in Python (`image_size=28`,
`overwrite=True`). The spellings come from the command line's own option declarations, so a new
option is translated without a word here.
"""

from __future__ import annotations

import functools
import re


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


# `--name`, then maybe its value: a number, a one-letter placeholder (K), or a word (checked below
# against the option's choices, so that "--device cuda" is a value but "--n must" is not).
_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: (-?\d[\d.,_]*(?:e-?\d+)?(?![\w.])|[A-Z]\b|[a-z]+\b))?")
# Words after an option that make it the subject of the sentence: "n must be at least 1", "labels and
# split apply to …", "noise_space for videos must be …".
_VERB = r"(?:must|applies|apply|needs|need|takes|names|is|was|does)\b"
_SUBJECT = re.compile(rf"\s*(?:[:,]|{_VERB}|for \w+ {_VERB}|and --[a-z][a-z0-9-]* {_VERB})")


@functools.lru_cache(maxsize=1)
def _spellings() -> tuple[frozenset, dict]:
    """The command line's flags (options without a value) and the choices of each option."""
    import click

    from .cli import cli

    flags, choices = set(), {}
    for command in cli.commands.values():
        for param in command.params:
            for opt in getattr(param, "opts", []):
                name = opt.removeprefix("--")
                if getattr(param, "is_flag", False):
                    flags.add(name)
                if isinstance(param.type, click.Choice):
                    choices.setdefault(name, set()).update(map(str, param.type.choices))
    return frozenset(flags), choices


def in_python_spelling(message: str) -> str:
    """A message about command-line options, as it reads for a Python caller:
    "pass --image-size 28" → "pass image_size=28", "use --overwrite" → "use overwrite=True",
    "--device cuda" → 'device="cuda"', "--n must be at least 1" → "n must be at least 1"."""
    flags, choices = _spellings()

    def keyword(match: re.Match) -> str:
        option, value = match.group(1), match.group(2)
        command = message.rfind("srtool ", 0, match.start())
        if command >= 0 and not re.search(r"[;()]", message[command:match.start()]):
            return match.group(0)  # part of a shell command the message quotes ("srtool show RUN --errors")
        name = option.replace("-", "_")
        if value is not None and value.isalpha() and len(value) > 1 and value not in choices.get(option, ()):
            value = None  # an ordinary word that follows the option, not its value
        rest = message[match.end(1) if value is None else match.end():]
        if value is None:
            subject = _SUBJECT.match(rest) is not None or message[:match.start()].rstrip().endswith("(")
            word = "" if subject else ("=True" if option in flags else "=")
            return name + word + ("" if match.group(2) is None else " " + match.group(2))
        if value.isalpha() and len(value) > 1:
            return f'{name}="{value}"'
        return f"{name}={value.rstrip('.,')}" + value[len(value.rstrip('.,')):]

    return _OPTION.sub(keyword, message)


# Other tools' names for srtool's keywords (Cohen's code, IBM ART): a caller who uses them is told ours.
KEYWORD_ALIASES = {"n_samples": "n", "num": "n", "num_samples": "n", "N": "n", "N0": "n0", "batch_size": "batch",
                   "noise_sd": "sigma", "sigma_noise": "sigma"}


def unknown_keyword(key: str, known) -> str:
    """"unknown argument 'n_samples' (did you mean n?)": the one answer to a keyword srtool does not take."""
    import difflib

    known = [k for k in known if not k.startswith("_")]
    close = [KEYWORD_ALIASES[key]] if KEYWORD_ALIASES.get(key) in known else difflib.get_close_matches(key, known, n=1)
    return f"unknown argument {key!r}" + (f" (did you mean {close[0]}?)" if close else "")


def python_spelling(function):
    """Decorator for the Python API: its UsageErrors name keyword arguments, not command-line flags, and
    a keyword it does not take is one of them ("did you mean …"), not Python's TypeError."""
    import inspect

    known = list(inspect.signature(function).parameters)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UsageError as error:
            raise UsageError(in_python_spelling(str(error))) from None
        except TypeError as error:
            unexpected = re.search(r"got an unexpected keyword argument '(\w+)'", str(error))
            if unexpected is None or error.__traceback__.tb_next is not None:  # raised inside, not by the call
                raise
            raise UsageError(unknown_keyword(unexpected.group(1), known)) from None
    return wrapper
