import json

import pytest
import torch
from helpers import REPO

from cllmfs_trainer.training.cpu.lora_precision import ModelDtypeLinear

# Training recipes; benchmark configs (`*benchmark*.yaml`) are parsed in test_benchmark.py.
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "benchmark" not in p.name)


@pytest.fixture(scope="module")
def train_script():
    from cllmfs_trainer.scripts import train

    return train


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_every_recipe_parses_with_the_real_parser(train_script, recipe):
    script_args, decoding_args, training_args, model_args = train_script.parse_args([str(recipe)])
    assert recipe.read_text().startswith("#")  # a comment header naming the hardware target
    assert "Hardware target" in recipe.read_text().split("\n\n")[0]
    assert training_args.cl_layer > 0 and model_args.use_peft


def test_flags_override_the_yaml(train_script):
    recipe = str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml")
    script_args, decoding_args, training_args, _ = train_script.parse_args(
        [recipe, "--k", "1", "--cl_weight", "0.5", "--end_penalty", "1"]
    )
    assert (script_args.k, training_args.cl_weight, decoding_args.end_penalty) == (1, 0.5, 1.0)
    script_args, decoding_args, training_args, _ = train_script.parse_args(["--config", recipe])
    assert (script_args.k, training_args.cl_weight, decoding_args.end_penalty) == (5, 0.001, 3.0)


def test_unknown_keys_are_rejected(train_script, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset: wnut17\ncl_wieght: 0.1\n")
    with pytest.raises(ValueError, match="cl_wieght"):
        train_script.parse_args([str(recipe)])
    with pytest.raises(ValueError, match="bogus"):
        train_script.parse_args([str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"), "--bogus", "1"])


def tiny_args(root, out):
    return [
        str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        "--model_name_or_path",
        str(root / "model"),
        "--support_set",
        str(root / "support.txt"),
        "--n_types",
        "person",
        "--k",
        "1",
        "--max_steps",
        "2",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--cl_layer",
        "2",
        "--cl_weight",
        "0.5",
        "--per_device_train_batch_size",
        "2",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--logging_steps",
        "1",
    ]


def test_recipe_dry_run_writes_a_complete_run_folder(train_script, tiny_run_inputs, tmp_path):
    args = tiny_args(tiny_run_inputs, tmp_path) + ["--end_penalty", "1.5", "--one_type_per_span", "true"]
    trainer = train_script.main(*train_script.parse_args(args))
    assert trainer.state.global_step == 2
    # The recipe's CPU choices are resolved by their probes, not passed on as "auto".
    assert trainer.model.config._attn_implementation in ("sdpa", "eager")
    half = trainer.model.get_base_model().get_input_embeddings().weight.dtype != torch.float32
    assert any(isinstance(m, ModelDtypeLinear) for m in trainer.model.modules()) == half  # lora_compute_dtype: model
    files = {p.name for p in tmp_path.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "support.txt",
        "cllmfs_run.json",
        "auto_choices.json",  # read back by a resumed training instead of probing again
    } <= files
    run = json.loads((tmp_path / "cllmfs_run.json").read_text())
    assert run["format"]["prompt_format"] == 1 and run["cl_layer"] == 2 and run["world_size"] == 1
    # Saved for prediction in a file of their own, as transformers keeps generation_config.json.
    decoding = json.loads((tmp_path / "decoding_config.json").read_text())
    assert decoding == {"end_penalty": 1.5, "one_type_per_span": True} and "end_penalty" not in run
    assert [t["label"] for t in run["train_types"]] == ["person"]
    assert run["train_types"][0]["description"]


def test_cllmfs_evaluate_scores_a_trained_run_into_its_folder(train_script, tiny_run_inputs, tmp_path, capsys):
    from cllmfs_trainer.cli import main

    train_script.main(*train_script.parse_args(tiny_args(tiny_run_inputs, tmp_path) + ["--max_steps", "1"]))
    assert not (tmp_path / "metrics.json").exists()  # training no longer scores; `cllmfs evaluate` does
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path), "--dataset", "wnut17", "--query-size", "5"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics) == ["wnut17"] and metrics["wnut17"]["query_size"] == 5
    scores = metrics["wnut17"]
    # Asked with WNUT's six types although the run was trained on `person` only: 5 sentences x 6 prompts.
    assert scores["parse_stats"]["outputs"] == 30
    assert scores["span"]["tp"] + scores["span"]["fp"] == scores["errors"]["n_pred"]
    (line,) = capsys.readouterr().out.splitlines()  # one JSON line per dataset
    assert {key: json.loads(line)[key] for key in ("dataset", "split", "sentences")} == {
        "dataset": "wnut17",
        "split": "test",
        "sentences": 5,
    }
    assert main(["evaluate", "--run", str(tmp_path), "--dataset", "wnut17", "--query-size", "4", "--split", "dev"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["wnut17"]
    assert metrics["split"] == "dev" and metrics["query_size"] == 4


@pytest.mark.parametrize("key", ["evaluate_on", "eval_split", "eval_query_size", "eval_dtype"])
def test_the_old_evaluation_keys_point_to_cllmfs_evaluate(train_script, tmp_path, key):
    from cllmfs_trainer.errors import UsageError

    recipe = str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml")
    with pytest.raises(UsageError, match=f"--{key}: unknown option; training no longer scores its run: .*cllmfs eval"):
        train_script.parse_args([recipe, f"--{key}", "1"])
    old = tmp_path / "old.yaml"
    old.write_text(f"dataset: wnut17\n{key}: 1\n")
    with pytest.raises(UsageError, match=rf"old.yaml:2: {key}: unknown key; .*`cllmfs evaluate --run OUTPUT_DIR"):
        train_script.parse_args([str(old)])


def test_qlora_4bit_recipe_trains_on_cpu(train_script, tiny_run_inputs, tmp_path):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    args = tiny_args(tiny_run_inputs, tmp_path) + ["--load_in_4bit", "true", "--gradient_checkpointing", "true"]
    trainer = train_script.main(*train_script.parse_args(args))
    quantized = [m for m in trainer.model.modules() if isinstance(m, Linear4bit)]
    assert quantized, "the base model was not loaded in 4 bit"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(loss == loss for loss in losses)  # finite, not NaN


def test_help_prints_every_option(train_script, capsys):
    with pytest.raises(SystemExit) as info:
        train_script.parse_args([str(REPO / "recipes" / "ontonotes_inter.yaml"), "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--cl_weight" in out and "--empty_ratio" in out and "--fit_stop" in out
