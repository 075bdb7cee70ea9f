"""`one_type_per_span`: where a span comes back under several types, prediction keeps the type whose prompt gave the
highest log-odds of naming it at the answer's first token, checked against those log-odds computed by hand."""

import pytest
import torch

from cllmfs_trainer.data import Sentence
from cllmfs_trainer.data.format import build_prompt
from cllmfs_trainer.data.io import Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.constraints import CompletionTemplate, EntityAutomaton
from cllmfs_trainer.inference.generate import EntityExtractor, resolve_types

TYPES = [
    EntityType("person", "person", "names of people"),
    EntityType("location", "location", "names of places"),
    EntityType("organization", "organization", "names of companies and institutions"),
]
SENTENCES = [Sentence(text.split(), [], str(n)) for n, text in enumerate(["Ann Lee met Bo in Rome", "Acme hired Bo"])]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resolve_types_keeps_the_best_scored_type_per_boundaries():
    spans = [Span(0, 2, "person"), Span(0, 2, "location"), Span(3, 4, "location"), Span(5, 6, "person")]
    scores = {Span(0, 2, "person"): -1.0, Span(0, 2, "location"): 0.5, Span(3, 4, "location"): -9.0}
    assert resolve_types(spans, scores) == [Span(0, 2, "location"), Span(3, 4, "location"), Span(5, 6, "person")]
    tied = [Span(0, 1, "a"), Span(0, 1, "b")]
    assert resolve_types(tied, {}) == [Span(0, 1, "a")]  # no scores: the first given


def hand_log_odds(model, tokenizer, sentence: Sentence, entity_type: EntityType) -> dict[str, float]:
    """Per run of the sentence: log p(its first token) - log p(ending) after the answer prefix, one unpadded pass."""
    template = CompletionTemplate.from_tokenizer(tokenizer, "pointer")
    automaton = EntityAutomaton.build(tokenizer, sentence.tokens, template)
    ids = tokenizer(build_prompt(sentence.text, entity_type, 1))["input_ids"] + list(template.prefix)
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    ending = automaton.ending_choice(automaton.walk(template.prefix))
    return {run: (logprobs[ids_[0]] - logprobs[ending]).item() for run, ids_ in automaton.runs.items()}


def test_one_type_per_span_keeps_the_type_with_the_highest_first_token_log_odds(tiny_llama, sp_left):
    model = tiny_llama(sp_left)
    # A large end penalty: every type names entities, so the same boundaries come back under several types.
    options = dict(batch_size=4, max_new_tokens=48, answer_format="pointer", end_penalty=30.0)
    every = EntityExtractor(model, sp_left, TYPES, **options).predict(SENTENCES)
    one = EntityExtractor(model, sp_left, TYPES, one_type_per_span=True, **options).predict(SENTENCES)
    duplicated = 0
    for all_types, kept in zip(every, one):
        boundaries = {(s.start, s.end) for s in all_types.spans}
        assert sorted((s.start, s.end) for s in kept.spans) == sorted(boundaries)  # one span per boundaries, none lost
        odds = {t.label: hand_log_odds(model, sp_left, kept.sentence, t) for t in TYPES}
        for span in kept.spans:
            candidates = [s.type for s in all_types.spans if (s.start, s.end) == (span.start, span.end)]
            duplicated += len(candidates) > 1
            text = " ".join(kept.sentence.tokens[span.start : span.end])
            best = max(candidates, key=lambda label: odds[label][text])
            assert span.type == best, (text, {label: odds[label][text] for label in candidates})
    assert duplicated  # the check above did compare types


def test_one_type_per_span_needs_pointer_answers_and_greedy_decoding(tiny_llama, sp_left):
    model = tiny_llama(sp_left)
    for options in (
        {"answer_format": "marked"},
        {"answer_format": "pointer", "do_sample": True},
        {"constrained": False},
    ):
        with pytest.raises(UserError, match="one_type_per_span needs pointer answers"):
            EntityExtractor(model, sp_left, TYPES, one_type_per_span=True, **options)
