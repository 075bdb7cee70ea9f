"""What a sentence-level prior sample would save: tokens of the prior's per-type samples against the same samples
with each sentence written once (a sample that asks its types in turn after one shared sentence).

    CLLMFS_DATA_DIR=<data> python experiments/prior_sample_cost.py --sentences 1600

Per-type samples repeat the sentence in every prompt; a shared sample writes it once, but each type still needs its
instruction (with its description) and its answer. The training cost of a 135M model on short rows is close to
proportional to tokens, so the ratio bounds what the sentence-level format could save. Draws the prior's mix as
`recipes/smollm2/ner_prior.yaml` does (absent ratio 1, seed 0); counts with the default model's tokenizer.
"""

from __future__ import annotations

import argparse
import json


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1600, help="the prior's sentence budget (prior_sentences)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--data_dir", default=None, help="folder of the corpora ($CLLMFS_DATA_DIR)")
    return parser


def main(args: argparse.Namespace) -> dict[str, float]:
    from cllmfs_trainer.data.prior import build_prior_samples, draw_prior, load_prior_corpora, prior_type_ids
    from cllmfs_trainer.models import load_tokenizer

    tokenizer = load_tokenizer("default")
    corpora = load_prior_corpora(data_dir=args.data_dir)
    draws = draw_prior(corpora, args.sentences, 1.0, args.seed)
    type_ids = prior_type_ids(corpora)
    result = {"sentences": len(draws)}
    for descriptions in (True, False):
        per_type = shared = samples = 0
        for draw in draws:
            sentence = len(tokenizer(draw.sentence.text, add_special_tokens=False)["input_ids"])
            for sample in build_prior_samples([draw], type_ids, type_descriptions=descriptions):
                completion = tokenizer(sample.completion, add_special_tokens=False)["input_ids"]
                row = len(tokenizer(sample.prompt)["input_ids"]) + len(completion) + 1  # + EOS
                per_type += row
                shared += row - sentence
                samples += 1
            shared += sentence
        key = "descriptions" if descriptions else "names_only"
        result[key] = {"samples": samples, "per_type_tokens": per_type, "shared_tokens": shared}
        result[key]["ratio"] = round(per_type / shared, 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(make_parser().parse_args())
