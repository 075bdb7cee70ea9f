"""Choose the prediction options `end_penalty` and `one_type_per_span` on dev: span scores of trained runs.

    CLLMFS_DATA_DIR=<data> python experiments/end_penalty.py \
        --runs runs/dev-sweep-smollm2/runs/conll2003/k5/seed{0,1,2}/pointer_80_speed --dataset conll2003

Under pointer answers a model that has seen mostly empty samples ends its answer where an entity is: on dev its
precision is well above its recall. `end_penalty` (`EntityExtractor`, `cllmfs predict --end-penalty`, the recipes'
`end_penalty`) subtracts a constant from the score of ending wherever another entity could start, which moves that
decision without retraining. `--one-type-per-span` also predicts each penalty with `one_type_per_span`, which keeps
one type per span where several types' answers named it. Each run predicts the same `--size` dev sentences as the
dev sweep (query seed 0) once per variant, in one process and one precision. Results go to
experiments/results/end_penalty.json, one record per (run, dataset, penalty, type resolution), saved as each
finishes, so an interrupted call resumes where it stopped; the table at the end (or `--summary-only`) gives
P / R / F1 per run and variant, and the paired difference from penalty 0 without type resolution.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PENALTIES = (0.0, 1.0, 2.0, 3.0, 4.0)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders")
    parser.add_argument("--dataset", required=True, help="registry key; its dev split is predicted")
    parser.add_argument("--penalties", nargs="+", type=float, default=list(PENALTIES), help="nats")
    parser.add_argument("--size", type=int, default=300, help="dev sentences per run (the dev sweep's query size)")
    parser.add_argument("--dtype", default="auto", help="prediction precision: auto (CPU probe), float32, bfloat16")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "end_penalty.json")
    parser.add_argument(
        "--one-type-per-span",
        action="store_true",
        help="also predict every penalty with one_type_per_span (pointer-answer runs), paired with the plain one",
    )
    parser.add_argument(
        "--skip-plain",
        action="store_true",
        help="with --one-type-per-span, predict only with it (runs whose recipe already keeps one type per span)",
    )
    parser.add_argument("--summary-only", action="store_true", help="only print the table of what is measured")
    return parser


def summary(results: list[dict], dataset: str, runs: list[str]) -> str:
    """Markdown: per penalty (and type resolution), each run's P / R / F1, the mean F1 ± std and the paired difference
    from the reference: penalty 0 without type resolution, or the first variant measured when that one is not."""
    import statistics

    scores = {
        (r["run"], r["end_penalty"], r.get("one_type_per_span", False)): r
        for r in results
        if r["dataset"] == dataset and r["run"] in runs
    }
    variants = sorted({(penalty, one) for _, penalty, one in scores})
    names = " | ".join(Path(run).parent.name for run in runs)
    reference = (0.0, False) if (0.0, False) in variants else variants[0] if variants else (0.0, False)
    lines = [
        f"| end_penalty | one type per span | {names} | mean F1 ± std | F1 - penalty {reference[0]:g} | ahead |",
        "|---" * (len(runs) + 5) + "|",
    ]
    for penalty, one in variants:
        cells = [scores.get((run, penalty, one)) for run in runs]
        f1s = [c["f1"] for c in cells if c]
        base = [scores.get((run, *reference)) for run in runs]
        diffs = [c["f1"] - b["f1"] for c, b in zip(cells, base) if c and b]
        mean = f"{statistics.mean(f1s):.3f} ± {statistics.stdev(f1s):.3f}" if len(f1s) > 1 else "-"
        is_reference = (penalty, one) == reference
        diff = "" if is_reference else f"{statistics.mean(diffs):+.3f}" if diffs else "-"
        ahead = "" if is_reference else f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
        shown = [f"{c['precision']:.2f} / {c['recall']:.2f} / {c['f1']:.3f}" if c else "-" for c in cells]
        lines.append(f"| {penalty:g} | {'yes' if one else 'no'} | {' | '.join(shown)} | {mean} | {diff} | {ahead} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict]:
    from cllmfs_trainer.data.registry import get_dataset
    from cllmfs_trainer.data.sampling import query_subset
    from cllmfs_trainer.evaluation import span_scores
    from cllmfs_trainer.evaluation.metrics import error_breakdown
    from cllmfs_trainer.inference.generate import EntityExtractor

    results = json.loads(args.out.read_text()) if args.out.exists() else []
    if args.summary_only:
        print(summary(results, args.dataset, args.runs))
        return results
    done = {(r["run"], r["dataset"], r["end_penalty"], r.get("one_type_per_span", False)) for r in results}
    if args.skip_plain and not args.one_type_per_span:
        raise SystemExit("--skip-plain needs --one-type-per-span: there would be nothing to predict")
    resolutions = ((True,) if args.skip_plain else (False, True)) if args.one_type_per_span else (False,)
    info = get_dataset(args.dataset)
    query = query_subset(info.load("dev").sentences, args.size, 0)
    gold = [s.spans for s in query]
    for run_dir in args.runs:
        todo = [(p, one) for p in args.penalties for one in resolutions if (run_dir, args.dataset, p, one) not in done]
        if not todo:
            continue
        extractor = EntityExtractor.from_run(run_dir, types=info.types, dtype=args.dtype)
        for penalty, one in todo:
            extractor.end_penalty, extractor.one_type_per_span = penalty, one
            start = time.perf_counter()
            predicted = [p.spans for p in extractor.predict(query)]
            scores = span_scores(gold, predicted)
            record = {
                "run": run_dir,
                "dataset": args.dataset,
                "split": "dev",
                "sentences": len(query),
                "dtype": str(next(extractor.model.parameters()).dtype).removeprefix("torch."),
                "end_penalty": penalty,
                "one_type_per_span": one,
                "seconds": round(time.perf_counter() - start, 1),
                **{k: scores[k] for k in ("precision", "recall", "f1")},
                "errors": error_breakdown(gold, predicted),
            }
            print(json.dumps(record), flush=True)
            results.append(record)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(summary(results, args.dataset, args.runs))
    return results


if __name__ == "__main__":
    main(make_parser().parse_args())
