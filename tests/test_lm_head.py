"""The completion-only LM head gives TRL's fused head's loss, gradients and metrics, and leaves generation alone."""

import copy

import pytest
import torch
from peft import LoraConfig

from cllmfs_trainer.data import build_sft_dataset, get_dataset
from cllmfs_trainer.models import ensure_pad_token
from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.training.cpu.lm_head import fused_model


@pytest.fixture(scope="module")
def tokenizer(request):
    return ensure_pad_token(copy.deepcopy(request.getfixturevalue("sp_tokenizer")))


@pytest.fixture(scope="module")
def dataset(tokenizer):
    wnut = get_dataset("wnut17")
    support = sorted(wnut.load("dev").sentences[:40], key=lambda s: -len(s.spans))[:6]
    return build_sft_dataset(support, [wnut.type("person"), wnut.type("location")], tokenizer, max_length=160)


def trainer(tmp_path, model, tokenizer, dataset, compact: bool) -> ContrastiveSFTTrainer:
    args = ContrastiveSFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        cl_layer=2,
        cl_weight=0.5,
        compact_lm_head=compact,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
    )
    torch.manual_seed(0)
    return ContrastiveSFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def loss_and_grads(t: ContrastiveSFTTrainer, batch: dict) -> tuple[torch.Tensor, dict, dict]:
    t.model.train()
    t.model.zero_grad()
    # Dropout off: both paths must see the same network; the CL noise is drawn from the same seed.
    for module in t.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(1)
    loss = t.compute_loss(t.model, dict(batch), num_items_in_batch=None)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in t._metrics["train"].items() if k in ("entropy", "mean_token_accuracy", "ce_loss")}
    return loss.detach(), grads, metrics


def test_compact_head_matches_trls_fused_head(tmp_path, tiny_llama, tokenizer, dataset):
    model = tiny_llama(tokenizer)
    ours = trainer(tmp_path / "a", copy.deepcopy(model), tokenizer, dataset, compact=True)
    theirs = trainer(tmp_path / "b", copy.deepcopy(model), tokenizer, dataset, compact=False)
    assert getattr(fused_model(ours.model).forward, "_cllmfs_compact", False)
    assert not getattr(fused_model(theirs.model).forward, "_cllmfs_compact", False)
    batch = ours.data_collator([dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).float().mean() > 0.5  # mostly prompt: what the compact head skips

    loss_a, grads_a, metrics_a = loss_and_grads(ours, batch)
    loss_b, grads_b, metrics_b = loss_and_grads(theirs, batch)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ("entropy", "mean_token_accuracy", "ce_loss"):
        assert metrics_a[key] == pytest.approx(metrics_b[key], rel=1e-5), key


def test_batch_without_labels_gives_a_finite_zero(tmp_path, tiny_llama, tokenizer, dataset):
    t = trainer(tmp_path, tiny_llama(tokenizer), tokenizer, dataset, compact=True)
    batch = t.data_collator([dataset[i] for i in range(2)])
    batch["labels"] = torch.full_like(batch["labels"], -100)
    batch.pop("cl_labels")
    loss = t.compute_loss(t.model, batch)
    assert loss.item() == 0.0
    loss.backward()  # still attached to the graph


def test_generation_is_untouched(tmp_path, tiny_llama, tokenizer, dataset):
    model = tiny_llama(tokenizer)
    reference = copy.deepcopy(model).eval()
    t = trainer(tmp_path, model, tokenizer, dataset, compact=True)
    merged = t.model.merge_and_unload().eval() if hasattr(t.model, "merge_and_unload") else t.model.eval()
    ids = tokenizer("Bo met Al in Paris", return_tensors="pt")
    with torch.no_grad():
        logits = merged(**ids).logits
    assert logits.shape[-1] == reference.config.vocab_size  # the plain forward still returns full logits
    out = merged.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
