"""Train CLLMFS from a recipe:  accelerate launch recipes/train.py recipes/<setting>.yaml [--key value ...]

The YAML may be given as the first argument (or as `--config FILE`, TRL's own way); `--key value` flags override it.
Keys belong to `ScriptArguments` below, `ContrastiveSFTConfig` (all of TRL's SFTConfig plus `cl_*`) or TRL's
`ModelConfig` (model, LoRA, 4-bit loading); an unknown key is an error.

Every key and file is checked before the model loads. A mistake ends with one line on stderr and exit code 2;
`--debug` (or CLLMFS_DEBUG=1) adds the traceback. `--resume_from_checkpoint true` resumes from the latest
`checkpoint-<step>` folder in `output_dir`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import math
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from cllmfs_trainer.command_line import run_entry_point
from cllmfs_trainer.data import build_sft_dataset, get_dataset, make_task
from cllmfs_trainer.data.format import ANSWER_FORMATS, PROMPT_FORMATS
from cllmfs_trainer.data.prior import (
    PRIOR_MIX,
    build_prior_samples,
    draw_prior,
    load_prior_corpora,
    prior_splits,
    prior_type_ids,
    prior_types,
)
from cllmfs_trainer.data.sft import samples_to_dataset
from cllmfs_trainer.errors import MissingFileError, UsageError, UserError
from cllmfs_trainer.evaluation.scoring import evaluate_run
from cllmfs_trainer.files import check_input_file, check_output_dir
from cllmfs_trainer.locks import claim_folder
from cllmfs_trainer.models import load_model, load_tokenizer
from cllmfs_trainer.models.loading import check_model_reference
from cllmfs_trainer.models.priors import SHIPPED_PRIOR, resolve_init_adapter
from cllmfs_trainer.run_folder import RUN_FILE, RunFolder
from cllmfs_trainer.scripts.yaml_config import at, check_known_keys, check_value_types, field_hints, load_yaml_mapping
from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.training.checkpoints import checkpoint_problem, latest_complete_checkpoint
from cllmfs_trainer.training.cpu.auto_choices import apply_auto_choices, resolve_auto_choices

PROG = "train.py"
KEYS_HINT = "keys belong to ScriptArguments, ContrastiveSFTConfig or ModelConfig (see --help)"
# Values of `resume_from_checkpoint` that mean "the latest checkpoint in output_dir", as `Trainer.train(True)` does.
RESUME_LATEST = ("true", "yes", "1", "latest")
RESUME_NEVER = ("false", "no", "0", "none", "")


@dataclass
class ScriptArguments:
    """What to train on and what to do after training; the rest of a recipe is `ContrastiveSFTConfig` and
    `ModelConfig`."""

    dataset: str = field(default="wnut17", metadata={"help": "Registry key of the (target) dataset."})
    setting: str = field(
        default="intra",
        metadata={
            "help": "intra, inter (support set from OntoNotes), or prior: general NER training on the corpora of "
            "`prior_corpora` (the NER prior, cllmfs_trainer.data.prior), with no support set."
        },
    )
    k: int = field(default=5, metadata={"help": "Shots per type."})
    n_types: list[str] | None = field(default=None, metadata={"help": "Labels of an N-way subset; all by default."})
    support_seed: int = field(default=0, metadata={"help": "Seed of the support-set sample."})
    support_set: str | None = field(default=None, metadata={"help": "Use this BIO file as the support set."})
    types_file: str | None = field(default=None, metadata={"help": "YAML overriding/extending type descriptions."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of non-shipped datasets ($CLLMFS_DATA_DIR)."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace a finished run folder in output_dir; without it such a folder is refused."},
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Start from this LoRA adapter and keep training it instead of a fresh LoRA: `prior` (the NER prior "
            "shipped for the default model) or a run folder. Its rank and targets replace the recipe's lora_* keys."
        },
    )
    prior_corpora: list[str] | None = field(
        default=None,
        metadata={"help": "setting prior: registry keys of the general-NER corpora; all of PRIOR_MIX by default."},
    )
    prior_sentences: int = field(
        default=4000,
        metadata={"help": "setting prior: sentences drawn from the corpora in all (shared by size ** 0.5)."},
    )
    prior_absent_ratio: float = field(
        default=1.0,
        metadata={
            "help": "setting prior: absent types asked per present type, drawn from the sentence's own corpus only."
        },
    )
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
    type_descriptions: bool = field(
        default=True,
        metadata={
            "help": "Give each type's description in its instruction (the paper). False asks for the type by its name "
            "alone: a shorter prompt for every sample and prediction. Prediction follows the run folder's choice."
        },
    )
    answer_format: str = field(
        default="marked",
        metadata={
            "help": "marked: the paper's answer, ' <<< X >>>' per entity (default). pointer: ' X >>>', without the "
            "opening marker, so the first answer token is the entity's own first word or the end: a small model then "
            "learns the entity / no-entity decision together with where the entity is."
        },
    )
    end_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Prediction threshold saved in the run folder: subtracted from the score of ending an answer where "
            "another entity could start (nats; above 0 trades precision for recall). `cllmfs predict`, the "
            "benchmark and `evaluate_on` use it. Choose it on dev data (experiments/end_penalty.py)."
        },
    )
    one_type_per_span: bool = field(
        default=False,
        metadata={
            "help": "Prediction option saved in the run folder: where one span comes back under several types (each "
            "type is asked alone), keep the type whose prompt gave the highest log-odds of naming it at the first "
            "answer token. Needs answer_format pointer. Choose it on dev data (experiments/end_penalty.py)."
        },
    )
    evaluate_on: list[str] | None = field(
        default=None,
        metadata={
            "help": "After training, predict and score these datasets (each with its own types) into metrics.json in "
            "the run folder, e.g. the dataset itself, or an INTER run's targets."
        },
    )
    eval_split: str = field(
        default="test",
        metadata={"help": "The split `evaluate_on` scores: test (to report) or dev (to choose settings on)."},
    )
    eval_query_size: int | None = field(
        default=None,
        metadata={"help": "Score a fixed random subset of this many sentences per dataset instead of the whole split."},
    )
    eval_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the `evaluate_on` predictions: auto (on a CPU the faster of bfloat16 and float32 by "
            "a matmul probe, elsewhere as loaded), float32 or bfloat16.",
            "choices": ["auto", "float32", "bfloat16"],
        },
    )


ARGUMENT_CLASSES = (ScriptArguments, ContrastiveSFTConfig, ModelConfig)


class RecipeParser(TrlParser):
    """`TrlParser` whose command-line errors raise `UsageError` (one line) instead of printing the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {PROG} --help)")


def make_parser() -> TrlParser:
    """TRL's parser over the three argument dataclasses, as in `trl/scripts/sft.py`."""
    return RecipeParser(ARGUMENT_CLASSES)


def _check_recipe(parser: TrlParser, recipe: str) -> None:
    """Refuse a recipe with duplicate or unknown keys or values of the wrong type, naming its line."""
    data, lines = load_yaml_mapping(recipe, "recipe")
    known = {action.dest for action in parser._actions} - {"help", "config"} | {"env"}  # TRL reads `env` itself
    check_known_keys(data, known, recipe, lines, KEYS_HINT)
    check_value_types(data, field_hints(*ARGUMENT_CLASSES), recipe, lines)
    # argparse checks `choices` on the command line only; a recipe's values become defaults, which it never checks.
    actions = {action.dest: action for action in parser._actions}
    for key, value in data.items():
        choices = getattr(actions.get(key), "choices", None)
        if not choices:
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is None:  # an optional field left unset
                continue
            convert = actions[key].type if isinstance(item, str) and callable(actions[key].type) else None
            try:
                item = convert(item) if convert else item
            except (TypeError, ValueError):
                pass
            if item not in choices:
                choices_text = ", ".join(str(getattr(c, "value", c)) for c in choices)
                raise UsageError(f"{at(recipe, lines, key)}: {item!r} is not one of {choices_text}")


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, ContrastiveSFTConfig, ModelConfig]:
    """Parse `argv` (default: `sys.argv[1:]`), taking a recipe YAML as an optional first positional argument.

    Raises:
        `UserError`: naming the recipe's line or the option: a missing or unreadable recipe, a duplicate or unknown key,
            a value of the wrong type, or one the argument classes refuse.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    parser = make_parser()
    recipe = None
    if argv.count("--config") > 1:
        raise UsageError("--config is given twice; give one recipe")
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UsageError("--config needs a recipe file")
        recipe = argv[index + 1]
        _check_recipe(parser, recipe)
    options = set(parser._option_string_actions) | {"--config"}
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in options:
            close = difflib.get_close_matches(name, sorted(options), n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UsageError(f"{name}: unknown option; {hint}{KEYS_HINT}")
    try:
        with warnings.catch_warnings():
            # TRL's SFTConfig sets `gradient_checkpointing` itself, which transformers reports as deprecated on
            # every run; it is not something a recipe can fix.
            warnings.filterwarnings("ignore", message="`gradient_checkpointing", category=FutureWarning)
            return parser.parse_args_and_config(argv)
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # the argument classes' own checks (`__post_init__`)
        raise UsageError(f"{recipe + ': ' if recipe else ''}{err}") from None


def _as_list(value: list[str] | str | None) -> list[str] | None:
    # A YAML string given for a list key reaches the dataclass as it is (argparse does not split defaults).
    return [value] if isinstance(value, str) else value


def resolve_resume(training_args: ContrastiveSFTConfig) -> str | None:
    """The checkpoint folder `resume_from_checkpoint` names: `true` means the latest one in `output_dir`.

    Raises:
        `UserError`: when there is no checkpoint to resume from.
    """
    value = training_args.resume_from_checkpoint
    if value is None or isinstance(value, bool):
        value = "true" if value else None
    if value is None or value.strip().lower() in RESUME_NEVER:
        return None
    output_dir = training_args.output_dir
    if value.strip().lower() in RESUME_LATEST:
        last = latest_complete_checkpoint(output_dir)
        if last is None:
            raise UserError(
                f"resume_from_checkpoint: true, but output_dir {output_dir} holds no complete checkpoint-<step> "
                "folder to resume from; drop the option to start afresh, or give a checkpoint folder"
            )
        return last
    if not Path(value).is_dir():
        raise MissingFileError(
            f"resume_from_checkpoint: {value} is not a checkpoint folder; give one (output_dir/checkpoint-<step>), "
            "or true for the latest one in output_dir"
        )
    problem = checkpoint_problem(value)
    if problem is not None:
        raise UserError(f"resume_from_checkpoint: {value} is incomplete ({problem}); give a complete checkpoint")
    return value


def check_arguments(script_args: ScriptArguments, training_args: ContrastiveSFTConfig, model_args: ModelConfig) -> None:
    """Check every key and file a training needs before anything loads, so a mistake costs seconds, not a model load.

    Also turns a string given for a list key into a one-item list and `resume_from_checkpoint: true` into the
    latest checkpoint's folder.

    Raises:
        `UserError`: naming the key (and file) at fault and what it accepts.
    """
    script_args.n_types = _as_list(script_args.n_types)
    script_args.evaluate_on = _as_list(script_args.evaluate_on)
    for name in ("k", "repeat_entity_samples"):
        value = getattr(script_args, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if script_args.eval_query_size is not None and script_args.eval_query_size < 1:
        raise UsageError(f"eval_query_size must be an integer >= 1 or null, got {script_args.eval_query_size!r}")
    if script_args.prompt_format not in PROMPT_FORMATS:
        raise UsageError(f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {script_args.prompt_format!r}")
    if script_args.answer_format not in ANSWER_FORMATS:
        raise UsageError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {script_args.answer_format!r}")
    if not math.isfinite(script_args.end_penalty):
        raise UsageError(f"end_penalty must be a finite number, got {script_args.end_penalty!r}")
    if script_args.one_type_per_span and script_args.answer_format != "pointer":
        raise UsageError("one_type_per_span needs answer_format pointer: its scores come from the answer's first token")
    if str(script_args.setting).lower() not in ("intra", "inter", "prior"):
        raise UsageError(f"setting must be 'intra', 'inter' or 'prior', got {script_args.setting!r}")
    script_args.prior_corpora = _as_list(script_args.prior_corpora)
    if not isinstance(script_args.prior_sentences, int) or script_args.prior_sentences < 1:
        raise UsageError(f"prior_sentences must be an integer >= 1, got {script_args.prior_sentences!r}")
    if not math.isfinite(script_args.prior_absent_ratio) or script_args.prior_absent_ratio < 0:
        raise UsageError(f"prior_absent_ratio must be a finite number >= 0, got {script_args.prior_absent_ratio!r}")
    for key in script_args.prior_corpora or ():
        prior_splits(get_dataset(key))  # unknown names, evaluation targets
    if script_args.init_adapter is not None:
        script_args.init_adapter = str(resolve_init_adapter(script_args.init_adapter, model_args.model_name_or_path))
    if script_args.data_dir is not None and not Path(script_args.data_dir).is_dir():
        raise MissingFileError(f"data_dir {script_args.data_dir} is not an existing folder")
    for name in ("support_set", "types_file"):
        if getattr(script_args, name) is not None:
            check_input_file(getattr(script_args, name), name)
    dataset = get_dataset(script_args.dataset, types_file=script_args.types_file)  # unknown names, bad types file
    if script_args.eval_split not in ("test", "dev"):
        raise UsageError(f"eval_split must be 'test' or 'dev', got {script_args.eval_split!r}")
    for name in script_args.evaluate_on or ():
        target = get_dataset(name)
        if script_args.eval_split not in target.splits:
            raise UsageError(f"evaluate_on {name}: the dataset has no {script_args.eval_split} split")
    if script_args.n_types is not None and script_args.setting.lower() != "prior":
        source = dataset if script_args.setting.lower() == "intra" else get_dataset("ontonotes5")
        for label in script_args.n_types:
            source.type(label)
    for name in ("weight_decay", "num_train_epochs"):
        if getattr(training_args, name) < 0:
            raise UsageError(f"{name} must be >= 0, got {getattr(training_args, name)!r}")
    if model_args.use_peft and (not isinstance(model_args.lora_r, int) or model_args.lora_r < 1):
        raise UsageError(f"lora_r must be an integer >= 1, got {model_args.lora_r!r}")
    if model_args.use_peft and not (math.isfinite(model_args.lora_alpha) and model_args.lora_alpha > 0):
        raise UsageError(f"lora_alpha must be > 0, got {model_args.lora_alpha!r}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(training_args, name)!r}")
    if training_args.max_length is not None and training_args.max_length < 1:
        raise UsageError(f"max_length must be >= 1 or null, got {training_args.max_length!r}")
    check_output_dir(training_args.output_dir, "output_dir")
    training_args.resume_from_checkpoint = resolve_resume(training_args)
    if training_args.resume_from_checkpoint is None and not script_args.overwrite:
        if RunFolder.exists(training_args.output_dir):
            raise UsageError(
                f"output_dir {training_args.output_dir} holds a finished run ({RUN_FILE}); pass --overwrite true to "
                "replace it, or choose another output_dir"
            )
    model = model_args.model_name_or_path
    if model is not None:
        check_model_reference(model, "model_name_or_path", weights=True)
    _check_cl_layer(training_args, model)


def _check_cl_layer(training_args: ContrastiveSFTConfig, model: str | None) -> None:
    """An integer `cl_layer` past the model's depth, found from its config rather than after loading its weights."""
    if training_args.cl_weight <= 0 or training_args.cl_layer < 1:
        return  # no contrastive term, or a fraction of the depth: any model fits
    from transformers import AutoConfig

    from cllmfs_trainer.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model))
    depth = getattr(getattr(config, "text_config", config), "num_hidden_layers", None)
    if isinstance(depth, int):
        try:
            training_args.resolve_cl_layer(depth)
        except ValueError as err:  # names the range, and a fraction of the depth to use instead
            raise UsageError(str(err)) from None


def main(
    script_args: ScriptArguments, training_args: ContrastiveSFTConfig, model_args: ModelConfig
) -> ContrastiveSFTTrainer:
    """Sample (or read) the support set, train on it, write the run folder, and score it if asked.

    Returns:
        `ContrastiveSFTTrainer`: the trainer, after training.
    """
    check_arguments(script_args, training_args, model_args)
    # One writer per run folder: a second training into it stops here with one line naming the first.
    claim = claim_folder(training_args.output_dir) if PartialState().is_main_process else contextlib.nullcontext()
    with claim:
        return _train(script_args, training_args, model_args)


def _train(
    script_args: ScriptArguments, training_args: ContrastiveSFTConfig, model_args: ModelConfig
) -> ContrastiveSFTTrainer:
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    if script_args.setting.lower() == "prior":
        task = None
        train_dataset, prior = _prior_dataset(script_args, training_args, tokenizer)
    else:
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

        # The adapter's own rank and targets; PEFT loads its weights in float32 (master weights for training).
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
        run = RunFolder(
            path=training_args.output_dir,
            base_model=model_args.model_name_or_path or "default",
            weights="adapter" if model_args.use_peft else "full",
            prompt_format=script_args.prompt_format,
            answer_format=script_args.answer_format,
            type_descriptions=script_args.type_descriptions,
            end_penalty=script_args.end_penalty,
            one_type_per_span=script_args.one_type_per_span,
            setting=task.setting if task else "prior",
            dataset=dataset.key if task else PRIOR_DATASET,
            k=script_args.k if task else 0,
            train_types=list(task.train_types) if task else prior["types"],
            test_types=list(task.test_types) if task else prior["types"],
            cl_layer=trainer.cl_layer,
            world_size=training_args.world_size,
            distributed_type=trainer.accelerator.distributed_type.value,  # NO, MULTI_CPU, DEEPSPEED, FSDP, ...
            extra={
                "train_steps": trainer.state.global_step,
                "support_fit": trainer.support_fit_callback.history,
                **({"init_adapter": _adapter_record(script_args.init_adapter)} if script_args.init_adapter else {}),
                **({"prior": prior["record"]} if task is None else {}),
            },
        )
        if task is not None:
            task.support.save(run.support_file)
        run.save()
        if script_args.evaluate_on:
            metrics = evaluate_run(
                run.path,
                script_args.evaluate_on,
                script_args.eval_query_size,
                data_dir=script_args.data_dir,
                split=script_args.eval_split,
                dtype=script_args.eval_dtype,
            )
            for name, scores in metrics.items():
                print(
                    f"{name}: span micro-F1 {scores['span']['f1']:.4f} on {scores['query_size']} "
                    f"{script_args.eval_split} sentences"
                )
    return trainer


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
    }
    return dataset, {"types": prior_types(corpora), "record": record}


def _adapter_record(path: str) -> dict[str, Any]:
    """What the run record says of its starting adapter: where it was, and the sha256 of its weights."""
    weights = Path(path) / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"path": path, "shipped_prior": Path(path).resolve() == SHIPPED_PRIOR.resolve(), "sha256": digest}


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `recipes/train.py`: exits with 2 after one line on stderr for a mistake in the recipe or files.

    Args:
        argv (`list[str]`, *optional*):
            The arguments; `sys.argv[1:]` by default.
    """
    # `--debug VALUE` is transformers' own `debug` option; only a bare `--debug` asks for tracebacks.
    code = run_entry_point(PROG, lambda rest: main(*parse_args(rest)), argv, keep_debug_with_value=True)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    cli()
