"""`cllmfs`: the command line. Thin glue over the library; each subcommand is a few lines.

    cllmfs model [--model NAME_OR_PATH] [--force]      materialise / resolve a model folder
    cllmfs prepare --dataset wnut17 --k 5 --output DIR  support set + SFT samples (+ token statistics)
    cllmfs predict --run RUN_DIR (--text "..." | --input FILE.txt|.jsonl) --output preds.jsonl

Training runs through `accelerate launch recipes/train.py RECIPE.yaml` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cllmfs_trainer.data import build_samples, get_dataset, make_task, tokenize_samples
from cllmfs_trainer.data.sampling import FewShotTask
from cllmfs_trainer.data.sft import PROMPT_FORMAT, PROMPT_FORMATS

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
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    task = _task(args)
    task.support.save(out / "support.txt")
    prompt_format = getattr(args, "prompt_format", PROMPT_FORMAT)
    samples = build_samples(task.support.sentences, task.train_types, prompt_format)
    with (out / "sft_samples.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            record = {
                "prompt": sample.prompt,
                "completion": sample.completion,
                "type": sample.type_label,
                "sentence_id": sample.sentence_id,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    types = [{"label": t.label, "name": t.name, "description": t.description} for t in task.train_types]
    (out / "types.json").write_text(json.dumps(types, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary: dict[str, Any] = {
        "setting": task.setting,
        "dataset": args.dataset,
        "k": args.k,
        "seed": args.seed,
        "prompt_format": prompt_format,
        "support_sentences": len(task.support.sentences),
        "support_mentions": task.support.mention_counts(),
        "sft_samples": len(samples),
        "samples_with_entities": sum("<<<" in s.completion for s in samples),
        **task.notes,
    }
    if tokenizer is not None:
        rows, stats = tokenize_samples(samples, tokenizer)
        lengths = sorted(len(r["input_ids"]) for r in rows)
        summary["tokens_per_sample"] = {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}
        summary["entity_tokens_in_cl_labels"] = sum(c > 0 for r in rows for c in r["cl_labels"])
    (out / "prepare.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def cmd_model(args: argparse.Namespace) -> None:
    from cllmfs_trainer.models import materialize_default_model, resolve_model

    path = materialize_default_model(force=True) if args.force else resolve_model(args.model)
    print(path)


def cmd_prepare(args: argparse.Namespace) -> None:
    tokenizer = None
    if args.model:
        from cllmfs_trainer.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    print(json.dumps(prepare(args, tokenizer), indent=2, ensure_ascii=False))


def _predict_types(run_dir: Path, labels: str | None, types_file: str | None) -> list:
    """The run's (test) types, overridden/extended by a types file, restricted to `labels`."""
    from cllmfs_trainer.data.registry import load_types_file, merge_types
    from cllmfs_trainer.run_folder import RunFolder

    types = RunFolder.load(run_dir).test_types
    if types_file:
        types = merge_types(types, load_types_file(types_file))
    if labels:
        by_label = {t.label: t for t in types}
        missing = [label for label in labels.split(",") if label not in by_label]
        if missing:
            raise ValueError(
                f"type(s) {missing} have no description in the run folder; add them to a --types-file "
                "(label, name, description) so the instruction can name and explain them"
            )
        types = [by_label[label] for label in labels.split(",")]
    return types


def _read_texts(args: argparse.Namespace) -> list[str]:
    if args.text is not None:
        return [args.text]
    if args.dataset is not None:
        sentences = get_dataset(args.dataset).load(args.split, args.data_dir).sentences
        return [s.text for s in sentences[: args.limit]]
    path = Path(args.input)
    if path.suffix == ".jsonl":
        texts = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field 'text'")
                texts.append(record["text"])
        return texts
    return path.read_text(encoding="utf-8").splitlines()


def cmd_predict(args: argparse.Namespace) -> None:
    from cllmfs_trainer.data.io import Sentence
    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.inference.parse import char_offsets

    run_dir = Path(args.run)
    extractor = EntityExtractor.from_run(
        run_dir,
        types=_predict_types(run_dir, args.types, args.types_file),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        constrained=not args.unconstrained,
        dtype=args.dtype,
    )
    texts = _read_texts(args)
    predictions = extractor.predict(
        [Sentence(text.split(), [], f"line {i + 1}") for i, text in enumerate(texts)], progress=True
    )
    with Path(args.output).open("w", encoding="utf-8") as out:
        for text, prediction in zip(texts, predictions):
            offsets = char_offsets(text, prediction.sentence.tokens)
            entities = [
                {
                    "start": offsets[s.start][0],
                    "end": offsets[s.end - 1][1],
                    "type": s.type,
                    "text": text[offsets[s.start][0] : offsets[s.end - 1][1]],
                }
                for s in prediction.spans
            ]
            out.write(json.dumps({"text": text, "entities": entities}, ensure_ascii=False) + "\n")
    print(
        json.dumps(
            {"sentences": len(texts), "types": [t.label for t in extractor.types], **extractor.stats.as_dict()},
            ensure_ascii=False,
        ),
        file=sys.stderr,
    )


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
    prep.add_argument(
        "--prompt-format",
        type=int,
        default=PROMPT_FORMAT,
        choices=sorted(PROMPT_FORMATS),
        help="1: instruction first (default); 2: sentence first",
    )
    prep.add_argument("--model", help="also tokenise with this model's tokenizer and report lengths")
    prep.add_argument("--output", required=True)
    prep.set_defaults(func=cmd_prepare)

    pred = sub.add_parser("predict", help="extract entities with a trained run folder")
    pred.add_argument("--run", required=True, help="run folder written by recipes/train.py")
    source = pred.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one sentence")
    source.add_argument("--input", help=".txt (one sentence per line) or .jsonl (a 'text' field per line)")
    source.add_argument("--dataset", help="a registry dataset's split (see --split, --limit, --data-dir)")
    pred.add_argument("--split", default="test")
    pred.add_argument("--limit", type=int, help="first N sentences of --dataset")
    pred.add_argument("--data-dir", help="folder with non-shipped datasets (default: $CLLMFS_DATA_DIR)")
    pred.add_argument("--output", required=True, help="JSONL: text and entities with character offsets")
    pred.add_argument("--types", help="comma-separated type labels (default: the run's types)")
    pred.add_argument("--types-file", help="YAML adding or overriding type names and descriptions")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.add_argument("--max-new-tokens", type=int, default=64)
    pred.add_argument("--unconstrained", action="store_true", help="do not restrict outputs to input spans")
    pred.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="cast the merged model (default: float32 on CPU, bfloat16 on GPUs that support it)",
    )
    pred.set_defaults(func=cmd_predict)
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
