"""A training budget that follows the data: stop once the model reproduces its own support samples.

Five examples per type fit in a few epochs, while a fixed step count either stops short of the fit (large support
sets, INTER's 18 types) or trains long past it (small ones). The fit is measured for free from the training forward
itself: a sample is *fit* when every completion token is the model's top-1 prediction under teacher forcing, i.e.
greedy decoding would write exactly its target answer (entities and "no entity" alike). `SupportFitTracker` counts
fit samples per epoch, separately for samples with and without an entity, from the `is_top1` and `label_mask` fields
of TRL's fused LM head output; `SupportFitCallback` logs both fractions at every epoch's end and stops training once
both reach `fit_stop`. The counts come from forwards taken during the epoch, while the weights were still moving, so
they slightly understate the fit at the epoch's end.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from trl.trainer.utils import FusedCausalLMOutput


class SupportFitTracker:
    """Counts, per epoch, the training samples whose completion the model already writes exactly.

    Args:
        model (`nn.Module`):
            The module that returns TRL's `FusedCausalLMOutput` (the base model under PEFT).
    """

    def __init__(self, model: nn.Module) -> None:
        self.counts = torch.zeros(4, dtype=torch.long)  # fit with entity, seen with entity, fit empty, seen empty
        self._rows: torch.Tensor | None = None
        self._handle = model.register_forward_hook(self._hook)

    def expect(self, has_entity: torch.Tensor | None) -> None:
        """Tell the tracker which rows of the next forward are samples with an entity (`None`: do not count it)."""
        self._rows = None if has_entity is None else has_entity.detach().bool().cpu()

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        rows, self._rows = self._rows, None
        if rows is None or not module.training or not isinstance(output, FusedCausalLMOutput):
            return
        if output.is_top1 is None or output.label_mask is None or output.label_mask.shape[0] != len(rows):
            return  # padding-free rows are packed into one: no per-sample view
        fit = (output.is_top1.bool() | ~output.label_mask).all(dim=1).cpu() & output.label_mask.any(dim=1).cpu()
        self.counts += torch.stack([(fit & rows).sum(), rows.sum(), (fit & ~rows).sum(), (~rows).sum()])

    def take(self) -> torch.Tensor:
        """The counts since the last call, then reset."""
        counts, self.counts = self.counts, torch.zeros_like(self.counts)
        return counts

    def remove(self) -> None:
        self._handle.remove()


def fit_fractions(counts: torch.Tensor) -> dict[str, float]:
    """`{"support_fit_entity", "support_fit_empty"}` from summed tracker counts (1.0 where nothing was seen)."""
    fit_entity, seen_entity, fit_empty, seen_empty = (int(c) for c in counts)
    return {
        "support_fit_entity": fit_entity / seen_entity if seen_entity else 1.0,
        "support_fit_empty": fit_empty / seen_empty if seen_empty else 1.0,
    }


class SupportFitCallback(TrainerCallback):
    """Logs the epoch's support fit and stops training once both fractions reach `fit_stop`.

    Args:
        trainer (`Any`):
            The `ContrastiveSFTTrainer` whose tracker and accelerator to use.
        fit_stop (`float` or `None`):
            The fraction to reach; `None` only logs.
    """

    def __init__(self, trainer: Any, fit_stop: float | None) -> None:
        self.trainer = trainer
        self.fit_stop = fit_stop
        self.history: list[dict[str, float]] = []
        self._start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        counts = trainer.support_fit.take()
        # Every rank saw its own share of the epoch: sum the counts so that all ranks take the same decision.
        counts = trainer.accelerator.reduce(counts.to(trainer.accelerator.device), reduction="sum").cpu()
        if int(counts[1] + counts[3]) == 0:
            return control
        fit = fit_fractions(counts)
        seconds = round(time.perf_counter() - self._start, 1)  # since this process began training: the cost of the fit
        self.history.append({"step": state.global_step, "epoch": round(state.epoch or 0, 2), "seconds": seconds, **fit})
        trainer._metrics["train"]["support_fit_entity"].append(fit["support_fit_entity"])
        trainer._metrics["train"]["support_fit_empty"].append(fit["support_fit_empty"])
        if self.fit_stop is not None and min(fit.values()) >= self.fit_stop:
            control.should_training_stop = True
        return control
