"""`ContrastiveSFTConfig`: TRL's `SFTConfig` plus the `cl_*` fields of the contrastive term."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from trl import SFTConfig

from cllmfs_trainer.training.cpu.dropout import LORA_DROPOUT_RNGS
from cllmfs_trainer.training.cpu.lora_precision import LORA_COMPUTE_DTYPES
from cllmfs_trainer.training.losses import NOISE_DISTRIBUTIONS

NOISE_SITES = ("embeddings", "hidden", "none")
CL_LABEL_MODES = ("auto", "query", "gold")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _accelerator_available() -> bool:
    import torch

    return torch.accelerator.is_available()  # CUDA, ROCm, XPU, NPU, MPS, ...


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class ContrastiveSFTConfig(SFTConfig):
    """Configuration for `ContrastiveSFTTrainer`: every `SFTConfig` field, plus the contrastive term.

    The loss is `CE + cl_weight * CL`, where CL is a supervised contrastive loss over the layer-`cl_layer` hidden
    states of the input-sentence tokens (see `cllmfs_trainer.training.losses`). Ablations of the paper's Table 2 map
    onto it: `cl_weight=0` is LoRA only, `cl_noise_site="none"` is LoRA+CL, and the defaults are LoRA+CL+Noise. Each
    field's `help` metadata (what `--help` prints) says more.

    Parameters:
        > Parameters that control the contrastive term

        cl_weight (`float`, *optional*, defaults to `0.001`):
            Weight lambda of the term in `CE + lambda * CL`; 0 trains exactly as `SFTTrainer`.
        cl_layer (`float`, *optional*, defaults to `26`):
            Block whose output feeds the term: an integer `L >= 1`, or a fraction of the model's depth in (0, 1).
        cl_temperature (`float`, *optional*, defaults to `0.07`):
            Temperature of the supervised contrastive loss.

        > Parameters that control the noised view

        cl_noise_site (`str`, *optional*, defaults to `"embeddings"`):
            `"embeddings"` (a second, partial forward with noised input embeddings), `"hidden"` (noise on the layer's
            states) or `"none"` (no noised view: LoRA+CL).
        cl_noise_distribution (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"` (NEFTune's) or `"gaussian"`, at the same scale.
        cl_noise_alpha (`float`, *optional*, defaults to `5.0`):
            Noise magnitude (NEFTune's alpha).
        cl_positive_grad (`bool`, *optional*, defaults to `False`):
            Let gradients flow through the noised view; off, that pass stores no activations.

        > Parameters that control which tokens enter the term, and their labels

        cl_max_tokens (`int`, *optional*, defaults to `1024`):
            Cap on the tokens per micro-batch (the cost is quadratic); O tokens are subsampled first. `None`: no cap.
        cl_anchor_outside (`bool`, *optional*, defaults to `False`):
            Also use O tokens as anchors; by default they are negatives only.
        cl_label_mode (`str`, *optional*, defaults to `"auto"`):
            `"query"` (the queried type inside its spans), `"gold"` (each token's own type) or `"auto"` (`"gold"`
            under prompt format 2, else `"query"`).

        > Parameters that control the samples of each epoch

        empty_ratio (`float`, *optional*):
            Samples without an entity kept per epoch, per sample with one, for each type; they rotate. `None`: all.
        length_bucket_batches (`int`, *optional*, defaults to `1`):
            Sort each group of this many batches by length, for less padding; 1 gives plain random batches.
        fit_stop (`float`, *optional*):
            Stop after the first epoch in which this fraction of the samples (with and without an entity) is fitted.

        > Parameters that control speed on the CPU (`cllmfs_trainer.training.cpu`); accelerators ignore them

        compact_lm_head (`bool`, *optional*, defaults to `True`):
            Score only the labelled positions in the LM head, as TRL's fused head does on CUDA.
        lora_dropout_rng (`str`, *optional*, defaults to `"auto"`):
            Where LoRA dropout masks are drawn: `"torch"`, `"numpy"` or `"auto"` (a probe keeps the faster).
        lora_compute_dtype (`str`, *optional*, defaults to `"float32"`):
            `"model"` runs LoRA matmuls in a half-precision model's dtype with float32 master weights; `"float32"` is
            PEFT's own.

        > Parameters whose defaults differ from `SFTConfig`

        bf16 (`bool`, *optional*):
            bf16 mixed precision; `None` turns it on only where a GPU supports it (`SFTConfig`'s `True` fails on a
            CPU).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep columns the model does not take, such as `cl_labels`, for the collator.

    Two more are set in `__post_init__`: `dataset_kwargs` defaults to `{"skip_prepare_dataset": True}` (the datasets
    arrive tokenised with `cl_labels`, and TRL's preparation would truncate only some columns), and `use_cpu` is set
    when several processes are launched on a machine without CUDA (each would otherwise train alone).
    """

    cl_weight: float = field(
        default=0.001,
        metadata={
            "help": "Weight lambda of the contrastive term in CE + lambda * CL (the paper: 0.001). 0 disables "
            "it, and the trainer then behaves exactly like SFTTrainer."
        },
    )
    cl_layer: float = field(
        default=26,
        metadata={
            "help": "Layer whose output feeds the contrastive term: an integer L >= 1 is the output of block L "
            "(hidden_states[L]; for the last block, its output before the final norm; the paper: 26 of "
            "LLaMA-2-7B's 32), a float in (0, 1) a fraction of the model's depth, so one recipe fits models "
            "of different depth."
        },
    )
    cl_temperature: float = field(
        default=0.07, metadata={"help": "Temperature of the supervised contrastive loss (> 0)."}
    )
    cl_noise_site: str = field(
        default="embeddings",
        metadata={
            "help": "Where the noised positive view comes from: 'embeddings' (a second forward with noised "
            "input embeddings, stopped after layer cl_layer), 'hidden' (noise added to the layer's states; "
            "cheap) or 'none' (no noised view).",
            "choices": list(NOISE_SITES),
        },
    )
    cl_noise_distribution: str = field(
        default="uniform",
        metadata={
            "help": "'uniform' (NEFTune: U(-1, 1) * alpha / sqrt(seq_len * dim)) or 'gaussian' "
            "(N(0, 1) with the same scale).",
            "choices": list(NOISE_DISTRIBUTIONS),
        },
    )
    cl_noise_alpha: float = field(default=5.0, metadata={"help": "Noise magnitude alpha (NEFTune's alpha; >= 0)."})
    cl_positive_grad: bool = field(
        default=False,
        metadata={
            "help": "Let gradients flow through the noised view. Off by default: the noised pass then runs "
            "without storing activations, which is what keeps it cheap."
        },
    )
    cl_max_tokens: int | None = field(
        default=1024,
        metadata={
            "help": "Cap on the tokens per micro-batch entering the contrastive term (its cost is quadratic); O "
            "tokens are subsampled first. None: no cap."
        },
    )
    cl_anchor_outside: bool = field(
        default=False,
        metadata={"help": "Also use O tokens as anchors (by default they only serve as negatives)."},
    )
    cl_label_mode: str = field(
        default="auto",
        metadata={
            "help": "Labels of the sentence tokens in the contrastive term. 'query': the queried type's id inside its "
            "gold spans, 0 elsewhere (coherent under prompt format 1, where the sentence follows the instruction). "
            "'gold': each token's own gold type among the task's types (under format 2 the sentence comes first and "
            "its states cannot see the queried type, so 'query' would label one vector both ways). 'auto': 'gold' for "
            "datasets built with prompt format 2, else 'query'.",
            "choices": list(CL_LABEL_MODES),
        },
    )
    empty_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Samples without an entity of their type kept per epoch, per sample with one, for each type; "
            "the kept ones rotate so that all are seen over training. None: every sample every epoch (the paper)."
        },
    )
    length_bucket_batches: int = field(
        default=1,
        metadata={
            "help": "Sort each group of this many batches by length before batching, so rows of a batch have similar "
            "lengths and less padding; batches stay in random order. 1: plain random batches."
        },
    )
    fit_stop: float | None = field(
        default=None,
        metadata={
            "help": "Stop at the end of the first epoch in which at least this fraction of the samples with an entity, "
            "and of those without, had every completion token as the top-1 prediction in their training forward "
            "(greedy decoding would write their answer). The step or epoch budget still caps training. None: train "
            "for the whole budget. The fit is logged at every epoch's end either way."
        },
    )
    compact_lm_head: bool = field(
        default=True,
        metadata={
            "help": "Score only the labelled (completion) positions in the LM head on devices where TRL's fused head "
            "scores every position (the CPU). Same loss and metrics; about four fifths of our positions are prompt."
        },
    )
    lora_dropout_rng: str = field(
        default="auto",
        metadata={
            "help": "Where LoRA dropout masks are drawn on the CPU: 'torch' (bernoulli_, a serial loop on CPUs where "
            "torch does not use MKL's generator), 'numpy' (PCG64 bits, seeded from torch's generator) or 'auto' "
            "(a probe keeps the faster here). Accelerators always use torch's."
        },
    )
    lora_compute_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the LoRA matmuls on a bfloat16/float16 model: 'model' (that dtype; the LoRA weights, "
            "gradients and optimizer state stay float32, as under mixed precision) or 'float32' (PEFT's own: every "
            "LoRA input is copied to float32, SFTTrainer's numbers). 'model' saves those copies, a large part of a CPU "
            "step."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Default: on only where a GPU supports it (SFTConfig's True fails on CPU)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep columns the model does not take, such as cl_labels."}
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = not self.fp16 and _bf16_supported()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not _cuda_available():
            # torchrun on a CPU machine: without use_cpu, transformers sets up no process group and every process
            # silently trains alone on the full data.
            self.use_cpu = True
        fsdp_requested = bool(self.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if fsdp_requested and (self.use_cpu or not _accelerator_available()):
            # accelerate shards with FSDP only on accelerators; on the CPU it would silently train with plain DDP.
            raise ValueError(
                "FSDP (`fsdp` or an accelerate FSDP config) needs GPUs or other accelerators; on the "
                "CPU accelerate would silently use DDP instead. On CPUs use ds_configs/cpu_ddp.yaml or "
                "ZeRO-2."
            )
        if self.dataset_kwargs is None:
            self.dataset_kwargs = {"skip_prepare_dataset": True}
        self._check_budget()
        super().__post_init__()
        if self.cl_weight < 0:
            raise ValueError(f"cl_weight must be >= 0, got {self.cl_weight}")
        if not (self.cl_layer > 0 and (self.cl_layer < 1 or float(self.cl_layer).is_integer())):
            raise ValueError(f"cl_layer must be an integer >= 1 or a fraction in (0, 1), got {self.cl_layer}")
        if self.cl_layer >= 1:
            self.cl_layer = int(self.cl_layer)
        if self.cl_temperature <= 0:
            raise ValueError(f"cl_temperature must be > 0, got {self.cl_temperature}")
        if self.cl_noise_site not in NOISE_SITES:
            raise ValueError(f"cl_noise_site must be one of {NOISE_SITES}, got {self.cl_noise_site!r}")
        if self.cl_noise_distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(
                f"cl_noise_distribution must be one of {NOISE_DISTRIBUTIONS}, got {self.cl_noise_distribution!r}"
            )
        if self.cl_noise_alpha < 0:
            raise ValueError(f"cl_noise_alpha must be >= 0, got {self.cl_noise_alpha}")
        if self.cl_label_mode not in CL_LABEL_MODES:
            raise ValueError(f"cl_label_mode must be one of {CL_LABEL_MODES}, got {self.cl_label_mode!r}")
        if self.empty_ratio is not None and self.empty_ratio < 0:
            raise ValueError(f"empty_ratio must be >= 0 or None, got {self.empty_ratio}")
        if self.fit_stop is not None and not 0 < self.fit_stop <= 1:
            raise ValueError(f"fit_stop must be in (0, 1] or None, got {self.fit_stop}")
        if self.length_bucket_batches < 1:
            raise ValueError(f"length_bucket_batches must be >= 1, got {self.length_bucket_batches}")
        if self.lora_dropout_rng not in LORA_DROPOUT_RNGS:
            raise ValueError(f"lora_dropout_rng must be one of {LORA_DROPOUT_RNGS}, got {self.lora_dropout_rng!r}")
        if self.lora_compute_dtype not in LORA_COMPUTE_DTYPES:
            raise ValueError(
                f"lora_compute_dtype must be one of {LORA_COMPUTE_DTYPES}, got {self.lora_compute_dtype!r}"
            )
        if self.cl_max_tokens is not None and self.cl_max_tokens < 2:
            raise ValueError(f"cl_max_tokens must be >= 2 or None, got {self.cl_max_tokens}")

    def _check_budget(self) -> None:
        """Refuse settings that would save a run folder without one useful optimizer step: NaN or infinite numbers
        (an infinite learning rate gives all-NaN weights), a zero budget, or a step count transformers would silently
        reinterpret (any `max_steps` below -1 means "use the epochs")."""
        for name in ("learning_rate", "weight_decay", "num_train_epochs", "cl_weight", "cl_temperature"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if not math.isfinite(self.cl_noise_alpha):
            raise ValueError(f"cl_noise_alpha must be a finite number, got {self.cl_noise_alpha}")
        if self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate must be > 0, got {self.learning_rate}: the run would save untrained weights"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1, or -1 to train for num_train_epochs, got {self.max_steps}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError(
                f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs}: the run would make "
                "no optimizer step"
            )

    def resolve_cl_layer(self, num_layers: int) -> int:
        """The hidden_states index of the contrastive layer for a model with `num_layers` blocks.

        Raises:
            `ValueError`: if an integer `cl_layer` exceeds the model's depth.
        """
        if self.cl_layer < 1:
            return max(1, round(self.cl_layer * num_layers))
        if self.cl_layer > num_layers:
            raise ValueError(
                f"cl_layer={self.cl_layer} is out of range for a model with {num_layers} layers; use 1..{num_layers} "
                f"or a fraction of depth such as {round(26 / 32, 4)} (the paper's layer 26 of 32)"
            )
        return int(self.cl_layer)
