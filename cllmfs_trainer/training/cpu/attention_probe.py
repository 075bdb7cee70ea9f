"""Which attention trains faster on this CPU: PyTorch's SDPA kernel or plain matmuls (transformers' "eager").

Few-shot samples are short (about 100-160 tokens). On such sequences torch's CPU flash-attention kernel, and its
backward above all, can cost more than the two small matmuls and a softmax it replaces; which one wins depends on the
CPU, so a probe decides. It times the forward and backward of one causal attention shaped like a SmolLM2-135M batch of
the CPU recipe, in the training precision, both ways, and keeps the faster. It runs once per process, in well under a
second. The two compute the same function (eager's softmax runs in float32).
"""

from __future__ import annotations

import functools
import logging

from cllmfs_trainer.models.precision import best_seconds

logger = logging.getLogger(__name__)

# (rows, heads, tokens, head dim): a batch of 8 five-shot samples on SmolLM2-135M (9 heads of 64).
PROBE_SHAPE = (8, 9, 160, 64)
# Plain matmuls must win by this factor: SDPA is transformers' default and the better kernel on long sequences.
MIN_SPEEDUP = 1.1


def _attention_step(implementation: str, q, k, v) -> None:
    """Forward and backward of one causal attention, as SDPA or as transformers' eager path computes it."""
    import torch
    from torch.nn import functional as F

    if implementation == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        weights = scores.masked_fill(causal, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        out = weights @ v
    out.sum().backward()


@functools.cache
def cpu_eager_attention_speedup(dtype_name: str, shape: tuple[int, int, int, int] = PROBE_SHAPE, repeats: int = 5):
    """SDPA's time over eager attention's for one forward and backward on this CPU (above 1: eager is faster).

    Args:
        dtype_name (`str`):
            `"float32"` or `"bfloat16"`: the precision training runs in.
        shape (`tuple[int, int, int, int]`, *optional*, defaults to `PROBE_SHAPE`):
            (rows, heads, tokens, head dim) of the probe.
        repeats (`int`, *optional*, defaults to `5`):
            Steps per timed round (the best of three rounds is kept).
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(shape, generator=generator).to(getattr(torch, dtype_name)).requires_grad_() for _ in range(3)
    )
    sdpa = best_seconds(lambda: _attention_step("sdpa", q, k, v), repeats)
    eager = best_seconds(lambda: _attention_step("eager", q, k, v), repeats)
    return sdpa / eager


def probe_cpu_attention(dtype_name: str) -> str:
    """`"eager"` if the probe finds plain-matmul attention at least `MIN_SPEEDUP` times faster than SDPA on this CPU
    in `dtype_name`, else `"sdpa"`; the measured ratio is logged.

    Args:
        dtype_name (`str`):
            `"float32"` or `"bfloat16"`: the precision training runs in.
    """
    speedup = cpu_eager_attention_speedup(dtype_name)
    choice = "eager" if speedup >= MIN_SPEEDUP else "sdpa"
    logger.info(
        "CPU attention probe: eager attention %.2fx SDPA's here in %s; training uses %s", speedup, dtype_name, choice
    )
    return choice
