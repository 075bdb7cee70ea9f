"""`end_penalty`: the prediction threshold on ending an answer. Where the automaton offers the end, which token the
penalty moves, and that it moves the decision the same way in our greedy loop and in `generate`."""

import copy

import pytest
import torch

from cllmfs_trainer.data.format import build_prompt, parse_output
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.constraints import CompletionTemplate, EntityAutomaton, penalise_ending
from cllmfs_trainer.inference.generate import EntityExtractor, Job
from cllmfs_trainer.models import ensure_pad_token

PERSON = EntityType("person", "person", "names of people")
PLACE = EntityType("location", "location", "names of places")
SENTENCES = ["Ann Lee met Bo in Rome".split(), "Bo".split(), "Did Pedro Rossi pay $ 12.50 ?".split()]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["smollm2_tokenizer", "sp_tokenizer"])
def tok(request):
    tokenizer = request.getfixturevalue(request.param)
    return tokenizer if tokenizer.pad_token_id is not None else ensure_pad_token(copy.deepcopy(tokenizer))


@pytest.mark.parametrize("answer_format", ["marked", "pointer"])
def test_the_ending_choice_is_the_token_where_the_end_leaves_the_entities(tok, answer_format):
    template = CompletionTemplate.from_tokenizer(tok, answer_format)
    automaton = EntityAutomaton.build(tok, SENTENCES[0], template)
    ending = template.end + (automaton.eos_token_id,)
    state = automaton.walk(template.prefix)
    position = 0
    while (choice := automaton.ending_choice(state)) is None:
        assert automaton.allowed(state) == (ending[position],)  # shared by the end and the entities' opening
        state = automaton.step(state, ending[position])
        position += 1
    assert choice == ending[position] and len(automaton.allowed(state)) > 1
    assert automaton.forced_ending(automaton.step(state, choice)) is not None  # that token commits to the end
    if answer_format == "pointer":
        assert position == 0  # the first answer token is the entity's own first word or the end
    # After a whole entity the answer may end again: the same choice comes back.
    group = template.open + automaton.runs["Bo"] + template.close
    assert automaton.ending_choice(automaton.walk(template.prefix + group + ending[:position])) == choice
    # Inside an entity, and where only the end is possible (an empty sentence), there is nothing to move.
    assert (
        automaton.ending_choice(automaton.walk(template.prefix + template.open + automaton.runs["Ann Lee"][:1])) is None
    )
    empty = EntityAutomaton.build(tok, [], template)
    assert all(empty.ending_choice(empty.walk(ending[:n])) is None for n in range(len(ending)))


def test_penalise_ending_lowers_only_the_ending_choice(sp_tokenizer):
    tokenizer = ensure_pad_token(copy.deepcopy(sp_tokenizer))
    template = CompletionTemplate.from_tokenizer(tokenizer, "pointer")
    automaton = EntityAutomaton.build(tokenizer, SENTENCES[1], template)
    states = [automaton.walk(template.prefix), automaton.walk(template.prefix + automaton.runs["Bo"][:1])]
    scores = torch.zeros(2, len(tokenizer))
    penalise_ending(scores, [automaton, automaton], states, 2.5)
    assert scores[0, automaton.ending_choice(states[0])] == -2.5
    assert scores.count_nonzero() == 1  # the second row is inside an entity: untouched
    assert penalise_ending(scores.clone(), [automaton] * 2, states, 0.0).equal(scores)


def end_loving_model(tiny_llama, tokenizer, answer_format):
    """A random model whose scores favour the ending choice by a margin of 10: it answers "none" everywhere."""
    model = tiny_llama(tokenizer)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    template = CompletionTemplate.from_tokenizer(tokenizer, answer_format)
    for words in SENTENCES:
        automaton = EntityAutomaton.build(tokenizer, words, template)
        state = automaton.walk(template.prefix)
        while automaton.ending_choice(state) is None:  # past the tokens the end shares with an opening marker
            state = automaton.step(state, automaton.allowed(state)[0])
        head.bias.data[automaton.ending_choice(state)] = 10.0
    model.lm_head = head
    return model


@pytest.mark.parametrize("answer_format", ["marked", "pointer"])
def test_a_penalty_turns_none_into_entities_alike_in_both_decoding_loops(tiny_llama, sp_left, answer_format):
    model = end_loving_model(tiny_llama, sp_left, answer_format)
    jobs = [Job(build_prompt(" ".join(words), t, 1), words, t.label) for words in SENTENCES for t in (PERSON, PLACE)]

    def answers(end_penalty, compact=True):
        extractor = EntityExtractor(
            model,
            sp_left,
            [PERSON, PLACE],
            batch_size=4,
            max_new_tokens=64,
            answer_format=answer_format,
            compact_decoding=compact,
            end_penalty=end_penalty,
        )
        return extractor.generate(jobs)

    none = answers(0.0)
    assert all(parse_output(text, answer_format).entities == [] for text in none), none
    moved = answers(40.0)
    assert all(parse_output(text, answer_format).entities for text in moved), moved  # every answer names an entity
    assert answers(40.0, compact=False) == moved  # `generate` with the processor makes the same choices


def test_end_penalty_is_checked(tiny_llama, sp_left):
    model = tiny_llama(sp_left)
    with pytest.raises(UserError, match="end_penalty must be a finite number, got nan"):
        EntityExtractor(model, sp_left, [PERSON], end_penalty=float("nan"))
    with pytest.raises(UserError, match="end_penalty needs constrained decoding"):
        EntityExtractor(model, sp_left, [PERSON], constrained=False, end_penalty=1.0)
