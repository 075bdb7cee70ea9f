"""Starting from a prior adapter: merging it into the base and training a fresh LoRA on top (`init_adapter_merge`,
saved as one stacked adapter equal to applying the two in turn), and the benchmark's record of the adapters it
starts from (a retrained prior must not mix into finished units)."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from test_benchmark import tiny_config
from test_recipes import tiny_args
from transformers import AutoModelForCausalLM

from cllmfs_trainer.benchmark.config import changed_fields
from cllmfs_trainer.benchmark.layout import BenchmarkLayout
from cllmfs_trainer.benchmark.resume import check_resume
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.models.priors import SHIPPED_PRIOR, adapter_sha256, stack_lora_adapters


def _random_adapter(model_dir, folder, seed, **lora):
    """A LoRA with random A and B (PEFT's own init leaves B at zero, which would hide a wrong B block)."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.save_pretrained(folder)


def _logits(model):
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_stacked_adapters_equal_the_two_merged_in_turn(tiny_run_inputs, tmp_path):
    base = tiny_run_inputs / "model"
    # Different ranks, targets and scalings (rsLoRA in one): each block keeps its own scale.
    _random_adapter(base, tmp_path / "first", 0, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    _random_adapter(
        base, tmp_path / "second", 1, r=2, lora_alpha=3, target_modules=["q_proj", "k_proj"], use_rslora=True
    )
    stack_lora_adapters(tmp_path / "first", tmp_path / "second", tmp_path / "stacked")

    in_turn = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "first")
    in_turn = PeftModel.from_pretrained(in_turn.merge_and_unload(), tmp_path / "second").merge_and_unload()
    stacked = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "stacked")
    assert stacked.peft_config["default"].r == 6
    assert sorted(stacked.peft_config["default"].target_modules) == ["k_proj", "q_proj", "v_proj"]
    plain = _logits(AutoModelForCausalLM.from_pretrained(base))
    assert not torch.allclose(_logits(in_turn), plain, atol=1e-3)  # the adapters change the model
    torch.testing.assert_close(_logits(stacked), _logits(in_turn), atol=1e-5, rtol=1e-4)


def test_stacking_refuses_what_a_rank_concatenation_cannot_carry(tiny_run_inputs, tmp_path):
    base = tiny_run_inputs / "model"
    _random_adapter(base, tmp_path / "plain", 0, r=2, target_modules=["q_proj"])
    _random_adapter(base, tmp_path / "dora", 1, r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(UserError, match="use_dora"):
        stack_lora_adapters(tmp_path / "plain", tmp_path / "dora", tmp_path / "out")


def test_a_training_merges_the_adapter_and_saves_it_stacked(tiny_run_inputs, tmp_path):
    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.scripts import train

    prior = tmp_path / "prior"
    train.main(*train.parse_args(tiny_args(tiny_run_inputs, prior)))
    args = tiny_args(tiny_run_inputs, tmp_path / "next") + ["--init_adapter", str(prior), "--init_adapter_merge"]
    args += ["true", "--learning_rate", "1e-8", "--max_steps", "1", "--lora_r", "4", "--dtype", "float32"]
    trainer = train.main(*train.parse_args(args))

    saved = load_file(tmp_path / "next" / "adapter_model.safetensors")
    config = json.loads((tmp_path / "next" / "adapter_config.json").read_text())
    assert config["r"] == 16 + 4  # the prior's rank, then the fresh LoRA's (the recipe's lora_r)
    assert {v.shape[0] for k, v in saved.items() if "lora_A" in k} == {20}
    record = json.loads((tmp_path / "next" / "cllmfs_run.json").read_text())["init_adapter"]
    assert record["mode"] == "merge" and record["path"] == str(prior)
    # The fresh LoRA starts at B = 0 and one step at a tiny learning rate barely moves it: the run predicts as the
    # prior alone, so the prior's weights are in the saved adapter, at their own scale.
    prior_model = EntityExtractor.from_run(prior).model
    base = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "model")
    assert not torch.allclose(_logits(prior_model), _logits(base), atol=1e-3)  # the checks below can tell them apart
    run_model = EntityExtractor.from_run(tmp_path / "next").model
    torch.testing.assert_close(_logits(run_model), _logits(prior_model), atol=1e-4, rtol=1e-4)
    # ... and the model that trained was the merged one, not the plain base under a fresh LoRA.
    trained = trainer.model.eval().float()
    torch.testing.assert_close(_logits(trained), _logits(prior_model), atol=1e-4, rtol=1e-4)


def test_merge_needs_a_starting_adapter_and_a_fresh_plain_lora(tiny_run_inputs, tmp_path):
    from cllmfs_trainer.scripts import train

    with pytest.raises(UserError, match="init_adapter_merge: true needs init_adapter"):
        train.main(*train.parse_args(tiny_args(tiny_run_inputs, tmp_path / "a") + ["--init_adapter_merge", "true"]))


def test_the_benchmark_fingerprint_names_the_weights_of_each_starting_adapter(tiny_run_inputs, tmp_path):
    base = tiny_run_inputs / "model"
    _random_adapter(base, tmp_path / "mine", 0, r=2, target_modules=["q_proj"])
    config = tiny_config(
        tiny_run_inputs,
        tmp_path / "bench",
        model="default",
        methods=["cllmfs_prior", "prior_zero_shot", "mine", "later"],
        settings={"mine": {"init_adapter": str(tmp_path / "mine")}, "later": {"init_adapter": str(tmp_path / "x")}},
    )
    adapters = config.fingerprint()["init_adapters"]
    assert adapters == {
        "prior": adapter_sha256(SHIPPED_PRIOR),
        str(tmp_path / "mine"): adapter_sha256(tmp_path / "mine"),
        str(tmp_path / "x"): None,  # not trained yet: nothing to compare
    }
    assert "init_adapters" not in tiny_config(tiny_run_inputs, tmp_path / "plain").fingerprint()
    # Only adapters both sides could read are compared; reports written before the field are not compared on it.
    assert (
        changed_fields({"init_adapters": {"prior": "a", "y": None}}, {"init_adapters": {"prior": "a", "y": "b"}}) == []
    )
    assert changed_fields({}, {"init_adapters": {"prior": "a"}}) == []
    assert changed_fields({"init_adapters": {"prior": "a"}}, {"init_adapters": {"prior": "b"}}) == ["init_adapters"]

    # A benchmark folder whose starting adapter was retrained since is refused, naming the field.
    layout = BenchmarkLayout(tmp_path / "bench")
    check_resume(config, layout, overwrite=False)
    _random_adapter(base, tmp_path / "mine", 1, r=2, target_modules=["q_proj"])
    with pytest.raises(UserError, match="init_adapters"):
        check_resume(config, layout, overwrite=False)


def test_the_fingerprint_holds_registered_methods_definitions(tiny_run_inputs, tmp_path, monkeypatch):
    from cllmfs_trainer.benchmark.methods import METHODS, TrainedMethod

    config = tiny_config(tiny_run_inputs, tmp_path / "bench", methods=["cllmfs", "lora", "zero_shot", "nnshot"])
    # Only methods that change something are recorded: the recipe as written, plain zero-shot and nnshot are not.
    assert config.fingerprint()["method_definitions"] == {"lora": {"overrides": {"cl_weight": 0.0}}}
    layout = BenchmarkLayout(tmp_path / "bench")
    check_resume(config, layout, overwrite=False)
    # `lora` redefined in code: its finished units are not those of the new definition.
    monkeypatch.setitem(METHODS, "lora", TrainedMethod("lora", "LoRA only", {"cl_weight": 0.0, "lora_r": 4}))
    with pytest.raises(UserError, match="method_definitions"):
        check_resume(config, layout, overwrite=False)
