"""`cllmfs`: one command for every job. Thin glue over the library; each job is a module with `make_parser()` and
`main()`, mounted here.

    cllmfs model [--model NAME_OR_PATH] [--force]        materialise / resolve a model folder
    cllmfs prepare --dataset wnut17 --k 5 --output DIR    support set + SFT samples (+ token statistics)
    cllmfs train RECIPE.yaml [--key value ...]            train a run folder (accelerate launch -m cllmfs_trainer.cli)
    cllmfs predict --run RUN_DIR (--text "..." | --input FILE.txt|.jsonl) --output preds.jsonl
    cllmfs evaluate --run RUN_DIR --dataset wnut17 --split test   score a run folder (the model loads once)
    cllmfs benchmark CONFIG.yaml [--key value ...]        the few-shot benchmark and its report
    cllmfs export vllm --run RUN_DIR                      the `vllm serve` command and a client for a run folder
    cllmfs card --run RUN_DIR [--output README.md]        the Hub model card of a run folder
    cllmfs push --run RUN_DIR --repo ID                   upload a run folder with its card to the Hub
    cllmfs serve --run RUN_DIR [--host H] [--port P]      an HTTP server: POST /extract, GET /health, GET /info

A mistake in the options or files ends with one line on stderr and exit code 2 (`--debug` or CLLMFS_DEBUG=1 adds
the traceback); see docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cllmfs_trainer.cli import benchmark, card, evaluate, export, model, predict, prepare, push, serve, train
from cllmfs_trainer.command_line import OneLineArgumentParser, run_entry_point

JOBS = {"model": model, "prepare": prepare, "train": train, "predict": predict, "evaluate": evaluate}
JOBS["benchmark"] = benchmark
JOBS["export"] = export
JOBS["card"] = card
JOBS["push"] = push
JOBS["serve"] = serve
COMMANDS = tuple(JOBS)
# Jobs whose arguments are a YAML file's keys: they parse their own command line, everything after the job's name.
OWN_PARSERS = ("train", "benchmark")


def make_parser() -> argparse.ArgumentParser:
    """`cllmfs` with every job as a subcommand."""
    parser = OneLineArgumentParser(prog="cllmfs", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (also: CLLMFS_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for job in JOBS.values():
        job.make_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `cllmfs` with `argv` (default: `sys.argv[1:]`).

    Returns:
        `int`: 0 on success; 2 after one line on stderr for a mistake in the options or files (see
        `cllmfs_trainer.command_line`). A bug keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if arg in COMMANDS), None)
    if command in OWN_PARSERS and "--help" not in argv[: argv.index(command)]:
        return JOBS[command].main(argv[argv.index(command) + 1 :])

    def body(rest: list[str]) -> None:
        args = make_parser().parse_args(rest)
        level = logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(message)s")
        args.func(args)

    return run_entry_point(f"cllmfs {command}" if command else "cllmfs", body, argv)
