"""Train CLLMFS from a recipe:  accelerate launch recipes/train.py recipes/<setting>.yaml [--key value ...]

The YAML may be given as the first argument (or as `--config FILE`, TRL's own way); `--key value` flags override it.
Keys belong to `ScriptArguments` below, `ContrastiveSFTConfig` (all of TRL's SFTConfig plus `cl_*`) or TRL's
`ModelConfig` (model, LoRA, 4-bit loading); an unknown key is an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from cllmfs_trainer.data import build_sft_dataset, get_dataset, make_task
from cllmfs_trainer.evaluation.scoring import evaluate_run
from cllmfs_trainer.models import load_model, load_tokenizer
from cllmfs_trainer.run_folder import RunFolder
from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer


@dataclass
class ScriptArguments:
    """What to train on and what to do after training; the rest of a recipe is `ContrastiveSFTConfig` and
    `ModelConfig`."""

    dataset: str = field(default="wnut17", metadata={"help": "Registry key of the (target) dataset."})
    setting: str = field(default="intra", metadata={"help": "intra, or inter (support set from OntoNotes)."})
    k: int = field(default=5, metadata={"help": "Shots per type."})
    n_types: list[str] | None = field(default=None, metadata={"help": "Labels of an N-way subset; all by default."})
    support_seed: int = field(default=0, metadata={"help": "Seed of the support-set sample."})
    support_set: str | None = field(default=None, metadata={"help": "Use this BIO file as the support set."})
    types_file: str | None = field(default=None, metadata={"help": "YAML overriding/extending type descriptions."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of non-shipped datasets ($CLLMFS_DATA_DIR)."})
    repeat_entity_samples: int = field(
        default=1,
        metadata={
            "help": "Repeat every SFT sample that has entities this many times (1 = the paper). Rebalances the "
            "entity / no-entity decision, which small models otherwise learn as 'no entity' everywhere."
        },
    )
    prompt_format: int = field(
        default=1,
        metadata={
            "help": "1: instruction, then sentence (default). 2: sentence first, then the instruction: the type sits "
            "right before the answer, and prediction reuses each sentence's key/value cache across types."
        },
    )
    evaluate_on: list[str] | None = field(
        default=None,
        metadata={
            "help": "After training, predict and score these datasets' test splits (each with its own types) into "
            "metrics.json in the run folder, e.g. the dataset itself, or an INTER run's targets."
        },
    )
    eval_query_size: int | None = field(
        default=None,
        metadata={
            "help": "Score a fixed random subset of this many test sentences per dataset instead of the whole split."
        },
    )


def make_parser() -> TrlParser:
    """TRL's parser over the three argument dataclasses, as in `trl/scripts/sft.py`."""
    return TrlParser((ScriptArguments, ContrastiveSFTConfig, ModelConfig))


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, ContrastiveSFTConfig, ModelConfig]:
    """Parse `argv` (default: `sys.argv[1:]`), taking a recipe YAML as an optional first positional argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    return make_parser().parse_args_and_config(argv)


def main(
    script_args: ScriptArguments, training_args: ContrastiveSFTConfig, model_args: ModelConfig
) -> ContrastiveSFTTrainer:
    """Sample (or read) the support set, train on it, write the run folder, and score it if asked.

    Returns:
        `ContrastiveSFTTrainer`: the trainer, after training.
    """
    dataset = get_dataset(script_args.dataset, types_file=script_args.types_file)
    task = make_task(
        script_args.setting,
        dataset,
        script_args.k,
        script_args.support_seed,
        n_types=script_args.n_types,
        data_dir=script_args.data_dir,
        support_set=script_args.support_set,
    )

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_dataset = build_sft_dataset(
        task.support.sentences,
        task.train_types,
        tokenizer,
        training_args.max_length,
        repeat_entity_samples=script_args.repeat_entity_samples,
        prompt_format=script_args.prompt_format,
    )
    quantization = get_quantization_config(model_args)
    model = load_model(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        quantization_config=quantization,
        # a quantized model is placed at load time, one copy per process
        device_map={"": str(PartialState().device)} if quantization else None,
        attn_implementation=model_args.attn_implementation,
    )

    trainer = ContrastiveSFTTrainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    metrics = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint).metrics
    if torch.cuda.is_available():  # this process's peak, weights included (bench/gpu/gpu_check.sh reports it)
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    trainer.save_metrics("train", metrics)  # train_results.json in the run folder

    if trainer.is_fsdp_enabled:  # gather the sharded adapter into one file, as PEFT's FSDP examples do
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        run = RunFolder(
            path=training_args.output_dir,
            base_model=model_args.model_name_or_path or "default",
            weights="adapter" if model_args.use_peft else "full",
            prompt_format=script_args.prompt_format,
            setting=task.setting,
            dataset=dataset.key,
            k=script_args.k,
            train_types=list(task.train_types),
            test_types=list(task.test_types),
            cl_layer=trainer.cl_layer,
            world_size=training_args.world_size,
            distributed_type=trainer.accelerator.distributed_type.value,  # NO, MULTI_CPU, DEEPSPEED, FSDP, ...
            extra={"train_steps": trainer.state.global_step, "support_fit": trainer.support_fit_callback.history},
        )
        task.support.save(run.support_file)
        run.save()
        if script_args.evaluate_on:
            metrics = evaluate_run(
                run.path, script_args.evaluate_on, script_args.eval_query_size, data_dir=script_args.data_dir
            )
            for name, scores in metrics.items():
                print(f"{name}: span micro-F1 {scores['span']['f1']:.4f} on {scores['query_size']} test sentences")
    return trainer


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `recipes/train.py`."""
    main(*parse_args(argv))


if __name__ == "__main__":
    cli()
