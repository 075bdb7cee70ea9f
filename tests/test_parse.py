import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cllmfs_trainer.data.format import ANSWER_PREFIX, PROBLEM_KINDS, ParsedOutput, build_completion, parse_output
from cllmfs_trainer.data.io import Span
from cllmfs_trainer.inference.parse import ParseStats, SpanMatch, char_offsets, entities_to_spans, resolve_overlaps

EMPTY = build_completion([])
P = ANSWER_PREFIX

# --- parse_output: round trip -----------------------------------------------------------------------------------------

# A sentence word: any non-empty text without whitespace. Words holding a marker cannot be read back (documented).
words = st.text(min_size=1, max_size=8).filter(
    lambda w: w.split() == [w] and not any(m in w for m in ("<<<", ">>>", "<im_end>"))
)
entity_strings = st.lists(words, min_size=1, max_size=4).map(" ".join)
punctuated = st.sampled_from(
    [
        "Andrew Little",
        "Bo",
        "O'Brien",
        "U.S.",
        "Zoë",
        "São Paulo",
        "7",
        "#1",
        "$ 9.99",
        "<",
        ">",
        "<<",
        ">>",
        "a>>",
        "<<b",
        "-",
        "«Paris»",
        "北京",
        "☀️",
        "e-mail",
        "(",
        ")",
    ]
)


@given(st.lists(st.one_of(entity_strings, punctuated), max_size=8))
@settings(max_examples=300, deadline=None)
def test_round_trip_with_build_completion(entities):
    parsed = parse_output(build_completion(entities))
    assert parsed.entities == entities
    assert parsed.problems == []


@given(st.lists(st.one_of(entity_strings, punctuated), max_size=8))
@settings(max_examples=300, deadline=None)
def test_pointer_round_trip_with_build_completion(entities):
    parsed = parse_output(build_completion(entities, "pointer"), "pointer")
    assert parsed.entities == entities
    assert parsed.problems == []


@pytest.mark.parametrize(
    "body, entities, problems",
    [
        (" <im_end>", [], []),
        (" Bo >>> Ann Lee >>> <im_end>", ["Bo", "Ann Lee"], []),
        (" Bo >>> >>> <im_end>", ["Bo"], ["empty_entity"]),
        (" Bo >>> Ann <im_end>", ["Bo"], ["unbalanced"]),  # an entity never closed
        (" Bo >>> <im", ["Bo"], ["no_end"]),  # cut inside the end marker
        (" Bo >>> Ann", ["Bo"], ["no_end", "unbalanced"]),  # cut inside an entity
        (" <<< Bo >>> <im_end>", ["<<< Bo"], []),  # `<<<` is text in this format
    ],
)
def test_pointer_format_groups_end_at_close(body, entities, problems):
    parsed = parse_output(P + body, "pointer")
    assert (parsed.entities, parsed.problems) == (entities, problems)


def test_unknown_answer_format_is_an_error():
    with pytest.raises(ValueError, match="answer_format"):
        parse_output(EMPTY, "brackets")


@given(st.lists(st.sampled_from(["Bo", "Bo", "Andrew Little", "x"]), max_size=6))
def test_round_trip_keeps_repeats_in_order(entities):
    assert parse_output(build_completion(entities)).entities == entities


def test_empty_output_form_is_clean():
    assert parse_output(EMPTY) == ParsedOutput([], [])


# --- parse_output: what a real generation looks like ------------------------------------------------------------------


@pytest.mark.parametrize("lead", [" ", "\n", "  \n\t"])
def test_leading_whitespace_is_fine(lead):
    assert parse_output(lead + build_completion(["Bo"])) == ParsedOutput(["Bo"], [])


def test_whitespace_inside_prefix_and_groups_is_normalised():
    text = f"{P.replace(' ', '  ', 2)}\n<<<  Andrew \t Little >>><<<Bo>>>\n<im_end>"
    assert parse_output(text) == ParsedOutput(["Andrew Little", "Bo"], [])


def test_text_after_im_end_is_ignored():
    text = build_completion(["Bo"]) + " <<< Al >>> garbage <<< <im_end> >>>"
    assert parse_output(text) == ParsedOutput(["Bo"], [])


def test_missing_end_after_a_group_keeps_the_group():
    assert parse_output(f"{P} <<< Bo >>> <<< Al >>>") == ParsedOutput(["Bo", "Al"], ["no_end"])


def test_missing_end_cut_mid_group_drops_that_group():
    assert parse_output(f"{P} <<< Bo >>> <<< Andrew Lit") == ParsedOutput(["Bo"], ["no_end", "unbalanced"])
    assert parse_output(f"{P} <<< Bo >>> <<< Andrew >>") == ParsedOutput(["Bo"], ["no_end", "unbalanced"])
    assert parse_output(f"{P} <<< Bo >>> <<<") == ParsedOutput(["Bo"], ["no_end", "unbalanced"])


@pytest.mark.parametrize("tail", [" <", " <im", " <im_end", " <<"])
def test_missing_end_cut_mid_marker_is_only_no_end(tail):
    assert parse_output(f"{P} <<< Bo >>>{tail}") == ParsedOutput(["Bo"], ["no_end"])


def test_cut_inside_the_prefix():
    assert parse_output("<im_start> I can extract ent") == ParsedOutput([], ["no_prefix", "no_end"])


def test_unbalanced_open_before_a_complete_group():
    # The `>>>` belongs to the nearer `<<<`; the abandoned group yields nothing.
    text = f"{P} <<< Andrew <<< Bo >>> <im_end>"
    assert parse_output(text) == ParsedOutput(["Bo"], ["unbalanced"])


def test_unbalanced_open_at_the_end():
    assert parse_output(f"{P} <<< Bo >>> <<< Al <im_end>") == ParsedOutput(["Bo"], ["unbalanced"])


def test_stray_close_is_unbalanced():
    assert parse_output(f"{P} >>> <<< Bo >>> <im_end>") == ParsedOutput(["Bo"], ["unbalanced"])
    assert parse_output(f"{P} Al >>> <im_end>") == ParsedOutput([], ["unbalanced", "text_outside_markers"])


@pytest.mark.parametrize("group", ["<<< >>>", "<<<>>>", "<<< \n >>>"])
def test_empty_group(group):
    text = f"{P} {group} <<< Bo >>> <im_end>"
    assert parse_output(text) == ParsedOutput(["Bo"], ["empty_entity"])


def test_text_between_groups_and_after_prefix():
    text = f"{P} none, but <<< Bo >>> and <<< Al >>> . <im_end>"
    assert parse_output(text) == ParsedOutput(["Bo", "Al"], ["text_outside_markers"])


def test_text_before_the_prefix():
    text = f"Sure! {P} <<< Bo >>> <im_end>"
    assert parse_output(text) == ParsedOutput(["Bo"], ["text_outside_markers"])


def test_no_prefix_still_reads_groups():
    assert parse_output("<<< Bo >>> <<< Al >>> <im_end>") == ParsedOutput(["Bo", "Al"], ["no_prefix"])
    assert parse_output("<im_start> entities: <<< Bo >>> <im_end>") == ParsedOutput(
        ["Bo"], ["no_prefix", "text_outside_markers"]
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ParsedOutput([], ["no_prefix", "no_end"])),
        ("   \n", ParsedOutput([], ["no_prefix", "no_end"])),
        ("the the the the the", ParsedOutput([], ["no_prefix", "no_end", "text_outside_markers"])),
        ("<im_end>", ParsedOutput([], ["no_prefix"])),
        (">>> >>> <<<", ParsedOutput([], ["no_prefix", "no_end", "unbalanced"])),
        (
            "\x00\ufffd<<<<<<>>>>>>",
            ParsedOutput([], ["no_prefix", "no_end", "unbalanced", "empty_entity", "text_outside_markers"]),
        ),
    ],
)
def test_garbage(text, expected):
    assert parse_output(text) == expected


@given(
    st.lists(st.sampled_from(["<<<", ">>>", "<im_end>", "<im_start>", " ", "\n", "Bo", "<", ">", P]), max_size=20).map(
        "".join
    )
    | st.text(max_size=60)
)
@settings(max_examples=300, deadline=None)
def test_never_raises_and_reports_known_kinds(text):
    parsed = parse_output(text)
    assert set(parsed.problems) <= set(PROBLEM_KINDS)
    assert parsed.problems == sorted(parsed.problems, key=PROBLEM_KINDS.index)
    assert all(e and e == " ".join(e.split()) for e in parsed.entities)


# --- entities_to_spans ------------------------------------------------------------------------------------------------

SENT = "Andrew Little met Bo and Bo met Andrew Little in Zürich".split()


def test_entities_at_sentence_start_and_end():
    match = entities_to_spans(SENT, ["Andrew Little", "Zürich"], "PER")
    assert match == SpanMatch([Span(0, 2, "PER"), Span(10, 11, "PER")], [])


def test_repeated_entities_take_occurrences_in_order():
    match = entities_to_spans(SENT, ["Bo", "Andrew Little", "Bo", "Andrew Little"], "PER")
    assert match.spans == [Span(0, 2, "PER"), Span(3, 4, "PER"), Span(5, 6, "PER"), Span(7, 9, "PER")]
    assert match.not_found == []


def test_predicted_more_often_than_present():
    match = entities_to_spans(SENT, ["Bo", "Bo", "Bo", "Zürich", "Zürich"], "PER")
    assert match.spans == [Span(3, 4, "PER"), Span(5, 6, "PER"), Span(10, 11, "PER")]
    assert match.not_found == ["Bo", "Zürich"]


def test_string_not_in_sentence_and_non_aligned_substrings():
    match = entities_to_spans(SENT, ["Auckland", "Andrew Lit", "ndrew", "little", "Zurich", ""], "PER")
    assert match.spans == []
    assert match.not_found == ["Auckland", "Andrew Lit", "ndrew", "little", "Zurich", ""]


def test_occurrence_overlapping_a_taken_span_is_skipped():
    # "Andrew" inside the first "Andrew Little" is taken, so it goes to the next free "Andrew".
    match = entities_to_spans(SENT, ["Andrew Little", "Andrew", "Andrew"], "PER")
    assert match.spans == [Span(0, 2, "PER"), Span(7, 8, "PER")]
    assert match.not_found == ["Andrew"]


def test_unicode_tokens_and_whitespace_in_the_entity_string():
    tokens = ["Søren", "Björk", "visited", "São", "Paulo", "☀️", "北京"]
    match = entities_to_spans(tokens, ["Søren  Björk", "São\tPaulo", "北京", "☀️"], "X")
    assert match.spans == [Span(0, 2, "X"), Span(3, 5, "X"), Span(5, 6, "X"), Span(6, 7, "X")]
    # The same letters in another Unicode form (decomposed ã) are a different string: matching is exact.
    assert entities_to_spans(tokens, ["Sa\u0303o Paulo"], "X").not_found == ["Sa\u0303o Paulo"]


def test_empty_sentence_and_no_entities():
    assert entities_to_spans([], ["Bo"], "X") == SpanMatch([], ["Bo"])
    assert entities_to_spans(SENT, [], "X") == SpanMatch([], [])


# --- char_offsets -----------------------------------------------------------------------------------------------------


def test_char_offsets_with_irregular_whitespace_and_unicode():
    text = "  Søren\tBjörk \n\n visited  São\u00a0Paulo ☀️ 北京\n"
    tokens = text.split()
    offsets = char_offsets(text, tokens)
    assert [text[s:e] for s, e in offsets] == tokens
    assert tokens == ["Søren", "Björk", "visited", "São", "Paulo", "☀️", "北京"]
    assert offsets[0] == (2, 7)


def test_char_offsets_of_single_spaced_text_match_sentence_offsets():
    from cllmfs_trainer.data.io import Sentence

    sentence = Sentence(SENT)
    assert char_offsets(sentence.text, SENT) == sentence.token_char_offsets()


@pytest.mark.parametrize("tokens", [["Andrew"], ["Andrew", "Littl"], ["Andrew", "Little", "x"], ["Andrew Little"]])
def test_char_offsets_mismatch_raises(tokens):
    with pytest.raises(ValueError, match="tokens do not match"):
        char_offsets("Andrew  Little", tokens)


def test_char_offsets_empty():
    assert char_offsets(" \n", []) == []


# --- resolve_overlaps -------------------------------------------------------------------------------------------------

ORDER = ["PER", "ORG", "LOC"]


def test_nested_keeps_the_longer():
    spans = [Span(1, 3, "LOC"), Span(1, 4, "ORG"), Span(2, 3, "PER")]
    assert resolve_overlaps(spans, ORDER) == [Span(1, 4, "ORG")]


def test_partial_overlap_keeps_the_longer_then_the_earlier_type():
    assert resolve_overlaps([Span(0, 2, "PER"), Span(1, 4, "LOC")], ORDER) == [Span(1, 4, "LOC")]
    assert resolve_overlaps([Span(2, 4, "PER"), Span(1, 3, "LOC")], ORDER) == [Span(2, 4, "PER")]
    # Same length, same type: the earlier start wins.
    assert resolve_overlaps([Span(2, 4, "LOC"), Span(1, 3, "LOC")], ORDER) == [Span(1, 3, "LOC")]


def test_identical_spans_of_two_types_keep_the_earlier_type():
    assert resolve_overlaps([Span(0, 2, "LOC"), Span(0, 2, "ORG")], ORDER) == [Span(0, 2, "ORG")]
    assert resolve_overlaps([Span(0, 2, "LOC"), Span(0, 2, "ORG")], ["LOC", "ORG"]) == [Span(0, 2, "LOC")]
    # A type missing from type_order comes after the listed ones; duplicates collapse.
    assert resolve_overlaps([Span(0, 2, "MISC"), Span(0, 2, "LOC"), Span(0, 2, "LOC")], ORDER) == [Span(0, 2, "LOC")]


def test_disjoint_spans_are_untouched_and_sorted():
    spans = [Span(5, 6, "LOC"), Span(0, 2, "PER"), Span(2, 4, "ORG")]
    assert resolve_overlaps(spans, ORDER) == sorted(spans)
    assert resolve_overlaps([], ORDER) == []


def test_invalid_span_raises():
    with pytest.raises(ValueError, match="invalid span"):
        resolve_overlaps([Span(3, 3, "PER")], ORDER)


def overlap(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


span_lists = st.lists(
    st.builds(
        lambda start, length, label: Span(start, start + length, label),
        st.integers(0, 12),
        st.integers(1, 5),
        st.sampled_from(ORDER + ["MISC"]),
    ),
    max_size=12,
)


@given(span_lists, st.permutations(ORDER))
@settings(max_examples=300, deadline=None)
def test_resolve_overlaps_properties(spans, order):
    kept = resolve_overlaps(spans, order)
    assert kept == sorted(kept)
    assert all(not overlap(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :])
    assert all(span in spans for span in kept)
    dropped = list(spans)
    for span in kept:
        dropped.remove(span)
    assert all(any(overlap(d, k) for k in kept) for d in dropped)
    # Nothing longer than a kept span is ever dropped in its favour.
    assert all(len(range(d.start, d.end)) <= max(k.end - k.start for k in kept if overlap(d, k)) for d in dropped)
    assert resolve_overlaps(list(reversed(spans)), order) == kept  # input order does not matter


# --- ParseStats -------------------------------------------------------------------------------------------------------


def test_parse_stats_counts():
    stats = ParseStats()
    outputs = [
        build_completion(["Bo", "Al"]),
        EMPTY,
        f"{P} <<< Bo >>> <<< Andr",
        "garbage",
        f"{P} <<< >>> <im_end>",
    ]
    for text in outputs:
        parsed = parse_output(text)
        stats.update(parsed, entities_to_spans(["Bo", "met", "Cy"], parsed.entities, "PER"))
    stats.update(parse_output(EMPTY))  # no match given: only the parse is counted
    assert (stats.outputs, stats.clean, stats.entities, stats.not_found) == (6, 3, 3, 1)
    assert stats.problems == {
        "no_end": 2,
        "unbalanced": 1,
        "no_prefix": 1,
        "text_outside_markers": 1,
        "empty_entity": 1,
    }
    assert stats.as_dict() == {
        "outputs": 6,
        "clean": 3,
        "problems": {"no_prefix": 1, "no_end": 2, "unbalanced": 1, "empty_entity": 1, "text_outside_markers": 1},
        "entities": 3,
        "not_found": 1,
    }


def test_parse_stats_as_dict_lists_every_kind_and_is_json_ready():
    import json

    summary = ParseStats().as_dict()
    assert summary["problems"] == dict.fromkeys(PROBLEM_KINDS, 0)
    assert json.loads(json.dumps(summary)) == summary
