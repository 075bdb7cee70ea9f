import pytest

from cllmfs_trainer.data import Sentence, Span, build_samples, build_sft_dataset, get_dataset, tokenize_samples
from cllmfs_trainer.data.format import IM_END, IM_START, build_completion, build_prompt
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.sft import IGNORE_INDEX

PERSON = EntityType("PER", "person", "people, including fictional ones, named by their names")
LOCATION = EntityType("LOC", "location", "named places such as countries, cities and mountains")

ANDREW = Sentence("Andrew Little met the press in Auckland .".split(), [Span(0, 2, "PER"), Span(6, 7, "LOC")], "ex:1")


def test_paper_appendix_a_strings():
    """The instruction pattern and output format of the paper's Appendix A, exactly."""
    (per, loc) = build_samples([ANDREW], [PERSON, LOCATION])
    assert per.prompt == (
        "Please extract the entity of person in the input sentence given below, the entity of person refers to "
        "people, including fictional ones, named by their names.\n"
        "Input: Andrew Little met the press in Auckland .\n"
        "Output:\n"
    )
    assert per.completion == (
        "<im_start> I can extract entities for you, the extracted entities are <<< Andrew Little >>> <im_end>"
    )
    assert loc.completion == (
        "<im_start> I can extract entities for you, the extracted entities are <<< Auckland >>> <im_end>"
    )
    assert (per.type_id, loc.type_id) == (1, 2)


def test_absent_type_gets_the_empty_output_form():
    other = EntityType("ORG", "organization", "companies")
    (_, _, org) = build_samples([ANDREW], [PERSON, LOCATION, other])
    assert org.completion == "<im_start> I can extract entities for you, the extracted entities are <im_end>"
    assert org.entity_chars == []
    assert build_completion([]) == org.completion


def test_several_entities_in_sentence_order_with_repeats():
    sentence = Sentence("Bo met Al and Bo".split(), [Span(0, 1, "PER"), Span(2, 3, "PER"), Span(4, 5, "PER")])
    (sample,) = build_samples([sentence], [PERSON])
    assert sample.completion.endswith("are <<< Bo >>> <<< Al >>> <<< Bo >>> <im_end>")
    assert [sample.prompt[s:e] for s, e in sample.entity_chars] == ["Bo", "Al", "Bo"]


def test_entity_chars_point_into_the_prompt():
    wnut = get_dataset("wnut17")
    sentences = wnut.load("dev").sentences[:200]
    for sample in build_samples(sentences, wnut.types):
        s, e = sample.sentence_chars
        assert sample.prompt[s:e] + "\n" in sample.prompt
        for a, b in sample.entity_chars:
            assert s <= a < b <= e
            assert f"<<< {sample.prompt[a:b]} >>>" in sample.completion


@pytest.fixture(params=["smollm2_tokenizer", "sp_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def test_markers_are_plain_text_that_round_trips(tokenizer):
    for marker in (IM_START, IM_END, "<<<", ">>>"):
        assert marker not in tokenizer.all_special_tokens
        assert marker not in tokenizer.get_added_vocab()
    completion = build_completion(["Andrew Little", "Zoë"])
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).strip() == completion
    # The end marker always tokenises the same way at the end of a completion, whatever precedes it.
    tails = {
        tuple(tokenizer(build_completion(e), add_special_tokens=False)["input_ids"][-4:])
        for e in ([], ["x"], ["New York"], ["Zoë", "42"])
    }
    assert len(tails) == 1


def test_labels_learn_exactly_the_completion_and_eos(tokenizer):
    rows, stats = tokenize_samples(build_samples([ANDREW], [PERSON, LOCATION]), tokenizer)
    assert stats.samples == 2 and stats.truncated == 0
    for row, sample in zip(rows, build_samples([ANDREW], [PERSON, LOCATION])):
        n = len(row["input_ids"])
        assert len(row["labels"]) == len(row["cl_labels"]) == len(row["attention_mask"]) == n
        learned = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert learned[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(learned[:-1]).strip() == sample.completion
        prompt_len = n - len(learned)
        assert row["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
        assert row["input_ids"][:prompt_len] == tokenizer(sample.prompt)["input_ids"]
        assert all(c == IGNORE_INDEX for c in row["cl_labels"][prompt_len:])


def check_cl_alignment(tokenizer, sentences, types, prompt_format=1):
    samples = build_samples(sentences, types, prompt_format)
    rows, _ = tokenize_samples(samples, tokenizer)
    for sample, row in zip(samples, rows):
        encoding = tokenizer(sample.prompt, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        prompt_cl = row["cl_labels"][: len(offsets)]
        s, e = sample.sentence_chars
        covered = set()
        for (a, b), label in zip(offsets, prompt_cl):
            visible = sample.prompt[a:b].strip()
            if label == IGNORE_INDEX:
                # Outside the sentence (or pure whitespace): no visible sentence character.
                assert not visible or b <= s or a >= e or not sample.prompt[max(a, s) : min(b, e)].strip()
                continue
            assert visible and a < e and b > s
            inside = any(a < y and b > x for x, y in sample.entity_chars)
            assert label == (sample.type_id if inside else 0)
            covered.update(range(a, b))
        # Every visible sentence character is covered by a labelled token; entity characters by entity tokens.
        assert all(i in covered for i in range(s, e) if not sample.prompt[i].isspace())
        entity_tokens = sum(label > 0 for label in prompt_cl)
        assert (entity_tokens > 0) == bool(sample.entity_chars)


def test_cl_labels_alignment_on_handmade_sentence(tokenizer):
    check_cl_alignment(tokenizer, [ANDREW], [PERSON, LOCATION])


@pytest.mark.parametrize("prompt_format", [1, 2])
def test_cl_labels_alignment_on_real_wnut_support_set(tokenizer, prompt_format):
    wnut = get_dataset("wnut17")
    support_dir = wnut.split_path("train").parent / "support_sets"
    from cllmfs_trainer.data import SupportSet

    support = SupportSet.load(support_dir / "5shot_0.txt")  # emoji, @-mentions, URLs, non-ASCII
    check_cl_alignment(tokenizer, support.sentences, wnut.types, prompt_format)


def test_sentence_first_format_puts_the_type_right_before_the_answer():
    (first, second) = build_samples([ANDREW], [PERSON, LOCATION], prompt_format=2)
    assert first.prompt.startswith(
        f"Input: {ANDREW.text}\nPlease extract the entity of person in the input "
        "sentence given above, the entity of person refers to "
    )
    assert first.prompt.endswith(".\nOutput:\n")
    s, e = first.sentence_chars
    assert (s, first.prompt[s:e]) == (len("Input: "), ANDREW.text)
    assert [first.prompt[a:b] for a, b in first.entity_chars] == ["Andrew Little"]
    # Both types' prompts begin with the same sentence line, which prediction computes once.
    assert second.prompt.split("\n")[0] == first.prompt.split("\n")[0]
    assert first.completion == build_samples([ANDREW], [PERSON])[0].completion  # the output does not change
    assert "given below" in build_prompt(ANDREW.text, PERSON) and build_prompt(ANDREW.text, PERSON, 1).startswith(
        "Please extract"
    )
    with pytest.raises(ValueError, match="unknown prompt_format 0"):
        build_samples([ANDREW], [PERSON], prompt_format=0)


def test_cl_labels_entity_at_sentence_start_and_end(tokenizer):
    sentence = Sentence("Zoë ( 42 ) visited Reykjavík".split(), [Span(0, 1, "PER"), Span(5, 6, "LOC")])
    samples = build_samples([sentence], [PERSON, LOCATION])
    rows, _ = tokenize_samples(samples, tokenizer)
    for sample, row in zip(samples, rows):
        offsets = tokenizer(sample.prompt, return_offsets_mapping=True)["offset_mapping"]
        marked = "".join(sample.prompt[a:b] for (a, b), c in zip(offsets, row["cl_labels"]) if c > 0).strip()
        assert marked == ("Zoë" if sample.type_label == "PER" else "Reykjavík")
    check_cl_alignment(tokenizer, [sentence], [PERSON, LOCATION])


def test_truncation_cuts_all_columns_together_and_reports(tokenizer, caplog):
    samples = build_samples([ANDREW], [PERSON])
    full, _ = tokenize_samples(samples, tokenizer)
    n = len(full[0]["input_ids"])
    rows, stats = tokenize_samples(samples, tokenizer, max_length=n - 3)
    assert stats.truncated == 1 and stats.dropped == 0
    assert {len(v) for v in rows[0].values() if isinstance(v, list)} == {n - 3}  # every per-token column
    assert rows[0]["cl_labels"] == full[0]["cl_labels"][: n - 3]
    rows, stats = tokenize_samples(samples, tokenizer, max_length=5)
    assert rows == [] and stats.dropped == 1
    assert "lost their whole completion" in caplog.text


def test_build_sft_dataset_on_shipped_wnut(sp_tokenizer):
    wnut = get_dataset("wnut17")
    from cllmfs_trainer.data import sample_support_set

    support = sample_support_set(wnut.load("train").sentences, 5, seed=0)
    dataset = build_sft_dataset(support.sentences, wnut.types, sp_tokenizer, keep_text=True)
    assert len(dataset) == len(support.sentences) * 6
    assert {"input_ids", "attention_mask", "labels", "cl_labels", "prompt", "completion", "type"} <= set(
        dataset.column_names
    )
    positive = sum(any(c > 0 for c in row) for row in dataset["cl_labels"])
    empty = sum(c.endswith("are <im_end>") for c in dataset["completion"])
    assert positive + empty == len(dataset)  # a sample marks entity tokens iff its completion names entities


def test_repeat_entity_samples_rebalances_only_samples_with_entities(sp_tokenizer):
    wnut = get_dataset("wnut17")
    from cllmfs_trainer.data import sample_support_set

    support = sample_support_set(wnut.load("train").sentences, 5, seed=0)
    plain = build_sft_dataset(support.sentences, wnut.types, sp_tokenizer, keep_text=True)
    tripled = build_sft_dataset(support.sentences, wnut.types, sp_tokenizer, keep_text=True, repeat_entity_samples=3)
    empty = sum(c.endswith("are <im_end>") for c in plain["completion"])
    assert len(tripled) == empty + 3 * (len(plain) - empty)
    assert sum(c.endswith("are <im_end>") for c in tripled["completion"]) == empty
    with pytest.raises(ValueError, match="repeat_entity_samples"):
        build_sft_dataset(support.sentences, wnut.types, sp_tokenizer, repeat_entity_samples=0)


def test_prompt_has_no_trailing_space():
    assert build_prompt("a b", PERSON).endswith("Output:\n")


@pytest.mark.parametrize("prompt_format", [1, 2])
def test_query_and_gold_cl_labels_against_hand_built_ones(sp_tokenizer, prompt_format):
    from cllmfs_trainer.data import Sentence, Span
    from cllmfs_trainer.data.registry import EntityType
    from cllmfs_trainer.data.sft import _cl_labels

    types = [EntityType("PER", "person", "people"), EntityType("LOC", "location", "places")]
    sentence = Sentence("Bo met Al in Paris".split(), [Span(0, 1, "PER"), Span(2, 3, "PER"), Span(4, 5, "LOC")])
    words = sentence.tokens
    # Per sample (queried type) and mode, the label of each word, written out by hand.
    expected = {
        ("PER", "query"): [1, 0, 1, 0, 0],
        ("LOC", "query"): [0, 0, 0, 0, 2],
        ("PER", "gold"): [1, 0, 1, 0, 2],
        ("LOC", "gold"): [1, 0, 1, 0, 2],
    }
    for sample in build_samples([sentence], types, prompt_format):
        encoded = sp_tokenizer(sample.prompt, return_offsets_mapping=True)
        start = sample.sentence_chars[0]
        word_spans = []
        for word in words:
            begin = sample.prompt.index(word, start)
            word_spans.append((begin, begin + len(word)))
            start = begin + len(word)
        for mode in ("query", "gold"):
            labels = _cl_labels(sample.prompt, encoded["offset_mapping"], sample, mode)
            for w, (a, b) in enumerate(word_spans):
                inside = {lab for lab, (s, e) in zip(labels, encoded["offset_mapping"]) if s < b and e > a and lab >= 0}
                assert inside == {expected[(sample.type_label, mode)][w]}, (sample.type_label, mode, words[w])
    row = tokenize_samples(build_samples([sentence], types, prompt_format), sp_tokenizer)[0][0]
    assert row["type_id"] == 1 and row["has_entity"] == 1
    assert len(row["cl_gold_labels"]) == len(row["cl_labels"]) == len(row["input_ids"])


def test_pointer_answer_format_drops_the_opening_marker():
    assert build_completion(["Andrew Little", "Bo"], "pointer") == (
        f"{IM_START} I can extract entities for you, the extracted entities are Andrew Little >>> Bo >>> {IM_END}"
    )
    assert build_completion([], "pointer") == build_completion([])
    sentence = Sentence(["Andrew", "Little", "met", "Bo"], [Span(0, 2, "PER"), Span(3, 4, "PER")])
    person = EntityType("PER", "person", "a human")
    (sample,) = build_samples([sentence], [person], answer_format="pointer")
    assert sample.completion.endswith("are Andrew Little >>> Bo >>> <im_end>")
    with pytest.raises(ValueError, match="answer_format"):
        build_completion(["Bo"], "brackets")


@pytest.mark.parametrize("prompt_format", [1, 2])
def test_type_descriptions_false_asks_by_the_name_alone(prompt_format):
    described = build_samples([ANDREW], [PERSON, LOCATION], prompt_format)
    by_name = build_samples([ANDREW], [PERSON, LOCATION], prompt_format, type_descriptions=False)
    where = "below" if prompt_format == 1 else "above"
    for full, short, entity_type in zip(described, by_name, (PERSON, LOCATION)):
        assert f"Please extract the entity of {entity_type.name} in the input sentence given {where}.\n" in short.prompt
        assert entity_type.description not in short.prompt and entity_type.description in full.prompt
        assert short.completion == full.completion  # only the instruction changes
        s, e = short.sentence_chars
        assert short.prompt[s:e] == ANDREW.text
        assert [short.prompt[a:b] for a, b in short.entity_chars] == [full.prompt[a:b] for a, b in full.entity_chars]
        assert [(short.prompt[a:b], t) for a, b, t in short.gold_chars] == [
            (full.prompt[a:b], t) for a, b, t in full.gold_chars
        ]
    assert build_prompt(ANDREW.text, PERSON, prompt_format, type_descriptions=False) == by_name[0].prompt


def test_type_descriptions_false_reaches_the_dataset_and_its_cl_labels(sp_tokenizer):
    wnut = get_dataset("wnut17")
    sentences = wnut.load("dev").sentences[:5]
    full = build_sft_dataset(sentences, wnut.types, sp_tokenizer, keep_text=True)
    short = build_sft_dataset(sentences, wnut.types, sp_tokenizer, keep_text=True, type_descriptions=False)
    assert len(short) == len(full) and not any("refers to" in p for p in short["prompt"])
    assert sum(map(len, short["input_ids"])) < sum(map(len, full["input_ids"]))
    # The same sentence tokens carry the same labels: only the instruction before them is shorter.
    for a, b in zip(full["cl_labels"], short["cl_labels"]):
        assert [x for x in a if x != IGNORE_INDEX] == [x for x in b if x != IGNORE_INDEX]


def test_prepare_writes_the_samples_a_recipe_without_descriptions_trains_on(tmp_path):
    import json

    from cllmfs_trainer import cli

    out = tmp_path / "prep"
    assert cli.main(["prepare", "--dataset", "wnut17", "--k", "1", "--no-type-descriptions", "--output", str(out)]) == 0
    prompts = [json.loads(line)["prompt"] for line in (out / "sft_samples.jsonl").read_text().splitlines()]
    assert prompts and not any("refers to" in p for p in prompts)
    assert json.loads((out / "prepare.json").read_text())["type_descriptions"] is False
