"""The data-driven budget: support-fit counting, the stop rule, and the sampler and label mode in the trainer."""

import copy
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerControl, TrainerState
from trl.trainer.utils import FusedCausalLMOutput

from cllmfs_trainer.data import build_sft_dataset, get_dataset
from cllmfs_trainer.models import ensure_pad_token
from cllmfs_trainer.training import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.training.sampler import FewShotSampler
from cllmfs_trainer.training.support_fit import SupportFitCallback, SupportFitTracker, fit_fractions


class Head(torch.nn.Module):
    """Returns a fixed fused-head output, as TRL's patched forward would."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x):
        return self.output


def test_tracker_counts_samples_whose_every_completion_token_is_top1():
    label_mask = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]], dtype=torch.bool)
    is_top1 = torch.tensor([[0, 1, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)  # rows 0, 2, 3 fit
    head = Head(FusedCausalLMOutput(is_top1=is_top1, label_mask=label_mask)).train()
    tracker = SupportFitTracker(head)
    tracker.expect(torch.tensor([True, True, False, False]))
    head(None)
    head(None)  # a forward without `expect` (e.g. the noised pass) is not counted
    assert tracker.take().tolist() == [1, 2, 2, 2]
    assert fit_fractions(torch.tensor([1, 2, 2, 2])) == {"support_fit_entity": 0.5, "support_fit_empty": 1.0}
    head.eval()
    tracker.expect(torch.tensor([True, True, False, False]))
    head(None)  # evaluation forwards are not training fit
    assert tracker.take().tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(("counts", "stops"), [([9, 10, 19, 20], False), ([10, 10, 19, 20], True)])
def test_callback_stops_once_both_fractions_reach_fit_stop(counts, stops):
    tracker = SimpleNamespace(take=lambda: torch.tensor(counts))
    accelerator = SimpleNamespace(device="cpu", reduce=lambda t, reduction: t)
    trainer = SimpleNamespace(support_fit=tracker, accelerator=accelerator, _metrics={"train": defaultdict(list)})
    callback = SupportFitCallback(trainer, fit_stop=0.95)
    control = callback.on_epoch_end(None, TrainerState(global_step=7, epoch=1.0), TrainerControl())
    assert control.should_training_stop is stops
    (entry,) = callback.history
    assert entry.pop("seconds") >= 0  # training time until this fit: what a fit stop saves
    assert entry == {"step": 7, "epoch": 1.0, **fit_fractions(torch.tensor(counts))}
    assert trainer._metrics["train"]["support_fit_entity"] == [counts[0] / counts[1]]


@pytest.fixture(scope="module")
def tokenizer(request):
    return ensure_pad_token(copy.deepcopy(request.getfixturevalue("sp_tokenizer")))


def build(tokenizer, prompt_format=1):
    wnut = get_dataset("wnut17")
    support = sorted(wnut.load("dev").sentences[:30], key=lambda s: -len(s.spans))[:4]
    types = [wnut.type("person"), wnut.type("location"), wnut.type("product")]
    return build_sft_dataset(support, types, tokenizer, max_length=160, prompt_format=prompt_format)


def trainer(tmp_path, model, tokenizer, dataset, **kw):
    args = ContrastiveSFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        per_device_train_batch_size=2,
        cl_layer=2,
        gradient_checkpointing=False,
        disable_tqdm=True,
        logging_steps=1,
        **kw,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return ContrastiveSFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def test_trainer_uses_the_sampler_logs_the_fit_and_picks_the_label_mode(tmp_path, tiny_llama, tokenizer):
    dataset = build(tokenizer)
    t = trainer(
        tmp_path,
        tiny_llama(tokenizer),
        tokenizer,
        dataset,
        empty_ratio=1.0,
        length_bucket_batches=2,
        num_train_epochs=2,
    )
    assert t.cl_label_mode == "query"
    sampler = t._get_train_sampler()
    entity = sum(dataset["has_entity"])
    assert isinstance(sampler, FewShotSampler) and entity <= len(sampler) <= 2 * entity
    t.train()
    assert [h["epoch"] for h in t.support_fit_callback.history] == [1.0, 2.0]
    assert all(0 <= h["support_fit_entity"] <= 1 for h in t.support_fit_callback.history)
    assert any("support_fit_entity" in log for log in t.state.log_history)

    plain = trainer(tmp_path / "p", tiny_llama(tokenizer), tokenizer, dataset, max_steps=1)
    assert not isinstance(plain._get_train_sampler(), FewShotSampler)  # the defaults keep the Trainer's sampler
    fmt2 = trainer(tmp_path / "f", tiny_llama(tokenizer), tokenizer, build(tokenizer, 2), max_steps=1)
    assert fmt2.cl_label_mode == "gold"
