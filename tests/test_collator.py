import pytest
import torch

from cllmfs_trainer.training.collator import ContrastiveDataCollator

ROWS = [
    {
        "input_ids": [5, 6, 7, 8],
        "attention_mask": [1] * 4,
        "labels": [-100, -100, 7, 8],
        "cl_labels": [0, 2, -100, -100],
    },
    {"input_ids": [9, 10], "attention_mask": [1] * 2, "labels": [-100, 10], "cl_labels": [1, -100]},
]


def test_pads_every_column_right_with_its_own_value():
    batch = ContrastiveDataCollator(pad_token_id=0)(ROWS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch["cl_labels"].tolist() == [[0, 2, -100, -100], [1, -100, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_to_multiple_of():
    batch = ContrastiveDataCollator(pad_token_id=0, pad_to_multiple_of=8)(ROWS)
    assert batch["cl_labels"].shape == batch["input_ids"].shape == (2, 8)


def test_padding_free_concatenates_cl_labels_like_labels():
    batch = ContrastiveDataCollator(pad_token_id=0, padding_free=True)(ROWS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["cl_labels"].tolist() == [[0, 2, -100, -100, 1, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]


def test_rows_without_cl_labels():
    plain = [{k: v for k, v in row.items() if k != "cl_labels"} for row in ROWS]
    assert "cl_labels" not in ContrastiveDataCollator(pad_token_id=0)(plain)
    mixed = ContrastiveDataCollator(pad_token_id=0)([ROWS[0], plain[1]])
    assert mixed["cl_labels"].tolist()[1] == [-100] * 4


def test_misaligned_cl_labels_are_rejected():
    bad = dict(ROWS[0], cl_labels=[0, 0])
    with pytest.raises(ValueError, match="2 cl_labels for 4 input_ids"):
        ContrastiveDataCollator(pad_token_id=0)([bad])
