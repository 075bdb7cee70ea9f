"""Readers and writers for NER data: BIO/CoNLL files, JSONL with character spans, and HF datasets.

Everything is read into `Sentence` objects: tokens plus flat gold spans `(start, end, type)` over token indices, end
exclusive. Tag schemes (BIO, IOB1, BIOES) exist only at the file boundary; inside the library there are only spans.

Bad input raises `DataFormatError` naming the file and line. The one repair we make is the usual one for BIO data: an
`I-X` that does not continue an `X` entity starts a new entity. Repairs are counted on the returned `Corpus` and
logged, so nothing changes silently. The types live in `cllmfs_trainer.data.sentence`, the tag schemes in
`cllmfs_trainer.data.tags`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.sentence import Corpus, Sentence, Span
from cllmfs_trainer.data.tags import check_scheme, decode_sentence, report_repairs, validate_tags
from cllmfs_trainer.errors import DataFormatError
from cllmfs_trainer.files import atomic_open, atomic_write_text, control_character, iter_text_lines
from cllmfs_trainer.parsing import parse_json

logger = logging.getLogger(__name__)


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of a UTF-8 data file (see `cllmfs_trainer.files.iter_text_lines`)."""
    if path.is_dir():
        raise DataFormatError(f"{path} is a folder; expected a data file")
    return iter_text_lines(path)


def _check_not_empty(corpus: Corpus, allow_empty: bool) -> Corpus:
    if not corpus.sentences:
        message = f"{corpus.source}: no sentences (the file is empty, or holds only blank lines and -DOCSTART-)"
        if not allow_empty:
            raise DataFormatError(message)
        logger.warning(message)
    return corpus


def read_conll(path: str | Path, scheme: str = "auto", allow_empty: bool = True) -> Corpus:
    """Read a `token<TAB>tag` file or a whitespace-separated multi-column CoNLL file.

    The first column is the token and the last one the tag; blank lines end sentences; `-DOCSTART-` lines are
    skipped. Tags may be BIO, IOB1 or BIOES and are decoded to spans. Lines may end in `\\n`, `\\r\\n` or a lone
    `\\r`; a leading byte order mark is ignored.

    Args:
        path (`str` or `Path`):
            The file, UTF-8.
        scheme (`str`, *optional*, defaults to `"auto"`):
            `auto` (BIOES if any E-/S-/L-/U- tag occurs, else BIO), `bio`, `iob1` or `bioes`.
        allow_empty (`bool`, *optional*, defaults to `True`):
            Whether a file without sentences is read (with a warning) rather than refused.

    Returns:
        `Corpus`: `corpus.repairs` lists the `I-` tags that started an entity in a BIO/BIOES file.

    Raises:
        `DataFormatError`: naming `path:line` for non-UTF-8 bytes, a missing tag, a control character in a token or tag,
            or a tag outside the scheme; naming `path` for a file without sentences when `allow_empty` is False.
    """
    check_scheme(scheme)
    path = Path(path)
    rows: list[tuple[list[str], list[str], list[str], int]] = []  # tokens, tags, locations, first line
    tokens, tags, where = [], [], []
    for lineno, line in _file_lines(path):
        if not line.strip() or line.split()[0] == "-DOCSTART-":
            if tokens:
                rows.append((tokens, tags, where, int(where[0].rsplit(":", 1)[1])))
                tokens, tags, where = [], [], []
            continue
        columns = line.split("\t") if "\t" in line else line.split()
        columns = [c.strip() for c in columns]
        if len(columns) < 2 or not columns[-1]:
            raise DataFormatError(f"{path}:{lineno}: missing tag for token {columns[0]!r}; expected 'token<TAB>tag'")
        if not columns[0] or any(ch.isspace() for ch in columns[0]):
            raise DataFormatError(f"{path}:{lineno}: token {columns[0]!r} is empty or contains whitespace")
        for what, value in (("token", columns[0]), ("tag", columns[-1])):
            if control_character(value):
                raise DataFormatError(
                    f"{path}:{lineno}: {what} {value!r} contains the control character "
                    f"{control_character(value)!r}; remove it (the file may be binary or corrupt)"
                )
        tokens.append(columns[0])
        tags.append(columns[-1])
        where.append(f"{path}:{lineno}")
    if tokens:
        rows.append((tokens, tags, where, int(where[0].rsplit(":", 1)[1])))

    all_tags = [t for row in rows for t in row[1]]
    all_where = [w for row in rows for w in row[2]]
    concrete = validate_tags(all_tags, all_where, scheme)
    corpus = Corpus([], str(path))
    for toks, tgs, locs, first_line in rows:
        sentence_id = f"{path.name}:{first_line}"
        corpus.sentences.append(decode_sentence(toks, tgs, locs, concrete, sentence_id, corpus.repairs))
    return _check_not_empty(report_repairs(corpus), allow_empty)


def write_bio(path: str | Path, sentences: Iterable[Sentence]) -> None:
    """Write sentences as `token<TAB>BIO-tag` lines with a blank line after each sentence (UTF-8, `\\n`)."""
    lines = []
    for sentence in sentences:
        for token, tag in zip(sentence.tokens, sentence.to_bio()):
            if not token or any(ch.isspace() for ch in token):
                raise DataFormatError(f"sentence {sentence.id or '?'}: token {token!r} is empty or has whitespace")
            lines.append(f"{token}\t{tag}\n")
        lines.append("\n")
    atomic_write_text(path, "".join(lines))


def read_jsonl(path: str | Path, allow_empty: bool = True) -> Corpus:
    """Read JSONL lines `{"text": ..., "entities": [{"start": int, "end": int, "type": str}, ...]}`.

    Offsets are characters into `text`, end exclusive. The text is split on whitespace and, in addition, at every
    entity boundary, so each entity covers whole tokens and no annotation is lost. An optional `"id"` field is kept.
    Blank lines are skipped.

    Args:
        path (`str` or `Path`):
            The file, UTF-8.
        allow_empty (`bool`, *optional*, defaults to `True`):
            Whether a file without records is read (with a warning) rather than refused.

    Raises:
        `DataFormatError`: naming `path:line` and the field for invalid JSON, missing fields, offsets that are not
            integers or lie outside the text, control characters, empty or overlapping entities.
    """
    path = Path(path)
    corpus = Corpus([], str(path))
    for lineno, line in _file_lines(path):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        record = parse_json(line, where)
        sentence = sentence_from_char_spans(record, where)
        sentence.id = str(record.get("id", f"{path.name}:{lineno}"))
        corpus.sentences.append(sentence)
    return _check_not_empty(corpus, allow_empty)


def sentence_from_char_spans(record: dict[str, Any], where: str = "record") -> Sentence:
    """Build a `Sentence` from `{"text", "entities": [{"start", "end", "type"}]}` (see `read_jsonl`)."""
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataFormatError(f"{where}: field 'text' is missing or not a string")
    entities = record.get("entities", [])
    if not isinstance(entities, list):
        raise DataFormatError(f"{where}: field 'entities' must be a list")
    char_spans = []
    for k, ent in enumerate(entities):
        field_name = f"entities[{k}]"
        if not isinstance(ent, dict) or not all(key in ent for key in ("start", "end", "type")):
            raise DataFormatError(f"{where}: field '{field_name}' needs 'start', 'end' and 'type'")
        char_spans.append((ent["start"], ent["end"], ent["type"], field_name))
    return sentence_from_offsets(text, char_spans, where)


def sentence_from_offsets(text: str, char_spans: Sequence[tuple[Any, Any, Any, str]], where: str) -> Sentence:
    """Tokenise `text` on whitespace and at every entity edge, and turn character spans into word spans.

    Splitting at the edges as well as on whitespace keeps every annotation: `"(Paris)"` annotated on `Paris` gives
    the words `(`, `Paris`, `)`. Whitespace at an entity's edges is trimmed (common in hand-made data).

    Args:
        text (`str`):
            The annotated text.
        char_spans (`Sequence[tuple[Any, Any, Any, str]]`):
            `(start, end, type, field)` per entity: character offsets into `text` (end exclusive), the type, and the
            name of the field it came from, for error messages. Values are checked here.
        where (`str`):
            The file and line or record, for error messages.

    Raises:
        `DataFormatError`: naming `where` and the field for offsets that are not integers or lie outside the text, a
            type that is empty or has whitespace, a control character, an entity of only whitespace, or overlaps.
    """
    if control_character(text):
        raise DataFormatError(f"{where}: field 'text' contains the control character {control_character(text)!r}")
    checked = []
    for start, end, etype, field_name in char_spans:
        for key, value in (("start", start), ("end", end)):
            if not isinstance(value, int) or isinstance(value, bool):  # JSON true/false would read as 1/0
                raise DataFormatError(
                    f"{where}: field '{field_name}.{key}' must be an integer character offset, got {json.dumps(value)}"
                )
        if not 0 <= start < end <= len(text):
            raise DataFormatError(
                f"{where}: field '{field_name}' has offsets [{start}, {end}) outside the text (length {len(text)}); "
                "expected 0 <= start < end <= length"
            )
        if not isinstance(etype, str) or not etype or any(ch.isspace() for ch in etype) or control_character(etype):
            raise DataFormatError(
                f"{where}: field '{field_name}.type' must be a non-empty string without spaces or control characters"
            )
        # Offsets that include surrounding whitespace are common in hand-made data; trim rather than reject.
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            raise DataFormatError(f"{where}: field '{field_name}' covers only whitespace")
        checked.append((start, end, etype, field_name))
    checked.sort()
    for (_, e1, _, f1), (s2, _, _, f2) in zip(checked, checked[1:]):
        if s2 < e1:
            raise DataFormatError(f"{where}: fields '{f1}' and '{f2}' overlap; only flat (non-nested) NER is supported")

    cuts = {s for s, _, _, _ in checked} | {e for _, e, _, _ in checked}
    tokens: list[str] = []
    token_starts: list[int] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        end = pos + 1
        while end < len(text) and not text[end].isspace() and end not in cuts:
            end += 1
        tokens.append(text[pos:end])
        token_starts.append(pos)
        pos = end
    index_of_start = {s: i for i, s in enumerate(token_starts)}
    spans = []
    for start, end, etype, _ in checked:
        first = index_of_start[start]
        last = first
        while last < len(tokens) and token_starts[last] < end:
            last += 1
        spans.append(Span(first, last, etype))
    return Sentence(tokens, spans)


# Characters `str.splitlines` ends a line at besides \n and \r. JSON leaves them raw inside strings with
# `ensure_ascii=False`, so a reader that splits with `splitlines` would cut a record in two; they are escaped instead.
_LINE_BREAKS = {ch: f"\\u{ord(ch):04x}" for ch in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def jsonl_line(record: Any) -> str:
    """`record` as one JSONL line (with its `\\n`): UTF-8 text kept readable, every line-breaking character escaped."""
    text = json.dumps(record, ensure_ascii=False)
    if any(ch in text for ch in _LINE_BREAKS):
        text = "".join(_LINE_BREAKS.get(ch, ch) for ch in text)
    return text + "\n"


def write_jsonl(path: str | Path, sentences: Iterable[Sentence]) -> None:
    """Write sentences as JSONL with character offsets into the space-joined text (the inverse of `read_jsonl`)."""
    with atomic_open(path) as out:
        for sentence in sentences:
            offsets = sentence.token_char_offsets()
            entities = [
                {"start": offsets[s.start][0], "end": offsets[s.end - 1][1], "type": s.type} for s in sentence.spans
            ]
            record = {"id": sentence.id, "text": sentence.text, "entities": entities}
            out.write(jsonl_line(record))


def from_hf_dataset(
    dataset: Any,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    label_names: Sequence[str] | None = None,
    scheme: str = "auto",
    name: str | None = None,
) -> Corpus:
    """Convert a `datasets.Dataset` with token and tag columns (e.g. `conll2003`, `wnut_17`) into a `Corpus`.

    Args:
        dataset (`Any`):
            A split of an HF dataset.
        tokens_column (`str`, *optional*, defaults to `"tokens"`):
            Column with the list of tokens.
        tags_column (`str`, *optional*, defaults to `"ner_tags"`):
            Column with tag ids (a `Sequence(ClassLabel)`) or tag strings.
        label_names (`Sequence[str]`, *optional*):
            Id-to-tag names when the column has no ClassLabel feature.
        scheme (`str`, *optional*, defaults to `"auto"`):
            As in `read_conll`.
        name (`str`, *optional*):
            Used in error messages and sentence ids; defaults to the dataset's builder name and split.
    """
    check_scheme(scheme)
    name = name or f"{getattr(dataset.info, 'dataset_name', None) or 'dataset'}/{dataset.split or 'split'}"
    for column in (tokens_column, tags_column):
        if column not in dataset.column_names:
            raise DataFormatError(f"{name}: no column {column!r}; columns are {dataset.column_names}")
    if label_names is None:
        feature = dataset.features[tags_column]
        inner = getattr(feature, "feature", None)
        if inner is None and isinstance(feature, list) and feature:  # datasets stores List(ClassLabel) as [feature]
            inner = feature[0]
        label_names = getattr(inner, "names", None)
    rows, all_tags, all_where = [], [], []
    for index, row in enumerate(dataset):
        tokens, raw_tags = list(row[tokens_column]), list(row[tags_column])
        where = f"{name} row {index}"
        if len(tokens) != len(raw_tags):
            raise DataFormatError(f"{where}: {len(tokens)} tokens but {len(raw_tags)} tags")
        if raw_tags and not isinstance(raw_tags[0], str):
            if label_names is None:
                raise DataFormatError(
                    f"{name}: column {tags_column!r} holds ids but has no ClassLabel names; pass label_names"
                )
            raw_tags = [label_names[t] for t in raw_tags]
        rows.append((tokens, raw_tags, [where] * len(tokens), index))
        all_tags.extend(raw_tags)
        all_where.extend([where] * len(tokens))
    concrete = validate_tags(all_tags, all_where, scheme)
    corpus = Corpus([], name)
    for tokens, tags, where, index in rows:
        corpus.sentences.append(decode_sentence(tokens, tags, where, concrete, f"{name}:{index}", corpus.repairs))
    return report_repairs(corpus)


def load_hf_dataset(hub_id: str, split: str, **kwargs: Any) -> Corpus:
    """Load a split from the Hugging Face hub (needs network access) and convert it with `from_hf_dataset`."""
    import datasets  # deferred: importing datasets costs about a second

    return from_hf_dataset(datasets.load_dataset(hub_id, split=split), name=f"{hub_id}/{split}", **kwargs)
