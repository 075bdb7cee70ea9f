"""The recipe's `auto` settings (precision, attention kernel, LoRA dropout generator), resolved once per training.

On a CPU each `auto` is settled by a timing probe. A probe can settle differently from one start to the next (a busy
machine, or another CPU model), and a resumed training that did so would continue with another precision or other
dropout masks than it began with. So a fresh training writes what it resolved to `auto_choices.json` in its output
folder, and a training resumed from a checkpoint in that folder reads it back instead of probing again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import PartialState
from trl import ModelConfig

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.models import precision
from cllmfs_trainer.training.config import ContrastiveSFTConfig
from cllmfs_trainer.training.cpu import attention_probe, dropout

CHOICES_FILE = "auto_choices.json"
# (owner, field) of each setting that `auto` resolves; "model" is `ModelConfig`, "training" `ContrastiveSFTConfig`.
FIELDS = (("model", "dtype"), ("model", "attn_implementation"), ("training", "lora_dropout_rng"))


def _probe(name: str, training_args: ContrastiveSFTConfig, model_args: ModelConfig, dtype: str | None) -> str | None:
    """What a probe picks for `name` here, training in `dtype`; `None` keeps transformers' own default (off the CPU)."""
    cpu = not torch.accelerator.is_available() or training_args.use_cpu
    if name == "dtype":
        if torch.accelerator.is_available():
            return "auto"  # transformers reads the checkpoint's dtype
        return precision.probe_cpu_dtype()
    if name == "attn_implementation":
        # On the CPU a probe picks SDPA or plain matmuls for these short sequences; elsewhere transformers' default.
        probe_dtype = dtype if dtype in ("bfloat16", "float16") else "float32"
        return attention_probe.probe_cpu_attention(probe_dtype) if cpu else None
    # lora_dropout_rng: only a CPU training with LoRA dropout draws masks; elsewhere the choice is never used.
    if not (cpu and model_args.use_peft and model_args.lora_dropout > 0):
        return "auto"
    return dropout.resolve_lora_dropout_rng("auto")


def saved_choices(path: Path) -> dict:
    """The resolved `auto` settings a training saved in `path` (its `CHOICES_FILE`).

    Args:
        path (`Path`):
            The file; an unreadable one or one not holding a JSON object is a one-line `UserError` naming it.
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the resumed training's auto choices ({err})") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path}: must hold a JSON object of the resolved auto settings, got {type(saved).__name__}")
    return saved


def resolve_auto_choices(training_args: ContrastiveSFTConfig, model_args: ModelConfig) -> dict[str, str | None]:
    """What every `auto` among `dtype`, `attn_implementation` and `lora_dropout_rng` resolves to: on a CPU a concrete
    value; elsewhere `dtype` and `lora_dropout_rng` stay `auto` and `attn_implementation` becomes `None` (transformers'
    own).

    A training resumed from `output_dir/checkpoint-<step>` takes the values its first start wrote to
    `output_dir/auto_choices.json`; a fresh one probes (in order: precision first, since the attention probe times in
    it) and writes that file. Settings the recipe gives explicitly are left out. The arguments are not changed:
    `apply_auto_choices` sets the result on them.

    Args:
        training_args (`ContrastiveSFTConfig`):
            The training arguments: `lora_dropout_rng`, and `resume_from_checkpoint` (already a folder or `None`),
            which decides between reading and probing.
        model_args (`ModelConfig`):
            The model arguments: `dtype` and `attn_implementation`.

    Returns:
        `dict[str, str | None]`: the resolved value of each setting that was `auto`.
    """
    owners = {"model": model_args, "training": training_args}
    wanted = [name for owner, name in FIELDS if getattr(owners[owner], name) == "auto"]
    resume = training_args.resume_from_checkpoint
    saved_file = Path(resume).parent / CHOICES_FILE if resume else None
    saved = saved_choices(saved_file) if saved_file is not None and saved_file.is_file() else {}
    resolved: dict[str, str | None] = {}
    for name in wanted:
        dtype = resolved.get("dtype", model_args.dtype)
        value = saved[name] if name in saved else _probe(name, training_args, model_args, dtype)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{saved_file}: field {name!r} must be a string or null, got {value!r}")
        resolved[name] = value
    if resolved and not saved and PartialState().is_main_process:
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CHOICES_FILE, json.dumps(resolved, indent=2) + "\n")
    return resolved


def apply_auto_choices(
    choices: dict[str, str | None], training_args: ContrastiveSFTConfig, model_args: ModelConfig
) -> None:
    """Set what `resolve_auto_choices` chose on the arguments it came from.

    Args:
        choices (`dict[str, str | None]`):
            From `resolve_auto_choices`.
        training_args (`ContrastiveSFTConfig`):
            Receives `lora_dropout_rng`.
        model_args (`ModelConfig`):
            Receives `dtype` and `attn_implementation`.
    """
    owners = {"model": model_args, "training": training_args}
    for owner, name in FIELDS:
        if name in choices:
            setattr(owners[owner], name, choices[name])
