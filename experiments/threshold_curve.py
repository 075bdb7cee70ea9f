"""The precision-recall curve of the entity scores on dev, and the threshold that maximises F1.

    CLLMFS_DATA_DIR=<data> python experiments/threshold_curve.py \
        --runs runs/dev-prior/runs/wnut17/k5/seed{0,1}/cllmfs_prior --dataset wnut17 --size 300

Each run predicts the same `--size` dev sentences (query seed 0, as the dev sweeps) once, with scores and no
threshold; every threshold is then applied to those predictions (a threshold only drops entities: it never changes
the others), and span P / R / F1 are computed over all runs' predictions together (micro over runs). Writes
experiments/results/threshold_curve_<dataset>.json and the figure docs/images/threshold_curve_<dataset>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = [round(0.05 * i, 2) for i in range(20)]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--size", type=int, default=300, help="dev sentences (query seed 0)")
    parser.add_argument("--dtype", default="bfloat16")
    return parser


def main(args: argparse.Namespace) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.data.sampling import query_subset
    from cllmfs_trainer.evaluation.metrics import span_scores
    from cllmfs_trainer.inference.generate import EntityExtractor

    dataset = get_dataset(args.dataset)
    query = query_subset(dataset.load("dev").sentences, args.size, 0)
    gold, scored = [], []  # per run and sentence: gold spans, and (span, score) predicted
    for run in args.runs:
        extractor = EntityExtractor.from_run(run, types=dataset.types, dtype=args.dtype)
        for prediction, sentence in zip(extractor.predict(query, progress=True), query):
            gold.append(sentence.spans)
            scored.append([(span, prediction.scores.get(span)) for span in prediction.spans])
    curve = []
    for threshold in THRESHOLDS:
        kept = [[span for span, score in row if score is None or score >= threshold] for row in scored]
        scores = span_scores(gold, kept)
        curve.append({"threshold": threshold, **{k: round(scores[k], 4) for k in ("precision", "recall", "f1")}})
    best = max(curve, key=lambda point: point["f1"])
    result = {
        "command": "python experiments/threshold_curve.py " + " ".join(sys.argv[1:]),
        "runs": args.runs,
        "dataset": args.dataset,
        "dev_sentences": len(query),
        "curve": curve,
        "best": best,
        "no_threshold": curve[0],
    }
    out = ROOT / "experiments" / "results" / f"threshold_curve_{args.dataset}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.plot([p["recall"] for p in curve], [p["precision"] for p in curve], marker="o", markersize=3)
    for point in curve[::4]:
        axes.annotate(f"{point['threshold']:.2f}", (point["recall"], point["precision"]), fontsize=7)
    axes.scatter([best["recall"]], [best["precision"]], color="red", zorder=3, label=f"best F1 {best['f1']:.3f}")
    axes.set(
        xlabel="recall", ylabel="precision", title=f"{args.dataset} dev, {len(query)} sentences x {len(args.runs)} runs"
    )
    axes.legend(loc="lower left")
    axes.grid(alpha=0.3)
    image = ROOT / "docs" / "images" / f"threshold_curve_{args.dataset}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(image, dpi=120)
    print(json.dumps({"best": best, "no_threshold": curve[0]}, indent=2))
    return result


if __name__ == "__main__":
    main(make_parser().parse_args())
