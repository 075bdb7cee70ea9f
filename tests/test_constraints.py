"""Constrained decoding: the automaton admits every gold answer, and whatever the scores, only template answers whose
entities are runs of the input come out (step by step through the processor, and through `model.generate`)."""

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.format import (
    ANSWER_PREFIX,
    NO_END,
    NO_PREFIX,
    UNBALANCED,
    build_completion,
    build_prompt,
    parse_output,
)
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.sft import build_samples, tokenize_sample
from cllmfs_trainer.inference.constraints import (
    CompletionTemplate,
    EntityAutomaton,
    EntityConstraintProcessor,
    TokenizerMismatchError,
    candidate_runs,
    sentence_words,
)
from cllmfs_trainer.models import ensure_pad_token

TOKENIZERS = ["smollm2_tokenizer", "sp_tokenizer"]


@pytest.fixture(scope="module", params=TOKENIZERS)
def tok(request):
    """Each test tokenizer, with a pad token (the SentencePiece one gets `<unk>` on a copy, as in training)."""
    tokenizer = request.getfixturevalue(request.param)
    if tokenizer.pad_token_id is None:
        tokenizer = ensure_pad_token(copy.deepcopy(tokenizer))
    return tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tests run many small ops on vocabulary-wide rows: intra-op threads gain nothing there, and when another
    process competes for the cores their waiting makes the tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gold_ids(tokenizer, entities: Sequence[str]) -> list[int]:
    """The training target of an answer: the completion tokenised alone, then EOS (as `tokenize_sample` does)."""
    return tokenizer(build_completion(entities), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def is_run(entity: str, words: Sequence[str], max_words: int = 10) -> bool:
    """Whether `entity` is a contiguous run of 1..max_words of `words`, joined by single spaces."""
    return entity in candidate_runs(words, max_words)


def step_through(
    processor: EntityConstraintProcessor,
    tokenizer,
    pick: Callable[[int, torch.Tensor], list[int]],
    n_rows: int,
    max_steps: int,
    prompt_length: int = 3,
) -> list[list[int]]:
    """Drive `processor` as `generate` does: call it on prompt + generated ids, append `pick(step, masked)`; finished
    rows get the pad token. Checks on every call that no row has an empty allowed set and that finished rows allow
    only EOS and padding. Returns each row's generated ids up to and including EOS."""
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n_rows, prompt_length), pad, dtype=torch.long)
    outputs: list[list[int]] = [[] for _ in range(n_rows)]
    finished = [False] * n_rows
    for step in range(max_steps):
        scores = torch.zeros(n_rows, len(tokenizer))
        masked = processor(ids, scores)
        allowed = masked.isfinite()
        assert allowed.any(dim=1).all(), "a row has nothing allowed"
        chosen = pick(step, masked)
        for row in range(n_rows):
            if finished[row]:
                assert set(allowed[row].nonzero().flatten().tolist()) <= stop
                chosen[row] = pad
            else:
                assert allowed[row, chosen[row]], f"row {row}: token {chosen[row]} not allowed at step {step}"
                outputs[row].append(chosen[row])
                finished[row] = chosen[row] == tokenizer.eos_token_id
        ids = torch.cat([ids, torch.tensor(chosen)[:, None]], dim=1)
        if all(finished):
            # One more call after the last EOS: finished rows still allow only EOS and padding.
            allowed = processor(ids, torch.zeros(n_rows, len(tokenizer))).isfinite()
            assert all(set(allowed[row].nonzero().flatten().tolist()) <= stop for row in range(n_rows))
            break
    return outputs


def teacher_force(tokenizer, sentences: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> None:
    """All sentences in one batch, each row fed its own gold answer through the processor."""
    processor = EntityConstraintProcessor(tokenizer, sentences, prompt_length=3)
    targets = [gold_ids(tokenizer, gold) for gold in golds]
    outputs = step_through(
        processor,
        tokenizer,
        lambda step, _: [t[min(step, len(t) - 1)] for t in targets],
        len(sentences),
        max(map(len, targets)) + 1,
    )
    assert outputs == targets


# --- the template and the pieces ----------------------------------------------------------------------------------


def test_template_pieces_concatenate_to_the_training_tokens(tok):
    template = CompletionTemplate.from_tokenizer(tok)
    assert list(template.prefix + template.end) == gold_ids(tok, [])[:-1]
    assert tok.decode(template.prefix).strip() == ANSWER_PREFIX
    assert tok.decode(template.open + template.close).replace(" ", "") == "<<<>>>"
    for entities in (["Andrew Little", "Bo"], ["Zoë", "😀", "2024"]):
        automaton = EntityAutomaton.build(tok, " ".join(entities).split(), template)
        expected = template.prefix + sum((template.open + automaton.runs[e] + template.close for e in entities), ())
        assert list(expected + template.end) == gold_ids(tok, entities)[:-1]


def test_pointer_template_has_no_opening_marker_and_concatenates_to_the_training_tokens(tok):
    template = CompletionTemplate.from_tokenizer(tok, "pointer")
    marked = CompletionTemplate.from_tokenizer(tok)
    assert template.open == () and template.answer_format == "pointer"
    assert (template.prefix, template.close, template.end) == (marked.prefix, marked.close, marked.end)
    entities = ["Andrew Little", "Bo"]
    automaton = EntityAutomaton.build(tok, "Andrew Little met Bo".split(), template)
    expected = template.prefix + sum((automaton.runs[e] + template.close for e in entities), ())
    ids = tok(build_completion(entities, "pointer"), add_special_tokens=False)["input_ids"]
    assert list(expected + template.end) == ids
    # After the prefix the model chooses between every run's first token and the end: no yes/no marker first.
    choice = automaton.walk(template.prefix)
    assert set(automaton.allowed(choice)) == {automaton.runs[w][0] for w in ("Andrew", "Little", "met", "Bo")} | {
        template.end[0]
    }


@pytest.mark.parametrize(
    "added, pieces", [("are <<<", "the answer prefix and the marker ' <<<'"), ("Bo >>>", "the run 'Bo' and the marker")]
)
def test_a_token_across_pieces_is_an_error_naming_the_pieces(tok, added, pieces):
    # An added token is matched before the BPE model runs, so it spans two pieces: the masks would be wrong.
    merging = copy.deepcopy(tok)
    merging.add_tokens([added])
    with pytest.raises(TokenizerMismatchError, match=pieces):
        EntityConstraintProcessor(merging, [["Bo", "met", "Al"]], prompt_length=0)


class CharTokenizer:
    """One token per character (id: code point + 10), except that `merged` is one token (id 5) right after `after`:
    a toy tokenizer whose pieces depend on their context, which the real ones must not do."""

    eos_token_id, pad_token_id = 1, None

    def __init__(self, merged: str = "", after: str = "") -> None:
        self.merged, self.after = merged, after

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        input_ids, offsets = [], []
        for text in texts:
            ids, spans, pos = [], [], 0
            while pos < len(text):
                if self.merged and text.startswith(self.merged, pos) and text[:pos].endswith(self.after):
                    ids.append(5), spans.append((pos, pos + len(self.merged)))
                    pos += len(self.merged)
                else:
                    ids.append(ord(text[pos]) + 10), spans.append((pos, pos + 1))
                    pos += 1
            input_ids.append(ids), offsets.append(spans)
        return {"input_ids": input_ids, "offset_mapping": offsets}

    def convert_ids_to_tokens(self, ids):
        return [self.convert_ids_to_tokens(i) for i in ids] if isinstance(ids, list) else chr(max(ids - 10, 0))


def test_a_context_free_toy_tokenizer_works():
    tokenizer = CharTokenizer()
    automaton = EntityAutomaton.build(tokenizer, ["Bo", "met", "Bo", "Al"])
    for gold in ([], ["Bo"], ["Bo met", "Bo Al", "Bo"]):
        target = [ord(c) + 10 for c in build_completion(gold)] + [1]
        assert automaton.is_done(automaton.walk(target))
        assert all(t in automaton.allowed(automaton.walk(target[:k])) for k, t in enumerate(target))


@pytest.mark.parametrize(
    "merged, after, message",
    [
        (" <<<", "are", "the marker ' <<<' differently depending on its context"),
        (" Bo", "are <<<", "the run 'Bo' differently after ' >>>' than after the answer prefix"),
    ],
)
def test_pieces_that_depend_on_their_context_are_an_error(merged, after, message):
    with pytest.raises(TokenizerMismatchError, match=message):
        EntityAutomaton.build(CharTokenizer(merged, after), ["Al", "Bo"])


def test_sentence_words_and_runs():
    assert sentence_words("a  b c") == ["a", "b", "c"]
    assert sentence_words(["a\u00a0b", "c"]) == ["a\u00a0b", "c"]
    assert candidate_runs(["a", "b", "a"], 2) == ["a", "a b", "b", "b a"]
    assert len(candidate_runs([str(i) for i in range(30)])) == sum(min(10, 30 - i) for i in range(30))


# --- gold answers are admitted ------------------------------------------------------------------------------------

HAND_MADE = [
    ("Andrew Little met the press in Auckland .", ["Andrew Little", "Auckland"]),  # first and last words
    ("Bo met Bo and Bo Bo .", ["Bo", "Bo", "Bo Bo"]),  # repeated words and runs
    ('Did Zoë really pay $5.99 for "that" ?!', ["Zoë", "$5.99", '"that" ?!']),
    ("Report #42 cost €1,200 ( about 12% ) in 2024", ["#42", "€1,200", "( about 12% )", "2024"]),
    ("Jürgen flew from São Paulo to 東京 ☀️ 😀", ["Jürgen", "São Paulo", "東京", "☀️ 😀"]),
    ("@user_1 check http://t.co/abc123 #NER", ["@user_1", "http://t.co/abc123", "#NER"]),
    ("watched\u200bwas Dubbz\ufeff Kraków", ["watched\u200bwas", "Dubbz\ufeff Kraków"]),  # zero-width characters
    ("Paris", ["Paris"]),
    ("Paris", []),
    ("one two three four five six seven eight nine ten", ["one two three four five six seven eight nine ten"]),
    ("look >>> here <<< now <im_end> .", [">>>", "here <<< now <im_end>", "<im_end> ."]),  # markers as words
]


@pytest.mark.parametrize("one_batch", [True, False])
def test_hand_made_gold_answers_are_allowed(tok, one_batch):
    sentences = [text.split(" ") for text, _ in HAND_MADE]
    golds = [gold for _, gold in HAND_MADE]
    if one_batch:  # rows with different sentences and answer lengths side by side
        teacher_force(tok, sentences, golds)
    else:
        for sentence, gold in zip(sentences, golds):
            teacher_force(tok, [sentence], [gold])


@pytest.mark.parametrize("answer_format", ["marked", "pointer"])
def test_wnut17_gold_answers_are_allowed(tok, answer_format):
    dataset = get_dataset("wnut17")
    sentences = dataset.load("dev").sentences
    # The tweets with emoji, URLs, mentions and other non-ASCII text, then ordinary ones with entities.
    odd = [s for s in sentences if any(ord(c) > 127 for c in s.text) or "http" in s.text or "@" in s.text]
    plain = [s for s in sentences if s.spans and s not in odd][:60]
    template = CompletionTemplate.from_tokenizer(tok, answer_format)
    checked = 0
    for sentence in odd + plain:
        automaton = EntityAutomaton.build(tok, sentence.tokens, template)
        for sample in build_samples([sentence], dataset.types, answer_format=answer_format):
            row = tokenize_sample(sample, tok)
            target = [label for label in row["labels"] if label != -100]  # exactly what training teaches
            state = automaton.start
            for token_id in target:
                assert token_id in automaton.allowed(state), (sample.completion, tok.convert_ids_to_tokens(token_id))
                state = automaton.step(state, token_id)
            assert automaton.is_done(state)
            checked += bool(sample.entity_chars)
    assert checked > 50


# --- whatever the scores, only valid answers ----------------------------------------------------------------------

VOCAB = [
    "the",
    "The",
    "New",
    "York",
    "York",
    "a",
    "a",
    "Zoë",
    "São",
    "Paulo",
    "東京",
    "😀",
    "☀️",
    "#tag",
    "@user",
    "http://t.co/x1",
    "2024",
    "3.14",
    "$5",
    "12%",
    "-",
    ",",
    ".",
    "!",
    "?!",
    "'s",
    "(",
    ")",
    '"',
    "«",
    "»",
    "<",
    ">",
    "->",
    "<3",
    "O'Brien",
    "U.S.",
    "e-mail",
    "Kraków",
    "Dubbz\ufeff",
]
sentences_strategy = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=14)


def check_answer(tokenizer, ids: list[int], words: Sequence[str], max_words: int) -> bool:
    """The decoded answer parses cleanly (or as a cut one), with entities that are runs. Returns whether it ended."""
    finished = bool(ids) and ids[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(ids, skip_special_tokens=True)
    parsed = parse_output(text)
    if finished:
        assert parsed.problems == [], text
        assert text.strip().startswith(ANSWER_PREFIX)
    else:  # cut by the step limit: inside the prefix (no_prefix) or a group (unbalanced) is fine
        assert set(parsed.problems) <= {NO_END, NO_PREFIX, UNBALANCED}, text
    for entity in parsed.entities:
        assert is_run(entity, words, max_words), (entity, text)
    return finished


@settings(max_examples=30, deadline=None)
@given(
    batch=st.lists(sentences_strategy, min_size=1, max_size=3),
    sample=st.booleans(),
    max_words=st.integers(1, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_scores_give_valid_answers(tok, batch, sample, max_words, seed):
    generator = torch.Generator().manual_seed(seed)
    processor = EntityConstraintProcessor(tok, batch, prompt_length=3, max_entity_words=max_words)

    def pick(step: int, masked: torch.Tensor) -> list[int]:
        noisy = masked + 4 * torch.randn(masked.shape, generator=generator)  # -inf stays -inf
        if sample:
            return torch.multinomial(noisy.softmax(dim=-1), 1, generator=generator).flatten().tolist()
        return noisy.argmax(dim=-1).tolist()

    outputs = step_through(processor, tok, pick, len(batch), max_steps=160)
    for ids, words in zip(outputs, batch):
        check_answer(tok, ids, words, max_words)


# --- state handling -----------------------------------------------------------------------------------------------


def test_no_pad_token_allows_only_eos_after_the_end(sp_tokenizer):
    assert sp_tokenizer.pad_token_id is None
    processor = EntityConstraintProcessor(sp_tokenizer, ["Bo met Al"], prompt_length=0)
    done = gold_ids(sp_tokenizer, ["Bo"])
    assert processor.allowed_token_ids(0, done) == [sp_tokenizer.eos_token_id]
    assert processor.allowed_token_ids(0, done + [sp_tokenizer.eos_token_id] * 3) == [sp_tokenizer.eos_token_id]


def test_an_unexpected_token_leaves_only_eos_and_pad(tok):
    processor = EntityConstraintProcessor(tok, ["Bo met Al"], prompt_length=0)
    stray = gold_ids(tok, [])[:2]
    stray[1] = next(i for i in range(len(tok)) if i not in processor.allowed_token_ids(0, stray[:1]))
    assert processor.allowed_token_ids(0, stray) == sorted({tok.eos_token_id, tok.pad_token_id})


def test_empty_sentence_allows_only_the_empty_answer(tok):
    processor = EntityConstraintProcessor(tok, [[]], prompt_length=0)
    target = gold_ids(tok, [])
    for position, token_id in enumerate(target):
        assert processor.allowed_token_ids(0, target[:position]) == [token_id]


def test_incremental_state_matches_a_fresh_walk_after_reordering_and_reuse(tok):
    """Step by step, after rows swap histories (as beam search reorders them), after skipped steps and in a second
    generation from scratch, the masks are those of a stateless walk."""
    sentences = [["Bo", "met", "Al"], ["Bo", "met", "Al"], ["Zoë", "in", "São", "Paulo"]]
    golds = [["Bo", "met Al"], [], ["São Paulo"]]
    processor = EntityConstraintProcessor(tok, sentences, prompt_length=2)
    targets = [gold_ids(tok, gold) for gold in golds]
    width = max(map(len, targets))
    full = torch.tensor([[7, 7] + t + [tok.pad_token_id] * (width - len(t)) for t in targets])

    def check(ids: torch.Tensor) -> None:
        masked = processor(ids, torch.zeros(len(ids), len(tok)))
        for row in range(len(ids)):
            expected = processor.allowed_token_ids(row, ids[row, 2:])
            assert masked[row].isfinite().nonzero().flatten().tolist() == expected

    for length in range(2, 3 + width):
        check(full[:, :length])
    # Rows 0 and 1 (same sentence) diverge after the prefix; swap their histories one token later. Stepping the kept
    # states with the new last tokens would leave both rows in the dead state; re-walking keeps them valid.
    diverged = 2 + next(i for i, (a, b) in enumerate(zip(targets[0], targets[1])) if a != b) + 1
    processor(full[:, :diverged], torch.zeros(3, len(tok)))
    swapped = full[[1, 0, 2], : diverged + 1]
    check(swapped)
    assert all(len(processor.allowed_token_ids(row, swapped[row, 2:])) > 0 for row in range(2))
    assert processor.allowed_token_ids(0, swapped[0, 2:]) != sorted({tok.eos_token_id, tok.pad_token_id})
    check(full[:, :2])  # a new generation starts over
    check(full[:, :9])  # skipped steps


def test_masking_keeps_allowed_scores_and_checks_shapes(tok):
    processor = EntityConstraintProcessor(tok, ["Bo met Al", "Al"], prompt_length=1)
    prompt = torch.full((2, 1), 5)
    scores = torch.randn(2, len(tok) + 64)  # models often pad their vocabulary beyond the tokenizer's
    masked = processor(prompt, scores)
    allowed = masked.isfinite()
    assert torch.equal(masked[allowed], scores[allowed])
    assert allowed.sum(dim=1).tolist() == [1, 1]
    assert masked.shape == scores.shape and not torch.equal(masked, scores)  # a new tensor, scores untouched
    with pytest.raises(ValueError, match="multiple"):
        processor(prompt[:1], scores[:1])
    with pytest.raises(ValueError, match="vocabulary"):
        processor(prompt, scores[:, :10])
    with pytest.raises(ValueError, match="prompt_length"):
        processor(prompt[:, :0], scores)


# --- inside model.generate ----------------------------------------------------------------------------------------


def test_generate_with_a_tiny_random_llama(tok, tiny_llama):
    entity_type = EntityType("person", "person", "names of people")
    sentences = [
        ["Andrew", "Little", "met", "Bo", "in", "Auckland", "."],
        ["Zoë", "😀", "2024", "Zoë"],
        ["@user", "http://t.co/x", "#1"],
    ]
    prompts = [tok(build_prompt(" ".join(words), entity_type))["input_ids"] for words in sentences]
    width = max(map(len, prompts))
    # Left padding, by hand: the shared tokenizer must not be mutated (its padding side is right).
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    model = tiny_llama(tok, num_hidden_layers=2)
    template = CompletionTemplate.from_tokenizer(tok)
    finished = entities = 0
    for kwargs in ({"do_sample": False}, {"do_sample": True, "num_return_sequences": 2}, {"num_beams": 2}):
        torch.manual_seed(0)
        processor = EntityConstraintProcessor(tok, sentences, prompt_length=width)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=60,
            logits_processor=LogitsProcessorList([processor]),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **kwargs,
        )
        copies = len(output) // len(sentences)
        for row, generated in enumerate(output[:, width:].tolist()):
            assert generated[: len(template.prefix)] == list(template.prefix)
            if tok.eos_token_id in generated:
                generated = generated[: generated.index(tok.eos_token_id) + 1]
            finished += check_answer(tok, generated, sentences[row // copies], 10)
            entities += len(parse_output(tok.decode(generated, skip_special_tokens=True)).entities)
    assert finished >= 1 and entities >= 1  # not vacuous (fixed seeds)


def test_forced_ending_is_the_rest_of_the_answer_once_nothing_else_is_allowed(tok):
    template = CompletionTemplate.from_tokenizer(tok)
    automaton = EntityAutomaton.build(tok, "Bo met Al".split(), template)
    target = gold_ids(tok, ["Bo"])
    endings = [automaton.forced_ending(automaton.walk(target[:position])) for position in range(len(target) + 1)]
    # Wherever an ending is forced, it is the rest of the answer, and it stays forced from there on.
    forced_from = next(position for position, ending in enumerate(endings) if ending is not None)
    assert all(ending == tuple(target[position:]) for position, ending in enumerate(endings) if position >= forced_from)
    assert forced_from > len(target) - len(template.end) - 1  # inside ` <im_end>`, once it is told from ` <<<`
    assert automaton.forced_ending(automaton.walk(template.prefix)) is None  # open a group or end: a choice
    assert endings[-1] == () and endings[-2] == (tok.eos_token_id,)
    empty = EntityAutomaton.build(tok, [], template)  # nothing to extract: the whole answer is forced
    assert empty.forced_ending(empty.start) == tuple(gold_ids(tok, []))
