"""Train CLLMFS from a recipe:  accelerate launch recipes/train.py recipes/<setting>.yaml [--key value ...]

The YAML may be given as the first argument (or as `--config FILE`, TRL's own way); `--key value` flags override it.
Keys belong to `ScriptArguments` below, `ContrastiveSFTConfig` (all of TRL's SFTConfig plus `cl_*`) or TRL's
`ModelConfig` (model, LoRA, 4-bit loading); an unknown key is an error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from cllmfs_trainer import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.benchmark.scoring import evaluate_run
from cllmfs_trainer.data import build_sft_dataset, get_dataset, make_task
from cllmfs_trainer.modeling import load_model, load_tokenizer


@dataclass
class ScriptArguments:
    dataset: str = field(default="wnut17", metadata={"help": "Registry key of the (target) dataset."})
    setting: str = field(default="intra", metadata={"help": "intra, or inter (support set from OntoNotes)."})
    k: int = field(default=5, metadata={"help": "Shots per type."})
    n_types: list[str] | None = field(default=None, metadata={"help": "Labels of an N-way subset; all by default."})
    support_seed: int = field(default=0, metadata={"help": "Seed of the support-set sample."})
    support_set: str | None = field(default=None, metadata={"help": "Use this BIO file as the support set."})
    types_file: str | None = field(default=None, metadata={"help": "YAML overriding/extending type descriptions."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of non-shipped datasets ($CLLMFS_DATA_DIR)."})
    repeat_entity_samples: int = field(default=1, metadata={
        "help": "Repeat every SFT sample that has entities this many times (1 = the paper). Rebalances the "
                "entity / no-entity decision, which small models otherwise learn as 'no entity' everywhere."})
    prompt_format: int = field(default=1, metadata={
        "help": "1: instruction, then sentence (default). 2: sentence first, then the instruction: the type sits "
                "right before the answer, and prediction reuses each sentence's key/value cache across types."})
    evaluate_on: list[str] | None = field(default=None, metadata={
        "help": "After training, predict and score these datasets' test splits (each with its own types) into "
                "metrics.json in the run folder, e.g. the dataset itself, or an INTER run's targets."})
    eval_query_size: int | None = field(default=None, metadata={
        "help": "Score a fixed random subset of this many test sentences per dataset instead of the whole split."})


def main(
    script_args: ScriptArguments, training_args: ContrastiveSFTConfig, model_args: ModelConfig
) -> ContrastiveSFTTrainer:
    dataset = get_dataset(script_args.dataset, types_file=script_args.types_file)
    task = make_task(script_args.setting, dataset, script_args.k, script_args.support_seed,
                     n_types=script_args.n_types, data_dir=script_args.data_dir, support_set=script_args.support_set)

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_dataset = build_sft_dataset(task.support.sentences, task.train_types, tokenizer, training_args.max_length,
                                      repeat_entity_samples=script_args.repeat_entity_samples,
                                      prompt_format=script_args.prompt_format)
    quantization = get_quantization_config(model_args)
    model = load_model(model_args.model_name_or_path, dtype=model_args.dtype, quantization_config=quantization,
                       # a quantized model is placed at load time, one copy per process
                       device_map={"": str(PartialState().device)} if quantization else None,
                       attn_implementation=model_args.attn_implementation)

    trainer = ContrastiveSFTTrainer(model, args=training_args, train_dataset=train_dataset,
                                    processing_class=tokenizer, peft_config=get_peft_config(model_args))
    metrics = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint).metrics
    if torch.cuda.is_available():  # this process's peak, weights included (bench/gpu_check.sh reports it)
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    trainer.save_metrics("train", metrics)  # train_results.json in the run folder

    # The run folder: everything prediction needs besides the adapter and tokenizer that save_model writes.
    if trainer.is_fsdp_enabled:  # gather the sharded adapter into one file, as PEFT's FSDP examples do
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        out = Path(training_args.output_dir)
        task.support.save(out / "support.txt")
        run = {
            "base_model": model_args.model_name_or_path or "default", "prompt_format": script_args.prompt_format,
            "setting": task.setting, "dataset": dataset.key, "k": script_args.k,
            "train_types": [vars(t) for t in task.train_types], "test_types": [vars(t) for t in task.test_types],
            "cl_layer": trainer.cl_layer, "world_size": training_args.world_size,
            "distributed_type": trainer.accelerator.distributed_type.value,  # NO, MULTI_CPU, DEEPSPEED, FSDP, ...
        }
        (out / "cllmfs_run.json").write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if script_args.evaluate_on:
            metrics = evaluate_run(out, script_args.evaluate_on, script_args.eval_query_size,
                                   data_dir=script_args.data_dir)
            for name, scores in metrics.items():
                print(f"{name}: span micro-F1 {scores['span']['f1']:.4f} on {scores['query_size']} test sentences")
    return trainer


def parse(argv: list[str]) -> tuple[ScriptArguments, ContrastiveSFTConfig, ModelConfig]:
    """TRL's parser, plus the recipe YAML as an optional first positional argument."""
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    return TrlParser((ScriptArguments, ContrastiveSFTConfig, ModelConfig)).parse_args_and_config(argv)


if __name__ == "__main__":
    main(*parse(sys.argv[1:]))
