"""Read labelled examples from the files users and annotation tools write, in one call: `read_examples(path)`.

| format | what it looks like |
|---|---|
| `jsonl` | ours (`read_jsonl`, what `cllmfs predict` writes): `{"text", "entities": [{"start", "end", "type"}]}` |
| `conll` | `token<TAB>tag` or whitespace CoNLL columns, BIO/IOB1/BIOES tags (`read_conll`) |
| `doccano` | doccano JSONL: `{"text", "label": [[start, end, "TYPE"]]}`, or `"entities"` as such triples or as
  `{"start_offset", "end_offset", "label"}` objects |
| `label-studio` | a Label Studio JSON export: an array of tasks, `data.text`, `annotations[].result[]` of type
  `labels` |
| `spacy` | a spaCy `DocBin` (`.spacy`), its `doc.ents` (needs the `[spacy]` extra) |

Character offsets become word spans through `sentence_from_offsets`: the text is split on whitespace and at every
entity edge, so an entity that does not fall on word boundaries is kept, never dropped. Every reader raises
`DataFormatError` with one line naming the file, the line or record, and the format it expected.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.io import Corpus, Sentence, read_conll, read_jsonl, sentence_from_offsets
from cllmfs_trainer.errors import DataFormatError
from cllmfs_trainer.files import check_input_file, iter_text_lines, read_head, read_text_file
from cllmfs_trainer.parsing import parse_json

logger = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "conll", "doccano", "label-studio", "spacy")
EXPECTED = {
    "jsonl": 'JSONL {"text": ..., "entities": [{"start": int, "end": int, "type": str}]}',
    "conll": "token<TAB>tag lines (BIO, IOB1 or BIOES), a blank line after each sentence",
    "doccano": 'doccano JSONL {"text": ..., "label": [[start, end, "TYPE"], ...]}',
    "label-studio": 'a Label Studio JSON export: [{"data": {"text": ...}, "annotations": [{"result": [...]}]}]',
    "spacy": "a spaCy DocBin file (.spacy)",
}
# zlib's first byte is 0x78 for every compression level; `DocBin.to_bytes` is zlib-compressed msgpack.
_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_CONLL_SUFFIXES = {".txt", ".conll", ".conllu", ".bio", ".iob", ".iob2", ".bioes", ".tsv"}


def read_examples(path: str | Path, format: str = "auto", scheme: str = "auto", allow_empty: bool = False) -> Corpus:
    """Read labelled sentences from a file in any of the supported formats.

    Args:
        path (`str` or `Path`):
            The file.
        format (`str`, *optional*, defaults to `"auto"`):
            One of `FORMATS`; `auto` detects it from the content and the extension (`detect_format`).
        scheme (`str`, *optional*, defaults to `"auto"`):
            The tag scheme of a CoNLL file, as in `read_conll`.
        allow_empty (`bool`, *optional*, defaults to `False`):
            Whether a file without examples is read (with a warning) rather than refused.

    Returns:
        `Corpus`: the sentences (tokens and word spans) in file order.

    Raises:
        `DataFormatError`: naming the file, the line or record, and the format expected.
    """
    if format not in FORMATS:
        raise DataFormatError(f"{path}: unknown format {format!r}; use one of {', '.join(FORMATS)}")
    path = check_input_file(path, "examples")
    concrete = detect_format(path) if format == "auto" else format
    logger.info("%s: reading %s", path, concrete)
    if concrete == "conll":
        return read_conll(path, scheme=scheme, allow_empty=allow_empty)
    if concrete == "jsonl":
        return read_jsonl(path, allow_empty=allow_empty)
    reader: Callable[[Path], Iterator[Sentence]] = {
        "doccano": _doccano_sentences,
        "label-studio": _label_studio_sentences,
        "spacy": _docbin_sentences,
    }[concrete]
    corpus = Corpus(list(reader(path)), str(path))
    if not corpus.sentences:
        message = f"{path}: no labelled examples; expected {EXPECTED[concrete]}"
        if not allow_empty:
            raise DataFormatError(message)
        logger.warning(message)
    return corpus


def detect_format(path: str | Path) -> str:
    """The format of a file: `spacy` for a `.spacy` or zlib-compressed file, `label-studio` for a JSON array, a JSONL
    format (`jsonl` or `doccano`, told apart by the first record that has entities) for lines of JSON objects, and
    `conll` for anything else that is text. The content decides; the extension only names what was expected when the
    content fits nothing."""
    path = Path(path)
    head = read_head(path)  # never the whole file: it may be a device or a pipe
    if path.suffix.lower() == ".spacy" or head[:2] in _ZLIB_HEADERS:
        return "spacy"
    first = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")[:1]
    if first == "[":
        return "label-studio"
    if first == "{":
        return _jsonl_flavour(path)
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson"):
        raise DataFormatError(
            f"{path}: the file does not start with '[' or '{{'; expected JSON or JSONL for a "
            f"{path.suffix} file (e.g. {EXPECTED['jsonl']})"
        )
    if path.suffix.lower() not in _CONLL_SUFFIXES | {""}:
        logger.info("%s: unknown extension; reading it as CoNLL (%s)", path, EXPECTED["conll"])
    return "conll"


def _jsonl_flavour(path: Path) -> str:
    """`doccano` or `jsonl`: the first record with entities tells (records without any read alike in both)."""
    for where, record in _json_lines(path, "jsonl"):
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: expected a JSON object per line, e.g. {EXPECTED['jsonl']}")
        if "label" in record:
            return "doccano"
        entities = record.get("entities")
        if isinstance(entities, list) and entities:
            first = entities[0]
            return "jsonl" if isinstance(first, dict) and "start" in first else "doccano"
    return "jsonl"


def _json_lines(path: Path, format: str) -> Iterator[tuple[str, Any]]:
    """`(path:line, record)` of every non-blank line of a JSONL file."""
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        yield where, parse_json(line, where, EXPECTED[format])


def _doccano_sentences(path: Path) -> Iterator[Sentence]:
    for where, record in _json_lines(path, "doccano"):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataFormatError(f"{where}: no string field 'text'; expected {EXPECTED['doccano']}")
        key = "label" if "label" in record else "entities"
        annotations = record.get(key, [])
        if not isinstance(annotations, list):
            raise DataFormatError(f"{where}: field '{key}' must be a list; expected {EXPECTED['doccano']}")
        char_spans = []
        for k, item in enumerate(annotations):
            if isinstance(item, dict) and {"start_offset", "end_offset", "label"} <= set(item):
                item = [item["start_offset"], item["end_offset"], item["label"]]
            if not isinstance(item, list) or len(item) != 3:
                raise DataFormatError(
                    f"{where}: field '{key}[{k}]' is {json.dumps(item)[:60]}; expected [start, end, \"TYPE\"] or "
                    '{"start_offset", "end_offset", "label"} in doccano JSONL'
                )
            char_spans.append((*item, f"{key}[{k}]"))
        sentence = sentence_from_offsets(record["text"], char_spans, f"{where} (doccano JSONL)")
        sentence.id = str(record.get("id", f"{path.name}:{where.rsplit(':', 1)[1]}"))
        yield sentence


def _label_studio_sentences(path: Path) -> Iterator[Sentence]:
    tasks = parse_json(read_text_file(path, "examples"), str(path), EXPECTED["label-studio"])
    if not isinstance(tasks, list):
        raise DataFormatError(f"{path}: the JSON is not an array of tasks; expected {EXPECTED['label-studio']}")
    unlabelled, extra_annotations, other_results = 0, 0, 0
    for index, task in enumerate(tasks):
        where = f"{path}: task {index}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DataFormatError(f"{where}: no object 'data'; expected {EXPECTED['label-studio']}")
        text = _task_text(task["data"], where)
        # Label Studio 1.x exports `annotations`; older versions wrote `completions`.
        annotations = [
            a
            for a in task.get("annotations", task.get("completions", []))
            if isinstance(a, dict) and not a.get("was_cancelled")
        ]
        if not annotations:
            unlabelled += 1
            continue
        extra_annotations += len(annotations) - 1
        results = annotations[0].get("result", [])
        if not isinstance(results, list):
            raise DataFormatError(f"{where}: field 'annotations[0].result' must be a list")
        char_spans = []
        for k, result in enumerate(results):
            if not isinstance(result, dict) or result.get("type") != "labels":
                other_results += 1  # relations, choices, ratings: not entities
                continue
            value = result.get("value", {})
            labels = value.get("labels") if isinstance(value, dict) else None
            if not isinstance(labels, list) or len(labels) != 1 or "start" not in value or "end" not in value:
                raise DataFormatError(
                    f"{where}: field 'annotations[0].result[{k}].value' needs 'start', 'end' and one label in "
                    f"'labels', got {json.dumps(value)[:80]}; expected {EXPECTED['label-studio']}"
                )
            char_spans.append((value["start"], value["end"], labels[0], f"annotations[0].result[{k}]"))
        sentence = sentence_from_offsets(text, char_spans, f"{where} (Label Studio)")
        sentence.id = str(task.get("id", f"{path.name}:{index}"))
        yield sentence
    for count, what in (
        (unlabelled, "task(s) without an annotation were skipped"),
        (extra_annotations, "further annotation(s) of already annotated tasks were ignored (the first one is read)"),
        (other_results, "result(s) that are not 'labels' (relations, choices, ...) were ignored"),
    ):
        if count:
            logger.warning("%s: %d %s", path, count, what)


def _task_text(data: dict[str, Any], where: str) -> str:
    """The task's text: `data.text`, or its only string field (the labelling config may name it otherwise)."""
    if isinstance(data.get("text"), str):
        return data["text"]
    strings = [key for key, value in data.items() if isinstance(value, str)]
    if len(strings) != 1:
        raise DataFormatError(
            f"{where}: cannot tell which field of 'data' is the text (fields {sorted(data)}); expected 'data.text'"
        )
    return data[strings[0]]


def _docbin_sentences(path: Path) -> Iterator[Sentence]:
    try:
        from spacy.tokens import DocBin
        from spacy.vocab import Vocab
    except ImportError:
        raise DataFormatError(
            f"{path}: reading spaCy DocBin files needs spaCy; pip install 'cllmfs-trainer[spacy]'"
        ) from None
    try:
        docs = list(DocBin().from_disk(path).get_docs(Vocab()))
    except (ValueError, KeyError, TypeError, zlib.error) as err:  # what msgpack and zlib raise on foreign bytes
        raise DataFormatError(
            f"{path}: not a spaCy DocBin ({type(err).__name__}); expected {EXPECTED['spacy']}"
        ) from None
    for index, doc in enumerate(docs):
        char_spans = [(ent.start_char, ent.end_char, ent.label_, f"ents[{k}]") for k, ent in enumerate(doc.ents)]
        sentence = sentence_from_offsets(doc.text, char_spans, f"{path}: doc {index} (spaCy DocBin)")
        sentence.id = f"{path.name}:{index}"
        yield sentence
