"""`cllmfs prepare --dataset wnut17 --k 5 --output DIR`: a support set, its SFT samples and their token statistics."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cllmfs_trainer.command_line import OneLineArgumentParser, existing_dir, positive_int
from cllmfs_trainer.data import build_samples, get_dataset, make_task, tokenize_samples
from cllmfs_trainer.data.format import ANSWER_FORMAT, ANSWER_FORMATS, PROMPT_FORMAT, PROMPT_FORMATS
from cllmfs_trainer.data.io import DataFormatError, jsonl_line
from cllmfs_trainer.data.sampling import FewShotTask
from cllmfs_trainer.files import atomic_open, atomic_write_text, check_input_file, check_output_dir
from cllmfs_trainer.models import load_tokenizer
from cllmfs_trainer.models.loading import check_model_reference


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs prepare`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "sample a support set and build SFT samples"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs prepare", description=help_text)
    else:
        parser = subparsers.add_parser("prepare", help=help_text, description=help_text)
    _add_task_arguments(parser)
    parser.add_argument(
        "--prompt-format",
        type=int,
        default=PROMPT_FORMAT,
        choices=sorted(PROMPT_FORMATS),
        help="1: instruction first (default); 2: sentence first",
    )
    parser.add_argument(
        "--answer-format",
        default=ANSWER_FORMAT,
        choices=list(ANSWER_FORMATS),
        help="marked: ' <<< X >>>' groups (default, the paper's); pointer: ' X >>>'",
    )
    parser.add_argument(
        "--no-type-descriptions",
        dest="type_descriptions",
        action="store_false",
        help="ask for each type by its name alone, as a recipe's `type_descriptions: false`",
    )
    parser.add_argument("--model", help="also tokenise with this model's tokenizer and report lengths")
    parser.add_argument("--output", required=True)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> None:
    """Check the options and files, then write what `prepare` writes and print its summary."""
    check_output_dir(args.output)
    for option, path in (("--support-set", args.support_set), ("--types-file", args.types_file)):
        if path is not None:
            check_input_file(path, option)
    tokenizer = None
    if args.model:
        check_model_reference(args.model, "--model")
        tokenizer = load_tokenizer(args.model)
    print(json.dumps(prepare(args, tokenizer), indent=2, ensure_ascii=False))


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="wnut17", help="registry key of the (target) dataset")
    parser.add_argument("--setting", default="intra", choices=["intra", "inter"])
    parser.add_argument("--k", type=positive_int, default=5, help="shots per type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--support-set", help="use this BIO file as the support set instead of sampling one")
    parser.add_argument("--types-file", help="YAML file overriding or extending the type descriptions")
    parser.add_argument(
        "--data-dir", type=existing_dir, help="folder with non-shipped datasets (default: $CLLMFS_DATA_DIR)"
    )
    parser.add_argument("--query-size", type=positive_int, help="subsample the query split to this many sentences")


def _task(args: argparse.Namespace) -> FewShotTask:
    dataset = get_dataset(args.dataset, types_file=args.types_file)
    return make_task(
        args.setting,
        dataset,
        args.k,
        args.seed,
        data_dir=args.data_dir,
        query_size=args.query_size,
        support_set=args.support_set,
    )


def prepare(args: argparse.Namespace, tokenizer: Any = None) -> dict[str, Any]:
    """Write the support set, the SFT samples and a summary into `args.output`; returns the summary."""
    out = check_output_dir(args.output)
    task = _task(args)
    prompt_format = getattr(args, "prompt_format", PROMPT_FORMAT)
    answer_format = getattr(args, "answer_format", ANSWER_FORMAT)
    type_descriptions = getattr(args, "type_descriptions", True)
    samples = build_samples(task.support.sentences, task.train_types, prompt_format, answer_format, type_descriptions)
    if not samples:
        raise DataFormatError(f"{task.support.source}: the support set gives no SFT samples")
    out.mkdir(parents=True, exist_ok=True)
    task.support.save(out / "support.txt")
    with atomic_open(out / "sft_samples.jsonl") as handle:
        for sample in samples:
            record = {
                "prompt": sample.prompt,
                "completion": sample.completion,
                "type": sample.type_label,
                "sentence_id": sample.sentence_id,
            }
            handle.write(jsonl_line(record))
    types = [{"label": t.label, "name": t.name, "description": t.description} for t in task.train_types]
    atomic_write_text(out / "types.json", json.dumps(types, indent=2, ensure_ascii=False) + "\n")
    summary: dict[str, Any] = {
        "setting": task.setting,
        "dataset": args.dataset,
        "k": args.k,
        "seed": args.seed,
        "prompt_format": prompt_format,
        "answer_format": answer_format,
        "type_descriptions": type_descriptions,
        "support_sentences": len(task.support.sentences),
        "support_mentions": task.support.mention_counts(),
        "sft_samples": len(samples),
        "samples_with_entities": sum(bool(s.entity_chars) for s in samples),
        **task.notes,
    }
    if tokenizer is not None:
        rows, stats = tokenize_samples(samples, tokenizer)
        lengths = sorted(len(r["input_ids"]) for r in rows)
        summary["tokens_per_sample"] = {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}
        summary["entity_tokens_in_cl_labels"] = sum(c > 0 for r in rows for c in r["cl_labels"])
    atomic_write_text(out / "prepare.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary
