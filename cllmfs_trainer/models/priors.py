"""The shipped NER prior: a LoRA adapter of the default model trained on general-NER corpora (`data/prior.py`).

`init_adapter: prior` in a recipe starts the 5-shot stage from it; `model_name_or_path: default` stays the plain
base. The adapter lives in the package (`cllmfs_trainer/priors/<name>/`, bfloat16 safetensors with its model card)
so that it works offline and on a fresh clone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from cllmfs_trainer.errors import MissingFileError, UsageError

SHIPPED_PRIOR = Path(__file__).resolve().parent.parent / "priors" / "smollm2-135m-instruct"
# The model references the shipped prior applies to: the embedded default, by name or by its hub id.
PRIOR_BASES = (None, "default", "HuggingFaceTB/SmolLM2-135M-Instruct")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# How a 5-shot recipe starts from the shipped prior, chosen on dev (docs/dev_experiments.md, "The NER prior"):
# merged into the base under a fresh LoRA of the recipe's shape, without LoRA dropout (as the prior itself trained:
# the same F1 on dev, 1.13x faster steps), and predicting with a lower end penalty than the plain-base recipes' 3 (the
# prior's errors are spurious spans, not missed ones). The 5-shot benchmark methods, the own-files default of
# `cllmfs train` and `make demo` use these keys.
PRIOR_START: dict[str, str | bool | float] = {
    "init_adapter": "prior",
    "init_adapter_merge": True,
    "lora_dropout": 0.0,
    "end_penalty": 1.0,
}
# The prior alone, with no target example: the same penalty was best on dev.
PRIOR_ZERO_SHOT_DECODING: dict[str, float] = {"end_penalty": 1.0}


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


def adapter_sha256(folder: str | os.PathLike) -> str | None:
    """The sha256 of an adapter folder's weights (`adapter_model.safetensors`); `None` where there are none."""
    weights = Path(folder) / "adapter_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


def _lora_scale(config: dict, source: Path) -> float:
    """The factor PEFT multiplies `B @ A` by; refuses what a plain rank concatenation cannot carry."""
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if config.get(key):
            raise UsageError(f"init_adapter_merge: {source} uses {key}; only plain LoRA adapters can be stacked")
    rank = config["r"]
    return config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)


def stack_lora_adapters(first: str | os.PathLike, second: str | os.PathLike, output: str | os.PathLike) -> None:
    """Write one LoRA adapter equal to applying `first`, then `second`: W + s1 B1 A1 + s2 B2 A2.

    Its rank is the two ranks added: A = [A1; A2], B = [s1 B1, s2 B2], at scale 1 (alpha = rank). A module only one of
    them adapts gets zero blocks for the other. A run that merged its starting adapter into the base and trained a
    fresh LoRA (`init_adapter_merge`) saves this, so that predicting, serving and vLLM need the run folder alone.

    Args:
        first (`str` or `os.PathLike`):
            The adapter folder merged into the base first (the prior).
        second (`str` or `os.PathLike`):
            The adapter folder trained on top of it.
        output (`str` or `os.PathLike`):
            Where to write `adapter_model.safetensors` and `adapter_config.json` (may be `second`).
    """
    import torch
    from safetensors.torch import load_file, save_file

    folders = [Path(first), Path(second)]
    configs = [json.loads((f / "adapter_config.json").read_text(encoding="utf-8")) for f in folders]
    scales = [_lora_scale(c, f) for c, f in zip(configs, folders)]
    tensors = [{k: v.float() for k, v in load_file(f / "adapter_model.safetensors").items()} for f in folders]
    unknown = sorted(k for t in tensors for k in t if ".lora_A." not in k and ".lora_B." not in k)
    if unknown:
        raise UsageError(f"init_adapter_merge: {unknown[0]} is not a LoRA matrix; only plain LoRA adapters stack")
    modules = sorted({k.split(".lora_A.")[0] for t in tensors for k in t if ".lora_A." in k})
    ranks = [c["r"] for c in configs]
    stacked = {}
    for module in modules:
        pairs = [(t.get(f"{module}.lora_A.weight"), t.get(f"{module}.lora_B.weight")) for t in tensors]
        in_features = next(a.shape[1] for a, _ in pairs if a is not None)
        out_features = next(b.shape[0] for _, b in pairs if b is not None)
        blocks_a, blocks_b = [], []
        for (a, b), rank, scale in zip(pairs, ranks, scales):
            blocks_a.append(a if a is not None else torch.zeros(rank, in_features))
            blocks_b.append(scale * b if b is not None else torch.zeros(out_features, rank))
        stacked[f"{module}.lora_A.weight"] = torch.cat(blocks_a, dim=0).contiguous()
        stacked[f"{module}.lora_B.weight"] = torch.cat(blocks_b, dim=1).contiguous()
    config = dict(configs[1])
    targets = [c["target_modules"] for c in configs]
    if isinstance(targets[0], str) or isinstance(targets[1], str):  # a regex or "all-linear": no union to take
        if targets[0] != targets[1]:
            raise UsageError(f"init_adapter_merge: {folders[0]} and {folders[1]} name their target modules differently")
        targets = targets[0]
    else:
        targets = sorted({*targets[0], *targets[1]})
    config.update(r=sum(ranks), lora_alpha=sum(ranks), use_rslora=False, target_modules=targets)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    save_file(stacked, output / "adapter_model.safetensors", metadata={"format": "pt"})
    (output / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
