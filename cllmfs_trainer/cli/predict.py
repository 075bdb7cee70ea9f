"""`cllmfs predict --run RUN_DIR (--text "..." | --input FILE | --dataset D) --output preds.jsonl`: extract entities
with a trained run folder; each line of the output is a text and its entities with character offsets.

Launched as several processes (`accelerate launch -m cllmfs_trainer.cli predict ...` on GPUs, `torchrun
--nproc_per_node N -m cllmfs_trainer.cli predict ...` on CPUs), the processes share the work and the output equals
one process's (`cllmfs_trainer.inference.data_parallel`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cllmfs_trainer.command_line import OneLineArgumentParser, existing_dir, positive_int, probability
from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.io import DataFormatError, jsonl_line
from cllmfs_trainer.data.registry import load_types_file, merge_types
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.files import (
    atomic_open,
    check_input_file,
    check_output_file,
    control_character,
    read_text_file,
    read_text_lines,
)
from cllmfs_trainer.parsing import parse_json
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger("cllmfs")


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The options of `cllmfs predict`, as a subcommand of `subparsers` or as a parser of its own."""
    help_text = "extract entities with a trained run folder"
    if subparsers is None:
        parser = OneLineArgumentParser(prog="cllmfs predict", description=help_text)
    else:
        parser = subparsers.add_parser("predict", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="run folder written by recipes/train.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one sentence")
    source.add_argument(
        "--input",
        help=".txt (one text per line), .jsonl (a 'text' field per line), .json (an array of texts or such objects)",
    )
    source.add_argument("--dataset", help="a registry dataset's split (see --split, --limit, --data-dir)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=positive_int, help="only the first N sentences of --input or --dataset")
    parser.add_argument(
        "--data-dir", type=existing_dir, help="folder with non-shipped datasets (default: $CLLMFS_DATA_DIR)"
    )
    parser.add_argument("--output", required=True, help="JSONL: text and entities with character offsets")
    parser.add_argument("--types", help="comma-separated type labels (default: the run's types)")
    parser.add_argument("--types-file", help="YAML adding or overriding type names and descriptions")
    parser.add_argument(
        "--engine",
        choices=["torch", "vllm"],
        default="torch",
        help="torch: our own constrained loop (CPU or GPU); vllm: vLLM serves the adapter, each answer under its "
        "sentence's regex (CUDA; pip install 'cllmfs-trainer[vllm]'; no scores, end penalty or one type per span)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--unconstrained", action="store_true", help="do not restrict outputs to input spans")
    parser.add_argument(
        "--threshold",
        type=probability,
        help="drop entities whose score (the probability of the entity under the constraint) is below this",
    )
    parser.add_argument("--scores", action="store_true", help="write each entity's score into the output")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="cast the merged model; auto: on a CPU the faster of bfloat16 and float32 by a matmul probe, elsewhere "
        "as loaded (bfloat16 on GPUs that support it)",
    )
    parser.add_argument(
        "--end-penalty",
        type=float,
        help="subtract this from the score of ending an answer where another entity could start (above 0: more "
        "entities, higher recall); default: the run's, which its recipe chose on dev data",
    )
    parser.add_argument(
        "--one-type-per-span",
        action=argparse.BooleanOptionalAction,
        help="where a span comes back under several types, keep the one the model names most readily; default: the "
        "run's (pointer answers only)",
    )
    parser.set_defaults(func=main)
    return parser


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


def read_texts(args: argparse.Namespace) -> list[str]:
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
        suffix = path.suffix.lower()
        if suffix not in (".txt", ".jsonl", ".json", ""):
            logger.info("%s: reading one text per line (.jsonl and .json files are read as JSON)", path)
        texts = []
        for where, line in _input_texts(path, suffix):
            if control_character(line):
                raise DataFormatError(
                    f"{where}: the text contains the control character {control_character(line)!r}; is the file binary?"
                )
            texts.append(line)
    texts = texts[: args.limit]
    if not any(text.strip() for text in texts):
        raise DataFormatError(f"{source}: no text to predict (empty, or only blank lines)")
    return texts


JSON_INPUT = 'a JSON array of texts, or of objects with a string field "text"'


def _input_texts(path: Path, suffix: str) -> Iterator[tuple[str, str]]:
    """`(where, text)` of every input text: a line of a text file, a record of JSONL, an item of a JSON array."""
    if suffix == ".json":  # a JSON array read as lines would predict on its brackets and quotes
        items = parse_json(read_text_file(path, "--input"), str(path), JSON_INPUT)
        if not isinstance(items, list):
            raise DataFormatError(f"{path}: the JSON is a {type(items).__name__}; expected {JSON_INPUT}")
        for index, item in enumerate(items):
            yield f"{path}: item {index}", _record_text(item, f"{path}: item {index}")
        return
    for lineno, line in enumerate(read_text_lines(path, "--input"), start=1):
        if suffix != ".jsonl":
            yield f"{path}:{lineno}", line
        elif line.strip():
            where = f"{path}:{lineno}"
            yield where, _record_text(parse_json(line, where), where)


def _record_text(record: Any, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataFormatError(f"{where}: expected a string or a JSON object with a string field 'text'")
    return record["text"]


def _entity_record(entity: Any, with_score: bool) -> dict[str, Any]:
    """An `Entity` as a JSONL record: start, end, type, text, and its score if asked for."""
    record = entity.as_dict()
    if not with_score:
        del record["score"]
    return record


def _launched_rank() -> tuple[int, Any] | None:
    """`(rank, device)` after joining the process group of a multi-process launch (`accelerate launch`, `torchrun`:
    they set `WORLD_SIZE`, `RANK` and `LOCAL_RANK`); `None` for one process, which initialises nothing distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():  # one GPU per process, NCCL between them
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() != 0:  # one report: the other processes say only what is an error
        logger.setLevel(logging.ERROR)
        logging.getLogger("cllmfs_trainer").setLevel(logging.ERROR)
    return dist.get_rank(), device


def main(args: argparse.Namespace) -> None:
    """Check everything the user gave, then load the run once and write one JSON line per input text."""
    # Heavy (torch and transformers; vllm_engine imports generate): `cllmfs --help`, `model` and `prepare` start
    # without them.
    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.inference.vllm_engine import import_vllm

    if args.engine == "vllm":
        import_vllm()  # before anything else: without vLLM, one line that says how to install it
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--engine vllm spreads a model over GPUs itself: launch one process, not several")
    # Everything the user gave is checked before the model loads: a mistake costs seconds, not a model load.
    run_dir = Path(args.run)
    run = RunFolder.load(run_dir)  # refuses a folder without its weights, naming the missing file
    run.check_tokenizer()
    texts = read_texts(args)
    if args.threshold is not None and args.unconstrained:
        raise UsageError("--threshold needs a score per entity, which only constrained decoding gives")
    if args.types_file is not None:
        check_input_file(args.types_file, "--types-file")
    types = _predict_types(run_dir, args.types, args.types_file)
    inputs = [args.input, args.types_file, run.run_file, run.support_file]
    output = check_output_file(args.output, "--output", inputs=inputs)
    if output.resolve().is_relative_to(run_dir.resolve()):
        # The run folder holds the run (adapter, tokenizer, record): an output there could replace one of them.
        raise UsageError(f"--output {output} is inside the run folder {run_dir}; write predictions outside it")
    launched = _launched_rank()
    extractor = EntityExtractor.from_run(
        run_dir,
        types=types,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        constrained=not args.unconstrained,
        dtype=args.dtype,
        engine=args.engine,
        **({} if args.end_penalty is None else {"end_penalty": args.end_penalty}),
        **({} if args.one_type_per_span is None else {"one_type_per_span": args.one_type_per_span}),
    )
    if launched is not None:
        extractor.model.to(launched[1])  # each process its own GPU (on a CPU: no-op)
    # Each input line is one sentence: asked whole, as the model was trained (no sentence splitting).
    found = extractor.extract(texts, threshold=args.threshold, split_sentences=False, progress=True)
    if launched is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
        if launched[0] != 0:
            return  # every process holds all the predictions (`inference.data_parallel`); the main one writes them
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
