"""LoRA dropout whose masks are drawn fast on any CPU.

PEFT applies `nn.Dropout` to the input of every LoRA projection: seven masks per decoder block, each as large as the
block's activations, in the training forward and again in the noised contrastive forward. On the CPU torch draws them
with `bernoulli_`, which uses MKL's parallel generator on Intel CPUs only; elsewhere it is a serial loop. On the
2-core AMD EPYC of docs/training.md that loop took about 2 s of a 7 s step while the second core waited.

`NumpyDropout` draws the same Bernoulli masks from NumPy's PCG64 stream instead: 16 random bits per element, several
times faster than torch's serial loop. Its seed is drawn from torch's default generator, so a run stays
deterministic per `seed` and a resumed run (which restores torch's RNG state) draws the same masks. The drop
probability is rounded to a multiple of 1/65536 and the kept values are scaled by the inverse of the rounded keep
probability, so the expectation is exact. On accelerators, and in eval mode, it is `nn.Dropout`.

`lora_dropout_rng="auto"` keeps whichever of the two is faster on the CPU at hand, by a probe that times both.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch
from torch import nn

from cllmfs_trainer.models.precision import best_seconds

logger = logging.getLogger(__name__)

LORA_DROPOUT_RNGS = ("auto", "torch", "numpy")
# (tokens, features): the widest LoRA input of SmolLM2-135M (down_proj) on a batch of about a thousand tokens.
PROBE_SHAPE = (1024, 1536)
MIN_SPEEDUP = 1.1  # NumPy's masks must win by this factor: a tie is not worth leaving torch's stream


class _ScaledMask(torch.autograd.Function):
    """`where(keep, x * scale, 0)`, keeping only the boolean mask for backward (as torch's dropout does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0), None, None


def numpy_keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of `shape` (each element kept with probability about `1 - p`) and the scale of the kept
    values, from a PCG64 stream seeded by torch's default generator.

    Args:
        shape (`torch.Size`):
            The mask's shape.
        p (`float`):
            The drop probability, rounded to a multiple of 1/65536.
    """
    threshold = round(p * 65536)
    numel = int(np.prod(shape))
    seed = int(torch.randint(0, 2**62, ()).item())
    words = np.random.PCG64(seed).random_raw(-(-numel // 4))  # 4 x 16 random bits per 64-bit word
    keep = words.view(np.uint16)[:numel] >= threshold
    return torch.from_numpy(keep).view(shape), 65536 / (65536 - threshold)


class NumpyDropout(nn.Dropout):
    """`nn.Dropout` whose CPU masks come from NumPy's PCG64 (see the module docstring).

    Args:
        p (`float`, *optional*, defaults to `0.5`):
            The drop probability, in [0, 1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep, scale = numpy_keep_mask(x.shape, self.p)
        return _ScaledMask.apply(x, keep, scale)


@functools.cache
def numpy_dropout_speedup(shape: tuple[int, int] = PROBE_SHAPE, repeats: int = 5) -> float:
    """torch's dropout time over `NumpyDropout`'s on this CPU, in bfloat16 and forward only (above 1: NumPy's is
    faster).

    Args:
        shape (`tuple[int, int]`, *optional*, defaults to `PROBE_SHAPE`):
            (tokens, features) of the probe input.
        repeats (`int`, *optional*, defaults to `5`):
            Calls per timed round (the best of three rounds is kept).
    """
    x = torch.randn(shape).to(torch.bfloat16)
    ours = NumpyDropout(0.05).train()
    with torch.no_grad():
        theirs_s = best_seconds(lambda: nn.functional.dropout(x, 0.05, training=True), repeats)
        ours_s = best_seconds(lambda: ours(x), repeats)
    return theirs_s / ours_s


def resolve_lora_dropout_rng(choice: str) -> str:
    """`"torch"` or `"numpy"`; `"auto"` runs the probe and logs the measured ratio."""
    if choice != "auto":
        return choice
    speedup = numpy_dropout_speedup()
    resolved = "numpy" if speedup >= MIN_SPEEDUP else "torch"
    logger.info("CPU dropout probe: NumPy masks %.2fx torch's here; LoRA dropout uses %s", speedup, resolved)
    return resolved


def _lora_dropouts(model: nn.Module):
    """(module dict, adapter name, dropout) for every torch `nn.Dropout` with `p > 0` in a LoRA layer."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is nn.Dropout and dropout.p > 0:
                    yield dropouts, name, dropout


def use_numpy_lora_dropout(model: nn.Module, choice: str = "numpy") -> int:
    """Replace the `nn.Dropout` of every LoRA layer of a PEFT model with `NumpyDropout` of the same `p`.

    Args:
        model (`nn.Module`):
            The model; LoRA layers are found by their `lora_dropout` module dict.
        choice (`str`, *optional*, defaults to `"numpy"`):
            A `lora_dropout_rng` value: `"torch"` replaces nothing, `"auto"` runs the probe first (only where the
            model has LoRA dropout to replace).

    Returns:
        `int`: how many dropout modules were replaced.
    """
    found = list(_lora_dropouts(model))
    if not found or resolve_lora_dropout_rng(choice) != "numpy":
        return 0
    for dropouts, name, dropout in found:
        dropouts[name] = NumpyDropout(dropout.p).train(dropout.training)
    return len(found)
