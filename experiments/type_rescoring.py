"""Are type errors fixable by letting the model compare types? Re-type a benchmark unit's predicted spans.

    CLLMFS_DATA_DIR=../shared/data python experiments/type_rescoring.py \
        --run runs/benchmark-smollm2/runs/conll2003/k5/seed0/cllmfs \
        --predictions runs/benchmark-smollm2/units/intra-conll2003/k5/seed0/cllmfs.predictions.jsonl \
        --dataset conll2003

Extraction asks one type at a time, so one span can come back under several types, and most wrong predictions on
CoNLL'03 have exact boundaries but the wrong type. This probe keeps the predicted boundaries and gives each distinct
span the single type whose prompt makes the answer `<<< span >>>` most likely (teacher-forced log-probability of the
completion, scored exactly as training tokenises it). It prints span F1 before and after, and the oracle that keeps,
per span, the gold type when any prediction had it. Appends to experiments/results/type_rescoring.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.format import build_completion, build_prompt
from cllmfs_trainer.data.io import Span
from cllmfs_trainer.data.sampling import query_subset
from cllmfs_trainer.data.sft import IGNORE_INDEX, SFTSample, tokenize_sample
from cllmfs_trainer.evaluation.metrics import error_breakdown, span_scores
from cllmfs_trainer.inference.generate import EntityExtractor


@torch.no_grad()
def completion_logprobs(model, tokenizer, samples: list[SFTSample], batch_size: int = 32) -> list[float]:
    """Sum of log p(completion token) given the prompt, per sample (right-padded batches)."""
    scores = []
    for start in range(0, len(samples), batch_size):
        rows = [tokenize_sample(s, tokenizer) for s in samples[start : start + batch_size]]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), IGNORE_INDEX)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        targets = labels[:, 1:]
        logp = logits[:, :-1].float().log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.extend((logp * (targets != IGNORE_INDEX)).sum(-1).tolist())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the unit's trained run folder")
    parser.add_argument("--predictions", required=True, help="the unit's predictions JSONL (ids in query order)")
    parser.add_argument("--dataset", required=True, help="registry key of the query's dataset")
    parser.add_argument("--query-size", type=int, default=100)
    parser.add_argument("--query-seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results/type_rescoring.json")
    args = parser.parse_args()

    dataset = get_dataset(args.dataset)
    query = query_subset(dataset.load("test").sentences, args.query_size, args.query_seed)
    lines = Path(args.predictions).read_text(encoding="utf-8").splitlines()
    if len(lines) != len(query):
        raise SystemExit(f"{args.predictions}: {len(lines)} predictions for a query of {len(query)} sentences")
    generated = [[Span(*span) for span in json.loads(line)["spans"]] for line in lines]

    extractor = EntityExtractor.from_run(args.run, types=dataset.types)
    types, started = list(dataset.types), time.perf_counter()
    rescored, oracle = [], []
    for sentence, spans in zip(query, generated):
        candidates = sorted({(s.start, s.end) for s in spans})
        prompt_types = {t.label: build_prompt(sentence.text, t, extractor.prompt_format) for t in types}
        samples = [
            SFTSample(prompt_types[t.label], build_completion([" ".join(sentence.tokens[a:b])]), t.label, 0)
            for a, b in candidates
            for t in types
        ]
        scores = completion_logprobs(extractor.model, extractor.tokenizer, samples) if samples else []
        best = [max(range(len(types)), key=lambda i, n=n: scores[n * len(types) + i]) for n in range(len(candidates))]
        rescored.append([Span(a, b, types[i].label) for (a, b), i in zip(candidates, best)])
        # The oracle keeps the gold type of a span when some prediction had it, else the first predicted type.
        predicted_types = defaultdict(list)
        for span in spans:
            predicted_types[span.start, span.end].append(span.type)
        gold = {(s.start, s.end): s.type for s in sentence.spans}
        oracle.append(
            [
                Span(a, b, gold[a, b] if gold.get((a, b)) in predicted_types[a, b] else predicted_types[a, b][0])
                for a, b in candidates
            ]
        )

    gold_spans = [s.spans for s in query]
    record = {"run": args.run, "dataset": args.dataset, "query_size": len(query), "seconds": 0.0, "variants": {}}
    for name, predicted in (("as_generated", generated), ("rescored", rescored), ("oracle_one_type", oracle)):
        scores = span_scores(gold_spans, predicted)
        record["variants"][name] = {
            **{k: scores[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")},
            "per_type_f1": {t: v["f1"] for t, v in scores["per_type"].items()},
            "errors": error_breakdown(gold_spans, predicted),
        }
        print(
            f"{name:14s} P {scores['precision']:.4f} R {scores['recall']:.4f} F1 {scores['f1']:.4f}",
            {t: round(v["f1"], 3) for t, v in scores["per_type"].items()},
        )
    record["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    runs = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else []
    out.write_text(json.dumps([*runs, record], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
