"""Batch collation: TRL's language-modeling collator, plus `cl_labels` padded the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import pad

from cllmfs_trainer.data.sft import IGNORE_INDEX

# Per-token contrastive labels: by the queried type, and by each token's own gold type (`cl_label_mode`).
CL_LABEL_KEYS = ("cl_labels", "cl_gold_labels")


@dataclass
class ContrastiveDataCollator(DataCollatorForLanguageModeling):
    """Pads `input_ids`, `attention_mask`, `labels` (TRL's collator) and the `cl_*labels` (with -100) to one batch.

    Rows without `cl_labels` are allowed; if no row has them the batch has none either, and the trainer then computes
    the plain SFT loss. Padding-free batches concatenate `cl_labels` just as TRL concatenates `labels`.

    Args:
        pad_token_id (`int`):
            Token id used for padding.

    Other fields are as in `trl.trainer.sft_trainer.DataCollatorForLanguageModeling`.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        for key in CL_LABEL_KEYS:
            if not any(key in example for example in examples):
                continue
            for example in examples:
                if key in example and len(example[key]) != len(example["input_ids"]):
                    raise ValueError(
                        f"a row has {len(example[key])} {key} for {len(example['input_ids'])} input_ids; tokenise "
                        "with cllmfs_trainer.data.sft.tokenize_samples, which cuts all columns together"
                    )
            labels = [
                torch.tensor(example.get(key, [IGNORE_INDEX] * len(example["input_ids"]))) for example in examples
            ]
            if self.padding_free:
                labels = [torch.cat(labels, dim=0)]
            output[key] = pad(
                labels, padding_value=IGNORE_INDEX, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
            )
        return output
