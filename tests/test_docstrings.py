"""Docstring sections of `cllmfs_trainer` keep TRL's typed style.

`Args:` entries name the parameter and its type, then describe it on the lines below, one level deeper:

    Args:
        model (`PreTrainedModel` or `str`):
            What it is.
        temperature (`float`, *optional*, defaults to `0.07`):
            Softmax temperature, > 0.

`Returns:` starts with the type (`` `list[Span]`: the spans ``) and each `Raises:` entry with an exception
(`` `ValueError`: if ... ``).
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cllmfs_trainer"
MODULES = sorted(PACKAGE.rglob("*.py"))

_TYPE = r"`[^`]+`(?:(?:, | or )`[^`]+`)*(?: of shape `[^`]+`)?"
ARG_ENTRY = re.compile(rf"\*{{0,2}}[A-Za-z_]\w* \({_TYPE}(?:, \*optional\*(?:, defaults to `[^`]+`)?)?\):")
RETURNS_ENTRY = re.compile(rf"{_TYPE}: \S")
RAISES_ENTRY = re.compile(r"`[A-Za-z_][\w.]*`: \S")
SECTION = re.compile(r"(Args|Returns|Raises):")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _sections(doc: str):
    """Yield `(kind, header line, body lines)` for each Args/Returns/Raises section of a docstring.

    The body is every following line indented deeper than the header, blank lines included, up to the first line
    that is not.
    """
    lines = doc.expandtabs().splitlines()
    for index, line in enumerate(lines):
        match = SECTION.fullmatch(line.strip())
        if not match:
            continue
        body = []
        for next_line in lines[index + 1 :]:
            if next_line.strip() and _indent(next_line) <= _indent(line):
                break
            body.append(next_line)
        while body and not body[-1].strip():
            body.pop()
        yield match.group(1), index, body


def _problems(kind: str, body: list[str]) -> list[str]:
    """What is wrong with one section's body, as `(line offset, message)` strings."""
    problems = []
    if not body or not body[0].strip():
        return ["0: empty section"]
    level = _indent(body[0])
    pattern = {"Args": ARG_ENTRY, "Returns": RETURNS_ENTRY, "Raises": RAISES_ENTRY}[kind]
    for offset, line in enumerate(body, start=1):
        if not line.strip():
            continue
        if _indent(line) < level:
            problems.append(f"{offset}: indented less than the first entry: {line.strip()!r}")
        elif _indent(line) == level:
            text = line.strip()
            if kind == "Args":
                if not pattern.fullmatch(text):
                    problems.append(f"{offset}: not `name (`type`[, *optional*[, defaults to `value`]]):`: {text!r}")
                else:
                    following = body[offset] if offset < len(body) else ""
                    if not following.strip() or _indent(following) != level + 4:
                        problems.append(f"{offset}: no description on the next line, 4 spaces deeper: {text!r}")
            elif kind == "Raises" and not pattern.match(text):
                problems.append(f"{offset}: not `Exception`: ...: {text!r}")
            elif kind == "Returns" and offset == 1 and not pattern.match(text):
                problems.append(f"{offset}: not `type`: ...: {text!r}")
        elif kind == "Args" and _indent(line) < level + 4:
            problems.append(f"{offset}: description not 4 spaces under its name: {line.strip()!r}")
    return problems


def _definitions(node: ast.AST):
    """Every function and class under `node`, nested ones included; expressions are not entered (that is faster)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield child
            yield from _definitions(child)


def _documented(tree: ast.Module):
    """Yield `(name, text, first line)` for every function and class docstring, and for module-level strings that
    become one (e.g. the `_KWARGS_DESCRIPTION` an `evaluate` metric adds to its class docstring)."""
    for node in _definitions(tree):
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield node.name, doc, node.body[0].lineno
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            yield ast.unparse(node.targets[0]), node.value.value, node.value.lineno


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_docstring_sections_use_trl_style(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    failures = []
    for name, doc, start in _documented(tree):
        for kind, header, body in _sections(doc):
            for problem in _problems(kind, body):
                offset, message = problem.split(": ", 1)
                failures.append(f"{path.name}:{start + header + int(offset)} ({name}, {kind}) {message}")
    assert not failures, "\n".join(failures)


def test_checker_accepts_trl_style_and_refuses_the_rest() -> None:
    good = [
        "        model (`PreTrainedModel` or `str`):",
        "            What it is,",
        "            on two lines.",
        "        temperature (`float`, *optional*, defaults to `0.07`):",
        "            Softmax temperature, > 0.",
        "        kwargs (`dict[str, Any]`, *optional*):",
        "            Passed on.",
    ]
    assert _problems("Args", good) == []
    assert _problems("Args", ["        temperature: Softmax temperature, > 0."])
    assert _problems("Args", ["        temperature (`float`): Softmax temperature, > 0."])
    assert _problems("Args", ["        temperature (float):", "            Softmax temperature."])
    assert _problems("Args", ["        temperature (`float`, defaults to 0.07):", "            Softmax temperature."])
    assert _problems("Args", ["        a, b (`float`):", "            Two numbers."])
    assert _problems("Returns", ["        `list[Span]`: the spans, sorted."]) == []
    assert _problems("Returns", ["        The spans, sorted."])
    assert _problems("Raises", ["        `ValueError`: if the lengths differ.", "            (naming both)"]) == []
    assert _problems("Raises", ["        ValueError: if the lengths differ."])
