"""The training script's arguments: `ScriptArguments` (checked in `__post_init__`), the recipe parser, and the checks
of every file, dataset and model a recipe names, all before anything loads.

A recipe YAML may be given as the first argument (or as `--config FILE`, TRL's own way); `--key value` flags override
it. Keys belong to `ScriptArguments`, `DecodingConfig` (prediction's defaults, saved in the run folder),
`ContrastiveSFTConfig` (all of TRL's SFTConfig plus `cl_*`) or TRL's `ModelConfig` (model, LoRA, 4-bit loading); an
unknown key is an error naming the recipe's line.
"""

from __future__ import annotations

import difflib
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser

from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.format import ANSWER_FORMATS, PROMPT_FORMATS
from cllmfs_trainer.data.prior import prior_splits
from cllmfs_trainer.data.registry import load_types_file
from cllmfs_trainer.decoding_config import DecodingConfig
from cllmfs_trainer.errors import MissingFileError, UsageError, UserError
from cllmfs_trainer.files import check_input_file, check_output_dir
from cllmfs_trainer.models import resolve_model
from cllmfs_trainer.models.loading import check_model_reference
from cllmfs_trainer.models.priors import resolve_init_adapter
from cllmfs_trainer.run_folder import RUN_FILE, RunFolder
from cllmfs_trainer.scripts.yaml_config import at, check_known_keys, check_value_types, field_hints, load_yaml_mapping
from cllmfs_trainer.training import ContrastiveSFTConfig
from cllmfs_trainer.training.checkpoints import checkpoint_problem, latest_complete_checkpoint

PROG = "train.py"
KEYS_HINT = "keys belong to ScriptArguments, DecodingConfig, ContrastiveSFTConfig or ModelConfig (see --help)"
# Keys of the evaluation that training once ran at its end, and the `cllmfs evaluate` option each became.
EVALUATE_KEYS = {
    "evaluate_on": "--dataset",
    "eval_split": "--split",
    "eval_query_size": "--query-size",
    "eval_dtype": "--dtype",
}
# Values of `resume_from_checkpoint` that mean "the latest checkpoint in output_dir", as `Trainer.train(True)` does.
RESUME_LATEST = ("true", "yes", "1", "latest")
RESUME_NEVER = ("false", "no", "0", "none", "")


@dataclass
class ScriptArguments:
    """What to train on and how its samples are written; the rest of a recipe is `DecodingConfig`,
    `ContrastiveSFTConfig` and `ModelConfig`."""

    dataset: str = field(default="wnut17", metadata={"help": "Registry key of the (target) dataset."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Train on every example of this file of your own (JSONL, CoNLL/BIO, doccano, Label Studio, "
            ".spacy; see cllmfs_trainer.data.readers) instead of a sampled support set; `dataset` is then not used. "
            "Its labels are the types; `types_file` describes them."
        },
    )
    dev_file: str | None = field(
        default=None,
        metadata={"help": "Labelled examples that `cllmfs train` scores the run on after training (metrics.json)."},
    )
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
    init_adapter_merge: bool = field(
        default=False,
        metadata={
            "help": "Merge init_adapter into the base weights and train a fresh LoRA (the recipe's lora_* keys) on "
            "top, instead of continuing it. The run saves both stacked as one adapter (rank: the two added)."
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

    def __post_init__(self) -> None:
        # The values alone; the files, datasets and model they name are checked by `check_arguments`.
        self.n_types = _as_list(self.n_types)
        for name in ("k", "repeat_entity_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise UsageError(f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.answer_format not in ANSWER_FORMATS:
            raise UsageError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {self.answer_format!r}")
        if str(self.setting).lower() not in ("intra", "inter", "prior"):
            raise UsageError(f"setting must be 'intra', 'inter' or 'prior', got {self.setting!r}")
        self.prior_corpora = _as_list(self.prior_corpora)
        if not isinstance(self.prior_sentences, int) or self.prior_sentences < 1:
            raise UsageError(f"prior_sentences must be an integer >= 1, got {self.prior_sentences!r}")
        if not math.isfinite(self.prior_absent_ratio) or self.prior_absent_ratio < 0:
            raise UsageError(f"prior_absent_ratio must be a finite number >= 0, got {self.prior_absent_ratio!r}")


ARGUMENT_CLASSES = (ScriptArguments, DecodingConfig, ContrastiveSFTConfig, ModelConfig)


class RecipeParser(TrlParser):
    """`TrlParser` whose command-line errors raise `UsageError` (one line) instead of printing the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {PROG} --help)")


def make_parser() -> TrlParser:
    """TRL's parser over the four argument dataclasses, as in `trl/scripts/sft.py`."""
    return RecipeParser(ARGUMENT_CLASSES)


def _check_recipe(parser: TrlParser, recipe: str) -> None:
    """Refuse a recipe with duplicate or unknown keys or values of the wrong type, naming its line."""
    data, lines = load_yaml_mapping(recipe, "recipe")
    known = {action.dest for action in parser._actions} - {"help", "config"} | {"env"}  # TRL reads `env` itself
    for key in data:
        if key in EVALUATE_KEYS:
            raise UsageError(f"{at(recipe, lines, key)}: unknown key; {_evaluate_hint(key)}")
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


def _evaluate_hint(key: str) -> str:
    """What to do instead of a key of the evaluation that training no longer runs."""
    return (
        f"training no longer scores its run: after it, run `cllmfs evaluate --run OUTPUT_DIR --dataset D` "
        f"({key} is its {EVALUATE_KEYS[key]})"
    )


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ScriptArguments, DecodingConfig, ContrastiveSFTConfig, ModelConfig]:
    """Parse `argv` (default: `sys.argv[1:]`), taking a recipe YAML as an optional first positional argument.

    Returns:
        `tuple`: one instance of each of `ARGUMENT_CLASSES`, in that order.

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
        if name.startswith("--") and name[2:] in EVALUATE_KEYS:
            raise UsageError(f"{name}: unknown option; {_evaluate_hint(name[2:])}")
        if name.startswith("--") and name not in options:
            close = difflib.get_close_matches(name, sorted(options), n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UsageError(f"{name}: unknown option; {hint}{KEYS_HINT}")
    try:
        with warnings.catch_warnings():
            # TRL's SFTConfig sets `gradient_checkpointing` itself, which transformers reports as deprecated on
            # every run; it is not something a recipe can fix.
            warnings.filterwarnings("ignore", message="`gradient_checkpointing", category=FutureWarning)
            arguments = parser.parse_args_and_config(argv)
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # the argument classes' own checks (`__post_init__`)
        raise UsageError(f"{recipe + ': ' if recipe else ''}{err}") from None
    check_decoding(arguments[0], arguments[1])
    return arguments


def check_decoding(script_args: ScriptArguments, decoding_args: DecodingConfig) -> None:
    """The decoding defaults against the training format they will decode (two argument classes, checked together).

    Raises:
        `UsageError`: `one_type_per_span` on answers other than pointer ones.
    """
    if decoding_args.one_type_per_span and script_args.answer_format != "pointer":
        raise UsageError("one_type_per_span needs answer_format pointer: its scores come from the answer's first token")


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


def check_arguments(
    script_args: ScriptArguments,
    decoding_args: DecodingConfig,
    training_args: ContrastiveSFTConfig,
    model_args: ModelConfig,
) -> None:
    """Check every key and file a training needs before anything loads, so a mistake costs seconds, not a model load.

    The values alone are checked when the arguments are made (`ScriptArguments.__post_init__`, the config classes'
    own); this checks what they name, and the classes together (`check_decoding`: arguments changed after parsing, as
    the benchmark's overrides are, are checked again here). Also turns `resume_from_checkpoint: true` into the latest
    checkpoint's folder.

    Raises:
        `UserError`: naming the key (and file) at fault and what it accepts.
    """
    for key in script_args.prior_corpora or ():
        prior_splits(get_dataset(key))  # unknown names, evaluation targets
    if script_args.init_adapter is not None:
        script_args.init_adapter = str(resolve_init_adapter(script_args.init_adapter, model_args.model_name_or_path))
    if script_args.init_adapter_merge:
        if script_args.init_adapter is None:
            raise UsageError("init_adapter_merge: true needs init_adapter (the adapter to merge into the base)")
        if not model_args.use_peft or model_args.use_dora:
            raise UsageError("init_adapter_merge: true trains a fresh plain LoRA on top: use_peft true, use_dora false")
    if script_args.data_dir is not None and not Path(script_args.data_dir).is_dir():
        raise MissingFileError(f"data_dir {script_args.data_dir} is not an existing folder")
    for name in ("support_set", "types_file", "train_file", "dev_file"):
        if getattr(script_args, name) is not None:
            check_input_file(getattr(script_args, name), name)
    check_decoding(script_args, decoding_args)
    if script_args.train_file is not None:
        if script_args.setting.lower() != "intra" or script_args.support_set is not None:
            raise UsageError("train_file: the file is the training data; it goes with setting intra and no support_set")
        if script_args.types_file is not None:
            load_types_file(script_args.types_file)  # a bad types file fails before the model loads
    else:
        dataset = get_dataset(script_args.dataset, types_file=script_args.types_file)  # unknown names, bad types
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

    config = AutoConfig.from_pretrained(resolve_model(model))
    depth = getattr(getattr(config, "text_config", config), "num_hidden_layers", None)
    if isinstance(depth, int):
        try:
            training_args.resolve_cl_layer(depth)
        except ValueError as err:  # names the range, and a fraction of the depth to use instead
            raise UsageError(str(err)) from None
