"""Padding-free batches (rows packed into one, with `position_ids`) give the padded batches' loss and gradients."""

import copy

import pytest
import torch
from peft import LoraConfig

from cllmfs_trainer.data import build_sft_dataset, get_dataset
from cllmfs_trainer.models import ensure_pad_token
from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer


@pytest.fixture(scope="module")
def tokenizer(request):
    return ensure_pad_token(copy.deepcopy(request.getfixturevalue("sp_tokenizer")))


def make_trainer(tmp_path, model, tokenizer, dataset, padding_free: bool) -> ContrastiveSFTTrainer:
    args = ContrastiveSFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        max_steps=1,
        per_device_train_batch_size=4,
        padding_free=padding_free,
        max_length=None,  # TRL: padding-free rows are not cut (ours are already tokenised whole)
        cl_layer=2,
        cl_weight=0.5,
        cl_noise_site="none",  # NEFTune-style noise scales with each row's length: packed rows would differ
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    torch.manual_seed(0)
    return ContrastiveSFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def loss_and_grads(trainer: ContrastiveSFTTrainer, rows: list[dict]) -> tuple[torch.Tensor, dict]:
    batch = trainer.data_collator(rows)
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_padding_free_matches_padded(tmp_path, tiny_llama, tokenizer):
    wnut = get_dataset("wnut17")
    support = sorted((s for s in wnut.load("dev").sentences[:60] if s.spans), key=lambda s: len(s.tokens))[:2]
    dataset = build_sft_dataset(support, [wnut.type("person"), wnut.type("location")], tokenizer)
    rows = [
        {k: dataset[i][k] for k in ("input_ids", "attention_mask", "labels", "cl_labels")} for i in range(len(dataset))
    ]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # rows of different lengths: the padded batch has padding
    model = tiny_llama(tokenizer, attn_implementation="sdpa")
    padded = make_trainer(tmp_path / "a", copy.deepcopy(model), tokenizer, dataset, padding_free=False)
    packed = make_trainer(tmp_path / "b", copy.deepcopy(model), tokenizer, dataset, padding_free=True)
    assert "position_ids" in packed.data_collator(rows) and packed.data_collator(rows)["input_ids"].shape[0] == 1
    loss_a, grads_a = loss_and_grads(padded, rows)
    loss_b, grads_b = loss_and_grads(packed, rows)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5, msg=name)
