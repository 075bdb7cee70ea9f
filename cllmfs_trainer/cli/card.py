"""`cllmfs card --run RUN_DIR [--output README.md] [--base-model HUB_ID]`: write the Hugging Face Hub model card of a
run folder (its README.md by default), and `cllmfs push --run RUN_DIR --repo ID`: upload the run folder with its card
(`cllmfs_trainer.inference.hub`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cllmfs_trainer.command_line import OneLineArgumentParser
from cllmfs_trainer.files import atomic_write_text, check_output_file
from cllmfs_trainer.inference.hub import CARD_FILE, build_card, push_run


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs card`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "write the Hub model card of a run folder (README.md in it, or --output)"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs card", description=help_text)
    else:
        parser = subparsers.add_parser("card", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="run folder with a LoRA adapter")
    parser.add_argument("--output", help=f"where to write the card (default: RUN_DIR/{CARD_FILE})")
    _common_options(parser)
    parser.set_defaults(func=main)
    return parser


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-model",
        help="the base model's Hub id, for a run trained on a local folder (the default model maps to its own)",
    )


def make_push_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs push`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "write the card of a run folder and upload the folder to a Hub repository (needs a Hub token)"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs push", description=help_text)
    else:
        parser = subparsers.add_parser("push", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="run folder with a LoRA adapter")
    parser.add_argument("--repo", required=True, help="the Hub repository id, e.g. me/smollm2-wnut17-ner")
    parser.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    _common_options(parser)
    parser.set_defaults(func=push_main)
    return parser


def main(args: argparse.Namespace) -> None:
    """Build the card (the run folder is checked first) and write it atomically; print where."""
    card = build_card(args.run, args.base_model)
    output = check_output_file(args.output or Path(args.run) / CARD_FILE, "--output")
    atomic_write_text(output, str(card))
    print(output)


def push_main(args: argparse.Namespace) -> None:
    """Upload the run folder's shareable files with its card; print the commit."""
    print(push_run(args.run, args.repo, private=not args.public, base_model=args.base_model))
