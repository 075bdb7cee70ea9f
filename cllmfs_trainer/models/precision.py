"""Which precision trains faster on this CPU: a measured probe, never a guess from one machine's result.

bfloat16 halves the bytes every matmul moves, and CPUs with AVX512-BF16 or AMX also multiply faster in it; CPUs
without either emulate it and are slower than in float32. The probe times the same matmuls, shaped like a small
model's projections (tokens x hidden @ hidden x intermediate), in both precisions and keeps the faster one. It runs
once per process, in a few seconds at most: where bfloat16 is emulated (about 0.01x float32's speed), its first matmul
already settles the choice and the rounds are skipped, which would otherwise take most of a minute.
"""

from __future__ import annotations

import functools
import logging
import time

from cllmfs_trainer.errors import UserError

logger = logging.getLogger(__name__)

# (tokens, hidden, intermediate): SmolLM2-135M's MLP on a batch of about a thousand tokens.
PROBE_SHAPE = (1024, 576, 1536)
# bfloat16 must win by this factor: a tie is not worth its rounding.
MIN_SPEEDUP = 1.1
# A first bfloat16 matmul this many times slower than float32's best ends its timing: no warm-up overhead explains it,
# and the choice (bfloat16 from 1.1x, refused below 0.5x) is the same at any ratio under 0.05x.
HOPELESS_SLOWDOWN = 20.0


def best_seconds(fn, repeats: int, give_up_after: float | None = None) -> float:
    """Best time of one call of `fn` over three rounds of `repeats` calls, after one warm-up call (the first call pays
    for kernel selection and allocation).

    Args:
        fn (`Callable[[], object]`):
            What to time.
        repeats (`int`):
            Calls per timed round.
        give_up_after (`float`, *optional*):
            Seconds: a warm-up call slower than this is returned as the time, without the rounds.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if give_up_after is not None and first > give_up_after:
        return first
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def seconds_per_matmul(dtype, shape: tuple[int, int, int], repeats: int, give_up_after: float | None = None) -> float:
    """Best time of one `[tokens, hidden] @ [hidden, out]` matmul in `dtype`, over three rounds of `repeats` (or the
    first matmul's time, where that exceeds `give_up_after` seconds; see `best_seconds`)."""
    import torch

    tokens, hidden, inner = shape
    a = torch.randn(tokens, hidden).to(dtype)
    b = torch.randn(hidden, inner).to(dtype)
    return best_seconds(lambda: a @ b, repeats, give_up_after)


@functools.cache
def cpu_matmul_speedup_bf16(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 10) -> float:
    """float32 time over bfloat16 time of the probe matmul on this CPU (above 1: bfloat16 is faster).

    Args:
        shape (`tuple[int, int, int]`, *optional*, defaults to `PROBE_SHAPE`):
            (tokens, hidden, intermediate) of the probe matmul.
        repeats (`int`, *optional*, defaults to `10`):
            Matmuls per timed round (the best of three rounds is kept).
    """
    import torch

    fp32 = seconds_per_matmul(torch.float32, shape, repeats)
    bf16 = seconds_per_matmul(torch.bfloat16, shape, repeats, give_up_after=HOPELESS_SLOWDOWN * fp32)
    return fp32 / bf16


def probe_cpu_dtype(purpose: str = "training") -> str:
    """`"bfloat16"` if the probe finds it at least `MIN_SPEEDUP` times faster than float32 on this CPU, else
    `"float32"`; the measured ratio is logged.

    Args:
        purpose (`str`, *optional*, defaults to `"training"`):
            What the choice is for, in the log line (e.g. `"predicting"`).
    """
    speedup = cpu_matmul_speedup_bf16()
    choice = "bfloat16" if speedup >= MIN_SPEEDUP else "float32"
    logger.info("CPU precision probe: bfloat16 matmuls %.2fx float32's here; %s in %s", speedup, purpose, choice)
    return choice


# Below this ratio bfloat16 is emulated in software (no AVX512-BF16, AMX or native GPU support): 0.01x on an
# AVX2-only EPYC, where a benchmark unit's prediction took hours instead of minutes.
EMULATED_BF16_SPEEDUP = 0.5


def check_bf16_not_emulated(field: str) -> None:
    """Refuse bfloat16 on a CPU that emulates it, in one line naming the setting, before any work starts.

    Args:
        field (`str`):
            The setting that asked for bfloat16 (e.g. `"predict_dtype"`), named in the error.

    Raises:
        `UserError`: where the probe matmul in bfloat16 runs at under `EMULATED_BF16_SPEEDUP` times float32's speed.
    """
    import torch

    if torch.cuda.is_available():
        return
    speedup = cpu_matmul_speedup_bf16()
    if speedup < EMULATED_BF16_SPEEDUP:
        raise UserError(
            f"{field}: bfloat16 matmuls run at {speedup:.2f}x float32's speed on this CPU (emulated: no AVX512-BF16 "
            f"or AMX), so it would take about {1 / speedup:.0f}x longer; run it on a CPU with native bfloat16 or a "
            f"GPU, or use float32 (a benchmark report keeps one precision: start a new output_dir and report_dir)"
        )
