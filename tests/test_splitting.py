from hypothesis import given, settings
from hypothesis import strategies as st

from cllmfs_trainer.data import Sentence, Span, merge_chunk_spans, split_sentence


@st.composite
def sentences_with_spans(draw):
    n = draw(st.integers(1, 40))
    tokens = [draw(st.sampled_from(["a", "bb", "ccc", "Zürich", ",", "42"])) for _ in range(n)]
    spans, pos = [], 0
    while pos < n:
        if draw(st.booleans()):
            length = draw(st.integers(1, min(6, n - pos)))
            spans.append(Span(pos, pos + length, draw(st.sampled_from(["X", "Y"]))))
            pos += length
        else:
            pos += draw(st.integers(1, 3))
    return Sentence(tokens, spans, id="s")


@settings(max_examples=300, deadline=None)
@given(sentences_with_spans(), st.integers(1, 12), st.booleans())
def test_chunks_cover_sentence_and_never_cut_an_entity(sentence, budget, by_length):
    count = len if by_length else None
    chunks = split_sentence(sentence, budget, count)
    assert [t for c in chunks for t in c.sentence.tokens] == sentence.tokens
    assert [c.offset for c in chunks] == [sum(len(c.sentence.tokens) for c in chunks[:i]) for i in range(len(chunks))]
    assert merge_chunk_spans(chunks, [c.sentence.spans for c in chunks]) == sentence.spans
    for chunk in chunks:
        cost = sum(count(w) if count else 1 for w in chunk.sentence.tokens)
        if cost > budget:  # only when it cannot be cut: one word, or one entity that alone is too long
            tokens, spans = chunk.sentence.tokens, chunk.sentence.spans
            assert len(tokens) == 1 or spans[0] == Span(0, len(tokens), spans[0].type)


def test_short_sentence_is_one_chunk_with_its_id():
    sentence = Sentence(["a", "b"], [Span(0, 1, "X")], id="f.txt:3")
    (chunk,) = split_sentence(sentence, 10)
    assert chunk.offset == 0 and chunk.sentence.tokens == ["a", "b"] and chunk.sentence.id == "f.txt:3#0"


def test_split_points_avoid_entities():
    sentence = Sentence(list("abcdefgh"), [Span(2, 5, "X")])
    chunks = split_sentence(sentence, 4)
    assert [c.sentence.tokens for c in chunks] == [["a", "b"], ["c", "d", "e", "f"], ["g", "h"]]
    assert chunks[1].sentence.spans == [Span(0, 3, "X")]


def test_entity_longer_than_budget_is_kept_whole(caplog):
    sentence = Sentence(list("abcdef"), [Span(1, 5, "X")], id="long")
    chunks = split_sentence(sentence, 2)
    assert [c.sentence.tokens for c in chunks] == [["a"], ["b", "c", "d", "e"], ["f"]]
    assert "cannot be cut" in caplog.text
