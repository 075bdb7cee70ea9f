"""Serving a run folder with `vllm serve` (`cllmfs export vllm`): the command line and a client that sends each
sentence's regex. Light on purpose (no torch, no vLLM): the command prints them on any machine.

vLLM's OpenAI-compatible server takes the adapter as a LoRA module (`--lora-modules NAME=PATH`) and per-request
structured outputs in `extra_body` (`{"structured_outputs": {"regex": ...}}`, vLLM 0.12 and later), which
constrain each answer as `cllmfs_trainer.inference.answer_regex` describes.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.models.embedded import DEFAULT_MODEL_ALIASES, default_model_dir
from cllmfs_trainer.run_folder import RunFolder

INSTALL_HINT = "pip install 'cllmfs-trainer[vllm]'"
# The LoRA ranks vLLM's kernels are built for; `max_lora_rank` must be one of them and at least the adapter's rank.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(run_dir: str | os.PathLike) -> int:
    """The LoRA rank of a run folder's adapter: its `r`, or the largest rank of its `rank_pattern`."""
    config = json.loads((Path(run_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    return max([int(config["r"]), *(int(rank) for rank in (config.get("rank_pattern") or {}).values())])


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise UserError(f"the adapter's LoRA rank {rank} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")


def served_base_model(run: RunFolder) -> str:
    """The base model vLLM should load: the weights the adapter was trained on (for the embedded default, its
    converted folder, which `cllmfs model` materialises), else the run's reference as recorded."""
    if run.base_model.strip().lower() in DEFAULT_MODEL_ALIASES:
        return str(default_model_dir())
    return run.base_model


def serve_command(run: RunFolder, name: str | None = None) -> str:
    """`vllm serve BASE --enable-lora --lora-modules NAME=PATH --max-lora-rank R` for a run folder with an adapter.

    Args:
        run (`RunFolder`):
            The run folder (`weights: adapter`).
        name (`str`, *optional*):
            The adapter's model name on the server (default: the run folder's name).
    """
    if run.weights != "adapter":
        raise UserError(f"{run.path}: vLLM serves LoRA adapters; this run holds full weights (serve the folder itself)")
    path = run.path.resolve()
    rank = vllm_max_lora_rank(adapter_rank(path))
    module = f"{name or path.name}={path}"
    return shlex.join(
        [
            "vllm",
            "serve",
            served_base_model(run),
            "--enable-lora",
            "--lora-modules",
            module,
            "--max-lora-rank",
            str(rank),
        ]
    )


def client_snippet(run: RunFolder, name: str | None = None, max_tokens: int = 64) -> str:
    """Python that asks a `vllm serve` server for one sentence's entities, type by type, with our prompts, regex
    and parser (needs the `openai` package and this one)."""
    return f"""from openai import OpenAI

from cllmfs_trainer.inference.answer_regex import answer_regex
from cllmfs_trainer.run_folder import RunFolder

run = RunFolder.load({str(run.path.resolve())!r})
words = "Andrew Little met the press in Auckland".split()
client = OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")
for entity_type in run.test_types:
    reply = client.completions.create(
        model={(name or run.path.resolve().name)!r},
        prompt=run.format.prompt(" ".join(words), entity_type),
        temperature=0,
        max_tokens={max_tokens},
        stop=["<im_end>"],
        extra_body={{
            "structured_outputs": {{"regex": answer_regex(words, run.answer_format)}},
            "include_stop_str_in_output": True,
        }},
    )
    print(entity_type.label, run.format.parse(reply.choices[0].text).entities)
"""
