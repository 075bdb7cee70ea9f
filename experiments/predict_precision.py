"""Does predicting in bfloat16 change what a trained run extracts? F1 and time, float32 against bfloat16.

    python experiments/predict_precision.py --runs runs/fit-budget/pointer_steps_80 [--dataset wnut17] [--size 100]

Each run folder predicts the same fixed random `--size` sentences of the dataset's **dev** split (query seed 0) twice,
with its merged model cast to float32 and to bfloat16, in one process. Per run the script records both span scores,
both wall times and how many sentences got the same spans. Results go to experiments/results/predict_precision.json
(one record per run, replaced when the run is measured again). Times are comparable only within one record: both
are measured side by side on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders")
    parser.add_argument("--dataset", default="wnut17", help="registry key; its dev split is predicted")
    parser.add_argument("--size", type=int, default=100, help="dev sentences per run")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "predict_precision.json")
    return parser


def measure(run_dir: str, dataset: str, size: int) -> dict:
    """Scores, seconds and agreement of one run's predictions in each dtype."""
    from cllmfs_trainer.data.registry import get_dataset
    from cllmfs_trainer.data.sampling import query_subset
    from cllmfs_trainer.evaluation import span_scores
    from cllmfs_trainer.inference.generate import EntityExtractor

    info = get_dataset(dataset)
    query = query_subset(info.load("dev").sentences, size, 0)
    record: dict = {"run": run_dir, "dataset": dataset, "split": "dev", "sentences": len(query)}
    spans = {}
    for dtype in DTYPES:
        extractor = EntityExtractor.from_run(run_dir, types=info.types, dtype=dtype)
        extractor.predict(query[:2])  # warm-up: first calls pay for kernel selection
        start = time.perf_counter()
        spans[dtype] = [p.spans for p in extractor.predict(query)]
        seconds = time.perf_counter() - start
        scores = span_scores([s.spans for s in query], spans[dtype])
        record[dtype] = {"seconds": round(seconds, 1), **{k: scores[k] for k in ("precision", "recall", "f1")}}
    same = sum(sorted(a) == sorted(b) for a, b in zip(*spans.values()))
    record["same_spans_sentences"] = same
    record["bfloat16_speedup"] = round(record["float32"]["seconds"] / record["bfloat16"]["seconds"], 2)
    return record


def main(args: argparse.Namespace) -> list[dict]:
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    for run_dir in args.runs:
        record = measure(run_dir, args.dataset, args.size)
        print(json.dumps(record))
        results = [r for r in results if (r["run"], r["dataset"]) != (run_dir, args.dataset)] + [record]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main(make_parser().parse_args())
