"""`PromptFormat`: one value writes the prompts and completions and reads the answers back; run folders store it."""

import json

import pytest

from cllmfs_trainer.data.format import PromptFormat, build_completion, build_prompt, parse_output
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.run_folder import RunFolder, RunFolderError

PERSON = EntityType("person", "person", "names of people")


@pytest.mark.parametrize(
    "fmt", [PromptFormat(), PromptFormat(2, "pointer", False), PromptFormat(answer_format="pointer")], ids=str
)
def test_a_format_reads_back_what_it_writes(fmt):
    assert fmt.prompt("Ann met Bo", PERSON) == build_prompt(
        "Ann met Bo", PERSON, fmt.prompt_format, fmt.type_descriptions
    )
    before, after = fmt.prompt_parts(PERSON)
    assert before + "Ann met Bo" + after == fmt.prompt("Ann met Bo", PERSON)
    for entities in ([], ["Ann"], ["Ann", "Bo Lee"]):
        completion = fmt.completion(entities)
        assert completion == build_completion(entities, fmt.answer_format)
        parsed = fmt.parse(" " + completion)
        assert parsed.entities == entities and parsed.problems == []
        assert parsed == parse_output(completion, fmt.answer_format)
    assert PromptFormat.from_dict(fmt.to_dict()) == fmt


def test_a_format_refuses_unknown_variants():
    with pytest.raises(ValueError, match="unknown prompt_format 3"):
        PromptFormat(prompt_format=3)
    with pytest.raises(ValueError, match="unknown answer_format 'brackets'"):
        PromptFormat(answer_format="brackets")
    with pytest.raises(ValueError, match="type_descriptions must be true or false"):
        PromptFormat(type_descriptions="yes")


def make_run(tmp_path, **fields) -> RunFolder:
    run = RunFolder(
        path=tmp_path / "run",
        base_model="default",
        weights="adapter",
        setting="intra",
        dataset="wnut17",
        k=1,
        train_types=[PERSON],
        test_types=[PERSON],
        **{"prompt_format": 1, **fields},
    )
    run.save()
    return run


def test_a_run_folder_stores_its_format_as_one_value(tmp_path):
    run = make_run(tmp_path, prompt_format=2, answer_format="pointer", type_descriptions=False)
    record = json.loads(run.run_file.read_text())
    assert record["format"] == {"prompt_format": 2, "answer_format": "pointer", "type_descriptions": False}
    assert not {"prompt_format", "answer_format", "type_descriptions"} & set(record)
    assert RunFolder.load(run.path, check_weights=False).format == PromptFormat(2, "pointer", False)


def test_a_run_folder_of_format_1_still_loads(tmp_path):
    run = make_run(tmp_path)
    record = json.loads(run.run_file.read_text())
    fmt = record.pop("format")
    # Format 1 wrote the three settings as fields of their own; the oldest records lack the newer ones.
    run.run_file.write_text(json.dumps({**record, "format_version": 1, "prompt_format": fmt["prompt_format"]}))
    loaded = RunFolder.load(run.path, check_weights=False)
    assert loaded.format == PromptFormat() and loaded.format_version == 2


def test_a_damaged_format_value_is_named(tmp_path):
    run = make_run(tmp_path)
    record = json.loads(run.run_file.read_text())
    run.run_file.write_text(json.dumps({**record, "format": {**record["format"], "answer": "marked"}}))
    with pytest.raises(RunFolderError, match=r"cllmfs_run.json: field 'format' has unknown key\(s\) \['answer'\]"):
        RunFolder.load(run.path, check_weights=False)
    run.run_file.write_text(json.dumps({**record, "format": "marked"}))
    with pytest.raises(RunFolderError, match="field 'format' must be an object"):
        RunFolder.load(run.path, check_weights=False)
