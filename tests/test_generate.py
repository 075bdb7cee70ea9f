"""Batched extraction (`EntityExtractor`) and `cllmfs predict` on run folders trained from tiny random models; the fast
path (sorted mixed-type batches, prefix reuse, answer prefill) against plain per-prompt `generate`."""

import copy
import functools
import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from transformers import LogitsProcessorList

from cllmfs_trainer.cli import main as cli_main
from cllmfs_trainer.data import Sentence
from cllmfs_trainer.data.format import IM_END, build_prompt, parse_output
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.inference.constraints import CompletionTemplate, EntityConstraintProcessor, build_automata
from cllmfs_trainer.inference.generate import EntityExtractor, Job
from cllmfs_trainer.inference.greedy import is_plain_greedy
from cllmfs_trainer.inference.prefix_cache import SharedPrefixes, shared_prefix_length
from cllmfs_trainer.models import ensure_pad_token

PERSON = EntityType("person", "person", "names of people")
PLACE = EntityType("location", "location", "names of places")
# A longer instruction than the two above: its prefix is longer, so batches mixing it with them have a masked gap.
WORK = EntityType("creative-work", "creative work", "titles of songs, albums, films, books, shows or artworks")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def extractor(tiny_llama, sp_tokenizer):

    tokenizer = ensure_pad_token(copy.deepcopy(sp_tokenizer))
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    return EntityExtractor(tiny_llama(tokenizer), tokenizer, [PERSON, PLACE], batch_size=3, max_new_tokens=48)


SENTENCES = [
    Sentence("Ann Lee met Bo in Rome".split(), [], "a"),
    Sentence("nothing to see here".split(), [], "b"),
    Sentence("Zoë ( 42 ) visited Reykjavík and Zoë again".split(), [], "c"),
]


def test_every_predicted_span_is_a_valid_span_of_its_sentence(extractor):
    predictions = extractor.predict(SENTENCES)
    assert [p.sentence.id for p in predictions] == ["a", "b", "c"]  # input order kept
    for prediction in predictions:
        n = len(prediction.sentence.tokens)
        assert all(0 <= s.start < s.end <= n and s.type in {"person", "location"} for s in prediction.spans)
    stats = extractor.stats.as_dict()
    assert stats["outputs"] == 2 * len(SENTENCES)


def test_constrained_outputs_only_hold_input_runs_even_from_a_random_model(extractor):
    extractor.predict(SENTENCES)
    stats = extractor.stats.as_dict()
    assert stats["not_found"] <= stats["entities"]
    # A random model rarely closes its answer within the budget, but the constraint keeps every group an input run:
    # nothing it wrote is outside the markers.
    assert stats["problems"]["text_outside_markers"] == 0


def test_long_sentences_are_split_and_spans_map_back(extractor):
    extractor.max_sentence_words = 4
    long = Sentence("one two three four five six seven eight nine ten".split(), [], "long")
    (prediction,) = extractor.predict([long])
    assert all(0 <= s.start < s.end <= 10 for s in prediction.spans)
    assert extractor.stats.as_dict()["outputs"] == 2 * 3  # 3 chunks x 2 types


def test_greedy_prediction_is_deterministic_and_batch_size_independent(extractor):
    first = [p.spans for p in extractor.predict(SENTENCES)]
    extractor.batch_size = 1
    assert [p.spans for p in extractor.predict(SENTENCES)] == first


def test_extractor_needs_a_pad_token(tiny_llama, sp_tokenizer):
    with pytest.raises(ValueError, match="pad token"):
        EntityExtractor(tiny_llama(sp_tokenizer), sp_tokenizer, [PERSON])


def test_cli_predict_on_a_run_folder(run_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("Ann  Lee met Bo in Rome\nZoë visited Reykjavík\n\n", encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    assert (
        cli_main(
            ["predict", "--run", str(run_dir), "--input", str(source), "--output", str(out), "--max-new-tokens", "40"]
        )
        == 0
    )
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["text"] for line in lines] == ["Ann  Lee met Bo in Rome", "Zoë visited Reykjavík", ""]
    for line in lines:
        for entity in line["entities"]:
            assert line["text"][entity["start"] : entity["end"]] == entity["text"] and entity["type"] == "person"
    stats = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert stats["types"] == ["person"] and stats["sentences"] == 3


def test_cli_predict_on_a_registry_split(run_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    assert (
        cli_main(
            [
                "predict",
                "--run",
                str(run_dir),
                "--dataset",
                "wnut17",
                "--split",
                "test",
                "--limit",
                "3",
                "--output",
                str(out),
                "--max-new-tokens",
                "40",
            ]
        )
        == 0
    )
    from cllmfs_trainer.data import get_dataset

    expected = [s.text for s in get_dataset("wnut17").load("test").sentences[:3]]
    assert [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()] == expected


def test_cli_predict_jsonl_and_text_inputs(run_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "Bo met Ann"}) + "\n", encoding="utf-8")
    assert (
        cli_main(
            [
                "predict",
                "--run",
                str(run_dir),
                "--input",
                str(source),
                "--output",
                str(tmp_path / "a.jsonl"),
                "--max-new-tokens",
                "40",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "predict",
                "--run",
                str(run_dir),
                "--text",
                "Bo met Ann",
                "--output",
                str(tmp_path / "b.jsonl"),
                "--max-new-tokens",
                "40",
            ]
        )
        == 0
    )
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_cli_predict_errors_are_one_clear_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n["no"]\n', encoding="utf-8")
    assert cli_main(["predict", "--run", str(run_dir), "--input", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert f"{bad}:2: expected a string or a JSON object with a string field 'text'" in capsys.readouterr().err
    assert (
        cli_main(["predict", "--run", str(run_dir), "--text", "x", "--types", "drug", "--output", str(tmp_path / "o")])
        == 2
    )
    assert "have no description" in capsys.readouterr().err
    assert cli_main(["predict", "--run", str(tmp_path), "--text", "x", "--output", str(tmp_path / "o")]) == 2
    assert "not a cllmfs run folder" in capsys.readouterr().err


def test_types_file_adds_a_type_at_prediction_time(run_dir, tmp_path):
    types = tmp_path / "types.yaml"
    types.write_text("types:\n  drug: names of medicines\n", encoding="utf-8")
    assert (
        cli_main(
            [
                "predict",
                "--run",
                str(run_dir),
                "--text",
                "Bo took aspirin",
                "--types",
                "person,drug",
                "--types-file",
                str(types),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--max-new-tokens",
                "40",
            ]
        )
        == 0
    )
    line = json.loads((tmp_path / "o.jsonl").read_text())
    assert {e["type"] for e in line["entities"]} <= {"person", "drug"}


def test_cli_predict_writes_what_extract_returns_with_scores_and_threshold(run_dir, tmp_path):
    """`cllmfs predict` is a client of `EntityExtractor.extract`: the same entities, scores on request."""
    source = tmp_path / "in.txt"
    source.write_text("Ann Lee met Bo in Rome. Bo left.\nZoë visited  Reykjavík\n", encoding="utf-8")
    common = ["predict", "--run", str(run_dir), "--input", str(source), "--max-new-tokens", "100", "--end-penalty", "8"]
    assert cli_main([*common, "--output", str(tmp_path / "s.jsonl"), "--scores", "--dtype", "float32"]) == 0
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    extractor = EntityExtractor.from_run(run_dir, max_new_tokens=100, end_penalty=8, dtype="float32")
    texts = source.read_text(encoding="utf-8").splitlines()
    found = extractor.extract(texts, split_sentences=False)  # one line, one sentence, as the CLI asks
    assert [r["entities"] for r in records] == [[e.as_dict() for e in entities] for entities in found]
    scores = sorted(e["score"] for r in records for e in r["entities"])
    assert scores, "the end penalty makes the tiny model name entities"
    middle = scores[len(scores) // 2]
    assert (
        cli_main([*common, "--output", str(tmp_path / "t.jsonl"), "--threshold", str(middle), "--dtype", "float32"])
        == 0
    )
    kept = [json.loads(line)["entities"] for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = [
        [{k: v for k, v in e.items() if k != "score"} for e in r["entities"] if e["score"] >= middle] for r in records
    ]
    assert kept == expected
    assert cli_main([*common, "--output", str(tmp_path / "u.jsonl"), "--threshold", "2"]) == 2
    assert cli_main([*common, "--output", str(tmp_path / "u.jsonl"), "--threshold", "0.5", "--unconstrained"]) == 2


# --- The fast path equals plain per-prompt generation ----------------------------------------------------------------

EQUALITY_SENTENCES = [
    "Ann Lee met Bo in Rome".split(),
    "nothing to see here".split(),
    "Zoë ( 42 ) visited Reykjavík and Zoë again with the whole team of Acme Corp. last Friday".split(),
    "Bo".split(),
    "Did Pedro Rossi really pay $ 12.50 for that ?".split(),
]


def plain_generate(
    model, tokenizer, job: Job, constrained: bool, max_new_tokens: int, answer_format: str = "marked"
) -> str:
    """The reference: one prompt, no padding, no cache reuse, `generate` as a user calls it."""
    ids = tokenizer(job.prompt, return_tensors="pt")["input_ids"]
    if constrained:
        processor = EntityConstraintProcessor(
            tokenizer, [job.words], prompt_length=ids.shape[1], answer_format=answer_format
        )
        extra = {"logits_processor": LogitsProcessorList([processor])}
    else:
        extra = {"stop_strings": [IM_END], "tokenizer": tokenizer}
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def equality_jobs(types, sentences=EQUALITY_SENTENCES, prompt_format: int = 1) -> list[Job]:
    """Format 1 prompts share their type's instruction; format 2 prompts share their sentence."""
    return [
        Job(build_prompt(" ".join(words), t, prompt_format), words, t.label if prompt_format == 1 else n)
        for n, words in enumerate(sentences)
        for t in types
    ]


def assert_fast_equals_plain(
    model,
    tokenizer,
    types,
    max_new_tokens: int,
    batch_size: int,
    sentences=None,
    prompt_format: int = 1,
    answer_format: str = "marked",
):
    jobs = equality_jobs(types, sentences or EQUALITY_SENTENCES, prompt_format)
    for constrained in (True, False):
        expected = [plain_generate(model, tokenizer, job, constrained, max_new_tokens, answer_format) for job in jobs]
        # The last flag, our own greedy loop (`compact_decoding`), only applies to constrained decoding.
        levers = ((True, True, True), (True, True, False), (True, False, True), (False, False, True))
        for reuse_prefix, prefill_answer, compact in levers if constrained else levers[:1]:
            extractor = EntityExtractor(
                model,
                tokenizer,
                types,
                constrained=constrained,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                reuse_prefix=reuse_prefix,
                prefill_answer=prefill_answer,
                compact_decoding=compact,
                answer_format=answer_format,
            )
            outputs = extractor.generate(jobs)
            mismatches = [(job.prompt, want, got) for job, want, got in zip(jobs, expected, outputs) if want != got]
            assert not mismatches, (constrained, reuse_prefix, prefill_answer, compact, mismatches[:3])


def test_fast_path_equals_plain_generate_on_a_tiny_random_llama(tiny_llama, sp_left):
    # Batches of 4 over 15 prompts: several batches, each mixing types whose prefixes differ in length.
    assert_fast_equals_plain(tiny_llama(sp_left), sp_left, [PERSON, PLACE, WORK], max_new_tokens=40, batch_size=4)


def test_sentence_first_fast_path_equals_plain_generate(tiny_llama, sp_left):
    # Groups are sentences here: prefixes of very different lengths (1 to 17 words) share batches.
    assert_fast_equals_plain(
        tiny_llama(sp_left), sp_left, [PERSON, PLACE, WORK], max_new_tokens=40, batch_size=4, prompt_format=2
    )


def test_pointer_answers_fast_path_equals_plain_generate(tiny_llama, sp_left):
    # No opening marker: the automaton's choice node offers every run's first token and the end at once.
    assert_fast_equals_plain(
        tiny_llama(sp_left), sp_left, [PERSON, PLACE, WORK], max_new_tokens=40, batch_size=4, answer_format="pointer"
    )


def test_sentence_first_predict_uses_the_format_and_blocks(tiny_llama, sp_left, monkeypatch):
    model = tiny_llama(sp_left)
    reference = EntityExtractor(model, sp_left, [PERSON, PLACE], max_new_tokens=30, reuse_prefix=False, prompt_format=2)
    expected = [p.spans for p in reference.predict(SENTENCES)]
    fast = EntityExtractor(model, sp_left, [PERSON, PLACE], max_new_tokens=30, prompt_format=2)
    monkeypatch.setattr(fast, "SENTENCES_PER_BLOCK", 2)  # several blocks, each with its own cached prefixes
    prompts = []
    generate = fast.generate
    monkeypatch.setattr(fast, "generate", lambda jobs, progress=False: prompts.extend(jobs) or generate(jobs))
    assert [p.spans for p in fast.predict(SENTENCES)] == expected
    assert prompts and all(job.prompt.startswith("Input: ") for job in prompts)
    assert len({job.group for job in prompts}) == len(SENTENCES)  # one prefix group per sentence
    with pytest.raises(ValueError, match="unknown prompt_format 3"):
        EntityExtractor(model, sp_left, [PERSON], prompt_format=3)


def test_prefix_is_the_instruction_and_every_prompt_starts_with_it(tiny_llama, sp_left):
    jobs = equality_jobs([PERSON, WORK])
    encoded = sp_left([job.prompt for job in jobs])["input_ids"]
    for label in (PERSON.label, WORK.label):
        group = [ids for ids, job in zip(encoded, jobs) if job.group == label]
        length = shared_prefix_length(group)
        instruction = next(job.prompt for job in jobs if job.group == label).split("\nInput: ")[0]
        # The shared tokens cover the instruction (a merge may take a character or two of what follows, never more).
        assert sp_left.decode(group[0][:length], skip_special_tokens=True).startswith(instruction)
        assert all(ids[:length] == group[0][:length] and len(ids) > length for ids in group)
    shared = SharedPrefixes(tiny_llama(sp_left), {"a": [1, 5, 7], "b": [1, 5], "c": []})
    assert shared.width == 3 and [shared.length(k) for k in "abc"] == [3, 2, 0]
    cache = shared.cache_for(["b", "a", "b"])
    assert cache.get_seq_length() == 3 and cache.layers[0].keys.shape[0] == 3
    assert torch.equal(cache.layers[0].keys[0, :, 2], torch.zeros_like(cache.layers[0].keys[0, :, 2]))  # the gap
    assert SharedPrefixes(tiny_llama(sp_left), {"a": []}).cache_for(["a"]) is None


def test_shared_prefix_length_leaves_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert shared_prefix_length([[1, 2, 3]], keep=0) == 3
    assert shared_prefix_length([[9], [1, 2]]) == 0


def test_prefix_reuse_is_skipped_when_generate_repeats_prompts(tiny_llama, sp_left):
    extractor = EntityExtractor(tiny_llama(sp_left), sp_left, [PERSON], max_new_tokens=30)
    jobs = equality_jobs([PERSON])[:2]
    assert extractor._shared_prefixes(sp_left([j.prompt for j in jobs])["input_ids"], ["person"] * 2).width > 0
    extractor.generation_kwargs["num_beams"] = 2
    assert extractor._shared_prefixes(sp_left([j.prompt for j in jobs])["input_ids"], ["person"] * 2).width == 0


def test_predict_spans_do_not_depend_on_the_speed_levers(extractor):
    fast = [p.spans for p in extractor.predict(SENTENCES)]
    extractor.reuse_prefix = extractor.prefill_answer = False
    assert [p.spans for p in extractor.predict(SENTENCES)] == fast


@pytest.mark.slow
def test_fast_path_equals_plain_generate_on_the_default_model(smollm2_path):
    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(smollm2_path, padding_side="left")
    wnut = get_dataset("wnut17")
    types = [t for t in wnut.types if t.label in {"person", "location", "product"}]
    sentences = [s.tokens for s in wnut.load("test").sentences[:4]] + EQUALITY_SENTENCES[:2]
    assert_fast_equals_plain(
        load_model(smollm2_path).eval(), tokenizer, types, max_new_tokens=32, batch_size=8, sentences=sentences
    )


def counted_forward(model) -> list[int]:
    """Make `model` record the rows of every forward call; returns the (growing) list."""
    rows_per_call = []
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature, which decides the cache keyword
    def counting_forward(*args, **kwargs):
        rows_per_call.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    model.forward = counting_forward
    return rows_per_call


def test_own_greedy_loop_drops_finished_rows(tiny_llama, sp_left):
    # An empty sentence allows only the empty answer, so its rows are finished after the prompt's forward pass; the
    # random model writes entities of the other sentences until the budget ends them.
    sentences = [[], "Ann Lee met Bo in Rome".split(), [], "Bo".split()]
    jobs = equality_jobs([PERSON, PLACE], sentences)
    model = tiny_llama(sp_left)
    rows_per_call = counted_forward(model)
    options = dict(batch_size=len(jobs), max_new_tokens=60, reuse_prefix=False)
    outputs = EntityExtractor(model, sp_left, [PERSON, PLACE], **options).generate(jobs)
    assert rows_per_call[0] == len(jobs) and set(rows_per_call[1:]) == {len(jobs) - 4}
    assert EntityExtractor(model, sp_left, [PERSON, PLACE], compact_decoding=False, **options).generate(jobs) == outputs
    assert set(rows_per_call[len(rows_per_call) // 2 + 1 :]) == {len(jobs)}  # `generate` keeps every row


def test_own_greedy_loop_writes_forced_endings_without_the_model(tiny_llama, sp_left):
    model = tiny_llama(sp_left)
    # Favour the tokens only the end marker has, so every answer chooses ` <im_end>` at once.
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    template = CompletionTemplate.from_tokenizer(sp_left)
    head.bias.data[list(set(template.end) - set(template.open) - set(template.close))] = 10.0
    model.lm_head = head
    rows_per_call = counted_forward(model)
    jobs = equality_jobs([PERSON, WORK])
    options = dict(batch_size=len(jobs), reuse_prefix=False)
    outputs = EntityExtractor(model, sp_left, [PERSON, WORK], **options).generate(jobs)
    assert all(parse_output(text).entities == [] and text.endswith(IM_END) for text in outputs)
    # The loop calls the model until the answer's tokens are forced (` <` may still open a group, ` <im` may not).
    automaton = build_automata(sp_left, [jobs[0].words])[0]
    decided = next(
        n
        for n in range(1, len(template.end) + 1)
        if automaton.forced_ending(automaton.walk(template.prefix + template.end[:n])) is not None
    )
    assert len(rows_per_call) == decided < len(template.end)
    rows_per_call.clear()
    assert EntityExtractor(model, sp_left, [PERSON, WORK], compact_decoding=False, **options).generate(jobs) == outputs
    assert len(rows_per_call) == len(template.end) + 1  # `generate`: one call per end token and one for EOS


def test_own_greedy_loop_keeps_the_token_budget(tiny_llama, sp_left):
    model = tiny_llama(sp_left)
    jobs = equality_jobs([PERSON, WORK])
    budget = len(EntityExtractor(model, sp_left, [PERSON])._answer_prefill()) + 3  # ends inside most answers
    outputs = {
        compact: EntityExtractor(
            model, sp_left, [PERSON, WORK], batch_size=4, max_new_tokens=budget, compact_decoding=compact
        ).generate(jobs)
        for compact in (True, False)
    }
    assert outputs[True] == outputs[False]
    assert any(IM_END not in text for text in outputs[True])  # the budget did cut answers
    sampled = EntityExtractor(model, sp_left, [PERSON], do_sample=True, temperature=0.5)
    assert not is_plain_greedy(sampled.generation_kwargs, model)  # sampling goes through `generate`
    assert is_plain_greedy({"do_sample": False}, model) and not is_plain_greedy({"num_beams": 2}, model)


def test_from_run_casts_the_merged_model_to_a_dtype(run_dir, tmp_path):
    extractor = EntityExtractor.from_run(run_dir, dtype="bfloat16", max_new_tokens=40)
    assert next(extractor.model.parameters()).dtype == torch.bfloat16
    assert len(extractor.predict(SENTENCES)) == len(SENTENCES)
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        EntityExtractor.from_run(run_dir, dtype="float33")
    out = tmp_path / "o.jsonl"
    assert (
        cli_main(
            [
                "predict",
                "--run",
                str(run_dir),
                "--text",
                "Bo met Al",
                "--dtype",
                "bfloat16",
                "--output",
                str(out),
                "--max-new-tokens",
                "40",
            ]
        )
        == 0
    )
    assert set(json.loads(out.read_text())) == {"text", "entities"}


def test_from_run_and_cli_use_the_runs_prediction_options_unless_told(run_dir, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    record = json.loads((run / "cllmfs_run.json").read_text())
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "smollm2" / "wnut17_intra.yaml").read_text())
    decoding = json.loads((run / "decoding_config.json").read_text())
    assert decoding["end_penalty"] == recipe["end_penalty"]  # the recipe's choice, saved for prediction
    assert decoding["one_type_per_span"] is recipe["one_type_per_span"]
    assert record["format"]["type_descriptions"] is True
    (run / "decoding_config.json").write_text(json.dumps({"end_penalty": 1.5, "one_type_per_span": True}))
    changed = {**record, "format": {**record["format"], "type_descriptions": False}}
    (run / "cllmfs_run.json").write_text(json.dumps(changed))
    extractor = EntityExtractor.from_run(run)
    assert extractor.end_penalty == 1.5 and extractor.one_type_per_span
    assert extractor.type_descriptions is False  # prompts as the run was trained: by the type's name alone
    import cllmfs_trainer.inference.generate as generate_module

    prompts = []
    real_build = generate_module.build_prompt
    monkeypatch.setattr(generate_module, "build_prompt", lambda *a: prompts.append(real_build(*a)) or prompts[-1])
    extractor.predict([Sentence("Bo met Al".split(), [])])
    assert prompts and not any("refers to" in p for p in prompts)
    monkeypatch.undo()
    assert EntityExtractor.from_run(run, end_penalty=0.25).end_penalty == 0.25
    unconstrained = EntityExtractor.from_run(run, constrained=False)  # no ending choice to move, no first-token odds
    assert unconstrained.end_penalty == 0.0 and not unconstrained.one_type_per_span
    used = []
    real_init = EntityExtractor.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        used.append((self.end_penalty, self.one_type_per_span))

    monkeypatch.setattr(EntityExtractor, "__init__", spy)
    for extra in ([], ["--end-penalty", "3", "--no-one-type-per-span"]):
        out = tmp_path / f"o{len(extra)}.jsonl"
        args = ["predict", "--run", str(run), "--text", "Bo met Al", "--output", str(out), "--max-new-tokens", "40"]
        assert cli_main(args + extra) == 0
    assert used == [(1.5, True), (3.0, False)]


@pytest.mark.parametrize("probed", ["bfloat16", "float32"])
def test_from_run_auto_dtype_follows_the_cpu_probe(run_dir, monkeypatch, probed):
    from cllmfs_trainer.models import precision

    asked = []
    monkeypatch.setattr(precision, "probe_cpu_dtype", lambda purpose="training": asked.append(purpose) or probed)
    extractor = EntityExtractor.from_run(run_dir, dtype="auto", max_new_tokens=40)
    assert next(extractor.model.parameters()).dtype == getattr(torch, probed)
    assert asked == ["predicting"]


def test_inference_benchmark_script_runs_on_a_run_folder(run_dir, tmp_path):
    # The script the GPU check runs with little time to spare: it must run, time every variant and check agreement.
    out = tmp_path / "inference.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "inference.py"),
            "--run",
            str(run_dir),
            "--sentences",
            "3",
            "--rounds",
            "2",
            "--naive-sentences",
            "2",
            "--max-new-tokens",
            "40",
            "--threads",
            "1",
            "--variants",
            "naive,sorted_b32,prefix,prefill,full,default,full_bf16",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    variants = [row["variant"] for row in result["summary"]]
    assert variants == [
        "naive",
        "sorted_b32",
        "prefix",
        "prefill",
        "full",
        "default",
        "full_bf16",
        "full_unconstrained",
    ]
    from cllmfs_trainer.models.precision import probe_cpu_dtype

    assert result["dtypes"]["default"] == probe_cpu_dtype()  # the default path runs in the probed precision
    assert all(row["prompts_per_s"] > 0 for row in result["summary"])
    prompts = {row["variant"]: row["prompts"] for row in result["summary"]}
    assert prompts["naive"] * 3 == prompts["full"] * 2 == result["prompts"] * 2  # naive timed on 2 of 3 sentences
    agreement = {tuple(row["pair"]): row for row in result["agreement"]}
    assert agreement[("full_unconstrained", "naive")]["prompts"] == prompts["naive"]  # compared where both ran
    for pair in [
        ("full_unconstrained", "naive"),
        ("prefix", "sorted_b32"),
        ("prefill", "sorted_b32"),
        ("full", "sorted_b32"),
    ]:  # the same decoding problem, with and without the levers
        assert agreement[pair]["same_text"] == agreement[pair]["prompts"], pair
    work = result["forward_work_first_round"]
    assert work["full"]["decode_rows"] <= work["prefill"]["decode_rows"]  # our loop never decodes more rows
    assert work["naive"]["decode_calls"] > 0 and work["full"]["prompt_s"] > 0
    assert agreement[("default", "full")]["prompts"] == result["prompts"]


def test_end_penalty_experiment_scores_each_penalty_once_and_resumes(run_dir, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("end_penalty", REPO / "experiments" / "end_penalty.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "end_penalty.json"
    argv = ["--runs", str(run_dir), "--dataset", "wnut17", "--size", "3", "--dtype", "float32", "--out", str(out)]
    records = script.main(script.make_parser().parse_args(argv + ["--penalties", "0", "50"]))
    assert [(r["end_penalty"], r["sentences"], r["split"]) for r in records] == [(0.0, 3, "dev"), (50.0, 3, "dev")]
    # A penalty of 50 nats leaves no prompt of the 3 sentences x 6 types answering "none".
    assert records[1]["errors"]["n_pred"] >= records[0]["errors"]["n_pred"] and records[1]["errors"]["n_pred"] > 0
    assert "| 50 | " in capsys.readouterr().out
    again = script.main(script.make_parser().parse_args(argv + ["--penalties", "0", "50", "1"]))
    assert [r["end_penalty"] for r in again] == [0.0, 50.0, 1.0]  # only the new penalty was predicted
