"""Training on your own files: `cllmfs train --train FILE [--dev FILE] [--types FILE] --output RUN`, and the same
entities from every way of using the run (`cllmfs predict`, `extract`, the spaCy component, the server)."""

import json
import logging

import pytest
from helpers import REPO, one_error_line

from cllmfs_trainer import cli
from cllmfs_trainer.data import DataFormatError
from cllmfs_trainer.data.own_files import OWN_DATASET, task_from_file
from cllmfs_trainer.run_folder import RunFolder

TRAIN = [
    {
        "text": "Ann Lee flew to Paris",
        "entities": [{"start": 0, "end": 7, "type": "person"}, {"start": 16, "end": 21, "type": "city"}],
    },
    {
        "text": "Bo lives in Rome",
        "entities": [{"start": 0, "end": 2, "type": "person"}, {"start": 12, "end": 16, "type": "city"}],
    },
    {
        "text": "Carl met Dana",
        "entities": [{"start": 0, "end": 4, "type": "person"}, {"start": 9, "end": 13, "type": "person"}],
    },
    {"text": "Nothing here", "entities": []},
]
TEXTS = ["Eve visited Oslo with Finn", "Gus stayed home", "Hal"]


@pytest.fixture
def own_files(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in TRAIN), encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in TRAIN[:2]), encoding="utf-8")
    types = tmp_path / "types.yaml"
    types.write_text("types:\n  - label: city\n    name: city\n    description: names of cities and towns\n")
    return train, dev, types


def tiny_overrides(root):
    return ["--model_name_or_path", str(root / "model"), "--max_steps", "2", "--lora_target_modules", "q_proj",
            "v_proj", "--cl_layer", "2", "--per_device_train_batch_size", "2", "--report_to", "none"]  # fmt: skip


def test_the_files_labels_are_the_types_described_where_a_types_file_says(own_files, caplog):
    train, _, types = own_files
    with caplog.at_level(logging.WARNING):
        task = task_from_file(train, types)
    assert [(t.label, t.description) for t in task.train_types] == [
        ("person", "person"),
        ("city", "names of cities and towns"),
    ]
    assert "type(s) ['person'] have no description" in caplog.text and "--types my_types.yaml" in caplog.text
    assert len(task.support.sentences) == 4 and task.support.k == 2  # every example; the rarest type has 2 mentions
    assert task.notes["mentions"] == {"person": 4, "city": 2} and task.query == []


def test_a_file_without_entities_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": "nothing", "entities": []}\n')
    with pytest.raises(DataFormatError, match="empty.jsonl: no labelled entity in any example"):
        task_from_file(path)


@pytest.fixture(scope="module")
def own_run(tiny_run_inputs, tmp_path_factory):
    """`cllmfs train --train ... --dev ... --types ... --output RUN RECIPE` on the tiny model."""
    root = tmp_path_factory.mktemp("own")
    train, dev = root / "train.jsonl", root / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in TRAIN), encoding="utf-8")
    dev.write_text("".join(json.dumps(r) + "\n" for r in TRAIN[:2]), encoding="utf-8")
    types = root / "types.yaml"
    types.write_text("types:\n  - label: city\n    name: city\n    description: names of cities and towns\n")
    recipe = str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml")
    argv = ["train", "--train", str(train), "--dev", str(dev), "--types", str(types), "--output", str(root / "run")]
    assert cli.main([*argv, recipe, *tiny_overrides(tiny_run_inputs)]) == 0
    return root / "run", train, dev


def test_cllmfs_train_on_own_files_records_them_and_scores_the_dev_file(own_run):
    run_dir, train, dev = own_run
    run = RunFolder.load(run_dir)
    assert run.dataset == OWN_DATASET and run.setting == "intra" and run.k == 2
    assert [t.label for t in run.test_types] == ["person", "city"]
    assert run.extra["train_file"]["path"] == str(train.resolve()) and len(run.extra["train_file"]["sha256"]) == 64
    assert "wnut17" not in (run_dir / "cllmfs_run.json").read_text()  # no dataset it did not train on
    metrics = json.loads(run.metrics_file.read_text())
    assert list(metrics) == [str(dev)] and metrics[str(dev)]["query_size"] == 2


def test_every_way_of_using_the_run_finds_the_same_entities(own_run, tmp_path):
    """`cllmfs predict`, `extract`, the spaCy component and the server on the same texts."""
    from fastapi.testclient import TestClient

    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.integrations.server import create_app

    spacy = pytest.importorskip("spacy")
    run_dir = own_run[0]
    extractor = EntityExtractor.from_run(run_dir)
    expected = [[(e.start, e.end, e.type) for e in entities] for entities in extractor.extract(TEXTS)]
    source, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text("\n".join(TEXTS) + "\n")
    assert cli.main(["predict", "--run", str(run_dir), "--input", str(source), "--output", str(out)]) == 0
    predicted = [json.loads(line)["entities"] for line in out.read_text().splitlines()]
    assert [[(e["start"], e["end"], e["type"]) for e in entities] for entities in predicted] == expected
    served = TestClient(create_app(extractor, {})).post("/extract", json={"texts": TEXTS}).json()["entities"]
    assert [[(e["start"], e["end"], e["type"]) for e in entities] for entities in served] == expected
    nlp = spacy.blank("en")
    nlp.add_pipe("cllmfs_ner", config={"run": str(run_dir)})
    docs = list(nlp.pipe(TEXTS))
    assert [[(s.start_char, s.end_char, s.label_) for s in doc.spans["cllmfs"]] for doc in docs] == expected


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--train", "{train}"], "--train needs --output RUN_DIR"),
        (["--train", "{missing}", "--output", "{out}", "{recipe}"], "train_file {missing} does not exist"),
        (["--train", "{train}", "--output", "{out}", "{recipe}", "--setting", "inter"], "it goes with setting intra"),
    ],
)
def test_bad_own_files_commands_are_one_line(own_files, tmp_path, capsys, extra, words):
    train = own_files[0]
    names = dict(
        train=train,
        missing=tmp_path / "missing.jsonl",
        out=tmp_path / "out",
        recipe=REPO / "recipes/smollm2/wnut17_intra.yaml",
    )
    assert cli.main(["train", *(arg.format(**names) for arg in extra)]) == 2
    assert words.format(**names) in one_error_line(capsys, "cllmfs train")
    assert not (tmp_path / "out").exists()


def prior_start_of(parsed):
    """The `PRIOR_START` keys' values in `train.parse_args`'s result, in `PRIOR_START`'s order."""
    script_args, decoding_args, _, model_args = parsed
    return (
        script_args.init_adapter,
        script_args.init_adapter_merge,
        model_args.lora_dropout,
        decoding_args.end_penalty,
    )


def test_own_files_without_a_recipe_start_from_the_prior_as_chosen_on_dev(tmp_path):
    from cllmfs_trainer.cli.train import OWN_FILES_RECIPE, own_files_argv
    from cllmfs_trainer.models.priors import PRIOR_START
    from cllmfs_trainer.scripts import train

    argv = own_files_argv(["--train", "my.jsonl", "--output", str(tmp_path / "run")])
    assert argv[0] == str(OWN_FILES_RECIPE)
    chosen = prior_start_of(train.parse_args(argv))
    assert chosen == tuple(PRIOR_START.values()) == ("prior", True, 0.0, 1.0)


def test_make_demo_starts_from_the_prior_as_chosen_on_dev():
    import shlex

    from cllmfs_trainer.models.priors import PRIOR_START
    from cllmfs_trainer.scripts import train

    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    demo = next(line for line in makefile.splitlines() if "recipes/train.py recipes/smollm2/wnut17_intra.yaml" in line)
    words = shlex.split(demo)
    args = [str(REPO / w) if w.endswith(".yaml") else w for w in words[words.index("recipes/train.py") + 1 :]]
    chosen = prior_start_of(train.parse_args(args))
    assert chosen == tuple(PRIOR_START.values())
