"""Train CLLMFS from a recipe:  accelerate launch recipes/train.py recipes/<setting>.yaml [--key value ...]

The YAML may be given as the first argument (or as `--config FILE`, TRL's own way); `--key value` flags override it.
Keys belong to `ScriptArguments`, `DecodingConfig` (prediction's defaults, saved in the run folder's
`decoding_config.json`), `ContrastiveSFTConfig` (all of TRL's SFTConfig plus `cl_*`) or TRL's `ModelConfig` (model,
LoRA, 4-bit loading); an unknown key is an error. Scoring the run is a job of its own: `cllmfs evaluate`.

Every key and file is checked before the model loads. A mistake ends with one line on stderr and exit code 2;
`--debug` (or CLLMFS_DEBUG=1) adds the traceback. `--resume_from_checkpoint true` resumes from the latest
`checkpoint-<step>` folder in `output_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from trl import ModelConfig, get_peft_config, get_quantization_config

from cllmfs_trainer.command_line import run_entry_point
from cllmfs_trainer.data import build_sft_dataset, get_dataset, make_task
from cllmfs_trainer.data.own_files import OWN_DATASET, task_from_file
from cllmfs_trainer.data.prior import (
    PRIOR_MIX,
    build_prior_samples,
    draw_prior,
    load_prior_corpora,
    prior_type_ids,
    prior_types,
)
from cllmfs_trainer.data.sampling import FewShotTask
from cllmfs_trainer.data.sft import samples_to_dataset
from cllmfs_trainer.decoding_config import DecodingConfig
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.locks import claim_folder
from cllmfs_trainer.models import load_model, load_tokenizer
from cllmfs_trainer.models.priors import SHIPPED_PRIOR, adapter_sha256, stack_lora_adapters
from cllmfs_trainer.run_folder import RunFolder
from cllmfs_trainer.scripts.train_arguments import (
    ARGUMENT_CLASSES,
    KEYS_HINT,
    PROG,
    RecipeParser,
    ScriptArguments,
    check_arguments,
    check_decoding,
    make_parser,
    parse_args,
    resolve_resume,
)
from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.training.cpu.auto_choices import apply_auto_choices, resolve_auto_choices

# Importers of the script use these names from here (`train.parse_args`, `train.main`, ...).
__all__ = [
    "ARGUMENT_CLASSES",
    "KEYS_HINT",
    "PROG",
    "DecodingConfig",
    "RecipeParser",
    "ScriptArguments",
    "check_arguments",
    "check_decoding",
    "check_trained",
    "cli",
    "main",
    "make_parser",
    "parse_args",
    "resolve_resume",
]


def main(
    script_args: ScriptArguments,
    decoding_args: DecodingConfig,
    training_args: ContrastiveSFTConfig,
    model_args: ModelConfig,
) -> ContrastiveSFTTrainer:
    """Sample (or read) the support set, train on it and write the run folder (scoring it is `cllmfs evaluate`'s job).

    Args:
        script_args (`ScriptArguments`):
            What to train on and how its samples are written.
        decoding_args (`DecodingConfig`):
            Prediction's defaults, saved in the run folder.
        training_args (`ContrastiveSFTConfig`):
            The trainer's settings.
        model_args (`ModelConfig`):
            The model, LoRA and quantization settings.

    Returns:
        `ContrastiveSFTTrainer`: the trainer, after training.
    """
    check_arguments(script_args, decoding_args, training_args, model_args)
    # One writer per run folder: a second training into it stops here with one line naming the first.
    claim = claim_folder(training_args.output_dir) if PartialState().is_main_process else contextlib.nullcontext()
    with claim:
        return _train(script_args, decoding_args, training_args, model_args)


def _train(
    script_args: ScriptArguments,
    decoding_args: DecodingConfig,
    training_args: ContrastiveSFTConfig,
    model_args: ModelConfig,
) -> ContrastiveSFTTrainer:
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    if script_args.setting.lower() == "prior":
        task = None
        train_dataset, prior = _prior_dataset(script_args, training_args, tokenizer)
    elif script_args.train_file is not None:  # the user's own examples, all of them, no registry dataset
        task = task_from_file(script_args.train_file, script_args.types_file)
    else:
        task = make_task(
            script_args.setting,
            get_dataset(script_args.dataset, types_file=script_args.types_file),
            script_args.k,
            script_args.support_seed,
            n_types=script_args.n_types,
            data_dir=script_args.data_dir,
            support_set=script_args.support_set,
        )
    if task is not None:
        train_dataset = build_sft_dataset(
            task.support.sentences,
            task.train_types,
            tokenizer,
            training_args.max_length,
            repeat_entity_samples=script_args.repeat_entity_samples,
            prompt_format=script_args.prompt_format,
            answer_format=script_args.answer_format,
            type_descriptions=script_args.type_descriptions,
        )
    # Before the quantization config, which takes its compute dtype from `dtype`; a resumed training reads back
    # what its first start chose.
    apply_auto_choices(resolve_auto_choices(training_args, model_args), training_args, model_args)
    quantization = get_quantization_config(model_args)
    model = load_model(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        quantization_config=quantization,
        # a quantized model is placed at load time, one copy per process
        device_map={"": str(PartialState().device)} if quantization else None,
        attn_implementation=model_args.attn_implementation,
    )

    peft_config = get_peft_config(model_args)
    if script_args.init_adapter is not None:
        from peft import PeftModel  # deferred like the other heavy imports of this path: only this branch needs it

        if script_args.init_adapter_merge:  # a fresh LoRA of the recipe's shape trains on the merged weights
            model = PeftModel.from_pretrained(model, script_args.init_adapter).merge_and_unload()
        else:  # the adapter's own rank and targets; PEFT loads its weights in float32 (master weights for training)
            model = PeftModel.from_pretrained(model, script_args.init_adapter, is_trainable=True)
            peft_config = None
    trainer = ContrastiveSFTTrainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    metrics = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint).metrics
    check_trained(trainer)
    if torch.cuda.is_available():  # this process's peak, weights included (bench/gpu/gpu_check.sh reports it)
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    trainer.save_metrics("train", metrics)  # train_results.json in the run folder

    if trainer.is_fsdp_enabled:  # gather the sharded adapter into one file, as PEFT's FSDP examples do
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        if script_args.init_adapter_merge:  # the run folder alone must predict: save prior and fresh LoRA as one
            stack_lora_adapters(script_args.init_adapter, training_args.output_dir, training_args.output_dir)
        run = RunFolder(
            path=training_args.output_dir,
            base_model=model_args.model_name_or_path or "default",
            weights="adapter" if model_args.use_peft else "full",
            prompt_format=script_args.prompt_format,
            answer_format=script_args.answer_format,
            type_descriptions=script_args.type_descriptions,
            end_penalty=decoding_args.end_penalty,
            one_type_per_span=decoding_args.one_type_per_span,
            setting=task.setting if task else "prior",
            dataset=_dataset_name(script_args, task),
            k=task.support.k if task else 0,
            train_types=list(task.train_types) if task else prior["types"],
            test_types=list(task.test_types) if task else prior["types"],
            cl_layer=trainer.cl_layer,
            world_size=training_args.world_size,
            distributed_type=trainer.accelerator.distributed_type.value,  # NO, MULTI_CPU, DEEPSPEED, FSDP, ...
            extra={
                "train_steps": trainer.state.global_step,
                "support_fit": trainer.support_fit_callback.history,
                **({"init_adapter": _adapter_record(script_args)} if script_args.init_adapter else {}),
                **({"prior": prior["record"]} if task is None else {}),
                **({"train_file": _file_record(script_args.train_file, task)} if script_args.train_file else {}),
            },
        )
        if task is not None:
            task.support.save(run.support_file)
        run.save()
    return trainer


def _dataset_name(script_args: ScriptArguments, task: FewShotTask | None) -> str:
    """The run record's `dataset`: a registry key, or what stands for a mix or a user's file (never a borrowed key)."""
    if task is None:
        return PRIOR_DATASET
    return OWN_DATASET if script_args.train_file is not None else get_dataset(script_args.dataset).key


def _file_record(path: str, task: FewShotTask) -> dict[str, Any]:
    """What the run record says of a user's training file: where, which bytes, how much of each type."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"path": str(Path(path).resolve()), "sha256": digest, **task.notes}


def check_trained(trainer: ContrastiveSFTTrainer) -> None:
    """Refuse to write a run folder that cannot predict: no optimizer step was made, or the trained weights hold NaN
    or infinite values.

    Raises:
        `UserError`: naming `output_dir` and what to change.
    """
    output_dir = trainer.args.output_dir
    if trainer.state.global_step < 1:
        raise UserError(
            f"{output_dir}: the training made no optimizer step; no run folder was written (check max_steps, "
            "num_train_epochs and the size of the training data)"
        )
    trained = [(name, p) for name, p in trainer.model.named_parameters() if p.requires_grad]
    bad = [name for name, p in trained if not torch.isfinite(p).all()]
    if bad:
        raise UserError(
            f"{output_dir}: the training diverged: {len(bad)} of {len(trained)} trained weight tensors hold NaN or "
            f"infinite values (first: {bad[0]}); no run folder was written; lower learning_rate "
            f"({trainer.args.learning_rate})"
        )


PRIOR_DATASET = "ner_prior"  # the run record's `dataset` for a prior training: a mix, not one registry entry


def _prior_dataset(
    script_args: ScriptArguments, training_args: ContrastiveSFTConfig, tokenizer: Any
) -> tuple[Any, dict[str, Any]]:
    """The NER prior's tokenised samples, and what the run record keeps of the mix (corpora, counts, types)."""
    corpora = load_prior_corpora(script_args.prior_corpora or PRIOR_MIX, script_args.data_dir)
    draws = draw_prior(corpora, script_args.prior_sentences, script_args.prior_absent_ratio, training_args.seed)
    samples = build_prior_samples(
        draws,
        prior_type_ids(corpora),
        script_args.prompt_format,
        script_args.answer_format,
        script_args.type_descriptions,
    )
    samples = [s for s in samples for _ in range(script_args.repeat_entity_samples if s.entity_chars else 1)]
    dataset = samples_to_dataset(samples, tokenizer, training_args.max_length, prompt_format=script_args.prompt_format)
    counts = Counter(draw.corpus for draw in draws)
    record = {
        "corpora": {c.key: {"sentences": counts[c.key], "types": len(c.types)} for c in corpora},
        "sentences": len(draws),
        "samples": len(samples),
        "samples_with_entities": sum(bool(s.entity_chars) for s in samples),
        "absent_ratio": script_args.prior_absent_ratio,
        "seed": training_args.seed,  # the draw's seed: a stage that continues a prior draws with another
    }
    return dataset, {"types": prior_types(corpora), "record": record}


def _adapter_record(script_args: ScriptArguments) -> dict[str, Any]:
    """The run record's starting adapter: where it was, the sha256 of its weights, merged or continued."""
    path = script_args.init_adapter
    return {
        "path": path,
        "shipped_prior": Path(path).resolve() == SHIPPED_PRIOR.resolve(),
        "sha256": adapter_sha256(path),
        "mode": "merge" if script_args.init_adapter_merge else "continue",
    }


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `recipes/train.py`: exits with 2 after one line on stderr for a mistake in the recipe or files.

    Args:
        argv (`list[str]`, *optional*):
            The arguments; `sys.argv[1:]` by default.
    """
    # `--debug VALUE` is transformers' own `debug` option; only a bare `--debug` asks for tracebacks.
    code = run_entry_point(PROG, lambda rest: main(*parse_args(rest)), argv, keep_debug_with_value=True)
    # A DDP process (torchrun) leaves its process group before exiting: otherwise gloo's threads can abort it at
    # interpreter shutdown ("terminate called without an active exception"), a failed exit after a finished run.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    cli()
