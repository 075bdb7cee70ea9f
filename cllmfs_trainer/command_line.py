"""The conventions every command shares (`cllmfs`, `recipes/train.py`, `recipes/benchmark.py`).

The entry points run through `run_entry_point`, which prints a `UserError` (`cllmfs_trainer.errors`), or an `OSError`
from the file system, as one line `prog: error: message` on stderr and returns exit code 2. Any other exception is a
bug and keeps its traceback. `--debug` or `CLLMFS_DEBUG=1` also prints the traceback of user errors.
`OneLineArgumentParser` turns argparse's usage errors into such a `UsageError`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cllmfs_trainer.errors import UsageError, UserError
from cllmfs_trainer.offline_imports import disable_telemetry

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "CLLMFS_DEBUG"
DEBUG_FLAG = "--debug"


class OneLineArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors raise `UsageError` instead of printing the usage and exiting.

    `run_entry_point` then prints the error as the usual single line; `--help` still prints the usage.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """Whether tracebacks of user errors are wanted: `--debug` in `argv` or `CLLMFS_DEBUG` set to a true value."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return DEBUG_FLAG in argv


def pop_debug_flag(argv: Sequence[str], keep_with_value: bool = False) -> tuple[list[str], bool]:
    """Remove `--debug` from `argv`; returns the rest and whether it was there.

    Args:
        argv (`Sequence[str]`):
            The arguments.
        keep_with_value (`bool`, *optional*, defaults to `False`):
            Leave a `--debug` that is followed by a value (`--debug underflow_overflow` is the `debug` field of
            transformers' `TrainingArguments`); only one that is last or followed by another option is taken.
    """
    argv = list(argv)
    rest, found = [], False
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == DEBUG_FLAG and (not keep_with_value or following is None or following.startswith("-")):
            found = True
            continue
        rest.append(arg)
    return rest, found


def one_line(message: str) -> str:
    """`message` with its line breaks (and the indentation after them) turned into single spaces."""
    return re.sub(r"\s*\n\s*", " ", message.strip())


def describe(err: BaseException) -> str:
    """The one-line message of a user error or of an `OSError` (with the file it concerns)."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        message = f"{err.filename}: {err.strerror}"
    else:
        message = str(err) or type(err).__name__
    return one_line(message)


def run_entry_point(
    prog: str, body: Callable[[list[str]], Any], argv: Sequence[str] | None = None, keep_debug_with_value: bool = False
) -> int:
    """Run a command line body, turning user errors into one line on stderr and an exit code.

    Args:
        prog (`str`):
            The program name that starts the error line, e.g. `cllmfs predict` or `train.py`.
        body (`Callable[[list[str]], Any]`):
            Parses the arguments it is given and does the work.
        argv (`Sequence[str]`, *optional*):
            The arguments; `sys.argv[1:]` by default. `--debug` is removed before `body` sees them.
        keep_debug_with_value (`bool`, *optional*, defaults to `False`):
            See `pop_debug_flag`.

    Returns:
        `int`: 0 on success, 2 for a `UserError` or an `OSError`, 130 when interrupted. Other exceptions propagate
        with their traceback: they are bugs.
    """
    argv, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv, keep_debug_with_value)
    debug = debug or debug_requested()
    disable_telemetry()  # our commands reach the network only for a hub id the user gives
    try:
        body(argv)
    except (UserError, OSError) as err:
        if debug:
            traceback.print_exc()
        sys.stdout.flush()
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# --- argparse types shared by the commands -----------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count, a size or a budget of 0 or less would silently do nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a number between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing folder")
    return text
