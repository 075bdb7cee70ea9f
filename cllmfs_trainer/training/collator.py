"""Batch collation: TRL's language-modeling collator, plus `cl_labels` padded the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import pad

from cllmfs_trainer.data.sft import IGNORE_INDEX


@dataclass
class ContrastiveDataCollator(DataCollatorForLanguageModeling):
    """Pads `input_ids`, `attention_mask`, `labels` (TRL's collator) and `cl_labels` (with -100) to one batch.

    Rows without `cl_labels` are allowed; if no row has them the batch has none either, and the trainer then computes
    the plain SFT loss. Padding-free batches concatenate `cl_labels` just as TRL concatenates `labels`.

    Args:
        pad_token_id: Token id used for padding.
        (other fields as in `trl.trainer.sft_trainer.DataCollatorForLanguageModeling`)
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        has_cl = any("cl_labels" in example for example in examples)
        for example in examples:
            if "cl_labels" in example and len(example["cl_labels"]) != len(example["input_ids"]):
                raise ValueError(
                    f"a row has {len(example['cl_labels'])} cl_labels for {len(example['input_ids'])} input_ids; "
                    "tokenise with cllmfs_trainer.data.sft.tokenize_samples, which cuts all columns together"
                )
        output = super().torch_call(examples)
        if not has_cl:
            return output
        cl_labels = [
            torch.tensor(example.get("cl_labels", [IGNORE_INDEX] * len(example["input_ids"]))) for example in examples
        ]
        if self.padding_free:
            cl_labels = [torch.cat(cl_labels, dim=0)]
        output["cl_labels"] = pad(
            cl_labels, padding_value=IGNORE_INDEX, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
        )
        return output
