"""Collect bench/gpu/gpu_check.sh's training parts into one JSON file and print them as a table.

    python bench/gpu/gpu_summary.py WORK RESULTS SHAPE STEPS OUT_JSON

WORK holds `<part>.status.json` (exit code, wall time) and each part's run folder; a run folder's
`train_results.json` gives train time, steps/s, samples/s and peak GPU memory, and its run record the
distributed type that really ran (DEEPSPEED, FSDP, or a silent fallback to NO).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cllmfs_trainer.run_folder import RunFolder


def main() -> None:
    work, results, shape, steps, out = sys.argv[1:6]
    work, results = Path(work), Path(results)
    rows = []
    for status in sorted(work.glob("*.status.json")):
        row = json.loads(status.read_text())
        metrics = work / row["part"] / "train_results.json"
        if RunFolder.exists(work / row["part"]):
            row["distributed_type"] = RunFolder.load(work / row["part"], check_weights=False).distributed_type
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            row.update(
                train_s=m.get("train_runtime"),
                steps_per_s=m.get("train_steps_per_second"),
                samples_per_s=m.get("train_samples_per_second"),
                peak_gpu_memory_gib=m.get("peak_gpu_memory_gib"),
            )
        rows.append(row)
    gpu = results / "gpu.txt"
    summary = {
        "shape": shape,
        "steps": int(steps),
        "gpu": gpu.read_text().strip() if gpu.is_file() else None,
        "parts": rows,
    }
    Path(out).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{'part':8s} {'rc':>3s} {'wall s':>7s} {'train s':>8s} {'steps/s':>8s} {'samples/s':>9s} {'peak GiB':>8s}"
        "  launcher"
    )
    for r in rows:
        cells = [r.get(k) for k in ("train_s", "steps_per_s", "samples_per_s", "peak_gpu_memory_gib")]
        text = " ".join(f"{c:>8}" if c is not None else f"{'-':>8}" for c in cells)
        print(f"{r['part']:8s} {r['rc']:>3} {r['wall_s']:>7} {text}  {r.get('distributed_type') or '-'}")


if __name__ == "__main__":
    main()
