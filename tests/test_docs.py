"""The documentation cannot rot: README.md and docs/*.md are checked against the repository.

- Python blocks marked `<!-- runnable -->` (or `<!-- runnable: slow -->`, for blocks that need the default model) on
  the line before their fence are executed, each in a fresh namespace inside a temporary folder.
- Every relative link resolves, anchors included.
- Every repository path named (`recipes/...`, `bench/...`, `cllmfs_trainer/...`, ...) exists; `<placeholder>` and
  `*` match anything, `{a,b}` expands.
- Every `cllmfs_trainer` import in a Python block, and every dotted `cllmfs_trainer.x.y` name in the text, names a
  module and a name defined there (read with `ast`, nothing is imported).
- The folder tree in docs/layout.md lists exactly the package's folders, and each of its folders exists.
- The documentation describes the project alone: no words about how its writing went.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import itertools
import re
from pathlib import Path

import pytest
from helpers import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*runnable(?::\s*(slow))?\s*-->\s*$")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def code_blocks(path: Path) -> list[dict]:
    """Fenced blocks of a Markdown file: language, first line number, text, and the runnable marker before it."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        marker = MARKER.match(lines[i - 1]) if i else None
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{_rel(path)}:{i + 1}: code block is never closed"
        blocks.append(
            {
                "lang": match.group(1),
                "line": i + 1,
                "text": "\n".join(lines[i + 1 : end]) + "\n",
                "runnable": marker is not None,
                "slow": bool(marker and marker.group(1)),
            }
        )
        i = end + 1
    return blocks


def prose(path: Path) -> str:
    """The file's text outside fenced code blocks."""
    kept, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


# --- runnable blocks -------------------------------------------------------------------------------------------------

RUNNABLE = [
    pytest.param(path, block, id=f"{_rel(path)}:{block['line']}", marks=[pytest.mark.slow] if block["slow"] else [])
    for path in DOC_FILES
    if path.name != "README.md"  # tests/test_readme.py runs the README's snippets, with checks of their output
    for block in code_blocks(path)
    if block["runnable"]
]


def test_docs_have_runnable_blocks():
    assert RUNNABLE, "no block in docs/ is marked <!-- runnable -->"
    for path in DOC_FILES:
        for block in code_blocks(path):
            assert not block["runnable"] or block["lang"] == "python", (
                f"{_rel(path)}:{block['line']}: only Python blocks can be marked runnable"
            )


@pytest.mark.parametrize(("path", "block"), RUNNABLE)
def test_runnable_block(path, block, tmp_path, monkeypatch, request):
    if block["slow"]:
        request.getfixturevalue("smollm2_path")  # skips when the default model cannot be materialised
    monkeypatch.chdir(tmp_path)  # blocks may write files
    code = "\n" * block["line"] + block["text"]  # tracebacks point at the Markdown line
    exec(compile(code, str(path), "exec"), {"__name__": "__docs__"})


# --- links -----------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (word characters and hyphens kept), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("path", DOC_FILES, ids=_rel)
def test_relative_links_resolve(path):
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: {file_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{_rel(path)}: broken links:\n" + "\n".join(broken)


# --- repository paths ------------------------------------------------------------------------------------------------

TOP_LEVEL = ("cllmfs_trainer", "recipes", "bench", "experiments", "ds_configs", "tests", "docs", ".ci")
PATH = re.compile(r"(?<![\w./$<>-])((?:" + "|".join(map(re.escape, TOP_LEVEL)) + r")/[\w./{},<>*-]*)")


def expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return list(itertools.chain.from_iterable(expand_braces(head + part + tail) for part in match.group(1).split(",")))


def path_exists(named: str) -> bool:
    for candidate in expand_braces(named):
        pattern = re.sub(r"<[^<>]*>", "*", candidate).rstrip("/")
        if "*" in pattern:
            if not any(REPO.glob(pattern)):
                return False
        elif not (REPO / pattern).exists():
            return False
    return True


def named_paths(path: Path) -> set[str]:
    return {match.rstrip(".,:;") for match in PATH.findall(path.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("path", DOC_FILES, ids=_rel)
def test_named_paths_exist(path):
    missing = sorted(named for named in named_paths(path) if not path_exists(named))
    assert not missing, f"{_rel(path)} names paths that do not exist: {missing}"


# --- cllmfs_trainer names --------------------------------------------------------------------------------------------


def module_file(dotted: str) -> Path | None:
    base = REPO / Path(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@functools.cache
def module_names(file: Path) -> dict[str, ast.AST | None]:
    """Top-level names a module defines or imports (classes map to their node), plus `__all__`."""
    names: dict[str, ast.AST | None] = {}
    for node in ast.parse(file.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = None
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = None
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = None
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                with contextlib.suppress(ValueError):  # only a literal list can be read without importing
                    names.update(dict.fromkeys(ast.literal_eval(node.value)))
    return names


def class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            members.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets if isinstance(t, ast.Name))
    return members


def resolve(dotted: str) -> str | None:
    """None if `dotted` names a module, or a name (and class member) defined in one; else what is wrong."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        file = module_file(".".join(parts[:cut]))
        if file is None:
            continue
        rest = parts[cut:]
        if not rest:
            return None
        names = module_names(file)
        if rest[0] not in names:
            return f"{'.'.join(parts[:cut])} defines no {rest[0]!r}"
        node = names[rest[0]]
        if len(rest) > 1 and isinstance(node, ast.ClassDef) and rest[1] not in class_members(node):
            return f"{'.'.join(parts[: cut + 1])} has no member {rest[1]!r}"
        return None
    return f"no module {parts[0]!r}"


def named_objects(path: Path) -> set[str]:
    """`cllmfs_trainer` names: imports in Python blocks, dotted names anywhere else."""
    found = set(re.findall(r"(?<![\w.])cllmfs_trainer(?:\.\w+)+", prose(path)))
    for block in code_blocks(path):
        if block["lang"] != "python":
            found.update(re.findall(r"(?<![\w./])cllmfs_trainer(?:\.\w+)+", block["text"]))
            continue
        for node in ast.walk(ast.parse(block["text"])):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cllmfs_trainer":
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "cllmfs_trainer")
    return found


@pytest.mark.parametrize("path", DOC_FILES, ids=_rel)
def test_named_modules_and_objects_exist(path):
    wrong = sorted(f"{name}: {problem}" for name in named_objects(path) if (problem := resolve(name)))
    assert not wrong, f"{_rel(path)} names what does not exist:\n" + "\n".join(wrong)


def test_name_checks_catch_mistakes():
    assert resolve("cllmfs_trainer.evaluation.metrics.span_scores") is None
    assert resolve("cllmfs_trainer.inference.generate.EntityExtractor.from_run") is None
    assert resolve("cllmfs_trainer.ContrastiveSFTTrainer") is None  # lazy, listed in __all__
    assert resolve("cllmfs_trainer.metrics") is not None
    assert resolve("cllmfs_trainer.models.load_modle") is not None
    assert resolve("cllmfs_trainer.inference.generate.EntityExtractor.from_folder") is not None
    assert path_exists("recipes/{conll03,wnut17}_intra.yaml") and path_exists("recipes/<setting>.yaml")
    assert not path_exists("recipes/{conll03,conll04}_intra.yaml") and not path_exists("bench/cl_effect.py")


# --- the layout tree -------------------------------------------------------------------------------------------------


def layout_tree() -> set[str]:
    """Folders of the tree block in docs/layout.md, as repository paths (two spaces of indent per level)."""
    blocks = code_blocks(REPO / "docs" / "layout.md")
    (block,) = [b for b in blocks if b["lang"] == "" and b["text"].startswith("cllmfs_trainer/")]
    stack: list[str] = []
    folders = set()
    for line in block["text"].splitlines():
        match = re.match(r"^( *)(\S+/)\s", line + " ")
        if match is None:
            continue
        depth = len(match.group(1)) // 2
        stack[depth:] = [match.group(2).rstrip("/")]
        folders.add("/".join(stack))
    return folders


def test_layout_tree_matches_the_package():
    listed = layout_tree()
    missing = sorted(folder for folder in listed if not (REPO / folder).is_dir())
    assert not missing, f"docs/layout.md lists folders that do not exist: {missing}"
    package = {
        _rel(folder)
        for folder in (REPO / "cllmfs_trainer").rglob("*")
        if folder.is_dir()
        and "__pycache__" not in folder.parts
        and any(f.is_file() for f in folder.iterdir() if not f.name.startswith("."))
    }
    unlisted = sorted(package - listed)
    assert not unlisted, f"docs/layout.md does not list these package folders: {unlisted}"


# --- words about the project alone -----------------------------------------------------------------------------------

HISTORY = re.compile(r"\b(sessions?|agents?|lent|lending|loans?)\b", re.IGNORECASE)


@pytest.mark.parametrize("path", DOC_FILES, ids=_rel)
def test_docs_describe_the_project_alone(path):
    hits = [
        f"{_rel(path)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if HISTORY.search(line)
    ]
    assert not hits, "the documentation describes the project, not how its writing went:\n" + "\n".join(hits)
