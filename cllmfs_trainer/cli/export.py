"""`cllmfs export vllm --run RUN_DIR`: print the `vllm serve` command that serves a run folder's adapter, and a Python
client that asks it for entities under each sentence's regex (`cllmfs_trainer.inference.vllm_serving`)."""

from __future__ import annotations

import argparse

from cllmfs_trainer.command_line import OneLineArgumentParser, positive_int
from cllmfs_trainer.inference.vllm_serving import INSTALL_HINT, client_snippet, serve_command
from cllmfs_trainer.run_folder import RunFolder

TARGETS = ("vllm",)


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs export`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "print how to serve a run folder with another engine (vllm: the serve command and a client)"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs export", description=help_text)
    else:
        parser = subparsers.add_parser("export", help=help_text, description=help_text)
    parser.add_argument("target", choices=TARGETS, help="the serving engine")
    parser.add_argument("--run", required=True, help="run folder with a LoRA adapter")
    parser.add_argument("--name", help="the adapter's model name on the server (default: the run folder's name)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="the client's max_tokens")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> None:
    """Print the serve command, then the client, for the run folder (which is checked first)."""
    run = RunFolder.load(args.run)
    print(f"# Serve the adapter on a CUDA machine with vLLM 0.12 or later ({INSTALL_HINT}):")
    print(serve_command(run, args.name))
    print()
    print("# Ask the server (pip install openai): each sentence's answers constrained to runs of its words")
    print(client_snippet(run, args.name, args.max_new_tokens), end="")
