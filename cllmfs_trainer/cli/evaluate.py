"""`cllmfs evaluate --run RUN (--dataset D [--split dev|test] | --file FILE) ...`: score a trained run folder.

The model is loaded (and its adapter merged) once for every dataset; each dataset is asked with its own types. The
scores go to the run folder's `metrics.json` and, one line per dataset, to the terminal.
"""

from __future__ import annotations

import argparse
import json

from cllmfs_trainer.command_line import OneLineArgumentParser, existing_dir, positive_int
from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.readers import read_examples
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.evaluation.scoring import evaluate_run
from cllmfs_trainer.run_folder import RunFolder


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs evaluate`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "score a trained run folder on a split of one or more datasets (the model loads once)"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs evaluate", description=help_text)
    else:
        parser = subparsers.add_parser("evaluate", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="run folder written by `cllmfs train`")
    parser.add_argument(
        "--dataset", action="append", default=[], help="registry key of a dataset to score; repeat for several"
    )
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        help="a labelled file of your own to score whole (any format cllmfs train reads); repeat for several",
    )
    parser.add_argument("--split", default="test", choices=["test", "dev"], help="test to report, dev to choose on")
    parser.add_argument("--query-size", type=positive_int, help="score a fixed random subset of this many sentences")
    parser.add_argument("--query-seed", type=int, default=0, help="seed of that subset")
    parser.add_argument(
        "--data-dir", type=existing_dir, help="folder with non-shipped datasets (default: $CLLMFS_DATA_DIR)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="cast the merged model; auto: on a CPU the faster of bfloat16 and float32 by a matmul probe",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Check the run folder and the datasets, then score; returns what `metrics.json` holds."""
    # Everything the user gave is checked before the model loads: a mistake costs seconds, not a model load.
    RunFolder.load(args.run).check_tokenizer()
    if not args.dataset and not args.file:
        raise UsageError("give what to score: --dataset NAME and/or --file FILE")
    for name in args.dataset:
        # An unknown name is refused with the known ones; a split the dataset lacks, or its missing file, by name.
        try:
            get_dataset(name).check_split(args.split, args.data_dir)
        except FileNotFoundError as err:
            raise UsageError(str(err)) from None
    for path in args.file:
        read_examples(path)  # a bad file is refused in one line before the model loads
    results = evaluate_run(
        args.run,
        args.dataset,
        query_size=args.query_size,
        query_seed=args.query_seed,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        split=args.split,
        dtype=args.dtype,
        files=args.file,
    )
    for name, scores in results.items():
        span = scores["span"]
        line = {"dataset": name, "split": scores["split"], "sentences": scores["query_size"], "span": span}
        print(json.dumps(line))
    return results
