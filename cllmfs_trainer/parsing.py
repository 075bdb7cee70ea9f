"""Parsing JSON and YAML from users' and runs' files, with one-line errors that name the file and line.

Both refuse a key given twice in one object (the parsers keep the last one silently, and which one the user meant is
unknown); JSON nested beyond what Python's parser can read is an error, not a `RecursionError`. YAML mappings
remember the line of every key, so checks of recipes and types files can name it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from cllmfs_trainer.errors import DataFormatError
from cllmfs_trainer.files import read_text_file

# --- JSON -------------------------------------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` refusing a key given twice: `json` keeps the last silently, losing the first value."""
    record = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def parse_json(text: str, where: str, expected: str = "") -> Any:
    """Parse JSON from a user's or a run's file, with one-line errors that name `where`.

    Args:
        text (`str`):
            The JSON text.
        where (`str`):
            Where it comes from, e.g. `file:line` or a file; a multi-line text's errors add the line.
        expected (`str`, *optional*):
            What was expected, appended to every message (e.g. an example record).

    Raises:
        `DataFormatError`: for invalid JSON, JSON nested too deeply for Python's parser, and a key given twice in
            one object.
    """
    hint = f"; expected {expected}" if expected else ""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        at = f"{where}:{err.lineno}" if "\n" in text.strip() else where
        message = err.msg.removesuffix(" at")  # "Unterminated string starting at" names its place itself
        raise DataFormatError(f"{at}: invalid JSON ({message} at column {err.colno}){hint}") from None
    except RecursionError:
        raise DataFormatError(f"{where}: the JSON is nested too deeply to read{hint}") from None
    except _DuplicateKey as err:
        raise DataFormatError(
            f"{where}: the key {err.key!r} appears twice in one object; keep one (JSON readers differ on which wins)"
        ) from None


def read_json_file(path: str | os.PathLike, what: str = "input") -> Any:
    """The JSON value of a UTF-8 file (errors as in `read_text_lines` and `parse_json`, naming the file)."""
    return parse_json(read_text_file(path, what), str(path))


# --- YAML -------------------------------------------------------------------------------------------------------------


class LineMapping(dict):
    """A YAML mapping that remembers where it was written.

    Attributes:
        line (`int`):
            The line (1-based) where the mapping starts.
        key_lines (`dict`):
            The line of each key.
    """

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


class _LineLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` whose mappings are `LineMapping`s and refuse duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineMapping:
        self.flatten_mapping(node)
        mapping = LineMapping(node.start_mark.line + 1)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in mapping
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain value, got {type(key).__name__}", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {mapping.key_lines[key]}); each key may appear once",
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)


class _NoBooleanLineLoader(_LineLoader):
    """`_LineLoader` that reads `yes`, `no`, `on`, `off`, `true` and `false` as strings, not booleans."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def load_yaml(text: str, source: str, booleans: bool = True) -> Any:
    """Parse YAML text into plain data whose mappings are `LineMapping`s; duplicate keys are errors.

    Args:
        text (`str`):
            The YAML text (see `read_text_file`).
        source (`str`):
            The file it came from, starting every message (`source:line: ...`).
        booleans (`bool`, *optional*, defaults to `True`):
            Read YAML 1.1's `yes`, `no`, `on`, `off`, `true` and `false` as booleans. A file none of whose fields is
            a boolean turns this off, so that labels such as `no:` stay strings.

    Returns:
        `Any`: the data (`None` for an empty text).

    Raises:
        `DataFormatError`: naming `source:line` for text that is not YAML or a duplicate key.
    """
    loader = _LineLoader if booleans else _NoBooleanLineLoader
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass: plain data only, no objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        if isinstance(err, yaml.constructor.ConstructorError):
            raise DataFormatError(f"{source}{line}: {problem}") from None
        raise DataFormatError(f"{source}{line}: not valid YAML ({problem})") from None
