"""The shipped NER prior: a LoRA adapter of the default model trained on general-NER corpora (`data/prior.py`).

`init_adapter: prior` in a recipe starts the 5-shot stage from it; `model_name_or_path: default` stays the plain
base. The adapter lives in the package (`cllmfs_trainer/priors/<name>/`, bfloat16 safetensors with its model card)
so that it works offline and on a fresh clone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cllmfs_trainer.errors import MissingFileError, UsageError

SHIPPED_PRIOR = Path(__file__).resolve().parent.parent / "priors" / "smollm2-135m-instruct"
# The model references the shipped prior applies to: the embedded default, by name or by its hub id.
PRIOR_BASES = (None, "default", "HuggingFaceTB/SmolLM2-135M-Instruct")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def resolve_init_adapter(value: str | os.PathLike, base_model: str | None) -> Path:
    """The adapter folder `init_adapter` names: `prior` (the shipped NER prior) or a folder with a LoRA adapter.

    Args:
        value (`str` or `os.PathLike`):
            `prior`, or a run folder / adapter folder.
        base_model (`str`, *optional*):
            The recipe's `model_name_or_path`; the shipped prior fits the default model only.

    Raises:
        `UserError`: for the shipped prior with another base model, or a folder without adapter files.
    """
    if str(value) == "prior":
        if base_model not in PRIOR_BASES:
            raise UsageError(
                f"init_adapter: prior is the NER prior of the default model (SmolLM2-135M-Instruct), not of "
                f"{base_model}; train a prior for it with setting: prior and pass its run folder"
            )
        folder = SHIPPED_PRIOR
    else:
        folder = Path(value).expanduser()
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingFileError(
            f"init_adapter: {folder} holds no LoRA adapter ({', '.join(missing)} missing); give a run folder "
            "trained with use_peft: true, or prior"
        )
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MissingFileError(f"init_adapter: {folder / 'adapter_config.json'} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise UsageError(f"init_adapter: {folder / 'adapter_config.json'} is not a LoRA adapter's config")
    return folder
