"""Reading the YAML files of the scripts (training recipes, benchmark configs) with errors that name file and line.

`yaml.safe_load` keeps the last of two equal keys without a word, and the values it returns bypass argparse's type
conversion (TRL's parser uses them as defaults as they are), so a list where an integer belongs, or an integer where
a list belongs, would only fail deep inside a run. Here a file is read once more, before parsing, to refuse duplicate
and unknown keys and values of the wrong type, each with the line it is on.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import types
import typing
from collections.abc import Iterable
from typing import Any

from cllmfs_trainer.errors import DataFormatError, UsageError
from cllmfs_trainer.files import read_text_file
from cllmfs_trainer.parsing import load_yaml


def load_yaml_mapping(path: str | os.PathLike, what: str = "config") -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML file whose top level is a mapping.

    Args:
        path (`str` or `os.PathLike`):
            The file.
        what (`str`, *optional*, defaults to `"config"`):
            What the file is, for messages (`recipe`, ...).

    Returns:
        `tuple[dict[str, Any], dict[str, int]]`: the mapping, and the line (1-based) of each top-level key.

    Raises:
        `UserError`: naming the file (and line): missing, not UTF-8, not YAML, duplicate keys, empty, or not a mapping
            with string keys.
    """
    text = read_text_file(path, what)
    data = load_yaml(text, str(path))
    if data is None:
        raise DataFormatError(f"{path}: the {what} is empty; expected a mapping of `key: value` lines")
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{path}: the {what} must be a mapping of `key: value` lines, not a {type(data).__name__}"
        )
    lines = dict(data.key_lines)
    for key in data:
        if not isinstance(key, str):
            line = f":{lines[key]}" if key in lines else ""
            raise DataFormatError(f"{path}{line}: key {key!r} must be a name, not {type(key).__name__}")
    # Plain dicts from here on: the values become argparse defaults and are copied and serialised as such.
    return _plain(data), lines


def _plain(value: Any) -> Any:
    """`value` with every `LineMapping` in it turned into a plain `dict`."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def at(path: str | os.PathLike, lines: dict[str, int], key: str) -> str:
    """`path:line: key` for a key of a file read by `load_yaml_mapping`."""
    return f"{path}:{lines[key]}: {key}" if key in lines else f"{path}: {key}"


def check_known_keys(
    data: dict[str, Any], known: Iterable[str], path: str | os.PathLike, lines: dict[str, int], where: str
) -> None:
    """Refuse a key outside `known`, suggesting the closest known ones.

    Args:
        where (`str`):
            Where the known keys are documented, ending the message (e.g. "see --help").
    """
    known = sorted(set(known))
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise UsageError(f"{at(path, lines, key)}: unknown key; {hint}{where}")


def field_hints(*classes: type) -> dict[str, Any]:
    """The resolved type annotation of every field of the given dataclasses, by field name."""
    hints: dict[str, Any] = {}
    for cls in classes:
        try:
            resolved = typing.get_type_hints(cls)
        except Exception:  # an annotation this Python cannot resolve: such fields are simply not checked
            resolved = {}
        for f in dataclasses.fields(cls):
            if f.name in resolved:
                hints.setdefault(f.name, resolved[f.name])
    return hints


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether a YAML value fits a type annotation: True, False, or None when the annotation is not checked here."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, arg) for arg in typing.get_args(hint)]
        if True in results:
            return True
        return None if None in results else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        if not isinstance(value, list):
            return False
        (item,) = typing.get_args(hint) or (Any,)
        return False if any(_matches(v, item) is False for v in value) else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return None
    return None


def _kind(hint: Any) -> str:
    """An annotation in words, for messages."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return f"a list of {_kind(item).removeprefix('an ').removeprefix('a ')}s" if item in names else "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_value_types(
    data: dict[str, Any],
    hints: dict[str, Any],
    path: str | os.PathLike,
    lines: dict[str, int],
    strings_are_parsed: bool = True,
) -> None:
    """Refuse values of the wrong type: YAML values that are not strings reach the dataclasses unconverted.

    Args:
        data (`dict`):
            The file's mapping (see `load_yaml_mapping`).
        hints (`dict`):
            Type annotations by key (see `field_hints`); keys without one are not checked.
        path (`str` or `os.PathLike`):
            The file, for messages.
        lines (`dict`):
            Its key lines, for messages.
        strings_are_parsed (`bool`, *optional*, defaults to `True`):
            Whether a string value is converted later like a command-line value (TRL's parser does: `1e-4`, `true`), so
            only values of other types are checked here.
    """
    for key, value in data.items():
        hint = hints.get(key)
        if hint is None or (strings_are_parsed and isinstance(value, str) and hint is not str):
            continue
        if _matches(value, hint) is False:
            raise UsageError(f"{at(path, lines, key)}: expected {_kind(hint)}, got {value!r}")
