"""User errors: one convention for every entry point (`cllmfs`, `recipes/train.py`, `recipes/benchmark.py`).

A mistake in what the user gave (an option, a file, a field of a recipe or of a types file) raises `UserError` or a
subclass of it (`DataFormatError`, `UsageError`, `cllmfs_trainer.run_folder.RunFolderError`, ...), with a message that
names the file, line or field and says what would be accepted. The entry points run through `run_entry_point`, which
prints such an error, or an `OSError` from the file system, as one line `prog: error: message` on stderr and returns
exit code 2. Any other exception is a bug and keeps its traceback. `--debug` or `CLLMFS_DEBUG=1` also prints the
traceback of user errors.

The helpers below check input and output files before any model is loaded, and write outputs atomically (a
temporary file in the same folder, then `os.replace`), so a failure never leaves half a file or overwrites an input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "CLLMFS_DEBUG"
DEBUG_FLAG = "--debug"
BOM = "\ufeff"


class UserError(ValueError):
    """An error in what the user gave; the message names the file, line or field and what would be accepted.

    A `ValueError`, so code that catches `ValueError` around validation keeps working.
    """

    def __str__(self) -> str:
        # Subclasses that are also `KeyError`s would otherwise print their message quoted, as `repr`.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UsageError(UserError):
    """A bad command line: an unknown option, a missing argument or a value of the wrong kind."""


class DataFormatError(UserError):
    """Malformed NER input; the message names the file (or dataset) and the line (or row)."""


class UnknownNameError(UserError, KeyError):
    """A name that is not registered (a dataset, a type, a method); the message lists the known ones.

    Also a `KeyError`, since it is raised by look-ups that used to raise one.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist. Also a `FileNotFoundError`."""


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


# --- files ------------------------------------------------------------------------------------------------------------


def check_input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """`path` as a `Path` if it is a readable file.

    Args:
        path (`str` or `os.PathLike`):
            The file.
        what (`str`, *optional*, defaults to `"input"`):
            What the file is, for the message (e.g. `--types-file`).

    Raises:
        `UserError`: naming the file when it is missing, a folder or unreadable.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; expected a file")
    if not path.exists():
        raise MissingFileError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} is not readable")
    return path


def check_output_file(
    path: str | os.PathLike, what: str = "--output", inputs: Sequence[str | os.PathLike | None] = ()
) -> Path:
    """`path` as a `Path` if a file can be written there without harming an input.

    Args:
        path (`str` or `os.PathLike`):
            The output file.
        what (`str`, *optional*, defaults to `"--output"`):
            The option or field it came from, for the message.
        inputs (`Sequence`, *optional*, defaults to `()`):
            Files the command reads; the output must not be one of them.

    Raises:
        `UserError`: when the path is a folder, its folder does not exist or is not writable, or it is an input.
    """
    path = Path(path).expanduser()
    if not path.name or path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    for source in inputs:
        if source is not None and _same_file(path, Path(source).expanduser()):
            raise UserError(f"{what} {path} is also an input; choose another file, the input would be overwritten")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{what} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{what} {path} is not writable")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """`path` as a `Path` if it is a folder, or can become one, that is writable.

    Raises:
        `UserError`: when the path is a file or the folder (or its nearest existing parent) is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; expected a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open a temporary text file beside `path`; on success it replaces `path`, on failure it is removed.

    Readers of `path` see the old file or the whole new one, never half of it.
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding=encoding, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            yield handle
        # NamedTemporaryFile creates the file readable by its owner only; give it the mode a plain open would.
        os.chmod(handle.name, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, encoding) as handle:
        handle.write(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def split_lines(data: bytes) -> list[bytes]:
    """Split file bytes into lines at `\\r\\n`, `\\n` or a lone `\\r` (old Mac files), never merging two lines.

    A trailing line end gives a final empty line, as `bytes.split` does.
    """
    return re.split(rb"\r\n|\r|\n", data)


def read_text_lines(path: str | os.PathLike, what: str = "input") -> list[str]:
    """The lines of a UTF-8 text file (see `split_lines`), without a leading byte order mark.

    As with `str.splitlines`, a line end at the end of the file does not start another (empty) line.

    Raises:
        `UserError`: naming the file if it is missing or a folder.
        `DataFormatError`: naming `file:line` for a byte that is not UTF-8.
    """
    path = check_input_file(path, what)
    lines = []
    for lineno, raw in enumerate(split_lines(path.read_bytes()), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFormatError(
                f"{path}:{lineno}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not valid UTF-8; "
                "re-encode the file as UTF-8"
            ) from None
        lines.append(line[1:] if lineno == 1 and line.startswith(BOM) else line)
    if lines and not lines[-1]:
        lines.pop()
    return lines


def read_text_file(path: str | os.PathLike, what: str = "input") -> str:
    """The text of a UTF-8 file with `\\n` line ends and no byte order mark (errors as in `read_text_lines`)."""
    return "\n".join(read_text_lines(path, what))


def control_character(text: str) -> str | None:
    """The first control character of `text` that is not whitespace (NUL, escape, DEL, ...), or None."""
    for char in text:
        if (ord(char) < 32 or 127 <= ord(char) < 160) and not char.isspace():
            return char
    return None
