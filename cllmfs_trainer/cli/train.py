"""`cllmfs train RECIPE.yaml [--key value ...]`: train a run folder from a recipe; or, on your own files,
`cllmfs train --train my.jsonl [--dev dev.jsonl] [--types my_types.yaml] --output RUN [RECIPE.yaml] [--key value]`.

Every key of the recipe can be overridden on the command line (`cllmfs train RECIPE.yaml --help` lists them). On
several processes: `accelerate launch -m cllmfs_trainer.cli train RECIPE.yaml`, or the recipe script
`accelerate launch recipes/train.py RECIPE.yaml`, which runs the same code.

`--train` is the recipe key `train_file` (every example is trained on), `--types` is `types_file`, `--output` is
`output_dir`. Without a recipe, the shipped CPU recipe for the default model (`OWN_FILES_RECIPE`), started from the
NER prior. With `--dev` (the key `dev_file`), the run is scored on that file after training (`metrics.json`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cllmfs_trainer.command_line import run_entry_point
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.evaluation.scoring import evaluate_run
from cllmfs_trainer.models.priors import PRIOR_START

PROG = "cllmfs train"
HELP = "train a run folder from a recipe YAML (its keys: cllmfs train RECIPE.yaml --help), or on your own files"
# The recipe of `cllmfs train --train FILE` without one: the CPU recipe, started from the NER prior as chosen on dev
# (docs/training.md).
OWN_FILES_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2" / "wnut17_intra.yaml"
OWN_FILES_DEFAULTS = [arg for key, value in PRIOR_START.items() for arg in (f"--{key}", str(value).lower())]
SHORT_OPTIONS = {
    "--train": "--train_file",
    "--dev": "--dev_file",
    "--types": "--types_file",
    "--output": "--output_dir",
}


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """List `train` among `cllmfs`'s jobs; its arguments are the recipe's keys, parsed by `main`."""
    parser = subparsers.add_parser("train", help=HELP, description=HELP, add_help=False)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="RECIPE.yaml, then --key value overrides")
    return parser


def own_files_argv(argv: list[str]) -> list[str]:
    """The recipe command line of `--train FILE ...`: the short options as recipe keys, the default recipe first
    when none is given. Other command lines are returned as they are."""
    if "--train" not in argv:
        return argv
    rest = [SHORT_OPTIONS.get(arg, arg) for arg in argv]
    # A recipe is a YAML file that is not an option's value (`--types my_types.yaml` is one); it goes first.
    recipes = [i for i, arg in enumerate(rest) if arg.endswith((".yaml", ".yml")) and (i == 0 or rest[i - 1][0] != "-")]
    if recipes:
        return [rest[recipes[0]], *rest[: recipes[0]], *rest[recipes[0] + 1 :]]
    if not OWN_FILES_RECIPE.is_file():
        raise UsageError(f"the default recipe {OWN_FILES_RECIPE} is not here; give a recipe YAML after --train FILE")
    if "--output_dir" not in rest:
        raise UsageError("--train needs --output RUN_DIR: the folder to write the run to")
    return [str(OWN_FILES_RECIPE), *OWN_FILES_DEFAULTS, *rest]


def main(argv: list[str]) -> int:
    """Parse the recipe and its overrides, train, and return the exit code (2 after one line for a user error).

    Args:
        argv (`list[str]`):
            The recipe, then `--key value` overrides.
    """

    def body(rest: list[str]) -> None:
        rest = own_files_argv(rest)
        if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
            # Without a recipe every key would take its default: a long training nobody asked for.
            raise UsageError(f"give a recipe YAML first, e.g. {PROG} recipes/smollm2/wnut17_intra.yaml")
        # Heavy (torch, transformers and trl): `cllmfs --help` and the other jobs start without them.
        from cllmfs_trainer.scripts import train

        arguments = train.parse_args(rest)
        trainer = train.main(*arguments)
        dev_file = arguments[0].dev_file
        if dev_file is not None and trainer.accelerator.is_main_process:
            scores = evaluate_run(trainer.args.output_dir, [], files=[dev_file])[str(dev_file)]["span"]
            print(
                f"{dev_file}: span micro-F1 {scores['f1']:.4f} (P {scores['precision']:.4f}, R {scores['recall']:.4f})"
            )

    # `--debug VALUE` is transformers' own `debug` option; only a bare `--debug` asks for tracebacks.
    return run_entry_point(PROG, body, argv, keep_debug_with_value=True)
