"""Real multi-process runs of recipes/train.py on the CPU: DDP with 2 processes (gloo, via torchrun).

`accelerate launch --cpu --num_processes 2` silently runs one process, so these use torchrun; each test checks the
world size the run recorded.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import REPO
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(prefix, root, out, *extra):
    args = [
        *prefix,
        str(REPO / "recipes" / "train.py"),
        str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        "--model_name_or_path",
        str(root / "model"),
        "--support_set",
        str(root / "support.txt"),
        "--n_types",
        "person",
        "--k",
        "1",
        "--max_steps",
        "1",
        "--warmup_steps",
        "0",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--cl_layer",
        "2",
        "--cl_weight",
        "0",
        "--output_dir",
        str(out),
        "--logging_steps",
        "1",
        "--optim",
        "sgd",
        "--learning_rate",
        "0.5",
        "--max_grad_norm",
        "0",
        "--lora_dropout",
        "0",
        "--dtype",
        "float32",  # equal updates are checked to 1e-4: bf16 weights round differently per batch split
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((out / "cllmfs_run.json").read_text())
    return run, load_file(out / "adapter_model.safetensors"), done.stdout + done.stderr


def assert_same_adapter(a, b):
    import torch

    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_two_processes_give_the_single_process_update(tiny_run_inputs, tmp_path):
    root = tiny_run_inputs
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    # No --use_cpu: ContrastiveSFTConfig sets it when torchrun starts several processes on a machine without CUDA.
    ddp_run, ddp, _ = launch(torchrun, root, tmp_path / "ddp", "--per_device_train_batch_size", "2")
    single_run, single, _ = launch([sys.executable], root, tmp_path / "single", "--per_device_train_batch_size", "4")
    assert (ddp_run["world_size"], single_run["world_size"]) == (2, 1)
    assert (ddp_run["distributed_type"], single_run["distributed_type"]) == ("MULTI_CPU", "NO")
    assert_same_adapter(ddp, single)


def test_ddp_with_the_contrastive_term_trains(tiny_run_inputs, tmp_path):
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    run, adapter, _ = launch(
        torchrun,
        tiny_run_inputs,
        tmp_path / "ddp_cl",
        "--per_device_train_batch_size",
        "2",
        "--cl_weight",
        "0.5",
        "--max_steps",
        "2",
        "--use_cpu",
        "true",
    )
    assert run["world_size"] == 2
    import torch

    assert all(torch.isfinite(t).all() for t in adapter.values())


def test_deepspeed_zero2_two_processes_give_the_single_process_update(tiny_run_inputs, tmp_path):
    pytest.importorskip("deepspeed")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    zero_run, zero, _ = launch(
        torchrun,
        tiny_run_inputs,
        tmp_path / "zero2",
        "--per_device_train_batch_size",
        "2",
        "--deepspeed",
        str(REPO / "ds_configs" / "zero2.json"),
    )
    single_run, single, _ = launch(
        [sys.executable], tiny_run_inputs, tmp_path / "single", "--per_device_train_batch_size", "4"
    )
    assert (zero_run["world_size"], zero_run["distributed_type"], single_run["world_size"]) == (2, "DEEPSPEED", 1)
    assert_same_adapter(zero, single)


def test_deepspeed_zero3_with_the_contrastive_term(tiny_run_inputs, tmp_path):
    """ZeRO-3 partitions the weights and gathers each layer around its forward; the noised forward of the contrastive
    term ends early (at the contrastive layer) by raising from a hook. That partial forward must not break the next
    full one, the backward, or the adapter save.

    One process: on CPU, accelerate does not initialise DeepSpeed's communication layer, so `zero.Init` at model
    load would see world size 1 in a multi-process run and reject the batch size (on GPUs it does; ZeRO-2 initialises
    it later and runs with 2 processes above)."""
    pytest.importorskip("deepspeed")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        "--master_port",
        str(free_port()),
    ]
    cl = ("--per_device_train_batch_size", "4", "--cl_weight", "0.5", "--max_steps", "2")
    zero_run, zero, log = launch(
        torchrun, tiny_run_inputs, tmp_path / "zero3", "--deepspeed", str(REPO / "ds_configs" / "zero3.json"), *cl
    )
    _, single, _ = launch([sys.executable], tiny_run_inputs, tmp_path / "single", *cl)
    import torch

    assert (zero_run["world_size"], zero_run["distributed_type"]) == (1, "DEEPSPEED")
    assert "'cl_loss'" in log and "'cl_pos_sim'" in log
    # The saved adapter is whole (gathered from the partitions), finite and trained (LoRA B starts at zero).
    assert {k: v.shape for k, v in zero.items()} == {k: v.shape for k, v in single.items()}
    assert all(torch.isfinite(t).all() for t in zero.values())
    assert all(t.abs().sum() > 0 for k, t in zero.items() if "lora_B" in k)
