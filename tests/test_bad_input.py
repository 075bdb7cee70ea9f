"""Bad input and faults: every user error is one clear line with exit code 2, nothing is dropped or overwritten.

Each entry point (`cllmfs`, `recipes/train.py`, `recipes/benchmark.py`) is run in-process; a case asserts the
message, the exit code, that no traceback is printed and that no output appears. Nothing here loads a model: the
checks run before any model would.
"""

import argparse
import json
import logging

import pytest
import yaml
from helpers import REPO, one_error_line

from cllmfs_trainer import cli
from cllmfs_trainer.command_line import run_entry_point
from cllmfs_trainer.data import DataFormatError, Sentence, Span, load_types_file, make_task, read_conll, read_jsonl
from cllmfs_trainer.data.io import jsonl_line
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import atomic_write_text

RECIPE = REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"
PERSON = EntityType("person", "person", "names of people")


# --- readers ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"Anna\tB-PER\rsings\tO\r\r",  # old Mac line ends: each \r ends a line
        b"Anna\tB-PER\r\nsings\tO\r\n\r\n",
        b"\xef\xbb\xbfAnna\tB-PER\nsings\tO\n",  # a BOM before the first token
        b"\xef\xbb\xbf-DOCSTART- -X- O O\n\nAnna\tB-PER\nsings\tO\n",  # ... or before -DOCSTART-
    ],
    ids=["cr", "crlf", "bom-token", "bom-docstart"],
)
def test_line_ends_and_bom_read_every_token(tmp_path, data):
    path = tmp_path / "d.txt"
    path.write_bytes(data)
    corpus = read_conll(path)
    assert [s.tokens for s in corpus] == [["Anna", "sings"]]
    assert corpus[0].spans == [Span(0, 1, "PER")]


@pytest.mark.parametrize(
    "data, words",
    [
        (b"An\x00na\tB-PER\n", r"d.txt:1: token 'An\\x00na' contains the control character"),
        (b"Anna\tO\nBo\tB-PE\x00R\n", r"d.txt:2: tag 'B-PE\\x00R' contains the control character"),
        (b"Anna\tB- PER\n", r"d.txt:1: tag 'B- PER' has whitespace .* in its type ' PER'"),
        ("Müller\tB-PER\n".encode("latin-1"), r"d.txt:1: byte 0xfc at column 2 is not valid UTF-8"),
    ],
    ids=["nul-token", "nul-tag", "space-in-type", "latin-1"],
)
def test_conll_refuses_control_characters_and_spaces_in_types(tmp_path, data, words):
    path = tmp_path / "d.txt"
    path.write_bytes(data)
    with pytest.raises(DataFormatError, match=words):
        read_conll(path)


@pytest.mark.parametrize(
    "entity, words",
    [
        ({"start": False, "end": True}, r"'entities\[0\].start' must be an integer character offset, got false"),
        ({"start": 0, "end": True}, r"'entities\[0\].end' must be an integer character offset, got true"),
        ({"start": "0", "end": 4}, r"'entities\[0\].start' must be an integer character offset, got \"0\""),
        ({"start": 0, "end": 4.0}, r"'entities\[0\].end' must be an integer character offset, got 4.0"),
        ({"start": 0, "end": 99}, r"'entities\[0\]' has offsets \[0, 99\) outside the text \(length 10\)"),
    ],
    ids=["booleans", "bool-end", "string", "float", "outside"],
)
def test_jsonl_offsets_must_be_integers(tmp_path, entity, words):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "Anna sings", "entities": [{**entity, "type": "PER"}]}) + "\n")
    with pytest.raises(DataFormatError, match="d.jsonl:1: field " + words):
        read_jsonl(path)


def test_jsonl_refuses_control_characters_and_reads_cr_and_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "An\u0000na"}) + "\n")
    with pytest.raises(DataFormatError, match=r"d.jsonl:1: field 'text' contains the control character"):
        read_jsonl(path)
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a b"}\r{"text": "c"}\r')
    assert [s.tokens for s in read_jsonl(path)] == [["a", "b"], ["c"]]


@pytest.mark.parametrize("data", [b"", b"\n\n \n", b"-DOCSTART- -X- O O\n\n"], ids=["empty", "blank", "docstart"])
def test_an_empty_corpus_warns_and_is_refused_as_a_support_set(tmp_path, caplog, data):
    path = tmp_path / "support.txt"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        assert len(read_conll(path)) == 0
    assert f"{path}: no sentences" in caplog.text
    with pytest.raises(DataFormatError, match="support.txt: no sentences"):
        make_task("intra", "wnut17", k=1, support_set=path)


def test_an_empty_query_split_is_refused(tmp_path):
    (tmp_path / "wnut17").mkdir()
    (tmp_path / "wnut17" / "train.txt").write_text("Bo\tB-person\nmet\tO\n")
    (tmp_path / "wnut17" / "test.txt").write_text("-DOCSTART- -X- O O\n\n")
    with pytest.raises(DataFormatError, match="wnut17/test.txt: no sentences"):
        make_task("intra", "wnut17", k=1, n_types=["person"], data_dir=tmp_path)


def test_a_given_support_set_refuses_a_k_it_cannot_hold(tiny_run_inputs):
    support = tiny_run_inputs / "support.txt"  # 4 mentions of `person`
    with pytest.raises(DataFormatError, match=r"k=50 but the support set has fewer mentions .*'person': 4.*k <= 4"):
        make_task("intra", "wnut17", k=50, n_types=["person"], support_set=support)
    with pytest.raises(UserError, match="k must be an integer >= 1, got -3"):
        make_task("intra", "wnut17", k=-3, n_types=["person"], support_set=support)
    assert make_task("intra", "wnut17", k=4, n_types=["person"], support_set=support).support.k == 4


def test_jsonl_lines_escape_every_line_break_splitlines_knows():
    line = jsonl_line({"text": "a\u2028b\u2029c\x85d é"})
    assert line.count("\n") == 1 and len(line.splitlines()) == 1 and "é" in line
    assert json.loads(line)["text"] == "a\u2028b\u2029c\x85d é"


# --- type files -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, words",
    [
        ("types:\n  drug: a\n  drug: b\n", r"t.yaml:3: duplicate key 'drug' \(first on line 2\)"),
        ("types:\n  - label: drug\n    descripton: x\n", r"t.yaml:3: unknown field 'descripton' in type 'drug'"),
        ("types:\n  dose: {name: d, descripton: x}\n", r"t.yaml:2: unknown field 'descripton' in type 'dose'"),
        ("types:\n  drug: x\ndatset: y\n", r"t.yaml:3: unknown field 'datset'; a types file has the fields"),
        ("types:\n  2014: years\n", r"t.yaml:2: field 'types\[0\]'.label must be .* got 2014"),
        ("types:\n  - label: a\n    description: 5\n", r"t.yaml:2: field 'types\[0\]'.description .* must be a string"),
        ("types:\n  - label: a\n    name: [x]\n    description: y\n", r"t.yaml:2: field 'types\[0\]'.name must be"),
    ],
    ids=["duplicate", "misspelt", "misspelt-short", "top-level", "int-label", "int-description", "list-name"],
)
def test_types_files_refuse_duplicates_unknown_fields_and_non_strings(tmp_path, content, words):
    path = tmp_path / "t.yaml"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=words):
        load_types_file(path)


def test_yaml_booleans_stay_labels(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("types:\n  yes: affirmations\n  no: negations\n  on: switches\n")
    assert [t.label for t in load_types_file(path)] == ["yes", "no", "on"]


def test_types_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes("types:\n  drug: Arzneimittel für\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"t.yaml:2: byte 0xfc .* not valid UTF-8"):
        load_types_file(path)


# --- cllmfs -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def text_input(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("Ann Lee met Bo in Rome\nZoë visited Reykjavík\n", encoding="utf-8")
    return path


def predict(run, source, output, *extra):
    return cli.main(["predict", "--run", str(run), "--input", str(source), "--output", str(output), *map(str, extra)])


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--limit", "-1"], "argument --limit: expected an integer >= 1, got -1"),
        (["--limit", "0"], "argument --limit: expected an integer >= 1, got 0"),
        (["--batch-size", "-2"], "argument --batch-size: expected an integer >= 1, got -2"),
        (["--max-new-tokens", "0"], "argument --max-new-tokens: expected an integer >= 1, got 0"),
        (["--max-new-tokens", "-5"], "argument --max-new-tokens: expected an integer >= 1, got -5"),
        (["--types", "drug"], "--types: type(s) ['drug'] have no description in the run folder"),
    ],
)
def test_predict_refuses_bad_numbers(fake_run, text_input, tmp_path, capsys, extra, words):
    out = tmp_path / "out.jsonl"
    assert predict(fake_run, text_input, out, *extra) == 2
    assert words in one_error_line(capsys, "cllmfs predict")
    assert not out.exists()


def test_predict_never_writes_over_its_input(fake_run, text_input, capsys):
    before = text_input.read_bytes()
    assert predict(fake_run, text_input, text_input) == 2
    assert f"--output {text_input} is also an input" in one_error_line(capsys, "cllmfs predict")
    assert text_input.read_bytes() == before


@pytest.mark.parametrize(
    "damage, words",
    [
        ("adapter", "weights='adapter' but adapter_model.safetensors / adapter_model.bin is missing"),
        ("corrupt", "cllmfs_run.json:2: invalid JSON (Expecting value at column 15)"),
        ("test_types", "cllmfs_run.json: missing field(s) ['test_types']"),
        ("tokenizer", "tokenizer.json / tokenizer.model / vocab.json / vocab.txt / spiece.model is missing"),
        ("base_model", "cllmfs_run.json: field 'base_model': "),
        ("answer_format", "field 'answer_format' must be one of ['marked', 'pointer'], got 'brackets'"),
        ("end_penalty", "decoding_config.json: field 'end_penalty' must be a finite number, got 'high'"),
        ("one_type_per_span", "decoding_config.json: field 'one_type_per_span' must be true or false, got 'yes'"),
        ("type_descriptions", "field 'type_descriptions' must be true or false, got 'yes'"),
    ],
)
def test_predict_refuses_an_incomplete_run_folder(fake_run, text_input, tmp_path, capsys, damage, words):
    run_file = fake_run / "cllmfs_run.json"
    if damage == "adapter":
        (fake_run / "adapter_model.safetensors").unlink()
    elif damage == "corrupt":
        run_file.write_text('{\n"base_model": \n')
    elif damage == "tokenizer":
        (fake_run / "tokenizer.json").unlink()
    elif damage in ("end_penalty", "one_type_per_span"):  # prediction's defaults have a file of their own
        value = "high" if damage == "end_penalty" else "yes"
        (fake_run / "decoding_config.json").write_text(json.dumps({damage: value}))
    else:
        record = json.loads(run_file.read_text())
        if damage == "test_types":
            del record["test_types"]
        elif damage == "answer_format":
            record["format"]["answer_format"] = "brackets"
        elif damage == "type_descriptions":
            record["format"][damage] = "yes"
        else:
            record["base_model"] = str(tmp_path / "deleted-model")
        run_file.write_text(json.dumps(record))
    out = tmp_path / "out.jsonl"
    assert predict(fake_run, text_input, out) == 2
    line = one_error_line(capsys, "cllmfs predict")
    assert words in line and str(fake_run) in line
    assert not out.exists()


@pytest.mark.parametrize("which", ["input", "output"])
def test_predict_refuses_a_folder_as_input_or_output(fake_run, text_input, tmp_path, capsys, which):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    source, out = (folder, tmp_path / "out.jsonl") if which == "input" else (text_input, folder)
    assert predict(fake_run, source, out) == 2
    assert f"--{which} {folder} is a folder" in one_error_line(capsys, "cllmfs predict")
    assert list(folder.iterdir()) == [] and not (tmp_path / "out.jsonl").exists()


def test_predict_checks_the_output_folder_before_predicting(fake_run, text_input, tmp_path, capsys):
    out = tmp_path / "missing-folder" / "out.jsonl"
    assert predict(fake_run, text_input, out) == 2
    assert f"folder {out.parent} does not exist" in one_error_line(capsys, "cllmfs predict")
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "name, words",
    [
        ("adapter_model.safetensors", "is inside the run folder"),
        ("adapter_config.json", "is inside the run folder"),
        ("tokenizer.json", "is inside the run folder"),
        ("new.jsonl", "is inside the run folder"),
        ("cllmfs_run.json", "is also an input"),  # the run record is read, so the first check names it
    ],
)
def test_predict_never_writes_inside_the_run_folder(fake_run, text_input, capsys, name, words):
    before = {p.name: p.read_bytes() for p in fake_run.iterdir()}
    assert predict(fake_run, text_input, fake_run / name) == 2
    assert f"--output {fake_run / name} {words}" in one_error_line(capsys, "cllmfs predict")
    assert {p.name: p.read_bytes() for p in fake_run.iterdir()} == before  # nothing changed, nothing added


def test_predict_names_a_file_that_is_not_utf8(fake_run, tmp_path, capsys):
    source, types = tmp_path / "in.txt", tmp_path / "types.yaml"
    source.write_bytes("Müller met Bo\n".encode("latin-1"))
    types.write_bytes("types:\n  drug: Arzneimittel für\n".encode("latin-1"))
    assert predict(fake_run, source, tmp_path / "o.jsonl") == 2
    assert f"{source}:1: byte 0xfc" in one_error_line(capsys, "cllmfs predict")
    source.write_text("Bo met Ann\n")
    assert predict(fake_run, source, tmp_path / "o.jsonl", "--types-file", types) == 2
    assert f"{types}:2: byte 0xfc" in one_error_line(capsys, "cllmfs predict")


def test_predict_reads_cr_lines_and_drops_a_bom(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes("\ufeffAnn met Bo\rZo left\r\rlast\u2028part".encode())  # U+2028 does not end a line
    args = argparse.Namespace(text=None, dataset=None, input=str(source), limit=None)
    assert cli.predict.read_texts(args) == ["Ann met Bo", "Zo left", "", "last\u2028part"]
    args.limit = 1
    assert cli.predict.read_texts(args) == ["Ann met Bo"]


def test_model_refuses_a_file_that_is_not_gguf(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model")
    assert cli.main(["model", "--model", str(fake)]) == 2
    assert "does not start with the GGUF magic bytes" in one_error_line(capsys, "cllmfs model")
    assert cli.main(["model", "--model", str(tmp_path / "notes.txt")]) == 2
    assert "does not exist" in one_error_line(capsys, "cllmfs model")


@pytest.mark.parametrize("support", ["folder", "empty"])
def test_prepare_refuses_a_support_set_it_cannot_use(tmp_path, capsys, support):
    path = tmp_path / "support"
    path.mkdir() if support == "folder" else path.write_text("\n-DOCSTART- -X- O O\n\n")
    out = tmp_path / "out"
    assert cli.main(["prepare", "--support-set", str(path), "--k", "1", "--output", str(out)]) == 2
    line = one_error_line(capsys, "cllmfs prepare")
    assert (f"--support-set {path} is a folder" if support == "folder" else f"{path}: no sentences") in line
    assert not (out / "prepare.json").exists()


# --- the convention ---------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_and_bugs_keep_theirs(fake_run, text_input, tmp_path, capsys, monkeypatch):
    args = ["predict", "--run", str(fake_run), "--input", str(text_input), "--output", str(text_input)]
    assert cli.main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("cllmfs predict: error: --output")
    monkeypatch.setenv("CLLMFS_DEBUG", "1")
    assert cli.main(args) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("CLLMFS_DEBUG")

    def bug(args):
        raise RuntimeError("an internal bug")

    with pytest.raises(RuntimeError, match="an internal bug"):  # not a user error: the traceback is kept
        run_entry_point("prog", bug, [])


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("half-way")

    with pytest.raises(RuntimeError):
        atomic_write_text(path, "new" + str(Unserialisable()))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- recipes/train.py -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_script():
    from cllmfs_trainer.scripts import train

    return train


def train_recipe(tmp_path, tiny_run_inputs, text=None, **changes):
    """A recipe for the tiny model; `changes` override (or, as None, drop) its keys; `text` replaces it all."""
    path = tmp_path / "recipe.yaml"
    if text is None:
        data = {
            **yaml.safe_load(RECIPE.read_text()),
            "model_name_or_path": str(tiny_run_inputs / "model"),
            "support_set": str(tiny_run_inputs / "support.txt"),
            "n_types": ["person"],
            "k": 1,
            "cl_layer": 2,
            "output_dir": str(tmp_path / "out"),
            "report_to": "none",
        }
        data.update(changes)
        text = yaml.safe_dump({key: value for key, value in data.items() if value is not None})
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"cl_wieght": 0.1}, "cl_wieght: unknown key; did you mean 'cl_weight'?"),
        # Training no longer scores its run: the keys of that evaluation are unknown, with where they went
        ({"evaluate_on": ["wnut17"]}, "evaluate_on: unknown key; training no longer scores its run: after it, run"),
        ({"eval_query_size": 100}, "eval_query_size: unknown key; training no longer scores its run"),
        ({"dataset": "wnut18"}, "unknown dataset 'wnut18'; known: wnut17,"),
        ({"setting": "cross"}, "setting must be 'intra', 'inter' or 'prior', got 'cross'"),
        ({"n_types": ["spaceship"]}, "dataset 'wnut17' has no type 'spaceship'"),
        ({"support_set": "missing.txt"}, "support_set missing.txt does not exist"),
        ({"cl_layer": 26}, "cl_layer=26 is out of range for a model with 4 layers; use 1..4"),
        ({"prompt_format": 7}, "prompt_format must be one of [1, 2], got 7"),
        ({"answer_format": "brackets"}, "answer_format must be one of ['marked', 'pointer'], got 'brackets'"),
        ({"end_penalty": float("inf")}, "end_penalty must be a finite number, got inf"),
        (
            {"one_type_per_span": True, "answer_format": "marked"},
            "one_type_per_span needs answer_format pointer",
        ),
        ({"learning_rate": -0.1}, "learning_rate must be > 0, got -0.1"),
        # Settings that would save an untrained or NaN run folder and exit 0
        ({"learning_rate": 0}, "learning_rate must be > 0, got 0: the run would save untrained weights"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number, got inf"),
        ({"cl_weight": float("nan")}, "cl_weight must be a finite number, got nan"),
        ({"max_steps": -1, "num_train_epochs": 0}, "num_train_epochs must be > 0 when max_steps is -1, got 0"),
        ({"max_steps": 0}, "max_steps must be >= 1, or -1 to train for num_train_epochs, got 0"),
        ({"max_steps": -5}, "max_steps must be >= 1, or -1 to train for num_train_epochs, got -5"),
        ({"lora_alpha": -8}, "lora_alpha must be > 0, got -8"),
        ({"lora_r": 0}, "lora_r must be an integer >= 1, got 0"),
        ({"k": -3}, "k must be an integer >= 1, got -3"),
        ({"k": 50}, "k=50 but the support set has fewer mentions of some types ({'person': 4}); pass k <= 4"),
        ({"k": [1, 2]}, "k: expected an integer, got [1, 2]"),
        ({"model_name_or_path": "/gone/model"}, "model_name_or_path /gone/model does not exist"),
        ({"resume_from_checkpoint": "true"}, "resume_from_checkpoint: true, but output_dir"),
        ({"dtype": "float7"}, "dtype: 'float7' is not one of auto, bfloat16, float16, float32"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_train_refuses_bad_recipes_before_loading(
    train_script, tiny_run_inputs, tmp_path, capsys, monkeypatch, changes, words
):
    monkeypatch.chdir(tmp_path)
    recipe = train_recipe(tmp_path, tiny_run_inputs, **changes)
    with pytest.raises(SystemExit) as exit_info:
        train_script.cli([str(recipe)])
    assert exit_info.value.code == 2
    assert words in one_error_line(capsys, "train.py")
    assert not (tmp_path / "out" / "cllmfs_run.json").exists()


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "recipe.yaml: the recipe is empty"),
        ("- dataset: wnut17\n", "recipe.yaml: the recipe must be a mapping of `key: value` lines, not a list"),
        ("k: 1\nk: 2\n", "recipe.yaml:2: duplicate key 'k' (first on line 1)"),
    ],
    ids=["empty", "list", "duplicate"],
)
def test_train_refuses_recipes_that_are_not_a_mapping(train_script, tiny_run_inputs, tmp_path, capsys, text, words):
    with pytest.raises(SystemExit) as exit_info:
        train_script.cli([str(train_recipe(tmp_path, tiny_run_inputs, text=text))])
    assert exit_info.value.code == 2 and words in one_error_line(capsys, "train.py")


def test_train_refuses_unknown_options_and_bad_values_on_the_command_line(
    train_script, tiny_run_inputs, tmp_path, capsys
):
    recipe = str(train_recipe(tmp_path, tiny_run_inputs))
    for extra, words in [
        (["--bogus", "1"], "--bogus: unknown option;"),
        (["--evaluate_on", "wnut17"], "--evaluate_on: unknown option; training no longer scores its run"),
        (["--k", "x"], "argument --k: invalid int value: 'x'"),
        (["--cl_layer", "99"], "cl_layer=99 is out of range"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            train_script.cli([recipe, *extra])
        assert exit_info.value.code == 2 and words in one_error_line(capsys, "train.py")
    with pytest.raises(SystemExit):
        train_script.cli([str(tmp_path / "missing.yaml")])
    assert "recipe " + str(tmp_path / "missing.yaml") + " does not exist" in one_error_line(capsys, "train.py")


def test_resume_true_takes_the_latest_checkpoint(train_script, tmp_path):
    from test_run_integrity import checkpoint  # complete checkpoint folders: every file a resume reads

    for step in (2, 10, 4):
        checkpoint(tmp_path, step)
    args = argparse.Namespace(resume_from_checkpoint="true", output_dir=str(tmp_path))
    assert train_script.resolve_resume(args) == str(tmp_path / "checkpoint-10")
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-4")
    assert train_script.resolve_resume(args) == str(tmp_path / "checkpoint-4")
    args.resume_from_checkpoint = "false"
    assert train_script.resolve_resume(args) is None


# --- recipes/benchmark.py ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"methods": ["bert"]}, "methods: unknown method 'bert'; choose from"),
        ({"methods": ["cllmfs"], "recipe": "missing.yaml"}, "recipe: missing.yaml does not exist"),
        (
            {
                "methods": ["cllmfs"],
                "recipe": str(REPO / "recipes/smollm2/wnut17_intra.yaml"),
                "inter_recipe": "no.yaml",
            },
            "inter_recipe: no.yaml does not exist",
        ),
        ({"seeds": "0,1"}, "seeds: expected a list of integers, got '0,1'"),
        ({"ks": [-5]}, "ks: shots per type must be >= 1, got [-5]"),
    ],
    ids=["method", "recipe", "inter_recipe", "seeds", "ks"],
)
def test_benchmark_refuses_bad_configs_before_running(tmp_path, capsys, monkeypatch, changes, words):
    from cllmfs_trainer.scripts import benchmark

    monkeypatch.chdir(tmp_path)
    config = {"output_dir": str(tmp_path / "bench"), "tasks": ["intra:wnut17"], "methods": ["zero_shot"], **changes}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        benchmark.cli([str(tmp_path / "b.yaml")])
    assert exit_info.value.code == 2 and words in one_error_line(capsys, "benchmark.py")
    assert not (tmp_path / "bench").exists()
    with pytest.raises(SystemExit):
        benchmark.cli([str(tmp_path / "missing.yaml")])
    assert "missing.yaml does not exist" in one_error_line(capsys, "benchmark.py")


# --- the drop-in guarantee --------------------------------------------------------------------------------------------


def test_cl_weight_zero_trains_a_model_shallower_than_cl_layer(tiny_llama, sp_tokenizer, tmp_path):
    import copy

    from cllmfs_trainer.data import build_sft_dataset
    from cllmfs_trainer.models import ensure_pad_token
    from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer

    tokenizer = ensure_pad_token(copy.deepcopy(sp_tokenizer))
    sentences = [Sentence("yesterday Ann met Bo".split(), [Span(1, 2, "person")]) for _ in range(2)]
    dataset = build_sft_dataset(sentences, [PERSON], tokenizer, max_length=128)
    common = dict(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no"
    )
    args = ContrastiveSFTConfig(cl_weight=0, **common)  # the default cl_layer=26, past the 4 layers
    trainer = ContrastiveSFTTrainer(tiny_llama(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.cl_layer is None
    assert trainer.train().global_step == 1
    with pytest.raises(ValueError, match="cl_layer=26 is out of range for a model with 4 layers"):
        ContrastiveSFTTrainer(
            tiny_llama(tokenizer),
            args=ContrastiveSFTConfig(cl_weight=0.1, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
