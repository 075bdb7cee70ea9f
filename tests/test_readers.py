"""`read_examples`: every supported file format, detected by content and extension, and a bad file of each."""

import json

import pytest

from cllmfs_trainer.data import DataFormatError, Sentence, Span, write_bio, write_jsonl
from cllmfs_trainer.data.readers import detect_format, read_examples

TEXTS = [
    "Patients on metformin had fewer episodes of hypoglycaemia than those on insulin glargine.",
    "Aspirin-induced asthma is rare.",
    "No drug was given.",
]
# (text index, surface, type): character offsets are computed from the surface, as an annotation tool stores them.
ANNOTATIONS = [
    (0, "metformin", "drug"),
    (0, "hypoglycaemia", "disease"),
    (0, "insulin glargine", "drug"),
    (1, "Aspirin", "drug"),  # inside the word "Aspirin-induced": the word is split, the annotation kept
    (1, "asthma", "disease"),
]
EXPECTED = [
    Sentence(
        "Patients on metformin had fewer episodes of hypoglycaemia than those on insulin glargine .".split(),
        [Span(2, 3, "drug"), Span(7, 8, "disease"), Span(11, 13, "drug")],
    ),
    Sentence(["Aspirin", "-induced", "asthma", "is", "rare."], [Span(0, 1, "drug"), Span(2, 3, "disease")]),
    Sentence("No drug was given.".split(), []),
]


def offsets(index):
    text = TEXTS[index]
    return [
        (text.index(surface), text.index(surface) + len(surface), etype)
        for i, surface, etype in ANNOTATIONS
        if i == index
    ]


def assert_examples(corpus, expected=EXPECTED):
    assert [(s.tokens, s.spans) for s in corpus] == [(s.tokens, s.spans) for s in expected]


def test_doccano_jsonl_with_label_triples(tmp_path):
    path = tmp_path / "admin.jsonl"
    lines = [
        json.dumps({"id": 101 + i, "text": text, "label": [list(o) for o in offsets(i)], "Comments": []})
        for i, text in enumerate(TEXTS)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert detect_format(path) == "doccano"
    corpus = read_examples(path)
    assert [s.id for s in corpus] == ["101", "102", "103"]
    # The period after "glargine" is cut off at the entity's edge; the text otherwise splits on whitespace.
    assert corpus[0].tokens[-2:] == ["glargine", "."]
    assert_examples(corpus)


def test_doccano_entities_variant_with_objects(tmp_path):
    path = tmp_path / "export.jsonl"
    records = []
    for i, text in enumerate(TEXTS):
        entities = [
            {"id": k, "label": etype, "start_offset": start, "end_offset": end}
            for k, (start, end, etype) in enumerate(offsets(i))
        ]
        records.append(json.dumps({"id": i, "text": text, "entities": entities, "relations": []}))
    path.write_text("\n".join(records), encoding="utf-8")
    assert detect_format(path) == "doccano"
    assert_examples(read_examples(path))


def test_our_jsonl_and_what_write_jsonl_writes(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, EXPECTED)
    assert detect_format(path) == "jsonl"
    assert_examples(read_examples(path))


def test_bio_file_detected_whatever_its_extension(tmp_path):
    path = tmp_path / "train.bio"
    write_bio(path, EXPECTED)
    assert detect_format(path) == "conll"
    assert_examples(read_examples(path))


def label_studio_task(index, annotations):
    return {
        "id": 7 + index,
        "annotations": annotations,
        "file_upload": "notes.json",
        "drafts": [],
        "predictions": [],
        "data": {"text": TEXTS[index]},
        "meta": {},
        "inner_id": index + 1,
        "total_annotations": len(annotations),
    }


def label_studio_annotation(index, cancelled=False):
    results = [
        {
            "value": {"start": start, "end": end, "text": TEXTS[index][start:end], "labels": [etype]},
            "id": f"r{index}{start}",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "origin": "manual",
        }
        for start, end, etype in offsets(index)
    ]
    return {"id": 40 + index, "completed_by": 1, "result": results, "was_cancelled": cancelled, "ground_truth": False}


def test_label_studio_export(tmp_path, caplog):
    tasks = [label_studio_task(i, [label_studio_annotation(i)]) for i in range(3)]
    tasks[0]["annotations"].insert(0, {"id": 1, "result": [], "was_cancelled": True})  # skipped, not the first read
    relation = {"from_id": "a", "to_id": "b", "type": "relation", "direction": "right", "labels": []}
    tasks[1]["annotations"][0]["result"].append(relation)
    tasks.append({"id": 99, "annotations": [], "data": {"text": "An unlabelled note."}})
    path = tmp_path / "project-1-at-2026-12-06.json"
    path.write_text(json.dumps(tasks, indent=2), encoding="utf-8")
    assert detect_format(path) == "label-studio"
    corpus = read_examples(path)
    assert_examples(corpus)
    assert [s.id for s in corpus] == ["7", "8", "9"]
    warnings = caplog.text
    assert "1 task(s) without an annotation were skipped" in warnings and "1 result(s) that are not" in warnings


@pytest.fixture
def docbin_path(tmp_path):
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    docs = []
    for i, text in enumerate(TEXTS):
        doc = nlp(text)
        doc.ents = [doc.char_span(start, end, label=etype, alignment_mode="strict") for start, end, etype in offsets(i)]
        docs.append(doc)
    path = tmp_path / "train.spacy"
    DocBin(docs=docs).to_disk(path)
    return path


def test_spacy_docbin(docbin_path):
    assert detect_format(docbin_path) == "spacy"
    corpus = read_examples(docbin_path)
    assert_examples(corpus)  # spaCy's own tokens do not matter: the text is split as for every format


def test_spacy_docbin_detected_by_content_too(docbin_path):
    renamed = docbin_path.with_name("train.bin")
    docbin_path.rename(renamed)
    assert detect_format(renamed) == "spacy"


BAD_FILES = [
    ("doccano.jsonl", '{"text": "Aspirin helps.", "label": [[0, 7]]}\n', "doccano.jsonl:1", "doccano JSONL"),
    (
        "doccano2.jsonl",
        '{"text": "Aspirin.", "label": [[0, 7, "drug"]]}\n{"text": "x", "label": [[0, 9, "drug"]]}\n',
        "doccano2.jsonl:2",
        "outside the text",
    ),
    (
        "ours.jsonl",
        '{"text": "Aspirin", "entities": [{"start": 0, "end": 7}]}\n',
        "ours.jsonl:1",
        "'start', 'end' and 'type'",
    ),
    ("broken.jsonl", '{"text": "Aspirin", "label": []}\n{"text": \n', "broken.jsonl:2", "invalid JSON"),
    ("tags.txt", "Aspirin\tB-drug\nhelps\n", "tags.txt:2", "expected 'token<TAB>tag'"),
    (
        "ls.json",
        '[{"data": {"text": "Aspirin"}, "annotations": [{"result": [{"type": "labels", "value": {"start": 0}}]}]}]',
        "ls.json: task 0",
        "Label Studio",
    ),
    ("ls_object.json", '[{"id": 3, "text": "Aspirin"}]', "ls_object.json: task 0 (id 3)", "Label Studio JSON export"),
    ("cut.json", '[{"data": {"text": "Aspirin"},\n "annotations": [', "cut.json:2", "Label Studio"),
    ("plain.json", "Aspirin B-drug\n", "plain.json", "expected JSON or JSONL"),
]


@pytest.mark.parametrize("name, content, where, expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_one_line_naming_the_file_the_record_and_the_format(tmp_path, name, content, where, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as error:
        read_examples(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(tmp_path / where)) and expected in message


def test_a_bad_docbin_names_the_format(tmp_path):
    pytest.importorskip("spacy")
    path = tmp_path / "train.spacy"
    path.write_bytes(b"\x78\x9cnot really zlib")
    with pytest.raises(DataFormatError, match=r"train\.spacy: not a spaCy DocBin .*expected a spaCy DocBin"):
        read_examples(path)


def test_overlapping_annotations_are_refused_not_dropped(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text('{"text": "insulin glargine", "label": [[0, 16, "drug"], [8, 16, "drug"]]}\n', encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"nested\.jsonl:1 \(doccano JSONL\): fields 'label\[0\]' and 'label\[1\]' overlap"
    ):
        read_examples(path)


def test_a_file_without_examples_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no labelled examples"):
        read_examples(path)
    assert len(read_examples(path, allow_empty=True)) == 0


def test_an_explicit_format_overrides_detection_and_an_unknown_one_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "Aspirin", "entities": []}\n', encoding="utf-8")
    assert len(read_examples(path, format="doccano")) == 1
    with pytest.raises(DataFormatError, match="unknown format 'csv'"):
        read_examples(path, format="csv")
