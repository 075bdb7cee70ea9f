"""Prediction's defaults in the run folder: `decoding_config.json`, parsed from the recipe keys of the same names.

Runs written before the file existed held them as fields of `cllmfs_run.json`; those still load.
"""

import json

import pytest
import yaml
from helpers import REPO

from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.decoding_config import DecodingConfig
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.run_folder import DECODING_FILE, RUN_FILE, RunFolder, RunFolderError

RECIPE = REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"
PERSON = EntityType("person", "person", "names of people")


@pytest.fixture(scope="module")
def train_script():
    from cllmfs_trainer.scripts import train

    return train


def saved_run(path, **fields) -> RunFolder:
    run = RunFolder(path, "base", "adapter", 1, "intra", "wnut17", 1, [PERSON], [PERSON], **fields)
    run.save()
    return run


def test_a_saved_run_folder_keeps_its_decoding_defaults_in_their_own_file(tmp_path):
    run = saved_run(tmp_path, answer_format="pointer", end_penalty=2.5, one_type_per_span=True)
    assert json.loads(run.decoding_file.read_text()) == {"end_penalty": 2.5, "one_type_per_span": True}
    record = json.loads(run.run_file.read_text())
    assert "end_penalty" not in record and "one_type_per_span" not in record
    loaded = RunFolder.load(tmp_path, check_weights=False)
    assert (loaded.end_penalty, loaded.one_type_per_span) == (2.5, True)
    assert loaded.decoding == DecodingConfig(2.5, True) and loaded.extra == {}


def test_an_old_record_with_the_fields_inline_still_loads_and_a_save_moves_them(tmp_path):
    run = saved_run(tmp_path)
    run.decoding_file.unlink()
    record = json.loads(run.run_file.read_text())
    run.run_file.write_text(json.dumps({**record, "end_penalty": 3, "one_type_per_span": True}))
    loaded = RunFolder.load(tmp_path, check_weights=False)
    assert (loaded.end_penalty, loaded.one_type_per_span) == (3.0, True) and loaded.extra == {}
    loaded.update(note="moved")  # saving writes the folder's current layout
    assert json.loads(run.decoding_file.read_text()) == {"end_penalty": 3.0, "one_type_per_span": True}
    assert "end_penalty" not in json.loads(run.run_file.read_text())
    run.decoding_file.unlink()
    run.run_file.write_text(json.dumps(record))  # older still: no decoding fields at all
    loaded = RunFolder.load(tmp_path, check_weights=False)
    assert (loaded.end_penalty, loaded.one_type_per_span) == (0.0, False)


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"end_penalty": ', f"{DECODING_FILE}: invalid JSON (Expecting value"),
        ("[3.0]", f"{DECODING_FILE}: the decoding config file holds list, not a JSON object"),
        ('{"end_penalty": 1, "end_penalty": 2}', "the key 'end_penalty' appears twice"),
        ('{"end_penalty": "high"}', f"{DECODING_FILE}: field 'end_penalty' must be a finite number, got 'high'"),
        ('{"end_penalty": NaN}', f"{DECODING_FILE}: field 'end_penalty' must be a finite number, got nan"),
        ('{"end_penalty": true}', f"{DECODING_FILE}: field 'end_penalty' must be a finite number, got True"),
        ('{"one_type_per_span": "yes"}', f"{DECODING_FILE}: field 'one_type_per_span' must be true or false"),
        ('{"penalty": 1.0}', f"{DECODING_FILE}: unknown key(s) ['penalty']; known: ['end_penalty', "),
    ],
    ids=["truncated", "list", "duplicate", "string", "nan", "bool", "not-bool", "unknown"],
)
def test_a_damaged_or_mistyped_decoding_config_is_one_line_naming_the_file(tmp_path, text, words):
    saved_run(tmp_path).decoding_file.write_text(text)
    with pytest.raises(RunFolderError) as info:
        RunFolder.load(tmp_path, check_weights=False)
    message = str(info.value)
    assert words in message and str(tmp_path / DECODING_FILE) in message and "\n" not in message


def test_the_fields_in_both_places_are_refused_naming_the_record(tmp_path):
    run = saved_run(tmp_path)
    record = json.loads(run.run_file.read_text())
    run.run_file.write_text(json.dumps({**record, "end_penalty": 1.5}))
    with pytest.raises(RunFolderError, match=rf"{RUN_FILE}: field\(s\) \['end_penalty'\] belong in {DECODING_FILE}"):
        RunFolder.load(tmp_path, check_weights=False)


@pytest.mark.parametrize(
    "values, words",
    [
        ({"end_penalty": float("inf")}, "end_penalty must be a finite number, got inf"),
        ({"end_penalty": True}, "end_penalty must be a finite number, got True"),
        ({"one_type_per_span": "yes"}, "one_type_per_span must be true or false, got 'yes'"),
    ],
)
def test_decoding_config_checks_its_values(values, words):
    with pytest.raises(UsageError, match=words):
        DecodingConfig(**values)
    assert DecodingConfig(end_penalty=2).end_penalty == 2.0 and isinstance(DecodingConfig(2).end_penalty, float)


def test_the_recipe_keys_parse_into_decoding_config(train_script, tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    script_args, decoding_args, _, _ = train_script.parse_args([str(RECIPE)])
    assert decoding_args == DecodingConfig(recipe["end_penalty"], recipe["one_type_per_span"])
    assert not hasattr(script_args, "end_penalty") and not hasattr(script_args, "one_type_per_span")
    flags = ["--end_penalty", "1", "--one_type_per_span", "false"]
    _, decoding_args, _, _ = train_script.parse_args([str(RECIPE), *flags])
    assert decoding_args == DecodingConfig(1.0, False)
    marked = tmp_path / "marked.yaml"
    marked.write_text("answer_format: marked\none_type_per_span: true\n")
    with pytest.raises(UsageError, match="one_type_per_span needs answer_format pointer: its scores come from the"):
        train_script.parse_args([str(marked)])


def test_a_training_saves_the_recipes_decoding_defaults(run_dir):
    recipe = yaml.safe_load(RECIPE.read_text())  # run_dir: the recipe, with its end_penalty and one_type_per_span
    saved = json.loads((run_dir / DECODING_FILE).read_text())
    assert saved == {"end_penalty": recipe["end_penalty"], "one_type_per_span": recipe["one_type_per_span"]}
    record = json.loads((run_dir / RUN_FILE).read_text())
    assert not {"end_penalty", "one_type_per_span"} & set(record)
    run = RunFolder.load(run_dir)
    assert (run.end_penalty, run.one_type_per_span) == (recipe["end_penalty"], recipe["one_type_per_span"])


def test_benchmark_settings_reach_the_decoding_defaults(train_script):
    from cllmfs_trainer.scripts import benchmark

    _, decoding_args, _, _ = benchmark.recipe_arguments(train_script, str(RECIPE), {"end_penalty": "2.0", "k": 1})
    assert decoding_args == DecodingConfig(2.0, True)
    with pytest.raises(UsageError, match="one_type_per_span needs answer_format pointer"):
        benchmark.recipe_arguments(train_script, str(RECIPE), {"answer_format": "marked"})
    with pytest.raises(UsageError, match="end_penalty must be a finite number"):
        benchmark.recipe_arguments(train_script, str(RECIPE), {"end_penalty": "inf"})


def test_a_benchmark_setting_reaches_the_run_folder(tiny_run_inputs, tmp_path):
    from cllmfs_trainer.scripts import benchmark

    overrides = {
        "model_name_or_path": str(tiny_run_inputs / "model"),
        "support_set": str(tiny_run_inputs / "support.txt"),
        "n_types": ["person"],
        "k": 1,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "lora_target_modules": ["q_proj", "v_proj"],
        "cl_layer": 2,
        "end_penalty": 2.0,  # a method's setting, as `settings: {name: {end_penalty: 2.0}}` gives it
    }
    benchmark.train_run(str(RECIPE), overrides, tmp_path / "unit")
    saved = json.loads((tmp_path / "unit" / DECODING_FILE).read_text())
    assert saved == {"end_penalty": 2.0, "one_type_per_span": True}
