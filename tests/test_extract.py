"""`EntityExtractor.extract`: raw texts in, `Entity(start, end, type, text, score)` out; types per call; scores from
the constrained decoding, checked against one unpadded forward pass; thresholds; nothing cut without a warning."""

import json
import logging
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from cllmfs_trainer.data import Sentence
from cllmfs_trainer.data.format import build_prompt, parse_output
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.constraints import build_automata
from cllmfs_trainer.inference.extract import Entity, sentence_spans
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.inference.greedy import constrained_greedy
from cllmfs_trainer.inference.parse import entities_to_spans
from cllmfs_trainer.inference.scores import group_scores

PERSON = EntityType("person", "person", "names of people")
PLACE = EntityType("location", "location", "names of places")
TEXT = "Ann Lee met Bo in  Rome.\nZoë ( 42 ) visited Reykjavík and Zoë again! Nothing to see here."

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_same_entities(found, expected):
    """Equal entities; scores equal up to the float noise of batches of other shapes (see `inference/answers.py`)."""
    assert [(e.start, e.end, e.type, e.text) for e in found] == [(e.start, e.end, e.type, e.text) for e in expected]
    assert [e.score for e in found] == pytest.approx([e.score for e in expected], rel=1e-4)


@pytest.fixture()
def extractor(tiny_llama, sp_left):
    torch.manual_seed(0)
    # A large end penalty: the random model names entities instead of ending, so there are entities to check.
    return EntityExtractor(
        tiny_llama(sp_left), sp_left, [PERSON, PLACE], batch_size=4, max_new_tokens=100, end_penalty=8
    )


def test_entities_carry_character_offsets_into_the_text_as_given(extractor):
    entities = extractor.extract(TEXT)
    assert entities and all(isinstance(e, Entity) for e in entities)
    for entity in entities:
        assert TEXT[entity.start : entity.end] == entity.text and entity.type in {"person", "location"}
        assert 0.0 < entity.score <= 1.0
    assert entities == sorted(entities, key=lambda e: (e.start, e.end, e.type))
    # One text, or a list: the same entities, per text, in order.
    both = extractor.extract([TEXT, "Bo"])
    assert_same_entities(both[0], entities)
    assert_same_entities(both[1], extractor.extract("Bo"))


def test_texts_are_split_into_sentences_and_offsets_map_back(extractor):
    spans = sentence_spans(TEXT, split_sentences=True)
    assert [TEXT[s:e].strip() for s, e in spans] == [
        "Ann Lee met Bo in  Rome.",
        "Zoë ( 42 ) visited Reykjavík and Zoë again!",
        "Nothing to see here.",
    ]
    # Each sentence on its own gives the same entities, shifted by where it starts.
    shifted = [
        Entity(e.start + start, e.end + start, e.type, e.text, e.score)
        for start, end in spans
        for e in extractor.extract(TEXT[start:end])
    ]
    assert_same_entities(extractor.extract(TEXT), shifted)
    whole = extractor.extract(TEXT, split_sentences=False)  # one prompt per type for the whole text
    assert all(TEXT[e.start : e.end] == e.text for e in whole)


def test_types_change_per_call(extractor):
    assert {e.type for e in extractor.extract(TEXT, types="person")} <= {"person"}
    drug = extractor.extract(TEXT, types={"drug": "names of medicines"})
    assert {e.type for e in drug} <= {"drug"}
    custom = EntityType("city", "city", "names of cities")
    before = extractor.stats.outputs
    extractor.extract(TEXT, types=[custom, "location"])
    assert extractor.stats.outputs - before == 3 * 2  # 3 sentences x 2 types
    with pytest.raises(
        UserError, match=r"'drug' is not a type of this extractor \(it knows \['location', 'person'\]\)"
    ):
        extractor.extract(TEXT, types=["drug"])
    with pytest.raises(UserError, match="each once"):
        extractor.extract(TEXT, types=["person", "person"])


def test_threshold_keeps_exactly_the_entities_scored_at_or_above_it(extractor):
    every = extractor.extract([TEXT, "Bo met Ann in Rome"])
    scores = sorted(e.score for text in every for e in text)
    middle = scores[len(scores) // 2]
    kept = extractor.extract([TEXT, "Bo met Ann in Rome"], threshold=middle)
    assert kept == [[e for e in text if e.score >= middle] for text in every]
    assert 0 < sum(map(len, kept)) < len(scores) or len(set(scores)) == 1
    with pytest.raises(UserError, match="between 0 and 1"):
        extractor.extract(TEXT, threshold=1.5)


def test_threshold_needs_scores(tiny_llama, sp_left):
    for options in ({"constrained": False}, {"compact_decoding": False}, {"do_sample": True}):
        unscored = EntityExtractor(tiny_llama(sp_left), sp_left, [PERSON], max_new_tokens=30, **options)
        assert not unscored.gives_scores
        with pytest.raises(UserError, match="threshold needs a score per entity"):
            unscored.extract("Ann Lee met Bo in Rome", threshold=0.5)


def test_cut_sentences_and_cut_answers_are_reported(tiny_llama, sp_left, caplog):
    extractor = EntityExtractor(tiny_llama(sp_left), sp_left, [PERSON], max_new_tokens=20, max_sentence_words=4)
    with caplog.at_level(logging.WARNING):
        extractor.extract("one two three four five six seven eight nine ten")
    assert "1 sentence(s) longer than 4 words were cut into pieces" in caplog.text
    cut = extractor.stats.problems["no_end"]
    assert cut == 3 and "3 of 3 answers reached max_new_tokens=20" in caplog.text  # 3 pieces x 1 type, all cut


def test_scores_leave_greedy_choices_unchanged(tiny_llama, sp_left):
    """The same ids with and without scoring, with and without an end penalty."""
    model = tiny_llama(sp_left)
    sentences = ["Ann Lee met Bo in Rome".split(), "Zoë visited Reykjavík".split()]
    prompts = [build_prompt(" ".join(words), PERSON, 1) for words in sentences]
    for penalty in (0.0, 6.0):
        runs = []
        for logprobs in (None, []):
            batch = sp_left(prompts, return_tensors="pt", padding=True)
            automata = build_automata(sp_left, sentences)
            ids = constrained_greedy(
                model, batch.input_ids, batch.attention_mask, automata, 40, end_penalty=penalty, token_logprobs=logprobs
            )
            runs.append(ids)
            if logprobs is not None:
                assert [len(row) for row in logprobs] == [len(row) for row in ids]
        assert runs[0] == runs[1]


def test_scores_equal_the_constrained_probabilities_of_one_unpadded_pass(extractor):
    sentence = Sentence("Ann Lee met Bo in Rome and Zoë".split())
    (prediction,) = extractor.predict([sentence], types=[PERSON])
    answer_ids, logprobs = extractor.last_answer_logprobs[0]
    automaton = build_automata(extractor.tokenizer, [sentence.tokens])[0]
    prompt = extractor.tokenizer(build_prompt(sentence.text, PERSON, 1))["input_ids"]
    with torch.no_grad():
        logits = extractor.model(input_ids=torch.tensor([prompt + answer_ids])).logits[0].float()
    state, by_hand = automaton.start, []
    for position, token in enumerate(answer_ids):
        allowed = torch.tensor(automaton.allowed(state))
        row = logits[len(prompt) + position - 1, allowed]
        by_hand.append((row.log_softmax(-1)[allowed.tolist().index(token)]).item())
        state = automaton.step(state, token)
    assert logprobs == pytest.approx(by_hand, abs=1e-4)
    entities = parse_output(extractor.tokenizer.decode(answer_ids, skip_special_tokens=True)).entities
    scores = group_scores(answer_ids, by_hand, entities, automaton)
    assert entities and None not in scores
    # A string named again takes its next occurrence or none (`not_found`): the score goes with the span it took.
    placed = entities_to_spans(sentence.tokens, entities, "person").placed
    expected = {span: score for span, score in zip(placed, scores) if span is not None}
    assert prediction.spans == sorted(expected) and prediction.scores == pytest.approx(expected, rel=1e-3)


def test_score_cost_benchmark_runs_and_finds_the_same_spans(tiny_run_inputs, tmp_path):
    out = tmp_path / "scores.json"
    model = str(tiny_run_inputs / "model")
    command = [sys.executable, str(REPO / "bench" / "scores.py"), "--model", model, "--sentences", "2"]
    subprocess.run(
        [*command, "--rounds", "2", "--end-penalty", "8", "--out", str(out)], check=True, capture_output=True
    )
    result = json.loads(out.read_text())
    assert result["same_spans"] and result["entities"] > 0 and result["prompts"] == 2 * 6
    assert len(result["seconds"]["scored"]) == len(result["seconds"]["unscored"]) == 2
