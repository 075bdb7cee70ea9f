"""`cllmfs card` (loaded back with `huggingface_hub.ModelCard`), the base model's Hub id in it, and
`EntityExtractor.from_pretrained` on a local folder in Hub layout (and on a repo id, with the download stubbed)."""

import fnmatch
import json
import shutil

import huggingface_hub
import pytest
from huggingface_hub import ModelCard

from cllmfs_trainer.cli import main as cli_main
from cllmfs_trainer.errors import MissingFileError
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.inference.hub import DEFAULT_MODEL_HUB_ID, PUSHED_FILES, build_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METRICS = {"wnut17": {"split": "test", "query_size": 100, "span": {"precision": 0.25, "recall": 0.5, "f1": 1 / 3}}}
TEXTS = ["Ann Lee met Bo in Rome", "Zoë ( 42 ) visited U.S. C++ $ and Zoë again"]


@pytest.fixture
def hub_folder(run_dir, tmp_path):
    """The run folder as a Hub repository holds it: the pushed files only, with metrics.json."""
    folder = tmp_path / "repo"
    shutil.copytree(
        run_dir,
        folder,
        ignore=lambda _, names: [n for n in names if not any(fnmatch.fnmatch(n, p) for p in PUSHED_FILES)],
    )
    (folder / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    return folder


def _set_base(folder, base_model):
    record = json.loads((folder / "cllmfs_run.json").read_text(encoding="utf-8"))
    record["base_model"] = base_model
    (folder / "cllmfs_run.json").write_text(json.dumps(record), encoding="utf-8")


def test_card_loads_back_with_its_metadata_and_sections(hub_folder, tmp_path, capsys):
    output = tmp_path / "card.md"
    argv = ["card", "--run", str(hub_folder), "--output", str(output), "--base-model", "org/tiny-llama"]
    assert cli_main(argv) == 0
    card = ModelCard.load(output)
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == "org/tiny-llama"
    assert data["base_model_relation"] == "adapter" and data["pipeline_tag"] == "token-classification"
    assert {"cllmfs-trainer", "lora", "named-entity-recognition", "1-shot", "wnut17"} <= set(data["tags"])
    (result,) = card.data.eval_results
    assert (result.dataset_split, result.metric_type, result.metric_value) == ("test", "f1", 0.3333)
    text = card.text
    assert "| person | person | names of real or fictional people" in text
    assert "Prompt format 1, answer format `pointer`, with type descriptions" in text
    assert "Please extract the entity of person" in text and "Andrew Little >>> <im_end>" in text
    assert "License of the data: CC BY 4.0" in text
    assert "| wnut17 | test | 100 | 1 | 0.250 | 0.500 | 0.333 |" in text
    assert "EntityExtractor.from_pretrained(" in text


def test_card_never_names_a_local_folder_as_base_model(hub_folder, capsys):
    peft_card = (hub_folder / "README.md").read_text(encoding="utf-8")  # PEFT's, whose base_model is a local path
    assert cli_main(["card", "--run", str(hub_folder)]) == 2  # the tiny run's base model is a local folder
    assert "--base-model" in capsys.readouterr().err
    assert cli_main(["card", "--run", str(hub_folder), "--base-model", str(hub_folder)]) == 2
    assert (hub_folder / "README.md").read_text(encoding="utf-8") == peft_card  # refused: nothing written
    _set_base(hub_folder, "default")  # the embedded default model maps to its Hub id
    assert cli_main(["card", "--run", str(hub_folder)]) == 0
    card = ModelCard.load(hub_folder / "README.md")
    assert card.data.base_model == DEFAULT_MODEL_HUB_ID
    assert str(hub_folder) not in str(card) and "/tmp" not in str(card)


def test_from_pretrained_on_a_local_hub_folder_equals_from_run(run_dir, hub_folder):
    build_card(hub_folder, "org/tiny-llama").save(hub_folder / "README.md")
    options = {"max_new_tokens": 48, "end_penalty": 0.0}
    expected = EntityExtractor.from_run(run_dir, **options).extract(TEXTS, split_sentences=False)
    found = EntityExtractor.from_pretrained(hub_folder, **options).extract(TEXTS, split_sentences=False)
    assert found == expected and any(found)


def test_from_pretrained_on_a_repo_id_downloads_the_pushed_files(hub_folder, monkeypatch):
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):  # stands in for the Hub: no network here
        calls.append((repo_id, revision, allow_patterns))
        return str(hub_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    extractor = EntityExtractor.from_pretrained("org/cllmfs-run", revision="v1", max_new_tokens=8)
    assert calls == [("org/cllmfs-run", "v1", list(PUSHED_FILES))]
    assert [t.label for t in extractor.types] == ["person"]
    with pytest.raises(MissingFileError):
        EntityExtractor.from_pretrained(str(hub_folder / "absent"))


def test_push_writes_the_card_and_uploads_only_the_run_files(hub_folder, monkeypatch, capsys):
    calls = []

    class FakeApi:  # stands in for the Hub: no network here
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))

        def upload_folder(self, folder_path, repo_id, allow_patterns):
            calls.append(("upload_folder", folder_path, repo_id, allow_patterns))
            return "https://huggingface.co/org/run/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    argv = ["push", "--run", str(hub_folder), "--repo", "org/run", "--base-model", "org/tiny-llama"]
    assert cli_main(argv) == 0
    assert calls == [
        ("create_repo", "org/run", True),
        ("upload_folder", str(hub_folder), "org/run", list(PUSHED_FILES)),
    ]
    card = ModelCard.load(hub_folder / "README.md")
    assert card.data.base_model == "org/tiny-llama" and 'EntityExtractor.from_pretrained("org/run")' in card.text
    assert capsys.readouterr().out.strip() == "https://huggingface.co/org/run/commit/1"
