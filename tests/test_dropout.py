"""NumpyDropout is dropout: the right keep rate and scale, gradients through the same mask, one stream per seed."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from cllmfs_trainer.training import ContrastiveSFTConfig
from cllmfs_trainer.training.cpu.dropout import NumpyDropout, numpy_dropout_speedup, use_numpy_lora_dropout


def test_keep_rate_and_expectation():
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    out = NumpyDropout(0.05).train()(x)
    kept = out != 0
    # 400k Bernoulli(0.95) draws: the kept share is within 5 standard errors (0.0017) of 0.95.
    assert abs(kept.float().mean().item() - 0.95) < 0.0017
    scale = 65536 / (65536 - round(0.05 * 65536))
    assert torch.allclose(out[kept], torch.full_like(out[kept], scale))
    # Inverted dropout: the expectation of every element is x (the scale undoes the rounded keep probability).
    assert abs(out.mean().item() - 1.0) < 0.002


def test_eval_mode_and_zero_p_are_identity():
    x = torch.randn(8, 16)
    assert torch.equal(NumpyDropout(0.3).eval()(x), x)
    assert torch.equal(NumpyDropout(0.0).train()(x), x)


def test_gradient_goes_through_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 32, dtype=torch.bfloat16, requires_grad=True)
    out = NumpyDropout(0.25).train()(x)
    out.float().sum().backward()
    expected = torch.where(out != 0, torch.tensor(4 / 3, dtype=torch.bfloat16), torch.tensor(0, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(x.grad.float(), expected.float(), rtol=1e-2)


def test_masks_follow_torch_seed():
    drop = NumpyDropout(0.5).train()
    x = torch.ones(32, 32)
    torch.manual_seed(3)
    first = drop(x)
    second = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)  # the same seed, the same masks: a resumed run restores torch's RNG state
    assert not torch.equal(first, second)  # a fresh mask at every call


def test_lora_dropouts_are_replaced(tiny_llama, sp_tokenizer):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(tiny_llama(sp_tokenizer), lora)
    assert use_numpy_lora_dropout(model, "torch") == 0
    dropouts = [m.lora_dropout for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)]
    assert len(dropouts) == 2 * model.config.num_hidden_layers  # q_proj and v_proj of every block
    assert use_numpy_lora_dropout(model, "numpy") == len(dropouts)
    dropouts = [d["default"] for d in dropouts]
    assert all(type(d) is NumpyDropout and d.p == 0.1 for d in dropouts)
    assert use_numpy_lora_dropout(model, "numpy") == 0  # nothing left to replace
    model.train()
    ids = torch.randint(0, 100, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()


def test_probe_and_config_check():
    assert numpy_dropout_speedup((64, 128), repeats=1) > 0
    with pytest.raises(ValueError, match="lora_dropout_rng"):
        ContrastiveSFTConfig(output_dir="x", lora_dropout_rng="fast")
