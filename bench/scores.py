"""What the per-entity scores cost: `EntityExtractor.predict` with the greedy loop's log-probabilities on and off.

    python bench/scores.py                                   # the default model, 10 WNUT'17 test sentences x 6 types
    python bench/scores.py --model /path/to/model --sentences 20 --rounds 10 --end-penalty 0

One process, one model, the same prompts: rounds alternate (on, off, then off, on, ...) so that drift of a shared
machine hits both alike. "Off" runs the greedy loop without `token_logprobs` (the loop as it was before scores) and
hands the extractor zeros, so the rest of the path is the same. An end penalty makes an untrained model name
entities, so that answers are as long as a trained model's. Also checks that both give the same spans, and times
`group_scores` (the per-answer walk over the groups) with cProfile. Writes JSON with `--out`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="hub id, local folder, .gguf file or 'default'")
    parser.add_argument("--sentences", type=int, default=10, help="the first N WNUT'17 test sentences")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--end-penalty", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the JSON result here")
    args = parser.parse_args()

    import torch

    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.inference import answers
    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    wnut = get_dataset("wnut17")
    sentences = wnut.load("test").sentences[: args.sentences]
    tokenizer = load_tokenizer(args.model, padding_side="left")
    extractor = EntityExtractor(load_model(args.model), tokenizer, wnut.types, end_penalty=args.end_penalty)
    scored = answers.constrained_greedy

    def unscored(*positional, token_logprobs=None, **keywords):
        ids = scored(*positional, **keywords)
        token_logprobs.extend([0.0] * len(row) for row in ids)
        return ids

    seconds: dict[str, list[float]] = {"scored": [], "unscored": []}
    spans = {}
    for round_index in range(args.rounds):
        order = ("scored", "unscored") if round_index % 2 == 0 else ("unscored", "scored")
        for name in order:
            answers.constrained_greedy = scored if name == "scored" else unscored
            start = time.perf_counter()
            predictions = extractor.predict(sentences)
            seconds[name].append(time.perf_counter() - start)
            spans[name] = [p.spans for p in predictions]
    answers.constrained_greedy = scored
    profile = cProfile.Profile()
    profile.enable()
    extractor.predict(sentences)
    profile.disable()
    timings = pstats.Stats(profile).stats
    result = {
        "model": args.model,
        "prompts": len(sentences) * len(wnut.types),
        "end_penalty": args.end_penalty,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "seconds": seconds,
        "same_spans": spans["scored"] == spans["unscored"],
        "entities": sum(map(len, spans["scored"])),
        "group_scores_seconds": sum(v[3] for k, v in timings.items() if k[2] == "group_scores"),
        "profiled_predict_seconds": sum(v[3] for k, v in timings.items() if k[2] == "predict"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
