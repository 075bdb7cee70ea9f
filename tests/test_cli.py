"""`cllmfs`: one command for every job; `train` and `evaluate` through it."""

import json

import pytest
from helpers import REPO, SHARED_DATA, requires_shared

from cllmfs_trainer.cli import COMMANDS, main

JOBS = ["model", "prepare", "train", "predict", "evaluate", "benchmark", "export", "card", "push", "serve"]


def test_cllmfs_help_lists_every_job(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    assert list(COMMANDS) == JOBS and all(f"\n    {job} " in listed for job in JOBS)


def test_train_refuses_to_start_without_a_recipe(capsys):
    # Every key would take its default: a long training of the default model nobody asked for.
    assert main(["train", "--max_steps", "3"]) == 2
    assert "cllmfs train: error: give a recipe YAML first" in capsys.readouterr().err


@requires_shared("conll2003")
def test_train_then_evaluate_loads_the_model_once_for_every_dataset(tiny_run_inputs, tmp_path, monkeypatch, capsys):
    from cllmfs_trainer.inference.generate import EntityExtractor

    run = tmp_path / "run"
    args = [
        str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        "--model_name_or_path",
        str(tiny_run_inputs / "model"),
    ]
    args += ["--support_set", str(tiny_run_inputs / "support.txt"), "--n_types", "person", "--k", "1"]
    args += ["--max_steps", "1", "--lora_target_modules", "q_proj", "v_proj", "--cl_layer", "2"]
    assert main(["train", *args, "--output_dir", str(run), "--report_to", "none"]) == 0
    loads = []
    from_run = EntityExtractor.from_run.__func__
    monkeypatch.setattr(
        EntityExtractor, "from_run", classmethod(lambda cls, *a, **k: loads.append(a) or from_run(cls, *a, **k))
    )
    capsys.readouterr()
    argv = ["evaluate", "--run", str(run), "--dataset", "wnut17", "--dataset", "conll2003", "--query-size", "2"]
    assert main([*argv, "--data-dir", str(SHARED_DATA), "--batch-size", "8"]) == 0
    assert len(loads) == 1  # one load and merge, for both datasets
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["dataset"] for line in printed] == ["wnut17", "conll2003"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {name: metrics[name]["query_size"] for name in metrics} == {"wnut17": 2, "conll2003": 2}
    # Each dataset is asked with its own types: CoNLL'03's four, WNUT'17's six.
    assert (
        metrics["conll2003"]["parse_stats"]["outputs"] == 2 * 4 and metrics["wnut17"]["parse_stats"]["outputs"] == 2 * 6
    )


def test_evaluate_checks_the_run_folder_and_datasets_before_loading(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "missing"), "--dataset", "wnut17"]) == 2
    assert "cllmfs evaluate: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dataset, split, words",
    [
        ("gum", "dev", "dataset 'gum' has no 'dev' split; it has ['train', 'test']"),
        ("conll2003", "test", "not shipped"),
    ],
)
def test_evaluate_refuses_a_missing_split_early(fake_run, tmp_path, monkeypatch, capsys, dataset, split, words):
    import cllmfs_trainer.cli.evaluate as evaluate

    monkeypatch.delenv("CLLMFS_DATA_DIR", raising=False)
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: pytest.fail("the model loaded"))
    argv = ["evaluate", "--run", str(fake_run), "--dataset", dataset, "--split", split, "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cllmfs evaluate: error:") and words in err[0]
