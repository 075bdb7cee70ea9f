"""LoRA matmuls in the base model's half precision, with float32 master weights.

PEFT keeps LoRA weights in float32 on a bfloat16 base model (`autocast_adapter_dtype`) so that small updates are not
rounded away. Without an autocast context it then casts every LoRA layer's input to float32: a float32 copy of the
activations per projection, dropout on that copy, float32 matmuls, and a float32 sum that is cast back to bfloat16.
On the CPU, where training runs without mixed precision, those copies are a large part of a step
(`bench/train_speed.py`, variant `default+float32_lora`).

`lora_compute_dtype="model"` does what an autocast context would do for these layers only: the input stays in the
model's dtype and each LoRA matmul casts its (small, r x d) weight to that dtype per call. The weights, their
gradients and the optimizer state stay float32, as under mixed precision. The LM head and the losses are untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

LORA_COMPUTE_DTYPES = ("float32", "model")
HALF_DTYPES = (torch.bfloat16, torch.float16)


class ModelDtypeLinear(nn.Linear):
    """`nn.Linear` that computes in its input's dtype: the weight is a float32 master copy, cast per call (the cast
    is differentiable, so its gradient arrives in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def _plain_lora_layers(model: nn.Module):
    """PEFT LoRA layers on a linear base whose every adapter is vanilla LoRA (no DoRA or other variant)."""
    for module in model.modules():
        lora_A = getattr(module, "lora_A", None)
        if not isinstance(lora_A, nn.ModuleDict) or not len(lora_A) or getattr(module, "lora_variant", None):
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else None
        if isinstance(base, nn.Linear):
            yield module, base


def compute_lora_in_model_dtype(model: nn.Module) -> int:
    """Make the LoRA layers of a PEFT model whose base weights are bfloat16 or float16 compute in that dtype.

    Layers on a float32 base, and LoRA variants such as DoRA, are left as PEFT built them. Parameters, their names
    and dtypes, and so the saved adapter, are unchanged.

    Args:
        model (`nn.Module`):
            The PEFT model.

    Returns:
        `int`: how many LoRA layers now compute in their base's dtype.
    """
    changed = 0
    for layer, base in _plain_lora_layers(model):
        linears = [linear for adapters in (layer.lora_A, layer.lora_B) for linear in adapters.values()]
        # Input casting goes off only where every adapter matmul will cast its own weight instead.
        if base.weight.dtype not in HALF_DTYPES or any(type(m) not in (nn.Linear, ModelDtypeLinear) for m in linears):
            continue
        layer.cast_input_dtype_enabled = False  # PEFT's own switch (`peft.helpers.disable_input_dtype_casting`)
        for linear in linears:
            linear.__class__ = ModelDtypeLinear
        changed += 1
    return changed
