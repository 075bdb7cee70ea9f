"""A run folder that cannot predict correctly is refused, at save and at load, with one line: no optimizer step,
NaN or infinite weights, a corrupt adapter file."""

import json
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.locks import LOCK_FILE, claim_folder
from cllmfs_trainer.models.embedded import verify_converted_model
from cllmfs_trainer.models.wheels import PROVENANCE_FILE, file_records, is_complete
from cllmfs_trainer.run_folder import RunFolder, RunFolderError
from cllmfs_trainer.scripts.train import check_trained, resolve_resume
from cllmfs_trainer.training.checkpoints import latest_complete_checkpoint

PERSON = EntityType("person", "person", "names of people")


def adapter_run(tmp_path, tensors, **extra):
    """A run record with an adapter config and the given adapter tensors."""
    run = RunFolder(tmp_path, "default", "adapter", 1, "intra", "wnut17", 5, [PERSON], [PERSON], extra=extra)
    run.save()
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    return run


def test_a_trained_adapter_loads(tmp_path):
    adapter_run(tmp_path, {"lora_A": torch.ones(2, 4)}, train_steps=3)
    assert RunFolder.load(tmp_path).extra["train_steps"] == 3


@pytest.mark.parametrize("steps", [0, -1, "3"])
def test_a_run_without_an_optimizer_step_is_refused(tmp_path, steps):
    adapter_run(tmp_path, {"lora_A": torch.ones(2, 4)}, train_steps=steps)
    with pytest.raises(RunFolderError, match="the run was never trained"):
        RunFolder.load(tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_infinite_adapter_weights_are_refused(tmp_path, value):
    weights = torch.ones(2, 4)
    weights[1, 2] = value
    adapter_run(tmp_path, {"a.lora_A": torch.ones(2, 4), "b.lora_B": weights}, train_steps=5)
    with pytest.raises(RunFolderError, match=r"1 weight tensor\(s\) hold NaN or infinite values \(first: b.lora_B\)"):
        RunFolder.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign"])
def test_a_corrupt_adapter_file_is_one_line(tmp_path, damage):
    adapter_run(tmp_path, {"lora_A": torch.ones(64, 64)}, train_steps=5)
    path = tmp_path / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "foreign": b"PK\x03\x04 not weights"}[damage])
    with pytest.raises(RunFolderError, match="not a readable safetensors file") as err:
        RunFolder.load(tmp_path)
    assert "\n" not in str(err.value)
    assert RunFolder.load(tmp_path, check_weights=False).weights == "adapter"  # the record itself still reads


def fake_trainer(steps, weights):
    model = torch.nn.Linear(4, 2)
    model.weight.data = weights
    model.bias.requires_grad_(False)
    return SimpleNamespace(
        args=SimpleNamespace(output_dir="runs/x", learning_rate=1e9),
        state=SimpleNamespace(global_step=steps),
        model=model,
    )


def test_check_trained_refuses_no_step_and_diverged_weights():
    check_trained(fake_trainer(3, torch.ones(2, 4)))
    with pytest.raises(UserError, match="runs/x: the training made no optimizer step; no run folder was written"):
        check_trained(fake_trainer(0, torch.ones(2, 4)))
    with pytest.raises(
        UserError,
        match=r"runs/x: the training diverged: 1 of 1 trained weight tensors .* lower learning_rate \(1000000000.0\)",
    ):
        check_trained(fake_trainer(3, torch.full((2, 4), float("nan"))))


# --- resuming: only complete checkpoints count ----------------------------------------------------------------------


def checkpoint(output_dir, step, drop=(), truncate=()):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"lora_A": torch.ones(2, 2)}, folder / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({"state": torch.arange(1000)}, folder / name)
    for name in truncate:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    for name in drop:
        (folder / name).unlink()
    return folder


def test_resume_takes_the_newest_complete_checkpoint_and_names_the_skipped_ones(tmp_path, caplog):
    good = checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 20, drop=["optimizer.pt", "scheduler.pt"])
    checkpoint(tmp_path, 30, truncate=["optimizer.pt"])
    checkpoint(tmp_path, 40, drop=["trainer_state.json"])  # the save was cut before its last file
    assert latest_complete_checkpoint(tmp_path) == str(good)
    skipped = [r.getMessage() for r in caplog.records]
    assert any("checkpoint-40 (trainer_state.json missing)" in m for m in skipped)
    assert any("checkpoint-30 (optimizer.pt is truncated" in m for m in skipped)
    assert any("checkpoint-20 (optimizer.pt, scheduler.pt missing)" in m for m in skipped)
    assert latest_complete_checkpoint(tmp_path / "absent") is None


def test_resume_refuses_an_incomplete_checkpoint_it_is_given(tmp_path):
    folder = checkpoint(tmp_path, 5, truncate=["scheduler.pt"])
    args = SimpleNamespace(resume_from_checkpoint=str(folder), output_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"checkpoint-5 is incomplete \(scheduler.pt is truncated"):
        resolve_resume(args)
    (folder / "scheduler.pt").unlink()
    checkpoint(tmp_path, 6, drop=["adapter_model.safetensors"])
    args.resume_from_checkpoint = "true"
    with pytest.raises(UserError, match="holds no complete checkpoint-<step> folder"):
        resolve_resume(args)


# --- one writer per run folder ---------------------------------------------------------------------------------------


def test_a_second_writer_of_a_folder_stops_with_the_holder_named(tmp_path):
    with claim_folder(tmp_path / "run"):
        with pytest.raises(
            UserError, match=rf"output_dir {tmp_path / 'run'} is in use by another run \(pid {os.getpid()} on "
        ):
            with claim_folder(tmp_path / "run"):
                pass
        assert (tmp_path / "run" / LOCK_FILE).is_file()
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released when the block ends
    with claim_folder(tmp_path / "run"):  # and free again
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(
        f"pid {dead.stdout.strip()} on {socket.gethostname()} since 2026-01-01 00:00:00\n"
    )
    with claim_folder(tmp_path):
        assert f"pid {os.getpid()} " in (tmp_path / LOCK_FILE).read_text()
    (tmp_path / LOCK_FILE).write_text("pid 1 on another-host since 2026-01-01 00:00:00\n")
    with pytest.raises(UserError, match="another-host"):  # another host's process cannot be checked from here
        with claim_folder(tmp_path):
            pass


def test_training_into_a_finished_run_folder_needs_overwrite(tiny_run_inputs, tmp_path):
    from test_recipes import tiny_args

    from cllmfs_trainer.scripts import train

    args = tiny_args(tiny_run_inputs, tmp_path / "run") + ["--max_steps", "1"]
    train.main(*train.parse_args(args))
    first = (tmp_path / "run" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="holds a finished run \\(cllmfs_run.json\\); pass --overwrite true"):
        train.main(*train.parse_args(args + ["--seed", "5"]))
    assert (tmp_path / "run" / "adapter_model.safetensors").read_bytes() == first  # untouched
    train.main(*train.parse_args(args + ["--seed", "5", "--overwrite", "true"]))
    assert not (tmp_path / "run" / LOCK_FILE).exists()


# --- the converted default model: trusted by its recorded files, not by its provenance alone --------------------------


def converted_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.arange(64, dtype=torch.float32)}, folder / "model.safetensors")
    record = {"wheel_sha256": "abc", "format": 1, "files": file_records(folder)}
    (folder / PROVENANCE_FILE).write_text(json.dumps(record))
    return folder


def test_four_changed_bytes_in_the_cached_model_are_found(tmp_path, caplog):
    folder = converted_folder(tmp_path)
    expected = {"wheel_sha256": "abc", "format": 1}
    assert is_complete(folder, expected) and verify_converted_model(folder) == []
    weights = folder / "model.safetensors"
    info = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"  # the same size, a NaN where a weight was
    weights.write_bytes(bytes(data))
    assert not is_complete(folder, expected)  # the modification time gave it away: it is converted again
    assert "model.safetensors changed since it was converted" in caplog.text
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))  # a change that keeps size and time
    assert is_complete(folder, expected)  # the cheap check at every load cannot see it ...
    assert not is_complete(folder, expected, verify=True)  # ... the hash can
    assert verify_converted_model(folder) == ["model.safetensors"]


def test_a_conversion_recorded_before_file_hashes_is_upgraded_once(tmp_path):
    folder = converted_folder(tmp_path)
    (folder / PROVENANCE_FILE).write_text(json.dumps({"wheel_sha256": "abc", "format": 1}))
    assert is_complete(folder, {"wheel_sha256": "abc"})
    assert set(json.loads((folder / PROVENANCE_FILE).read_text())["files"]) == {"config.json", "model.safetensors"}
    with pytest.raises(UserError, match="no cllmfs_provenance.json with file hashes"):
        verify_converted_model(tmp_path)


def test_cllmfs_model_verify_hashes_the_default_model(smollm2_path, capsys):
    from cllmfs_trainer import cli

    assert cli.main(["model", "--verify"]) == 0
    assert capsys.readouterr().out.strip() == f"{smollm2_path}: every recorded file matches its sha256"


@pytest.mark.parametrize(
    "name, text, words",
    [
        (
            "adapter_config.json",
            '{"peft_type": "LO',
            "invalid JSON (Unterminated string starting at column 15): the adapter file is damaged",
        ),
        ("adapter_config.json", '{"peft_type": "PREFIX_TUNING"}', "peft_type is 'PREFIX_TUNING', not LORA"),
        ("adapter_config.json", "[1, 2]", "the adapter file holds list, not a JSON object"),
        ("adapter_config.json", "[" * 100_000, "nested too deeply to read: the adapter file is damaged"),
    ],
)
def test_a_damaged_adapter_config_is_one_line(tmp_path, name, text, words):
    adapter_run(tmp_path, {"lora_A": torch.ones(2, 2)}, train_steps=1)
    (tmp_path / name).write_text(text)
    with pytest.raises(RunFolderError, match=re.escape(words)) as err:
        RunFolder.load(tmp_path)
    assert "\n" not in str(err.value)


def test_a_damaged_tokenizer_file_is_one_line(tmp_path):
    run = adapter_run(tmp_path, {"lora_A": torch.ones(2, 2)}, train_steps=1)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_bytes(b'{"model": {"vocab": \xff')
    with pytest.raises(RunFolderError, match="tokenizer.json:1: byte 0xff .*: the tokenizer file is damaged"):
        run.check_tokenizer()
