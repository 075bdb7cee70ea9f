"""`auto` settings are probed once per training: a resumed training reads back what its first start chose."""

import json
import time

import pytest
from trl import ModelConfig

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.models import precision
from cllmfs_trainer.training import ContrastiveSFTConfig
from cllmfs_trainer.training.cpu import attention_probe, dropout
from cllmfs_trainer.training.cpu.auto_choices import CHOICES_FILE, apply_auto_choices, resolve_auto_choices


def make_args(out, resume=None, **model):
    training = ContrastiveSFTConfig(output_dir=str(out), use_cpu=True, report_to="none")
    training.resume_from_checkpoint = resume
    model = ModelConfig(**{"dtype": "auto", "attn_implementation": "auto", "use_peft": True, **model})
    return training, model


def fake_probes(monkeypatch, dtype, attention, rng):
    asked = []
    monkeypatch.setattr(precision, "probe_cpu_dtype", lambda *a, **k: asked.append("dtype") or dtype)
    monkeypatch.setattr(attention_probe, "probe_cpu_attention", lambda *a, **k: asked.append("attention") or attention)
    monkeypatch.setattr(dropout, "resolve_lora_dropout_rng", lambda choice: asked.append("rng") or rng)
    return asked


def test_a_fresh_training_probes_and_a_resumed_one_reads_the_first_starts_choices(tmp_path, monkeypatch):
    training, model = make_args(tmp_path)
    asked = fake_probes(monkeypatch, "bfloat16", "eager", "numpy")
    choices = resolve_auto_choices(training, model)
    assert choices == {"dtype": "bfloat16", "attn_implementation": "eager", "lora_dropout_rng": "numpy"}
    assert asked == ["dtype", "attention", "rng"]
    # Resolving changes nothing; applying sets each choice on the arguments it belongs to.
    assert (model.dtype, model.attn_implementation, training.lora_dropout_rng) == ("auto", "auto", "auto")
    apply_auto_choices(choices, training, model)
    assert (model.dtype, model.attn_implementation, training.lora_dropout_rng) == ("bfloat16", "eager", "numpy")
    assert json.loads((tmp_path / CHOICES_FILE).read_text())["lora_dropout_rng"] == "numpy"

    # The probes would now choose otherwise; the resumed training keeps the first start's choices.
    checkpoint = tmp_path / "checkpoint-40"
    checkpoint.mkdir()
    training, model = make_args(tmp_path, resume=str(checkpoint))
    asked = fake_probes(monkeypatch, "float32", "sdpa", "torch")
    apply_auto_choices(resolve_auto_choices(training, model), training, model)
    assert asked == []
    assert (model.dtype, model.attn_implementation, training.lora_dropout_rng) == ("bfloat16", "eager", "numpy")

    # A fresh training in the same folder probes again and replaces the file.
    training, model = make_args(tmp_path)
    apply_auto_choices(resolve_auto_choices(training, model), training, model)
    assert (model.dtype, model.attn_implementation, training.lora_dropout_rng) == ("float32", "sdpa", "torch")
    assert json.loads((tmp_path / CHOICES_FILE).read_text())["dtype"] == "float32"


def test_explicit_settings_are_kept_and_need_no_probe(tmp_path, monkeypatch):
    training, model = make_args(tmp_path, dtype="float32", attn_implementation="sdpa", lora_dropout=0.0)
    asked = fake_probes(monkeypatch, "bfloat16", "eager", "numpy")
    # Without LoRA dropout no masks are drawn, so the generator needs no probe either.
    assert resolve_auto_choices(training, model) == {"lora_dropout_rng": "auto"}
    assert asked == [] and (model.dtype, model.attn_implementation) == ("float32", "sdpa")


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "cannot read the resumed training's auto choices"), ('["bfloat16"]', "must hold a JSON object")],
)
def test_a_damaged_choices_file_is_named(tmp_path, monkeypatch, text, message):
    (tmp_path / CHOICES_FILE).write_text(text)
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    training, model = make_args(tmp_path, resume=str(checkpoint))
    fake_probes(monkeypatch, "bfloat16", "eager", "numpy")
    with pytest.raises(UserError, match=f"{CHOICES_FILE}: {message}"):
        resolve_auto_choices(training, model)


def test_a_hopeless_first_call_ends_the_timing_and_a_normal_one_is_timed_in_rounds():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)

    assert precision.best_seconds(slow, repeats=10, give_up_after=0.001) >= 0.02
    assert len(calls) == 1
    calls.clear()
    precision.best_seconds(lambda: calls.append(1), repeats=10, give_up_after=1.0)
    assert len(calls) == 1 + 3 * 10  # warm-up, then three rounds


def test_the_bfloat16_timing_gives_up_at_hopeless_slowdown_times_float32(monkeypatch):
    import torch

    asked = {}

    def fake_seconds(dtype, shape, repeats, give_up_after=None):
        asked[dtype] = give_up_after
        return 0.01 if dtype == torch.float32 else 1.0  # an emulated bfloat16: 0.01x

    monkeypatch.setattr(precision, "seconds_per_matmul", fake_seconds)
    assert precision.cpu_matmul_speedup_bf16.__wrapped__() == pytest.approx(0.01)
    assert asked == {torch.float32: None, torch.bfloat16: pytest.approx(precision.HOPELESS_SLOWDOWN * 0.01)}
