"""`cllmfs train RECIPE.yaml [--key value ...]`: train a run folder from a recipe.

Every key of the recipe can be overridden on the command line (`cllmfs train RECIPE.yaml --help` lists them). On
several processes: `accelerate launch -m cllmfs_trainer.cli train RECIPE.yaml`, or the recipe script
`accelerate launch recipes/train.py RECIPE.yaml`, which runs the same code.
"""

from __future__ import annotations

import argparse

from cllmfs_trainer.command_line import run_entry_point
from cllmfs_trainer.errors import UsageError

PROG = "cllmfs train"
HELP = "train a run folder from a recipe YAML (its keys: cllmfs train RECIPE.yaml --help)"


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """List `train` among `cllmfs`'s jobs; its arguments are the recipe's keys, parsed by `main`."""
    parser = subparsers.add_parser("train", help=HELP, description=HELP, add_help=False)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="RECIPE.yaml, then --key value overrides")
    return parser


def main(argv: list[str]) -> int:
    """Parse the recipe and its overrides, train, and return the exit code (2 after one line for a user error).

    Args:
        argv (`list[str]`):
            The recipe, then `--key value` overrides.
    """

    def body(rest: list[str]) -> None:
        if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
            # Without a recipe every key would take its default: a long training nobody asked for.
            raise UsageError(f"give a recipe YAML first, e.g. {PROG} recipes/smollm2/wnut17_intra.yaml")
        # Heavy (torch, transformers and trl): `cllmfs --help` and the other jobs start without them.
        from cllmfs_trainer.scripts import train

        train.main(*train.parse_args(rest))

    # `--debug VALUE` is transformers' own `debug` option; only a bare `--debug` asks for tracebacks.
    return run_entry_point(PROG, body, argv, keep_debug_with_value=True)
