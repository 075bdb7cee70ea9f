"""Data-parallel prediction: 2 processes (torchrun, gloo on the CPU) write exactly what one process writes."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO
from test_distributed import free_port

from cllmfs_trainer.inference.data_parallel import gather_rows, my_share, process_group

pytestmark = pytest.mark.slow

# 7 lines: the batches of 2 (x the run's one type) do not divide between 2 processes.
TEXTS = [
    "Ann Lee met Bo in Rome",
    "Zoë visited Reykjavík with Carl",
    "",
    "The Acme Corporation hired Dana Scott",
    "Eve",
    "Frank and Grace flew from Paris to Lagos on Monday",
    "Hal wrote to Ida",
]


def test_shares_cover_every_batch_once():
    batches = [[0, 1], [2, 3], [4, 5], [6]]
    shares = [my_share(batches, rank, 3) for rank in range(3)]
    assert sorted(b for share in shares for b in share) == batches
    assert [len(s) for s in shares] == [2, 1, 1]
    assert process_group() == (0, 1) and gather_rows({3: "x"}, 1) == {3: "x"}


def test_two_processes_write_exactly_the_one_process_output(run_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    options = ["--input", str(source), "--batch-size", "2", "--scores", "--dtype", "float32"]
    # One intra-op thread in both runs: another thread count sums floats in another order (the last digits move).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = {}
    for processes in (1, 2):
        # `--` ends torchrun's own options: it would take `--run` for an abbreviation of its `--run-path`.
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command = [*launcher, "--master_port", str(free_port()), "-m", "--", "cllmfs_trainer.cli", "predict"]
        output = tmp_path / f"{processes}.jsonl"
        command += ["--run", str(run_dir), *options, "--output", str(output)]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = (output.read_bytes(), done.stderr)
    assert runs[2][0] == runs[1][0]
    records = [json.loads(line) for line in runs[1][0].decode("utf-8").splitlines()]
    assert [r["text"] for r in records] == TEXTS
    # 6 prompts in 3 batches of 2: alone, a process answers all 3; of two, the main one answers 2 (its bar).
    assert "| 3/3 [" in runs[1][1] and "| 2/2 [" in runs[2][1] and "| 3/3 [" not in runs[2][1]
    # One statistics line per run: only the main process reports.
    assert sum(line.startswith('{"sentences": 7') for line in runs[2][1].splitlines()) == 1
