"""Paths and skip markers shared by the tests (fixtures live in conftest.py)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real copies of the non-redistributable datasets sit beside the repo, never inside it.
SHARED_DATA = Path(os.environ.get("CLLMFS_TEST_DATA", REPO.parent / "shared" / "data"))


def requires_shared(dataset: str):
    """Skip unless `../shared/data/<dataset>` exists (CoNLL-2003 and OntoNotes cannot ship with the project)."""
    return pytest.mark.skipif(
        not (SHARED_DATA / dataset / "test.txt").is_file(),
        reason=f"{dataset} is not redistributable and {SHARED_DATA / dataset} is absent; "
        "set CLLMFS_TEST_DATA to a folder holding it",
    )


def shared_dataset(dataset: str) -> Path:
    """The folder of a shared dataset, or skip the calling test with the reason `requires_shared` gives."""
    folder = SHARED_DATA / dataset
    if not (folder / "test.txt").is_file():
        pytest.skip(f"{dataset} is not redistributable and {folder} is absent; set CLLMFS_TEST_DATA to hold it")
    return folder


def one_error_line(capsys, prog: str) -> str:
    """The single stderr line of a refused command, after checking there is nothing else (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]
