"""`cllmfs model [--model NAME_OR_PATH] [--force] [--verify]`: materialise the default model or resolve a reference."""

from __future__ import annotations

import argparse

from cllmfs_trainer.command_line import OneLineArgumentParser
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.models import materialize_default_model, resolve_model
from cllmfs_trainer.models.embedded import verify_converted_model
from cllmfs_trainer.models.loading import check_model_reference


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs model`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "materialise the default model or resolve a model reference"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs model", description=help_text)
    else:
        parser = subparsers.add_parser("model", help=help_text, description=help_text)
    parser.add_argument("--model", default=None, help="hub id, local folder, .gguf file or 'default'")
    parser.add_argument("--force", action="store_true", help="re-download and re-convert the default model")
    parser.add_argument(
        "--verify", action="store_true", help="check a converted model's files against the sha256 of their conversion"
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> None:
    """Print the model folder (materialised first if needed), or check it with `--verify`."""
    if args.model is not None:
        check_model_reference(args.model, "--model", weights=True)
    path = materialize_default_model(force=True) if args.force else resolve_model(args.model)
    if args.verify:
        changed = verify_converted_model(path)
        if changed:
            raise UserError(
                f"{path}: {', '.join(changed)} differ from the sha256 recorded at conversion; rebuild "
                "it with `cllmfs model --force`"
            )
        print(f"{path}: every recorded file matches its sha256")
        return
    print(path)
