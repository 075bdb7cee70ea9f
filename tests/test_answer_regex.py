"""The answer regex (`cllmfs_trainer.inference.answer_regex`) against the constraint it mirrors: every answer the
token automaton accepts matches it, entities that are no run of the sentence do not, metacharacters are literal,
and its size on a 128-word sentence stays linear."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.format import ANSWER_FORMATS, build_completion
from cllmfs_trainer.inference.answer_pieces import DEFAULT_MAX_ENTITY_WORDS, candidate_runs
from cllmfs_trainer.inference.answer_regex import answer_regex, escape_literal, run_regex
from cllmfs_trainer.inference.automaton import EntityAutomaton
from cllmfs_trainer.models import ensure_pad_token

# Words from a small alphabet repeat often (shared trie branches) and carry every regex metacharacter.
WORD = st.text(alphabet="ab.+*?()[]{}|^$\\<>-#~", min_size=1, max_size=4)
SENTENCE = st.lists(WORD, min_size=1, max_size=14)
FORMAT = st.sampled_from(ANSWER_FORMATS)
TOKENIZER_WORDS = ["Ann", "Lee", "met", "Bo", "in", "Rome", "U.S.", "C++", "(", "$", "Zoë"]


def _matches(words, entities, answer_format, max_entity_words=DEFAULT_MAX_ENTITY_WORDS) -> bool:
    pattern = answer_regex(words, answer_format, max_entity_words)
    return re.fullmatch(pattern, build_completion(entities, answer_format)) is not None


@settings(max_examples=200, deadline=None)
@given(words=SENTENCE, answer_format=FORMAT, data=st.data())
def test_answers_built_from_runs_of_the_sentence_match(words, answer_format, data):
    """Any list of runs of at most `max_entity_words` words, in the project's own answer text, matches."""
    max_words = data.draw(st.integers(1, 12), label="max_entity_words")
    runs = []
    for _ in range(data.draw(st.integers(0, 4), label="entities")):
        start = data.draw(st.integers(0, len(words) - 1))
        length = data.draw(st.integers(1, max_words))
        runs.append(" ".join(words[start : start + length]))
    assert _matches(words, runs, answer_format, max_words)
    pattern = answer_regex(words, answer_format, max_words)
    assert re.fullmatch(pattern, " " + build_completion(runs, answer_format))  # SentencePiece's leading space


@settings(max_examples=200, deadline=None)
@given(words=SENTENCE, answer_format=FORMAT, stray=st.lists(WORD, min_size=1, max_size=4), data=st.data())
def test_entities_that_are_no_run_of_the_sentence_do_not_match(words, answer_format, stray, data):
    """A stray entity (not a run, or a run longer than the bound) fails the whole answer, wherever it stands."""
    entity = " ".join(stray)
    max_words = data.draw(st.integers(1, 12), label="max_entity_words")
    runs = set(candidate_runs(words, max_words))
    if entity in runs:
        return  # hypothesis drew a real run: covered by the test above
    before = data.draw(st.lists(st.sampled_from(sorted(runs)), max_size=2), label="runs before")
    assert not _matches(words, [*before, entity], answer_format, max_words)
    assert not _matches(words, [entity, *before], answer_format, max_words)


@settings(max_examples=100, deadline=None)
@given(words=SENTENCE, max_words=st.integers(1, 12))
def test_the_runs_regex_accepts_exactly_the_candidate_runs(words, max_words):
    """Over every n-gram of the sentence (of any length), the regex accepts the constraint's runs and nothing else."""
    pattern = re.compile(run_regex(words, max_words))
    runs = set(candidate_runs(words, max_words))
    for start in range(len(words)):
        for stop in range(start + 1, len(words) + 1):
            text = " ".join(words[start:stop])
            assert (pattern.fullmatch(text) is not None) == (text in runs), text


def test_metacharacters_are_literal():
    words = ["U.S.", "C++", "(", "$", "\\", "a|b", "[x]", "{2}", "^", "?"]
    pattern = re.compile(run_regex(words))
    for word in words:
        assert pattern.fullmatch(word)
    for impostor in ["UxSx", "CCC", "C", "", "a", "b", "x", "xx", "\\\\", "U.S.C++", "( C++", "U.S. ("]:
        assert pattern.fullmatch(impostor) is None, impostor
    assert pattern.fullmatch("U.S. C++ ( $ \\")
    assert escape_literal("U.S. C++ ( $ \\") == "U\\.S\\. C\\+\\+ \\( \\$ \\\\"
    assert escape_literal("#~ <-") == "#~ <-"  # only regex syntax is escaped: other engines reject `\#`, `\~`, `\ `


@pytest.fixture(scope="module")
def sp_padded(sp_tokenizer):
    import copy

    return ensure_pad_token(copy.deepcopy(sp_tokenizer))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.sampled_from(TOKENIZER_WORDS), min_size=1, max_size=8),
    answer_format=FORMAT,
    data=st.data(),
)
def test_every_answer_the_token_automaton_accepts_matches(sp_padded, words, answer_format, data):
    """Random walks through `EntityAutomaton` (the constraint itself) down to EOS decode to answers that match."""
    automaton = EntityAutomaton.build(sp_padded, words, answer_format=answer_format)
    pattern = re.compile(answer_regex(words, answer_format))
    state, ids = automaton.start, []
    while not automaton.is_done(state):
        ending = automaton.ending_choice(state)
        if len(ids) > 60 and ending is not None:  # enough groups: end, or a walk could go on for ever
            token = ending
        else:
            token = data.draw(st.sampled_from(automaton.allowed(state)))
        ids.append(token)
        state = automaton.step(state, token)
        assert len(ids) < 300
    text = sp_padded.decode(ids, skip_special_tokens=True)
    assert pattern.fullmatch(text), text
    assert set(automaton.runs) == set(candidate_runs(words))  # the same runs on both sides


def test_size_on_a_128_word_sentence_is_linear():
    """128 words of WNUT'17 test text: the trie regex is a few kB, a quarter of an alternation of the same runs."""
    sentences = get_dataset("wnut17").load("test").sentences
    words = [word for sentence in sentences for word in sentence.tokens][:128]
    assert len(words) == 128
    pattern = answer_regex(words, "marked")
    alternation = "|".join(escape_literal(run) for run in candidate_runs(words))
    text_length = len(" ".join(words))
    # Each word is written once per run length that reaches it (at most 10), plus the groups' brackets.
    assert len(pattern) <= 16 * text_length, (len(pattern), text_length)
    assert len(pattern) * 3 < len(alternation)
    re.compile(pattern)
