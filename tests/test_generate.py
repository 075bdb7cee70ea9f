"""Batched extraction (`EntityExtractor`) and `cllmfs predict` on run folders trained from tiny random models."""

import importlib.util
import json
import sys

import pytest
import torch
from helpers import REPO

from cllmfs_trainer.cli import main as cli_main
from cllmfs_trainer.data import Sentence
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.modeling import ensure_pad_token

PERSON = EntityType("person", "person", "names of people")
PLACE = EntityType("location", "location", "names of places")


@pytest.fixture(scope="module")
def run_dir(tiny_run_inputs, tmp_path_factory):
    """A real run folder: recipes/train.py for 2 steps on the tiny random model."""
    spec = importlib.util.spec_from_file_location("recipe_train_gen", REPO / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("run")
    args = [str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"), "--model_name_or_path",
            str(tiny_run_inputs / "model"), "--support_set", str(tiny_run_inputs / "support.txt"), "--n_types",
            "person", "--k", "1", "--max_steps", "2", "--lora_target_modules", "q_proj", "v_proj", "--cl_layer", "2",
            "--per_device_train_batch_size", "2", "--output_dir", str(out), "--report_to", "none"]
    module.main(*module.parse(args))
    return out


@pytest.fixture()
def extractor(tiny_llama, sp_tokenizer):
    import copy

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
    assert cli_main(["predict", "--run", str(run_dir), "--input", str(source), "--output", str(out),
                     "--max-new-tokens", "40"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["text"] for line in lines] == ["Ann  Lee met Bo in Rome", "Zoë visited Reykjavík", ""]
    for line in lines:
        for entity in line["entities"]:
            assert line["text"][entity["start"]:entity["end"]] == entity["text"] and entity["type"] == "person"
    stats = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert stats["types"] == ["person"] and stats["sentences"] == 3


def test_cli_predict_on_a_registry_split(run_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    assert cli_main(["predict", "--run", str(run_dir), "--dataset", "wnut17", "--split", "test", "--limit", "3",
                     "--output", str(out), "--max-new-tokens", "40"]) == 0
    from cllmfs_trainer.data import get_dataset

    expected = [s.text for s in get_dataset("wnut17").load("test").sentences[:3]]
    assert [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()] == expected


def test_cli_predict_jsonl_and_text_inputs(run_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "Bo met Ann"}) + "\n", encoding="utf-8")
    assert cli_main(["predict", "--run", str(run_dir), "--input", str(source), "--output", str(tmp_path / "a.jsonl"),
                     "--max-new-tokens", "40"]) == 0
    assert cli_main(["predict", "--run", str(run_dir), "--text", "Bo met Ann", "--output", str(tmp_path / "b.jsonl"),
                     "--max-new-tokens", "40"]) == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_cli_predict_errors_are_one_clear_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n["no"]\n', encoding="utf-8")
    assert cli_main(["predict", "--run", str(run_dir), "--input", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert f"{bad}:2: expected a JSON object" in capsys.readouterr().err
    assert cli_main(["predict", "--run", str(run_dir), "--text", "x", "--types", "drug",
                     "--output", str(tmp_path / "o")]) == 2
    assert "have no description" in capsys.readouterr().err
    assert cli_main(["predict", "--run", str(tmp_path), "--text", "x", "--output", str(tmp_path / "o")]) == 2
    assert "not a cllmfs run folder" in capsys.readouterr().err


def test_types_file_adds_a_type_at_prediction_time(run_dir, tmp_path):
    types = tmp_path / "types.yaml"
    types.write_text("types:\n  drug: names of medicines\n", encoding="utf-8")
    assert cli_main(["predict", "--run", str(run_dir), "--text", "Bo took aspirin", "--types", "person,drug",
                     "--types-file", str(types), "--output", str(tmp_path / "o.jsonl"), "--max-new-tokens", "40"]) == 0
    line = json.loads((tmp_path / "o.jsonl").read_text())
    assert {e["type"] for e in line["entities"]} <= {"person", "drug"}
