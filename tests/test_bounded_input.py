"""Bounded input and files that used to be read silently wrong: every case is one clear line, or a bounded result.

Input is read block by block within a size and a line bound (`cllmfs_trainer.files`), a word too long for a prompt is
shortened in the prompt only, a prompt past the model's context is refused, and JSON is parsed with one-line errors
for damage, deep nesting and keys given twice (`cllmfs_trainer.parsing`). The benchmark's own files are user errors
when damaged.
"""

import json
import re
import time
from pathlib import Path

import pytest
from helpers import REPO, one_error_line

from cllmfs_trainer import cli
from cllmfs_trainer.data import DataFormatError, Sentence, read_examples, read_jsonl
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import iter_text_lines, split_lines
from cllmfs_trainer.parsing import parse_json
from cllmfs_trainer.run_folder import RunFolder, RunFolderError

PERSON = EntityType("person", "person", "names of people")


def predict(run, source, output, *extra):
    return cli.main(["predict", "--run", str(run), "--input", str(source), "--output", str(output), *map(str, extra)])


# --- reading within bounds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"a", b"a\n", b"a\r\nb\rc\n\nd", b"\xef\xbb\xbfx\r\n", b"ab\r\n\r\ncd\r", b"\r\n"]
)
@pytest.mark.parametrize("block", [1, 2, 3, 2**20])
def test_lines_read_in_blocks_are_the_lines_of_the_whole_file(tmp_path, monkeypatch, data, block):
    """A `\\r\\n` cut between two blocks is one line end, never two."""
    monkeypatch.setattr("cllmfs_trainer.files._READ_BLOCK", block)
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    expected = [raw.decode("utf-8") for raw in split_lines(data)]
    expected[0] = expected[0].removeprefix("\ufeff")
    assert [line for _, line in iter_text_lines(path)] == expected


def test_a_device_without_line_ends_stops_at_the_line_bound():
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match=r"^/dev/zero:1: the line is longer than 1,048,576 bytes"):
        list(iter_text_lines(Path("/dev/zero")))
    assert time.perf_counter() - start < 10  # it read about 1 MiB, not gigabytes


def test_both_bounds_are_set_by_environment_variables(tmp_path, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_text("short\n" * 10 + "a longer line\n")
    monkeypatch.setenv("CLLMFS_MAX_LINE_BYTES", "10")
    with pytest.raises(DataFormatError, match=r"in.txt:11: the line is longer than 10 bytes .* CLLMFS_MAX_LINE_BYTES"):
        list(iter_text_lines(path))
    monkeypatch.delenv("CLLMFS_MAX_LINE_BYTES")
    monkeypatch.setenv("CLLMFS_MAX_INPUT_BYTES", "20")
    with pytest.raises(DataFormatError, match=r"in.txt: the input is larger than 20 bytes; .* CLLMFS_MAX_INPUT_BYTES"):
        list(iter_text_lines(path))
    monkeypatch.setenv("CLLMFS_MAX_INPUT_BYTES", "lots")
    with pytest.raises(UserError, match="CLLMFS_MAX_INPUT_BYTES='lots': expected a whole number of bytes"):
        list(iter_text_lines(path))


def test_predict_refuses_dev_zero_in_one_line_without_loading_a_model(fake_run, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert predict(fake_run, "/dev/zero", out) == 2
    assert "/dev/zero:1: the line is longer than 1,048,576 bytes" in one_error_line(capsys, "cllmfs predict")
    assert not out.exists()


def test_reading_examples_from_a_device_reads_only_its_head(tmp_path):
    with pytest.raises(DataFormatError, match="/dev/zero:1: the line is longer than"):
        read_examples("/dev/zero")


# --- long words and long prompts ------------------------------------------------------------------------------------


@pytest.fixture
def extractor(tiny_llama, sp_left, one_torch_thread):
    from cllmfs_trainer.inference.generate import EntityExtractor

    def make(**kwargs):
        model = tiny_llama(sp_left, max_position_embeddings=kwargs.pop("context", 512))
        return EntityExtractor(model, sp_left, [PERSON], max_new_tokens=12, **kwargs)

    return make


def test_a_million_letter_word_is_shortened_in_the_prompt_and_keeps_its_place(extractor, caplog):
    words = ["Ann", "a" * 1_000_000, "met", "Bo"]
    start = time.perf_counter()
    with caplog.at_level("WARNING"):
        [prediction] = extractor().predict([Sentence(words, [])])
    assert time.perf_counter() - start < 60
    assert prediction.sentence.tokens == words  # the prediction is over the user's words, not the shortened ones
    assert all(0 <= span.start < span.end <= len(words) for span in prediction.spans)
    assert "1 word(s) longer than 256 characters were shortened in the prompts" in caplog.text


def test_shortening_keeps_the_predictions_of_a_sentence_without_long_words(extractor):
    sentence = Sentence(["Ann", "Lee", "met", "Bo", "in", "Rome"], [])
    assert extractor().predict([sentence])[0].spans == extractor(max_word_chars=3).predict([sentence])[0].spans


def test_a_prompt_past_the_models_context_is_refused_with_the_levers_to_turn(extractor):
    sentence = Sentence([f"word{i}" for i in range(120)], [])
    with pytest.raises(UserError, match=r"context of 160 tokens .* lower max_sentence_words \(128\)"):
        extractor(context=160).predict([sentence])
    assert extractor(context=160, max_sentence_words=4).predict([sentence])[0].sentence is sentence


@pytest.mark.parametrize("name", ["max_word_chars", "max_sentence_words"])
def test_word_and_sentence_bounds_must_be_positive(extractor, name):
    with pytest.raises(UserError, match=f"{name} must be an integer >= 1, got 0"):
        extractor(**{name: 0})


# --- JSON read silently wrong before ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"text": "Ann", "text": "Bo"}', "f.jsonl:3: the key 'text' appears twice in one object"),
        ("[" * 100_000, "f.jsonl:3: the JSON is nested too deeply to read"),
        ('{"text": "Ann', "f.jsonl:3: invalid JSON (Unterminated string starting at column 10)"),
        ('{\n"a": 1,\n}', "f.jsonl:3:3: invalid JSON (Expecting property name enclosed in double quotes at column 1)"),
    ],
)
def test_json_errors_are_one_line_naming_the_place(text, words):
    with pytest.raises(DataFormatError) as err:
        parse_json(text, "f.jsonl:3")
    assert str(err.value).startswith(words)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("reader", [read_jsonl, read_examples])
def test_a_duplicate_text_key_or_deep_nesting_in_examples_is_refused(tmp_path, reader):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "Ann met Bo", "entities": []}\n{"text": "Ann", "entities": [], "text": "Bo"}\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: the key 'text' appears twice"):
        reader(path)
    path.write_text('{"text": "Ann met Bo", "entities": []}\n' + "[" * 100_000 + "\n")
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: the JSON is nested too deeply"):
        reader(path)


def test_predict_reads_a_json_array_as_texts_not_as_lines(fake_run, tmp_path, capsys):
    """A `.json` file was read line by line before: its brackets and quotes were predicted on as text."""
    from cllmfs_trainer.cli.predict import _input_texts

    path = tmp_path / "in.json"
    path.write_text(json.dumps(["Ann met Bo", {"text": "in Rome", "id": 7}], indent=2))
    assert [text for _, text in _input_texts(path, ".json")] == ["Ann met Bo", "in Rome"]
    path.write_text('{"texts": ["Ann met Bo"]}')
    out = tmp_path / "out.jsonl"
    assert predict(fake_run, path, out) == 2
    assert "in.json: the JSON is a dict; expected a JSON array of texts" in one_error_line(capsys, "cllmfs predict")
    path.write_text('["Ann", {"txt": "Bo"}]')
    assert predict(fake_run, path, out) == 2
    assert "in.json: item 1: expected a string or a JSON object" in one_error_line(capsys, "cllmfs predict")
    path.with_suffix(".jsonl").write_text('{"text": "Ann", "text": "Bo"}\n')
    assert predict(fake_run, path.with_suffix(".jsonl"), out) == 2
    assert "in.jsonl:1: the key 'text' appears twice" in one_error_line(capsys, "cllmfs predict")
    assert not out.exists()


# --- run records that were accepted before ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        ({"format_version": -1}, "field 'format_version' must be >= 0, got -1"),
        ({"k": -5}, "field 'k' must be >= 0, got -5"),
        ({"test_types": [PERSON.__dict__, PERSON.__dict__]}, "test_types[1]: the label 'person' is given twice"),
    ],
)
def test_a_run_record_with_impossible_values_is_refused(fake_run, change, words):
    record = json.loads((fake_run / "cllmfs_run.json").read_text())
    record.update(change)
    (fake_run / "cllmfs_run.json").write_text(json.dumps(record))
    with pytest.raises(RunFolderError, match=rf"cllmfs_run.json: {re.escape(words)}"):
        RunFolder.load(fake_run)


def test_a_run_record_with_a_key_given_twice_is_refused(fake_run):
    text = (fake_run / "cllmfs_run.json").read_text()
    (fake_run / "cllmfs_run.json").write_text(text.replace('"k": 1', '"k": 1, "k": 5'))
    with pytest.raises(RunFolderError, match="the key 'k' appears twice in one object"):
        RunFolder.load(fake_run)


# --- the benchmark's own files ----------------------------------------------------------------------------------------


@pytest.fixture
def bench_yaml(tmp_path, tiny_run_inputs):
    config = {
        "output_dir": str(tmp_path / "b"),
        "report_dir": str(tmp_path / "report"),
        "tasks": ["intra:wnut17"],
        "methods": ["zero_shot"],
        "seeds": [0],
        "ks": [1],
        "query_size": 4,
        "model": str(tiny_run_inputs / "model"),
        "recipe": str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
    }
    path = tmp_path / "bench.yaml"
    path.write_text(json.dumps(config))
    return path


def run_benchmark(*args) -> int:
    from cllmfs_trainer.scripts import benchmark

    with pytest.raises(SystemExit) as exit_info:
        benchmark.cli(list(args))
    return exit_info.value.code


@pytest.mark.parametrize(
    "damage, words",
    [
        ("benchmark.json", "the benchmark's settings file is damaged: "),
        ("unit", "a unit's scores file is damaged: "),
        ("restore", "the report to restore from is damaged: "),
    ],
)
def test_damaged_benchmark_files_are_one_line_user_errors(bench_yaml, tmp_path, capsys, damage, words):
    from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig
    from cllmfs_trainer.benchmark.config import Unit

    raw = json.loads(bench_yaml.read_text())
    benchmark = Benchmark(BenchmarkConfig(**{k: v for k, v in raw.items() if k != "report_dir"}))
    benchmark.prepare()
    extra = []
    if damage == "benchmark.json":
        (tmp_path / "b" / "benchmark.json").write_text('{"config": ')
    elif damage == "unit":
        unit = benchmark.unit_path(Unit("intra", "wnut17", 1, 0, "zero_shot"))
        unit.parent.mkdir(parents=True)
        unit.write_text('{"span": {"f1": 0.5}')
        extra = ["--report-only"]
    else:
        (tmp_path / "results.json").write_bytes(b'{"units": [\xff]}')
        extra = ["--restore-from", str(tmp_path / "results.json")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert run_benchmark(str(bench_yaml), *extra) == 2
    assert words in one_error_line(capsys, "benchmark.py")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing changed
