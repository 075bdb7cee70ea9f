"""Data-parallel prediction against one process: `cllmfs predict` on the same input, 1 process against N, one
intra-op thread per process, on the same machine in the same run; outputs must be byte for byte the same.

    python bench/data_parallel.py                      # the shipped NER prior on the default model, WNUT'17 types
    python bench/data_parallel.py --run RUN --sentences 200 --processes 2 --rounds 3 --out bench/results/x.json

Without `--run`, a run folder is made from the shipped NER prior (the default model, WNUT'17's six types), so the
bench needs nothing beyond the package. Rounds alternate (1, N, then N, 1, ...) so that drift of a shared machine
hits both alike; each figure is a whole command (process start and model load included), and the medians are
compared. Several processes are started with `torchrun` (gloo between CPU processes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prior_run_folder(folder: Path) -> Path:
    """A run folder of the shipped NER prior on the default model, asked WNUT'17's types."""
    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.models.embedded import materialize_default_model
    from cllmfs_trainer.models.priors import SHIPPED_PRIOR
    from cllmfs_trainer.run_folder import RunFolder

    model = materialize_default_model()
    folder.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(SHIPPED_PRIOR / name, folder / name)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model / name).is_file():
            shutil.copy(model / name, folder / name)
    types = get_dataset("wnut17").types
    run = RunFolder(folder, "default", "adapter", 1, "prior", "wnut17", 0, types, types, answer_format="pointer")
    run.end_penalty, run.one_type_per_span = 3.0, True  # the 5-shot recipe's decoding, which the prior was trained for
    run.extra = {"train_steps": 523}  # the prior's own training (its model card)
    run.save()
    return folder


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def predict_command(processes: int, run: Path, source: Path, output: Path) -> list[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    launcher += ["--master_port", str(port), "-m", "--"]  # `--`: torchrun would read `--run` as its `--run-path`
    options = ["--run", str(run), "--input", str(source), "--output", str(output)]
    return [*launcher, "cllmfs_trainer.cli", "predict", *options]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run folder (default: the shipped prior as one)")
    parser.add_argument("--sentences", type=int, default=120, help="the first N WNUT'17 test sentences")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_parallel.json")
    args = parser.parse_args()

    from cllmfs_trainer.data import get_dataset

    work = Path(tempfile.mkdtemp(prefix="cllmfs_dp_"))
    run = args.run or prior_run_folder(work / "run")
    sentences = get_dataset("wnut17").load("test").sentences[: args.sentences]
    source = work / "in.txt"
    source.write_text("".join(s.text + "\n" for s in sentences), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    seconds: dict[int, list[float]] = {1: [], args.processes: []}
    outputs: dict[int, bytes] = {}
    for round_index in range(args.rounds):
        order = [1, args.processes] if round_index % 2 == 0 else [args.processes, 1]
        for processes in order:
            output = work / f"{processes}.jsonl"
            start = time.perf_counter()
            subprocess.run(predict_command(processes, run, source, output), cwd=REPO, env=env, check=True)
            seconds[processes].append(time.perf_counter() - start)
            outputs[processes] = output.read_bytes()
    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.processes])
    result = {
        "command": "python bench/data_parallel.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "run": str(args.run) if args.run else "the shipped NER prior on the default model, WNUT'17 types",
        "sentences": len(sentences),
        "prompts": len(sentences) * len(get_dataset("wnut17").types),
        "threads_per_process": 1,
        "seconds": {str(k): [round(s, 1) for s in v] for k, v in seconds.items()},
        "median_seconds": {"1": round(one, 1), str(args.processes): round(many, 1)},
        "speedup": round(one / many, 2),
        "same_output": outputs[1] == outputs[args.processes],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
