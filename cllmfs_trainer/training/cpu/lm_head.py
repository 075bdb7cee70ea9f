"""Completion-only LM head: score only the positions that carry a label, on every device.

TRL's `SFTTrainer` trains through its fused LM head (`trl.trainer.utils.add_fused_lm_head`), which returns per-token
log-probabilities without building the `(batch, seq, vocab)` logits. On CUDA/XPU it scores only the positions whose
label is not `-100`; elsewhere it scores every position, in float32, because on its other targets a changing number of
positions would recompile its kernels. Our samples are about 80% prompt, and the LM head is about a fifth of a small
model's forward, so on the CPU most of that work is thrown away.

`add_compact_lm_head` wraps the model's fused forward: with `fused_lm_head=True` on a device where TRL would score
every position, it runs the backbone, gathers the labelled positions, and projects and normalises only those, in
float32 as TRL does. It returns TRL's `FusedCausalLMOutput`, so TRL's
loss and its metrics (`entropy`, `mean_token_accuracy`, both over labelled positions) are unchanged. Every other
call (generation, `fused_lm_head=False`, CUDA) goes to the wrapped forward.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch import nn
from trl.trainer.utils import FusedCausalLMOutput

IGNORE_INDEX = -100


def _scores_every_position(device: torch.device) -> bool:
    """Whether TRL's fused head would score every position on `device` (it compacts only where Triton runs)."""
    return device.type not in ("cuda", "xpu")


def add_compact_lm_head(model: nn.Module) -> bool:
    """Make `model(..., labels=labels, fused_lm_head=True)` score only labelled positions on the CPU.

    Call it after TRL has added its fused head (that is, after `SFTTrainer.__init__`), on the model whose forward TRL
    patched (the base model under PEFT). Models TRL did not patch, or with features the compact path does not cover
    (logit soft-capping or scaling, MoE auxiliary losses, pre-shifted labels), are left alone.

    Args:
        model (`nn.Module`):
            The causal LM whose forward TRL patched.

    Returns:
        `bool`: whether the compact head was installed.
    """
    fused_forward = model.forward
    config = model.config.get_text_config()
    unsupported = (
        getattr(config, "final_logit_softcapping", None) is not None
        or any(getattr(config, name, None) not in (None, 1.0) for name in ("logit_scale", "output_multiplier"))
        or getattr(config, "output_router_logits", False)
    )
    if unsupported or getattr(fused_forward, "_cllmfs_compact", False):
        return False

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def compact_forward(
        self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw
    ):
        lm_head = self.get_output_embeddings()
        if not fused_lm_head or shift_labels is not None or not _scores_every_position(lm_head.weight.device):
            extra = {"fused_lm_head": fused_lm_head, "labels": labels, "shift_labels": shift_labels}
            extra["num_items_in_batch"] = num_items_in_batch
            return fused_forward(*args, **{k: v for k, v in extra.items() if v is not None}, **kw)
        kw["use_cache"] = False
        hidden = self.base_model(*args, **kw).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(lm_head.weight.device)
        mask = targets != IGNORE_INDEX
        # [n, vocab] for the n labelled positions, in float32 like TRL's head: bf16-rounded logits bias the loss.
        selected = hidden.to(lm_head.weight.device)[mask].float()
        bias = None if lm_head.bias is None else lm_head.bias.float()
        logits = nn.functional.linear(selected, lm_head.weight.float(), bias)
        log_z = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, targets[mask].unsqueeze(1)).squeeze(1) - log_z
        # `masked_scatter` keeps the output attached to the graph even when no position is labelled.
        log_probs = picked.new_zeros(mask.shape).masked_scatter(mask, picked)
        with torch.no_grad():
            probs = (logits - log_z.unsqueeze(1)).exp()
            entropy = mask.new_zeros(mask.shape, dtype=torch.float32)
            entropy[mask] = log_z - (probs * logits).sum(-1)
            is_top1 = torch.zeros_like(mask)
            is_top1[mask] = logits.argmax(-1) == targets[mask]
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -log_probs.sum() / denominator
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)

    compact_forward._cllmfs_compact = True
    model.forward = types.MethodType(compact_forward, model)
    return True


def fused_model(model: Any) -> nn.Module:
    """The module whose forward TRL's fused head patched: the base model under PEFT, else the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
