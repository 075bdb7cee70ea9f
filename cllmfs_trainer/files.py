"""Files: input and output checks, atomic writes and bounded UTF-8 line reading (one of each).

Inputs and outputs are checked before any model is loaded, so a wrong path fails in a second, with a message that
names it. Outputs are written atomically (a temporary file in the same folder, then `os.replace`; a finished
temporary folder, then a rename), so a failure never leaves half a file or overwrites an input. Text files are read as
UTF-8 with any line end, within bounds, and errors that name `file:line`. Parsing JSON and YAML is
`cllmfs_trainer.parsing`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from cllmfs_trainer.errors import DataFormatError, MissingFileError, UsageError, UserError

BOM = "\ufeff"

# Bounds on what is read from one input: a stream without an end (`/dev/zero`) or without line ends stops with a
# one-line error instead of filling the memory. Raise them with these environment variables.
MAX_INPUT_BYTES_VAR, MAX_INPUT_BYTES = "CLLMFS_MAX_INPUT_BYTES", 2**30
MAX_LINE_BYTES_VAR, MAX_LINE_BYTES = "CLLMFS_MAX_LINE_BYTES", 2**20
_READ_BLOCK = 2**20

# --- input and output checks ------------------------------------------------------------------------------------------


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

    Args:
        path (`str` or `os.PathLike`):
            The output folder.
        what (`str`, *optional*, defaults to `"--output"`):
            The option or field it came from, for the message.

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


# --- atomic writes ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open a temporary text file beside `path`; on success it replaces `path`, on failure it is removed.

    Readers of `path` see the old file or the whole new one, never half of it.

    Args:
        path (`str` or `os.PathLike`):
            The file to write; its folder must exist.
        encoding (`str`, *optional*, defaults to `"utf-8"`):
            The text encoding.
    """
    path = Path(path)
    if _write_in_place(path):
        # A device, FIFO or the process's own stream (/dev/null, /dev/stdout): replacing it would swap the device
        # for a plain file (as root) or cut the stream from its reader. Write into it; a full device (/dev/full)
        # raises its OSError here.
        with open(path, "w", encoding=encoding) as handle:
            yield handle
        return
    if path.is_symlink():
        # Write the file the link points at and keep the link, as a plain `open` would.
        path = Path(os.path.realpath(path))
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


def _write_in_place(path: Path) -> bool:
    """Whether `path` is a special file, or a name for one of the process's streams, that must be written into."""
    if path.parts[:2] in (("/", "dev"), ("/", "proc")):
        return True
    try:
        return path.exists() and not stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, encoding) as handle:
        handle.write(text)


def replace_folder(tmp: Path, target: Path) -> None:
    """Move a finished `tmp` folder to `target`, replacing an older one; readers never see a half-written folder.

    Args:
        tmp (`Path`):
            The finished folder, on the same file system as `target`.
        target (`Path`):
            Where it goes; its parent is created if missing.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- UTF-8 lines ------------------------------------------------------------------------------------------------------


def split_lines(data: bytes) -> list[bytes]:
    """Split file bytes into lines at `\\r\\n`, `\\n` or a lone `\\r` (old Mac files), never merging two lines.

    A trailing line end gives a final empty line, as `bytes.split` does.
    """
    return re.split(rb"\r\n|\r|\n", data)


def input_limit(variable: str, default: int) -> int:
    """The bound an environment variable sets (read at each call, so a caller can change it), or `default`."""
    value = os.environ.get(variable)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{variable}={value!r}: expected a whole number of bytes >= 1")
    return int(value)


def iter_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of every line of a UTF-8 file (see `split_lines`), without a leading byte order mark.

    The file is read block by block, so a line is held in memory only up to `CLLMFS_MAX_LINE_BYTES` (1 MiB) and
    the file only up to `CLLMFS_MAX_INPUT_BYTES` (1 GiB): devices and pipes without an end are read safely.
    A line end at the end of the file gives a final empty line; `read_text_lines` drops it.

    Raises:
        `DataFormatError`: naming `file:line` for a byte that is not UTF-8 or a line over the bound, and the file
            when it is larger than its bound.
    """
    max_bytes = input_limit(MAX_INPUT_BYTES_VAR, MAX_INPUT_BYTES)
    max_line = input_limit(MAX_LINE_BYTES_VAR, MAX_LINE_BYTES)
    lineno, total, buffer = 0, 0, b""
    with open(path, "rb") as stream:
        while True:
            block = stream.read(_READ_BLOCK)
            total += len(block)
            if total > max_bytes:
                raise DataFormatError(
                    f"{path}: the input is larger than {max_bytes:,} bytes; split it, or raise {MAX_INPUT_BYTES_VAR}"
                )
            buffer += block
            final = not block
            # A `\r` at the end of a block may be the first half of `\r\n`: keep it for the next block.
            data = buffer[:-1] if not final and buffer.endswith(b"\r") else buffer
            parts = split_lines(data)
            buffer = (b"" if final else parts.pop()) + buffer[len(data) :]
            for raw in parts:
                lineno += 1
                yield lineno, _decode_line(path, lineno, raw, max_line)
            if len(buffer) > max_line:
                _decode_line(path, lineno + 1, buffer, max_line)
            if final:
                return


def _decode_line(path: Path, lineno: int, raw: bytes, max_line: int) -> str:
    if len(raw) > max_line:
        raise DataFormatError(
            f"{path}:{lineno}: the line is longer than {max_line:,} bytes (is the file binary?); split it into "
            f"lines, or raise {MAX_LINE_BYTES_VAR}"
        )
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(
            f"{path}:{lineno}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not valid UTF-8; "
            "re-encode the file as UTF-8"
        ) from None
    return line[1:] if lineno == 1 and line.startswith(BOM) else line


def read_head(path: Path, size: int = 4096) -> bytes:
    """The first `size` bytes of a file (of a device or pipe too: never more is read)."""
    with open(path, "rb") as stream:
        return stream.read(size)


def read_text_lines(path: str | os.PathLike, what: str = "input") -> list[str]:
    """The lines of a UTF-8 text file (see `iter_text_lines`).

    As with `str.splitlines`, a line end at the end of the file does not start another (empty) line.

    Raises:
        `UserError`: naming the file if it is missing or a folder.
        `DataFormatError`: naming `file:line` for a byte that is not UTF-8.
    """
    lines = [line for _, line in iter_text_lines(check_input_file(path, what))]
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
