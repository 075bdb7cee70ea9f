"""Does a trained run find people, places and companies in clean, easy sentences?

    python experiments/easy_sentences.py --run runs/smollm2-wnut17-intra

The 22 hand-written sentences in tests/data/easy_sentences.jsonl hold 49 entities (WNUT'17 labels: person,
location, corporation). The run predicts them with those three types; the script prints span scores (exact
boundaries and type) and every prediction, and writes experiments/results/easy_sentences.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ROOT / "tests" / "data" / "easy_sentences.jsonl"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "easy_sentences.json")
    return parser


def main(args: argparse.Namespace) -> dict:
    from cllmfs_trainer.data import read_jsonl
    from cllmfs_trainer.evaluation import span_scores
    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.run_folder import RunFolder

    gold = read_jsonl(SENTENCES).sentences
    labels = sorted({span.type for sentence in gold for span in sentence.spans})
    types = [t for t in RunFolder.load(args.run).test_types if t.label in labels]
    extractor = EntityExtractor.from_run(args.run, types=types)
    predicted = [p.spans for p in extractor.predict(gold)]
    scores = span_scores([s.spans for s in gold], predicted)
    found = [
        {
            "text": s.text,
            "gold": [[s.span_text(x), x.type] for x in s.spans],
            "predicted": [[s.span_text(x), x.type] for x in p],
        }
        for s, p in zip(gold, predicted)
    ]
    report = {
        "command": f"python experiments/easy_sentences.py --run {args.run}",
        "types": labels,
        "gold_entities": scores["tp"] + scores["fn"],
        "found_with_type": scores["tp"],
        "span": {k: scores[k] for k in ("precision", "recall", "f1")},
        "sentences": found,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in found:
        print(row["text"], "->", row["predicted"])
    total = scores["tp"] + scores["fn"]
    print(f"found {scores['tp']} of {total} entities with the right type; span F1 {scores['f1']:.3f}")
    return report


if __name__ == "__main__":
    main(make_parser().parse_args())
