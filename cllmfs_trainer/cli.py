"""`cllmfs`: the command line. Thin glue over the library; each subcommand is a few lines.

    cllmfs model [--model NAME_OR_PATH] [--force]      materialise / resolve a model folder
    cllmfs prepare --dataset wnut17 --k 5 --output DIR  support set + SFT samples (+ token statistics)
    cllmfs predict --run RUN_DIR (--text "..." | --input FILE.txt|.jsonl) --output preds.jsonl

Training runs through `accelerate launch recipes/train.py RECIPE.yaml` (see docs/training.md).

A mistake in the options or files ends with one line on stderr and exit code 2 (`--debug` or CLLMFS_DEBUG=1 adds
the traceback); see docs/errors.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cllmfs_trainer.command_line import OneLineArgumentParser, run_entry_point
from cllmfs_trainer.data import build_samples, get_dataset, make_task, tokenize_samples
from cllmfs_trainer.data.format import ANSWER_FORMAT, ANSWER_FORMATS, PROMPT_FORMAT, PROMPT_FORMATS
from cllmfs_trainer.data.io import DataFormatError, jsonl_line
from cllmfs_trainer.data.registry import load_types_file, merge_types
from cllmfs_trainer.data.sampling import FewShotTask
from cllmfs_trainer.errors import UsageError, UserError
from cllmfs_trainer.files import (
    atomic_open,
    atomic_write_text,
    check_input_file,
    check_output_dir,
    check_output_file,
    control_character,
    read_text_lines,
)
from cllmfs_trainer.models import load_tokenizer, materialize_default_model, resolve_model
from cllmfs_trainer.models.embedded import verify_converted_model
from cllmfs_trainer.models.loading import check_model_reference
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger("cllmfs")
COMMANDS = ("model", "prepare", "predict")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count, a size or a budget of 0 or less would silently do nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a number between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing folder")
    return text


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


def cmd_model(args: argparse.Namespace) -> None:
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


def cmd_prepare(args: argparse.Namespace) -> None:
    check_output_dir(args.output)
    for option, path in (("--support-set", args.support_set), ("--types-file", args.types_file)):
        if path is not None:
            check_input_file(path, option)
    tokenizer = None
    if args.model:
        check_model_reference(args.model, "--model")
        tokenizer = load_tokenizer(args.model)
    print(json.dumps(prepare(args, tokenizer), indent=2, ensure_ascii=False))


def _predict_types(run_dir: Path, labels: str | None, types_file: str | None) -> list:
    """The run's (test) types, overridden/extended by a types file, restricted to `labels`."""
    types = RunFolder.load(run_dir).test_types
    if types_file:
        types = merge_types(types, load_types_file(types_file))
    if labels is not None:
        wanted = [label.strip() for label in labels.split(",")]
        by_label = {t.label: t for t in types}
        missing = [label for label in wanted if label not in by_label]
        if missing:
            raise UsageError(
                f"--types: type(s) {missing} have no description in the run folder (it has "
                f"{sorted(by_label)}); add them to a --types-file (label, name, description) so the instruction can "
                "name and explain them"
            )
        if len(set(wanted)) != len(wanted):
            raise UsageError(f"--types: a type is given twice in {labels!r}")
        types = [by_label[label] for label in wanted]
    return types


def _read_texts(args: argparse.Namespace) -> list[str]:
    """The sentences to predict: `--text`, the lines or JSONL records of `--input`, or a `--dataset` split.

    Raises:
        `UserError`: naming the file and line for unreadable input, and for input without any text.
    """
    if args.text is not None:
        if not args.text.strip():
            raise UsageError("--text is empty; give a sentence")
        if control_character(args.text):
            raise UsageError(f"--text contains the control character {control_character(args.text)!r}")
        if args.limit is not None:
            raise UsageError("--limit applies to --input and --dataset, not to --text")
        return [args.text]
    if args.dataset is not None:
        source = f"--dataset {args.dataset} (split {args.split})"
        sentences = get_dataset(args.dataset).load(args.split, args.data_dir, allow_empty=False).sentences
        texts = [s.text for s in sentences]
    else:
        path = check_input_file(args.input, "--input")
        source = str(path)
        if path.suffix.lower() not in (".txt", ".jsonl", ""):
            logger.info("%s: reading one sentence per line (only .jsonl files are read as JSON)", path)
        texts = []
        for lineno, line in enumerate(read_text_lines(path, "--input"), start=1):
            if path.suffix.lower() == ".jsonl":
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataFormatError(f"{path}:{lineno}: expected a JSON object with a string field 'text'")
                line = record["text"]
            if control_character(line):
                raise DataFormatError(
                    f"{path}:{lineno}: the text contains the control character {control_character(line)!r}; "
                    "is the file binary?"
                )
            texts.append(line)
    texts = texts[: args.limit]
    if not any(text.strip() for text in texts):
        raise DataFormatError(f"{source}: no text to predict (empty, or only blank lines)")
    return texts


def _entity_record(entity: Any, with_score: bool) -> dict[str, Any]:
    """An `Entity` as a JSONL record: start, end, type, text, and its score if asked for."""
    record = entity.as_dict()
    if not with_score:
        del record["score"]
    return record


def cmd_predict(args: argparse.Namespace) -> None:
    # Heavy (torch and transformers): `cllmfs --help`, `model` and `prepare` start without them.
    from cllmfs_trainer.inference.generate import EntityExtractor

    # Everything the user gave is checked before the model loads: a mistake costs seconds, not a model load.
    run_dir = Path(args.run)
    run = RunFolder.load(run_dir)  # refuses a folder without its weights, naming the missing file
    run.check_tokenizer()
    texts = _read_texts(args)
    if args.threshold is not None and args.unconstrained:
        raise UsageError("--threshold needs a score per entity, which only constrained decoding gives")
    if args.types_file is not None:
        check_input_file(args.types_file, "--types-file")
    types = _predict_types(run_dir, args.types, args.types_file)
    inputs = [args.input, args.types_file, run.run_file, run.support_file]
    output = check_output_file(args.output, "--output", inputs=inputs)
    extractor = EntityExtractor.from_run(
        run_dir,
        types=types,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        constrained=not args.unconstrained,
        dtype=args.dtype,
        **({} if args.end_penalty is None else {"end_penalty": args.end_penalty}),
        **({} if args.one_type_per_span is None else {"one_type_per_span": args.one_type_per_span}),
    )
    # Each input line is one sentence: asked whole, as the model was trained (no sentence splitting).
    found = extractor.extract(texts, threshold=args.threshold, split_sentences=False, progress=True)
    with atomic_open(output) as out:  # a failure leaves no half-written file
        for text, entities in zip(texts, found):
            records = [_entity_record(entity, args.scores) for entity in entities]
            out.write(jsonl_line({"text": text, "entities": records}))
    print(
        json.dumps(
            {"sentences": len(texts), "types": [t.label for t in extractor.types], **extractor.stats.as_dict()},
            ensure_ascii=False,
        ),
        file=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="cllmfs", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (also: CLLMFS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="materialise the default model or resolve a model reference")
    model.add_argument("--model", default=None, help="hub id, local folder, .gguf file or 'default'")
    model.add_argument("--force", action="store_true", help="re-download and re-convert the default model")
    model.add_argument(
        "--verify", action="store_true", help="check a converted model's files against the sha256 of their conversion"
    )
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
    prep.add_argument(
        "--answer-format",
        default=ANSWER_FORMAT,
        choices=list(ANSWER_FORMATS),
        help="marked: ' <<< X >>>' groups (default, the paper's); pointer: ' X >>>'",
    )
    prep.add_argument(
        "--no-type-descriptions",
        dest="type_descriptions",
        action="store_false",
        help="ask for each type by its name alone, as a recipe's `type_descriptions: false`",
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
    pred.add_argument("--limit", type=positive_int, help="only the first N sentences of --input or --dataset")
    pred.add_argument(
        "--data-dir", type=existing_dir, help="folder with non-shipped datasets (default: $CLLMFS_DATA_DIR)"
    )
    pred.add_argument("--output", required=True, help="JSONL: text and entities with character offsets")
    pred.add_argument("--types", help="comma-separated type labels (default: the run's types)")
    pred.add_argument("--types-file", help="YAML adding or overriding type names and descriptions")
    pred.add_argument("--batch-size", type=positive_int, default=32)
    pred.add_argument("--max-new-tokens", type=positive_int, default=64)
    pred.add_argument("--unconstrained", action="store_true", help="do not restrict outputs to input spans")
    pred.add_argument(
        "--threshold",
        type=probability,
        help="drop entities whose score (the probability of the entity under the constraint) is below this",
    )
    pred.add_argument("--scores", action="store_true", help="write each entity's score into the output")
    pred.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="cast the merged model; auto: on a CPU the faster of bfloat16 and float32 by a matmul probe, elsewhere "
        "as loaded (bfloat16 on GPUs that support it)",
    )
    pred.add_argument(
        "--end-penalty",
        type=float,
        help="subtract this from the score of ending an answer where another entity could start (above 0: more "
        "entities, higher recall); default: the run's, which its recipe chose on dev data",
    )
    pred.add_argument(
        "--one-type-per-span",
        action=argparse.BooleanOptionalAction,
        help="where a span comes back under several types, keep the one the model names most readily; default: the "
        "run's (pointer answers only)",
    )
    pred.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `cllmfs` with `argv` (default: `sys.argv[1:]`).

    Returns:
        `int`: 0 on success; 2 after one line on stderr for a mistake in the options or files (see
        `cllmfs_trainer.errors`). A bug keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if arg in COMMANDS), None)

    def body(rest: list[str]) -> None:
        args = build_parser().parse_args(rest)
        level = logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(message)s")
        args.func(args)

    return run_entry_point(f"cllmfs {command}" if command else "cllmfs", body, argv)


if __name__ == "__main__":
    sys.exit(main())
