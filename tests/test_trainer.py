import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from trl import SFTConfig, SFTTrainer

from cllmfs_trainer.data import build_sft_dataset, get_dataset
from cllmfs_trainer.models import ensure_pad_token
from cllmfs_trainer.training.collator import ContrastiveDataCollator
from cllmfs_trainer.training.config import ContrastiveSFTConfig
from cllmfs_trainer.training.losses import supervised_contrastive_loss
from cllmfs_trainer.training.trainer import ContrastiveSFTTrainer, LayerCapture, decoder_layers

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tokenizer(request):
    tok = copy.deepcopy(request.getfixturevalue("sp_tokenizer"))
    return ensure_pad_token(tok)


@pytest.fixture(scope="module")
def dataset(tokenizer):
    wnut = get_dataset("wnut17")
    support = wnut.load("dev").sentences[:40]
    # Two types keep the set small; sentences with entities first so every batch has contrastive anchors.
    support = sorted(support, key=lambda s: -len(s.spans))[:8]
    return build_sft_dataset(support, [wnut.type("person"), wnut.type("location")], tokenizer, max_length=160)


def config(tmp_path, **overrides):
    params = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        learning_rate=1e-2,
        seed=0,
        cl_layer=2,
        cl_weight=0.5,
        disable_tqdm=True,
    )
    params.update(overrides)
    return ContrastiveSFTConfig(**params)


def lora(targets=("q_proj", "v_proj"), **kw):
    return LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM", **kw)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --- config -------------------------------------------------------------------------------------------------------


def test_config_defaults_fit_the_cpu_and_the_paper(tmp_path):
    args = ContrastiveSFTConfig(output_dir=str(tmp_path))
    assert args.bf16 is False or torch.cuda.is_available()  # SFTConfig's bf16=True would fail on CPU
    assert (args.cl_weight, args.cl_layer, args.cl_noise_site) == (0.001, 26, "embeddings")
    assert args.dataset_kwargs == {"skip_prepare_dataset": True} and args.remove_unused_columns is False


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("cl_weight", -1.0, "cl_weight must be >= 0"),
        ("cl_layer", 0, "cl_layer must be an integer >= 1 or a fraction"),
        ("cl_layer", 2.5, "cl_layer must be an integer >= 1 or a fraction"),
        ("cl_temperature", 0.0, "cl_temperature must be > 0"),
        ("cl_noise_site", "input", "cl_noise_site must be one of"),
        ("cl_noise_distribution", "laplace", "cl_noise_distribution must be one of"),
        ("cl_noise_alpha", -0.1, "cl_noise_alpha must be >= 0"),
        ("cl_max_tokens", 1, "cl_max_tokens must be >= 2"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, words):
    with pytest.raises(ValueError, match=words):
        ContrastiveSFTConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.skipif(__import__("torch").accelerator.is_available(), reason="checks the CPU-only behaviour")
def test_fsdp_on_the_cpu_is_refused_not_silently_ddp(tmp_path, monkeypatch):
    # accelerate sets up FSDP only on accelerators: on the CPU, `--fsdp` would train with plain DDP (checked with a
    # 2-process torchrun run that recorded distributed_type MULTI_CPU), so the config refuses it.
    with pytest.raises(ValueError, match="FSDP .* needs GPUs"):
        ContrastiveSFTConfig(output_dir=str(tmp_path), fsdp="full_shard auto_wrap")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # set by `accelerate launch --config_file ds_configs/fsdp.yaml`
    with pytest.raises(ValueError, match="FSDP .* needs GPUs"):
        ContrastiveSFTConfig(output_dir=str(tmp_path))


def test_cl_layer_fraction_and_depth_check(tmp_path):
    assert ContrastiveSFTConfig(output_dir=str(tmp_path), cl_layer=0.8125).resolve_cl_layer(32) == 26
    assert ContrastiveSFTConfig(output_dir=str(tmp_path), cl_layer=0.8125).resolve_cl_layer(30) == 24
    assert ContrastiveSFTConfig(output_dir=str(tmp_path), cl_layer=26.0).cl_layer == 26
    with pytest.raises(ValueError, match="cl_layer=26 is out of range for a model with 4 layers; use 1..4"):
        ContrastiveSFTConfig(output_dir=str(tmp_path)).resolve_cl_layer(4)


def test_trainer_names_the_depth_when_the_layer_is_out_of_range(tmp_path, tiny_llama, tokenizer, dataset):
    with pytest.raises(ValueError, match="model with 4 layers"):
        ContrastiveSFTTrainer(
            tiny_llama(tokenizer), args=config(tmp_path, cl_layer=26), train_dataset=dataset, processing_class=tokenizer
        )


# --- the hook -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True])
def test_hook_matches_output_hidden_states(tiny_llama, tokenizer, wrap):
    model = tiny_llama(tokenizer)
    if wrap:
        model = get_peft_model(model, lora(ALL_PROJECTIONS))
    ids = torch.randint(3, len(tokenizer), (2, 9))
    reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    layers = decoder_layers(model)
    assert len(layers) == 4
    for index in range(1, 4):  # hidden_states[4] is after the final norm; the hook sees the block's own output
        capture = LayerCapture(layers[index - 1])
        with capture.capture():
            model(input_ids=ids)
        torch.testing.assert_close(capture.output, reference[index], rtol=0, atol=0)
        capture.remove()


def test_stopped_forward_returns_the_same_layer_output(tiny_llama, tokenizer):
    model = tiny_llama(tokenizer)
    ids = torch.randint(3, len(tokenizer), (2, 9))
    capture = LayerCapture(decoder_layers(model)[1])
    with capture.capture():
        model(input_ids=ids)
    full = capture.output
    ran = []
    later = decoder_layers(model)[2].register_forward_hook(lambda *a: ran.append(1))
    with capture.capture(stop=True):
        model(input_ids=ids)
    later.remove()
    assert ran == []  # nothing after the contrastive layer ran
    torch.testing.assert_close(capture.output, full, rtol=0, atol=0)


# --- drop-in guarantee --------------------------------------------------------------------------------------------


def run_sft(tmp_path, model, tokenizer, dataset, **overrides):
    params = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        learning_rate=1e-2,
        seed=0,
        bf16=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    params.update(overrides)
    torch.manual_seed(0)
    trainer = SFTTrainer(
        model, args=SFTConfig(**params), train_dataset=dataset, processing_class=tokenizer, peft_config=lora()
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("compact", [False, True], ids=["trl_head", "compact_head"])
@pytest.mark.parametrize("how", ["cl_weight=0", "no cl_labels"])
def test_without_the_contrastive_term_it_is_sft_trainer(tmp_path, tiny_llama, tokenizer, dataset, how, compact):
    sft = run_sft(tmp_path / "sft", tiny_llama(tokenizer), tokenizer, dataset)
    data = dataset.remove_columns("cl_labels") if how == "no cl_labels" else dataset
    torch.manual_seed(0)
    weight = 0 if how == "cl_weight=0" else 0.5
    ours = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path / "ours", cl_weight=weight, compact_lm_head=compact),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora(),
    )
    ours.train()
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert len(losses(sft)) == 3
    theirs = trainable(sft.model)
    assert trainable(ours.model).keys() == theirs.keys()
    if not compact:  # TRL's own head: bit for bit SFTTrainer
        assert losses(ours) == losses(sft)
        for name, value in trainable(ours.model).items():
            assert torch.equal(value, theirs[name]), name
    else:  # the compact head sums in another order: equal to float32 rounding
        assert losses(ours) == pytest.approx(losses(sft), rel=1e-5)
        for name, value in trainable(ours.model).items():
            torch.testing.assert_close(value, theirs[name], rtol=1e-4, atol=1e-6, msg=name)


# --- the loss in training -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["embeddings", "hidden", "none"])
def test_every_trainable_parameter_moves_and_metrics_are_logged(tmp_path, tiny_llama, tokenizer, dataset, site):
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path, cl_noise_site=site, cl_positive_grad=site == "embeddings"),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(ALL_PROJECTIONS),
    )
    before = trainable(trainer.model)
    trainer.train()
    after = trainable(trainer.model)
    assert len(before) == 4 * 7 * 2  # LoRA A and B on all seven projections of four blocks
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for entry in logs:
        assert {"ce_loss", "cl_loss", "cl_pos_sim", "cl_neg_sim"} <= set(entry)
        assert entry["loss"] == pytest.approx(entry["ce_loss"] + 0.5 * entry["cl_loss"], rel=1e-5)
        assert entry["cl_loss"] > 0


# The paper's Table 3 grid: q, k, v, o, W_in (gate/up), W_out (down) and embed_tokens, one at a time.
TABLE_3_TARGETS = [
    ["q_proj"],
    ["k_proj"],
    ["v_proj"],
    ["o_proj"],
    ["gate_proj", "up_proj"],
    ["down_proj"],
    ["embed_tokens"],
]


@pytest.mark.parametrize("targets", TABLE_3_TARGETS, ids=["+".join(t) for t in TABLE_3_TARGETS])
def test_every_lora_target_of_the_table_3_grid_trains(tmp_path, tiny_llama, tokenizer, dataset, targets):
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path, max_steps=2),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(targets),
    )
    before = trainable(trainer.model)
    trainer.train()
    after = trainable(trainer.model)
    assert before and all(not torch.equal(before[n], after[n]) for n in before)


def test_lora_on_embeddings_and_gradient_checkpointing_train(tmp_path, tiny_llama, tokenizer, dataset):
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path, gradient_checkpointing=True, max_steps=2),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(["embed_tokens", "gate_proj", "down_proj"]),
    )
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def batch_of(dataset, tokenizer, rows):
    return ContrastiveDataCollator(pad_token_id=tokenizer.pad_token_id)([dataset[i] for i in rows])


def grads_after_one_loss(trainer, batch, seed=0):
    model = trainer.model
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("site", ["embeddings", "hidden"])
def test_gradients_equal_with_and_without_checkpointing(tmp_path, tiny_llama, tokenizer, dataset, site):
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        trainer = ContrastiveSFTTrainer(
            tiny_llama(tokenizer),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora(ALL_PROJECTIONS),
            args=config(tmp_path, gradient_checkpointing=checkpointing, cl_noise_site=site, cl_positive_grad=True),
        )
        trainer.current_gradient_accumulation_steps = 1
        results.append(grads_after_one_loss(trainer, batch_of(dataset, tokenizer, range(4))))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-7, msg=name)


def test_gradient_accumulation_matches_a_hand_computed_update(tmp_path, tiny_llama, tokenizer, dataset):
    """Batch 1 x 4 accumulation steps, one SGD step, against the same objective written out by hand:
    CE summed over all completion tokens / their count, plus cl_weight * the mean of the 4 micro-batch CL terms,
    the CL term computed from `output_hidden_states` (independently of the hook)."""
    weight, lr, layer = 0.5, 0.1, 2
    four = dataset.select(range(4))  # exactly one optimizer step: the update cannot depend on the sample order
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        train_dataset=four,
        processing_class=tokenizer,
        peft_config=lora(ALL_PROJECTIONS),
        args=config(
            tmp_path,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=4,
            max_steps=1,
            optim="sgd",
            learning_rate=lr,
            lr_scheduler_type="constant",
            max_grad_norm=0,
            weight_decay=0.0,
            cl_noise_site="none",
            cl_max_tokens=None,
            cl_weight=weight,
            cl_layer=layer,
        ),
    )
    # A separate copy of the starting point (a deepcopy would share the forward that TRL patches onto the model).
    reference = get_peft_model(tiny_llama(tokenizer), lora(ALL_PROJECTIONS))
    reference.load_state_dict(trainer.model.state_dict())
    trainer.train()

    micro = [batch_of(four, tokenizer, [i]) for i in range(4)]
    total_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    objective = 0.0
    for b in micro:
        out = reference(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        logits, labels = out.logits[:, :-1], b["labels"][:, 1:]
        ce_sum = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        mask = b["cl_labels"] >= 0
        cl = supervised_contrastive_loss(out.hidden_states[layer][mask], b["cl_labels"][mask], temperature=0.07)
        objective = objective + ce_sum / total_tokens + weight * cl.loss / 4
    objective.backward()
    with torch.no_grad():
        expected = {n: p - lr * p.grad for n, p in reference.named_parameters() if p.requires_grad}
    got = trainable(trainer.model)
    moved = max((expected[n] - p).abs().max().item() for n, p in reference.named_parameters() if p.requires_grad)
    assert moved > 0
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pdb_times_gas_invariance_of_the_ce_term(tmp_path, tiny_llama, tokenizer, dataset):
    """8 x 1 and 1 x 8 give the same update. (The contrastive term is a batch-level quantity, so it is only
    defined per micro-batch; its accumulation is checked against the hand-computed update above.)"""
    finals = []
    for pdb, gas in ((8, 1), (1, 8)):
        torch.manual_seed(0)
        trainer = ContrastiveSFTTrainer(
            tiny_llama(tokenizer),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora(),
            args=config(
                tmp_path,
                per_device_train_batch_size=pdb,
                gradient_accumulation_steps=gas,
                max_steps=1,
                optim="sgd",
                learning_rate=0.5,
                max_grad_norm=0,
                cl_weight=0,
            ),
        )
        trainer.train()
        finals.append(trainable(trainer.model))
    for name in finals[0]:
        torch.testing.assert_close(finals[0][name], finals[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_batch_without_entities_gives_zero_cl_and_finite_loss(tmp_path, tiny_llama, tokenizer, dataset):
    empty = dataset.filter(lambda row: all(c <= 0 for c in row["cl_labels"]))
    assert len(empty) >= 4
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path, max_steps=2),
        train_dataset=empty,
        processing_class=tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    for entry in (h for h in trainer.state.log_history if "loss" in h):
        assert entry["cl_loss"] == 0.0 and entry["loss"] == pytest.approx(entry["ce_loss"])
        assert "cl_pos_sim" not in entry


def test_evaluate_logs_the_contrastive_metrics(tmp_path, tiny_llama, tokenizer, dataset):
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path, per_device_eval_batch_size=4),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(),
    )
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_ce_loss", "eval_cl_loss"} <= set(metrics)
    assert metrics["eval_loss"] > 0 and metrics["eval_cl_loss"] > 0


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path, tiny_llama, tokenizer, dataset):
    def make(out, **kw):
        torch.manual_seed(0)
        return ContrastiveSFTTrainer(
            tiny_llama(tokenizer),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora(),
            args=config(out, max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2, **kw),
        )

    full = make(tmp_path / "full")
    full.train()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    expected = trainable(full.model)
    for name, value in trainable(resumed.model).items():
        torch.testing.assert_close(value, expected[name], msg=name)
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(full))  # steps 1-2 come from the checkpoint's history


def test_saved_adapter_reloads_to_the_same_outputs(tmp_path, tiny_llama, tokenizer, dataset):
    torch.manual_seed(0)
    trainer = ContrastiveSFTTrainer(
        tiny_llama(tokenizer),
        args=config(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora(),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(tiny_llama(tokenizer), str(tmp_path / "adapter")).eval()
    ids = torch.tensor([dataset[0]["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits)
