"""No network at import or on the command line's offline paths: each command runs in a subprocess whose sockets
refuse every non-loopback connection and host lookup (tests/data/no_network/sitecustomize.py) and report it."""

import os
import subprocess
import sys

import pytest
from helpers import REPO

GUARD = REPO / "tests" / "data" / "no_network"


def run_offline(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")])}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CLLMFS_HUB_KERNELS"):
        env.pop(name, None)  # the guard, not an offline switch, must keep these paths off the network
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_guard_reports_a_connection():
    result = run_offline("-c", "import socket; socket.create_connection(('example.org', 443), timeout=1)")
    assert result.returncode != 0 and "NETWORK: create_connection ('example.org', 443)" in result.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import cllmfs_trainer.cli",
        # peft imports bitsandbytes, whose CPU backend asks the Hub for a kernel at import (on AVX512-BF16 CPUs)
        "import cllmfs_trainer, peft, trl; from cllmfs_trainer import ContrastiveSFTTrainer",
    ],
)
def test_importing_the_stack_makes_no_network_call(code):
    result = run_offline("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NETWORK:" not in result.stderr
    assert "trust_remote_code" not in result.stderr and "publisher trust" not in result.stderr


@pytest.mark.parametrize("command", [["predict", "--help"], ["--help"]])
def test_cllmfs_help_makes_no_network_call(command):
    result = run_offline("-m", "cllmfs_trainer.cli", *command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NETWORK:" not in result.stderr + result.stdout


@pytest.mark.slow  # a training and a prediction, each in a fresh subprocess (minutes when the cores are shared)
def test_training_and_predicting_with_a_local_model_make_no_network_call(tiny_run_inputs, tmp_path):
    from test_recipes import tiny_args

    args = tiny_args(tiny_run_inputs, tmp_path / "run") + ["--max_steps", "1", "--lora_dropout", "0"]
    trained = run_offline(str(REPO / "recipes" / "train.py"), *args)
    assert trained.returncode == 0, trained.stderr[-2000:]
    predicted = run_offline(
        "-m", "cllmfs_trainer.cli", "predict", "--run", str(tmp_path / "run"), "--text", "Ann met Bo in Rome",
        "--output", str(tmp_path / "preds.jsonl"),
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "preds.jsonl").read_text().startswith('{"text": "Ann met Bo in Rome"')
    for result in (trained, predicted):
        assert "NETWORK:" not in result.stderr + result.stdout
        assert "trust_remote_code" not in result.stderr
