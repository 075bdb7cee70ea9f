import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from cllmfs_trainer.training import ContrastiveSFTConfig
from cllmfs_trainer.training.cpu.lora_precision import ModelDtypeLinear, compute_lora_in_model_dtype

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _bf16_peft_model(tiny_llama, sp_tokenizer):
    model = get_peft_model(tiny_llama(sp_tokenizer).to(torch.bfloat16), LoraConfig(**LORA, task_type="CAUSAL_LM"))
    # PEFT initialises lora_B to zero; non-zero weights make the LoRA path visible in outputs and gradients.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


def test_model_dtype_lora_matches_float32_lora(tiny_llama, sp_tokenizer):
    reference = _bf16_peft_model(tiny_llama, sp_tokenizer)
    model = copy.deepcopy(reference)
    before = {name: (p.dtype, p.shape) for name, p in model.named_parameters()}
    assert compute_lora_in_model_dtype(model) == 3 * model.config.num_hidden_layers

    # Parameters (names, shapes, float32 master weights) and so the saved adapter are unchanged.
    assert {name: (p.dtype, p.shape) for name, p in model.named_parameters()} == before
    assert any(p.dtype == torch.float32 for name, p in model.named_parameters() if "lora_" in name)
    assert all(type(m) is ModelDtypeLinear for name, m in model.named_modules() if name.endswith("lora_A.default"))

    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    losses, grads = [], []
    for m in (reference, model):
        m.train()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    for name, grad in grads[0].items():
        assert grads[1][name].dtype == torch.float32  # gradients reach the float32 master weights
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), grads[1][name].flatten(), dim=0)
        assert cosine > 0.95, name


def test_float32_base_and_variants_are_left_alone(tiny_llama, sp_tokenizer):
    model = get_peft_model(tiny_llama(sp_tokenizer), LoraConfig(**LORA, task_type="CAUSAL_LM"))
    assert compute_lora_in_model_dtype(model) == 0  # float32 base: nothing to save
    dora = get_peft_model(
        tiny_llama(sp_tokenizer).to(torch.bfloat16), LoraConfig(**LORA, use_dora=True, task_type="CAUSAL_LM")
    )
    assert compute_lora_in_model_dtype(dora) == 0
    assert not any(type(m) is ModelDtypeLinear for m in dora.modules())


def test_config_check():
    assert ContrastiveSFTConfig(output_dir="x").lora_compute_dtype == "float32"  # drop-in: PEFT's numbers
    with pytest.raises(ValueError, match="lora_compute_dtype"):
        ContrastiveSFTConfig(output_dir="x", lora_compute_dtype="bfloat16")
