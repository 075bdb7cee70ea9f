import json

import pytest
from helpers import shared_dataset

from cllmfs_trainer.data import DataFormatError, Sentence, Span, read_conll, read_jsonl, write_bio, write_jsonl
from cllmfs_trainer.data.io import from_hf_dataset
from cllmfs_trainer.data.registry import SHIPPED_DATA
from cllmfs_trainer.data.tags import tags_to_spans


def write(tmp_path, text, name="data.txt", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_tab_file_reads_spans_and_ids(tmp_path):
    path = write(tmp_path, "Andrew\tB-PER\nLittle\tI-PER\nspoke\tO\n\nIn\tO\nNew\tB-LOC\nYork\tI-LOC\n")
    corpus = read_conll(path)
    assert [s.tokens for s in corpus] == [["Andrew", "Little", "spoke"], ["In", "New", "York"]]
    assert corpus[0].spans == [Span(0, 2, "PER")]
    assert corpus[1].spans == [Span(1, 3, "LOC")]
    assert [s.id for s in corpus] == ["data.txt:1", "data.txt:5"]
    assert corpus.repairs == []


def test_multicolumn_conll_uses_first_and_last_column(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
    corpus = read_conll(write(tmp_path, text))
    assert len(corpus) == 1
    assert corpus[0].tokens == ["EU", "rejects", "German"]
    assert corpus[0].spans == [Span(0, 1, "ORG"), Span(2, 3, "MISC")]


def test_type_names_with_dashes_and_slashes(tmp_path):
    corpus = read_conll(write(tmp_path, "Rome\tB-location-GPE\nwar\tB-event-attack/battle/war\n"))
    assert [s.type for s in corpus[0].spans] == ["location-GPE", "event-attack/battle/war"]


@pytest.mark.parametrize(
    "tags, scheme, spans, repaired",
    [
        (["I-PER", "I-PER", "B-PER", "O"], "iob1", [(0, 2, "PER"), (2, 3, "PER")], []),
        (["I-PER", "I-PER", "O"], "bio", [(0, 2, "PER")], [0]),
        (["B-PER", "I-LOC", "O"], "bio", [(0, 1, "PER"), (1, 2, "LOC")], [1]),
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"], "bioes", [(0, 1, "PER"), (1, 4, "LOC")], []),
        (["U-PER", "B-LOC", "L-LOC"], "bioes", [(0, 1, "PER"), (1, 3, "LOC")], []),
        (["S-PER", "S-PER"], "bioes", [(0, 1, "PER"), (1, 2, "PER")], []),
        (["E-PER", "O"], "bioes", [(0, 1, "PER")], [0]),
    ],
)
def test_schemes_normalise_to_spans(tags, scheme, spans, repaired):
    found, fixed = tags_to_spans(tags, scheme)
    assert [tuple(s) for s in found] == spans
    assert fixed == repaired


def test_bioes_and_iob1_files_round_trip_to_bio(tmp_path):
    bioes = read_conll(write(tmp_path, "A\tS-X\nb\tB-Y\nc\tI-Y\nd\tE-Y\n"))  # detected as BIOES
    assert bioes[0].to_bio() == ["B-X", "B-Y", "I-Y", "I-Y"]
    iob1 = read_conll(write(tmp_path, "A\tI-X\nb\tB-X\nc\tO\n", "iob1.txt"), scheme="iob1")
    assert iob1[0].to_bio() == ["B-X", "B-X", "O"]
    assert iob1.repairs == []


def test_orphan_i_tags_are_repaired_and_reported(tmp_path, caplog):
    path = write(tmp_path, "a\tO\nb\tI-PER\nc\tI-PER\n\nd\tI-LOC\n")
    corpus = read_conll(path)
    assert corpus[0].spans == [Span(1, 3, "PER")]
    assert corpus[1].spans == [Span(0, 1, "LOC")]
    assert corpus.repairs == [(f"{path}:2", "I-PER"), (f"{path}:5", "I-LOC")]
    assert "2 I- tag(s)" in caplog.text and f"{path}:2" in caplog.text


@pytest.mark.parametrize(
    "content, line, words",
    [
        ("a\tO\nb\n", 2, "missing tag"),
        ("a\tO\nb\t\n", 2, "missing tag"),
        ("a\tO\n\nb\tB_PER\n", 3, "neither 'O'"),
        ("a\tO\nb\tX-PER\n", 2, "belongs to no known tag scheme"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, content, line, words):
    path = write(tmp_path, content)
    with pytest.raises(DataFormatError, match=f"{path}:{line}: .*{words}"):
        read_conll(path)


def test_bioes_prefix_in_declared_bio_file_is_an_error(tmp_path):
    path = write(tmp_path, "a\tO\nb\tS-PER\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: tag prefix 'S' is not part of the BIO scheme"):
        read_conll(path, scheme="bio")


def test_unknown_scheme_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown tag scheme 'bilo'"):
        read_conll(write(tmp_path, "a\tO\n"), scheme="bilo")


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path, b"caf\xc3\xa9\tO\nna\xefve\tO\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: byte 0xef at column 3 is not valid UTF-8"):
        read_conll(path)


def test_bio_round_trip_keeps_everything(tmp_path):
    sentences = [
        Sentence(["Andrew", "Little", "visited", "São", "Paulo", "😀"], [Span(0, 2, "person"), Span(3, 5, "location")]),
        Sentence(["nothing", "here"], []),
        Sentence(["Rome"], [Span(0, 1, "location-GPE")]),
    ]
    path = tmp_path / "out.txt"
    write_bio(path, sentences)
    again = read_conll(path)
    assert [(s.tokens, s.spans) for s in again] == [(s.tokens, s.spans) for s in sentences]


def test_write_bio_rejects_tokens_with_whitespace(tmp_path):
    with pytest.raises(DataFormatError, match="has whitespace"):
        write_bio(tmp_path / "x.txt", [Sentence(["New York"], [Span(0, 1, "LOC")], id="s1")])


def test_shipped_wnut17_round_trips_byte_for_byte(tmp_path):
    for split in ("train", "dev", "test"):
        source = SHIPPED_DATA / "wnut17" / f"{split}.txt"
        corpus = read_conll(source)
        write_bio(tmp_path / f"{split}.txt", corpus)
        assert (tmp_path / f"{split}.txt").read_bytes() == source.read_bytes()
    assert len(read_conll(SHIPPED_DATA / "wnut17" / "train.txt")) == 3394


@pytest.mark.parametrize("dataset", ["wnut17", "conll2003", "ontonotes5", "gum", "fewnerd_inter"])
def test_real_files_match_their_published_counts(dataset):
    folder = shared_dataset(dataset)
    stats = json.loads((folder / "stats.json").read_text())["splits"]
    for split, expected in stats.items():
        corpus = read_conll(folder / f"{split}.txt")
        assert corpus.repairs == [], f"{dataset}/{split} is documented as valid BIO"
        assert len(corpus) == expected["sentences"]
        assert sum(len(s.tokens) for s in corpus) == expected["tokens"]
        per_type = {}
        for sentence in corpus:
            for span in sentence.spans:
                per_type[span.type] = per_type.get(span.type, 0) + 1
        assert per_type == expected["per_type"]


def test_jsonl_char_spans_split_tokens_at_entity_boundaries(tmp_path):
    record = {
        "text": "Visit (Paris) now,Berlin!",
        "entities": [{"start": 7, "end": 12, "type": "LOC"}, {"start": 18, "end": 24, "type": "LOC"}],
    }
    corpus = read_jsonl(write(tmp_path, json.dumps(record) + "\n\n", "d.jsonl"))
    sentence = corpus[0]
    assert [sentence.span_text(s) for s in sentence.spans] == ["Paris", "Berlin"]
    assert sentence.tokens == ["Visit", "(", "Paris", ")", "now,", "Berlin", "!"]


def test_jsonl_trims_whitespace_in_offsets(tmp_path):
    record = {"text": "see  Big Ben  today", "entities": [{"start": 4, "end": 13, "type": "FAC"}]}
    sentence = read_jsonl(write(tmp_path, json.dumps(record), "d.jsonl"))[0]
    assert sentence.span_text(sentence.spans[0]) == "Big Ben"


@pytest.mark.parametrize(
    "line, words",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"entities": []}), "field 'text' is missing"),
        (json.dumps({"text": "ab", "entities": [{"start": 0, "end": 5, "type": "X"}]}), r"'entities\[0\]' has offsets"),
        (json.dumps({"text": "ab", "entities": [{"start": 0, "type": "X"}]}), r"'entities\[0\]' needs"),
        (
            json.dumps(
                {
                    "text": "a b c",
                    "entities": [{"start": 0, "end": 3, "type": "X"}, {"start": 2, "end": 5, "type": "Y"}],
                }
            ),
            "overlap",
        ),
        (json.dumps({"text": "a  b", "entities": [{"start": 1, "end": 3, "type": "X"}]}), "only whitespace"),
    ],
)
def test_jsonl_errors_name_line_and_field(tmp_path, line, words):
    path = write(tmp_path, json.dumps({"text": "ok", "entities": []}) + "\n" + line + "\n", "d.jsonl")
    with pytest.raises(DataFormatError, match=rf"{path}:2: .*{words}"):
        read_jsonl(path)


def test_jsonl_round_trip(tmp_path):
    sentences = [Sentence(["Dr.", "Jane", "Doe", "in", "Zürich"], [Span(1, 3, "PER"), Span(4, 5, "LOC")], id="a")]
    write_jsonl(tmp_path / "x.jsonl", sentences)
    again = read_jsonl(tmp_path / "x.jsonl")
    assert (again[0].tokens, again[0].spans, again[0].id) == (sentences[0].tokens, sentences[0].spans, "a")


def test_hf_dataset_with_classlabel_names():
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"tokens": [["Andrew", "Little", "in", "Paris"], ["x"]], "ner_tags": [[1, 2, 0, 3], [0]]}, features=features
    )
    corpus = from_hf_dataset(ds, name="toy/train")
    assert corpus[0].spans == [Span(0, 2, "PER"), Span(3, 4, "LOC")]
    assert corpus[0].id == "toy/train:0"


def test_hf_dataset_errors_name_the_row():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"tokens": [["a"], ["b", "c"]], "ner_tags": [["O"], ["O"]]})
    with pytest.raises(DataFormatError, match="toy row 1: 2 tokens but 1 tags"):
        from_hf_dataset(ds, name="toy")
    ds = datasets.Dataset.from_dict({"words": [["a"]], "ner_tags": [["O"]]})
    with pytest.raises(DataFormatError, match="no column 'tokens'"):
        from_hf_dataset(ds, name="toy")
    ds = datasets.Dataset.from_dict({"tokens": [["a"]], "ner_tags": [[3]]})
    with pytest.raises(DataFormatError, match="pass label_names"):
        from_hf_dataset(ds, name="toy")
