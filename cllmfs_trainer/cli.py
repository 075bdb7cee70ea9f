"""`cllmfs`: the command line. Thin glue over the library; each subcommand is a few lines.

    cllmfs model [--model NAME_OR_PATH] [--force]      materialise / resolve a model folder
    cllmfs prepare --dataset wnut17 --k 5 --output DIR  support set + SFT samples (+ token statistics)

Training runs through `accelerate launch recipes/train.py RECIPE.yaml` (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cllmfs_trainer.data import SupportSet, build_samples, get_dataset, make_task, tokenize_samples
from cllmfs_trainer.data.sampling import FewShotTask
from cllmfs_trainer.data.sft import PROMPT_FORMAT

logger = logging.getLogger("cllmfs")


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="wnut17", help="registry key of the (target) dataset")
    parser.add_argument("--setting", default="intra", choices=["intra", "inter"])
    parser.add_argument("--k", type=int, default=5, help="shots per type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--support-set", help="use this BIO file as the support set instead of sampling one")
    parser.add_argument("--types-file", help="YAML file overriding or extending the type descriptions")
    parser.add_argument("--data-dir", help="folder with non-shipped datasets (default: $CLLMFS_DATA_DIR)")
    parser.add_argument("--query-size", type=int, help="subsample the query split to this many sentences")


def _task(args: argparse.Namespace) -> FewShotTask:
    dataset = get_dataset(args.dataset, types_file=args.types_file)
    task = make_task(args.setting, dataset, args.k, args.seed, data_dir=args.data_dir, query_size=args.query_size)
    if args.support_set:
        task.support = SupportSet.load(args.support_set, k=args.k)
        task.train_types = [t for t in task.train_types if t.label in task.support.types]
    return task


def prepare(args: argparse.Namespace, tokenizer: Any = None) -> dict[str, Any]:
    """Write the support set, the SFT samples and a summary into `args.output`; returns the summary."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    task = _task(args)
    task.support.save(out / "support.txt")
    samples = build_samples(task.support.sentences, task.train_types)
    with (out / "sft_samples.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            record = {"prompt": sample.prompt, "completion": sample.completion, "type": sample.type_label,
                      "sentence_id": sample.sentence_id}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    types = [{"label": t.label, "name": t.name, "description": t.description} for t in task.train_types]
    (out / "types.json").write_text(json.dumps(types, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary: dict[str, Any] = {
        "setting": task.setting, "dataset": args.dataset, "k": args.k, "seed": args.seed,
        "prompt_format": PROMPT_FORMAT, "support_sentences": len(task.support.sentences),
        "support_mentions": task.support.mention_counts(), "sft_samples": len(samples),
        "samples_with_entities": sum("<<<" in s.completion for s in samples), **task.notes,
    }
    if tokenizer is not None:
        rows, stats = tokenize_samples(samples, tokenizer)
        lengths = sorted(len(r["input_ids"]) for r in rows)
        summary["tokens_per_sample"] = {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}
        summary["entity_tokens_in_cl_labels"] = sum(c > 0 for r in rows for c in r["cl_labels"])
    (out / "prepare.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def cmd_model(args: argparse.Namespace) -> None:
    from cllmfs_trainer.modeling import materialize_default_model, resolve_model

    path = materialize_default_model(force=True) if args.force else resolve_model(args.model)
    print(path)


def cmd_prepare(args: argparse.Namespace) -> None:
    tokenizer = None
    if args.model:
        from cllmfs_trainer.modeling import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    print(json.dumps(prepare(args, tokenizer), indent=2, ensure_ascii=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cllmfs", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="materialise the default model or resolve a model reference")
    model.add_argument("--model", default=None, help="hub id, local folder, .gguf file or 'default'")
    model.add_argument("--force", action="store_true", help="re-download and re-convert the default model")
    model.set_defaults(func=cmd_model)

    prep = sub.add_parser("prepare", help="sample a support set and build SFT samples")
    _add_task_arguments(prep)
    prep.add_argument("--model", help="also tokenise with this model's tokenizer and report lengths")
    prep.add_argument("--output", required=True)
    prep.set_defaults(func=cmd_prepare)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as err:  # user errors: one clear line, no traceback
        print(f"cllmfs {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
