"""How fast does each candidate recipe fit its support set, and what does it score on dev?

    python experiments/fit_budget.py [--candidates shipped,steps_80] [--support-seeds 0,1,2] [--dev-size 100]

Each candidate is the shipped SmolLM2 recipe (recipes/smollm2/wnut17_intra.yaml, 5-shot WNUT'17, support seed 0)
with a few overrides (and `--support-seeds` other than 0), trained in its own process with the support fit logged at
every epoch's end. After training, `cllmfs evaluate` predicts a fixed random subset of the WNUT'17 **dev** split with
the run (the test split is never read here). Per candidate the script records the fit curve (`support_fit`: step,
epoch and the teacher-forced fit of the samples with and without an entity, and the training seconds until then), the
steps trained, the training wall time, the dev span scores and the span scores on its own support sentences (`support`:
did greedy decoding learn them?).

Results are appended to experiments/results/fit_budget.json after each candidate; a candidate already there is
skipped, so an interrupted run resumes where it stopped (`--redo` trains one again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cllmfs_trainer.run_folder import RunFolder

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "smollm2" / "wnut17_intra.yaml"
OUT = ROOT / "experiments" / "results" / "fit_budget.json"
# name -> overrides of the shipped recipe
CANDIDATES = {
    "steps_240": ["--max_steps", "240"],  # the recipe before it was shortened to 80 steps
    "steps_80": ["--max_steps", "80"],
    "empty_1_steps_80": ["--max_steps", "80", "--empty_ratio", "1.0", "--repeat_entity_samples", "1"],
    "no_dropout_steps_80": ["--max_steps", "80", "--lora_dropout", "0.0"],
    "format2_steps_80": ["--max_steps", "80", "--prompt_format", "2"],
    # length-sorted groups put short (mostly empty) samples of one type together: does mixing them calm the swing?
    "no_bucket_steps_80": ["--max_steps", "80", "--length_bucket_batches", "1"],
    # no opening `<<<`: the first answer token points at the entity or ends (experiments/decision_probe.py)
    "pointer_steps_80": ["--max_steps", "80", "--answer_format", "pointer"],
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names, run in order")
    parser.add_argument("--support-seeds", default="0", help="comma-separated support-set seeds")
    parser.add_argument("--dev-size", type=int, default=100, help="dev sentences scored after training")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fit-budget", help="where the run folders go")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--redo", action="store_true", help="train candidates that already have a result again")
    return parser


def support_scores(run_dir: Path) -> dict:
    """Span scores of a trained run on its own support sentences, asked with its training types."""
    from cllmfs_trainer.data import SupportSet
    from cllmfs_trainer.evaluation import span_scores
    from cllmfs_trainer.inference.generate import EntityExtractor

    run = RunFolder.load(run_dir)
    support = SupportSet.load(run.support_file).sentences
    predicted = [p.spans for p in EntityExtractor.from_run(run_dir, types=run.train_types).predict(support)]
    scores = span_scores([s.spans for s in support], predicted)
    return {key: scores[key] for key in ("precision", "recall", "f1")}


def run_dir_of(name: str, seed: int, args: argparse.Namespace) -> Path:
    return args.runs / (name if seed == 0 else f"{name}-seed{seed}")


def train(name: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and score one candidate on one support set, each in its own process; its record."""
    run_dir = run_dir_of(name, seed, args)
    cmd = [sys.executable, str(ROOT / "recipes" / "train.py"), str(RECIPE), *CANDIDATES[name]]
    cmd += ["--support_seed", str(seed), "--output_dir", str(run_dir), "--disable_tqdm", "true"]
    evaluate = [sys.executable, "-m", "cllmfs_trainer.cli", "evaluate", "--run", str(run_dir), "--dataset", "wnut17"]
    # float32 predictions, as in the candidates measured before bfloat16 prediction was the CPU default
    evaluate += ["--split", "dev", "--query-size", str(args.dev_size), "--dtype", "float32"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    subprocess.run(evaluate, check=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    run = RunFolder.load(run_dir)
    metrics = json.loads(run.metrics_file.read_text())["wnut17"]
    train_results = json.loads((run_dir / "train_results.json").read_text())
    return {
        "candidate": name,
        "support_seed": seed,
        "overrides": CANDIDATES[name],
        "train_steps": run.extra["train_steps"],
        "train_seconds": round(train_results.get("train_runtime", 0.0), 1),
        "wall_seconds": round(wall, 1),  # training, the dev prediction and loading
        "support_fit": run.extra["support_fit"],
        "dev": {"query_size": metrics["query_size"], **{k: metrics["span"][k] for k in ("precision", "recall", "f1")}},
        "support": support_scores(run_dir),
    }


def main(args: argparse.Namespace) -> list[dict]:
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    for record in results:  # records written before these fields existed
        record.setdefault("support_seed", 0)
        run_dir = run_dir_of(record["candidate"], record["support_seed"], args)
        if "support" not in record and run_dir.is_dir():
            record["support"] = support_scores(run_dir)
    seeds = [int(seed) for seed in args.support_seeds.split(",")]
    for name in args.candidates.split(","):
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
        for seed in seeds:
            done = any(r["candidate"] == name and r["support_seed"] == seed for r in results)
            if done and not args.redo:
                continue
            record = train(name, seed, args)
            results = [r for r in results if (r["candidate"], r["support_seed"]) != (name, seed)] + [record]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps({k: record[k] for k in ("candidate", "support_seed", "train_seconds", "dev", "support")}))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(make_parser().parse_args())
