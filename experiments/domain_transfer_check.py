"""CONTaiNER and ProML in their published domain-transfer setting: OntoNotes -> CoNLL'03, WNUT'17 and GUM.

    CLLMFS_DATA_DIR=../shared/data nice -n 10 python experiments/domain_transfer_check.py --shots 5
    CLLMFS_DATA_DIR=../shared/data nice -n 10 python experiments/domain_transfer_check.py --shots 1   # adds 1-shot

Each method trains once on OntoNotes train (the benchmark's caps, `BENCHMARK_CONFIG` of its module; every target's
test split left out), then, for each published support set, a fresh copy of that source model is adapted to the set
and labels a fixed random subset of the target's test split. CONTaiNER uses its authors' sets
(`<target>/support_sets_domain_transfer/`), ProML its own (`<target>/support_sets_domain_transfer_proml/`, drawn from
the evaluation data, with its label names mapped to the dataset's). Query sentences that also occur in the support
set (case-insensitively: ProML's sets are lowercased) are removed from that unit's query. Each unit is scored by span
micro-F1; the table gives the mean ± std over sets.

Writes bench/results/domain_transfer/results.json and results.md (numbers only), after every unit; a second run with
the same settings keeps the finished units and adds the missing ones. Source models go to runs/domain_transfer/ (not
in git).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cllmfs_trainer.benchmark.baselines import container, proml
from cllmfs_trainer.benchmark.baselines.gaussian_metric import cached_source_training
from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.sampling import INTER_SOURCE, SupportSet, query_subset
from cllmfs_trainer.evaluation.scoring import score_unit

REPO = Path(__file__).resolve().parents[1]
SET_FOLDERS = {"container": "support_sets_domain_transfer", "proml": "support_sets_domain_transfer_proml"}
# ProML's sets name the types in words; these are the names that differ from the dataset's labels (their READMEs).
PROML_LABELS = {
    "conll2003": {"location": "LOC", "miscellaneous": "MISC", "organization": "ORG", "person": "PER"},
    "wnut17": {"creative_work": "creative-work"},
}
# The published figures could not be read from their papers here: `None` marks a figure left unverified.
PUBLISHED = {
    "container": {
        "source": "Das et al., ACL 2022, domain-transfer table (OntoNotes -> I2B2, CoNLL'03, WNUT'17, GUM; BERT-base)",
        "f1": {},
    },
    "proml": {
        "source": "Chen, Zheng & Yang, Findings of ACL 2023, domain-transfer table (same targets; BERT-base)",
        "f1": {},
    },
}
TARGETS = ["conll2003", "wnut17", "gum"]
TITLES = {"container": "CONTaiNER", "proml": "ProML", "conll2003": "CoNLL'03", "wnut17": "WNUT'17", "gum": "GUM"}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("CLLMFS_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--methods", nargs="+", default=["container", "proml"], choices=sorted(SET_FOLDERS))
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 1], choices=[1, 5])
    parser.add_argument("--sets", type=int, nargs="+", default=list(range(5)), help="published set indices (0-9)")
    parser.add_argument("--query-size", type=int, default=200, help="test sentences per target (fixed subset)")
    parser.add_argument("--query-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the source training and adaptation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on busy shared cores)")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "domain_transfer"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "domain_transfer"))
    return parser


def load_set(path: Path, dataset: str, method: str) -> list[Sentence]:
    names = PROML_LABELS.get(dataset, {}) if method == "proml" else {}
    sentences = SupportSet.load(path).sentences
    return [Sentence(s.tokens, [Span(a, b, names.get(t, t)) for a, b, t in s.spans], s.id) for s in sentences]


def summarise(units: list[dict]) -> dict:
    """Per (method, shot, target): mean ± std of the per-set F1, the pooled micro-F1 and the mean cost of a unit."""
    groups: dict[str, list[dict]] = {}
    for u in units:
        groups.setdefault(f"{u['method']}/{u['shot']}shot/{u['target']}", []).append(u)
    out = {}
    for key, rows in sorted(groups.items()):
        f1 = [r["span"]["f1"] for r in rows]
        tp, fp, fn = (sum(r["span"][k] for r in rows) for k in ("tp", "fp", "fn"))
        out[key] = {
            "sets": len(rows),
            "f1_mean": round(statistics.mean(f1), 4),
            "f1_std": round(statistics.stdev(f1), 4) if len(f1) > 1 else None,
            "f1_pooled": round(2 * tp / (2 * tp + fp + fn), 4) if tp else 0.0,
            "seconds_mean": round(statistics.mean(r["seconds"] for r in rows), 1),
            "cpu_seconds_mean": round(statistics.mean(r["cpu_seconds"] for r in rows), 1),
        }
    return out


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# CONTaiNER and ProML, domain transfer OntoNotes -> target (our figures beside the published ones)",
        "",
        f"Encoder `{s['encoder']}`; source: {s['source']}; query: {s['query']}. Each cell: span micro-F1, mean ± std "
        "over the published support sets run (their count in brackets), then the published figure.",
        "",
        "| method | shots | " + " | ".join(TITLES[t] for t in s["targets"]) + " |",
        "|---|---|" + "---|" * len(s["targets"]),
    ]
    for method in s["methods"]:
        for shot in s["shots"]:
            cells = []
            for target in s["targets"]:
                row = report["summary"].get(f"{method}/{shot}shot/{target}")
                ours = "not run" if row is None else f"{row['f1_mean']:.4f}"
                if row and row["f1_std"] is not None:
                    ours += f" ± {row['f1_std']:.4f}"
                ours += f" ({row['sets']})" if row else ""
                published = PUBLISHED[method]["f1"].get(f"{shot}shot/{target}")
                cells.append(f"{ours} / {'not verified' if published is None else f'{published:.4f}'}")
            lines.append(f"| {TITLES[method]} | {shot} | " + " | ".join(cells) + " |")
    lines += ["", "Cost per unit (adapt + label the query), mean seconds (CPU seconds):", ""]
    for key, row in report["summary"].items():
        lines.append(
            f"- {key}: {row['seconds_mean']} s ({row['cpu_seconds_mean']} CPU s), pooled F1 {row['f1_pooled']}"
        )
    lines += ["", "Source training, once per method:", ""]
    for method, stats in report["source"].items():
        lines.append(f"- {TITLES[method]}: " + ", ".join(f"{k} {v}" for k, v in stats.items() if k != "priors"))
    lines += ["", "Published figures:", ""]
    lines += [f"- {TITLES[m]}: {PUBLISHED[m]['source']}: {report['published_note']}" for m in s["methods"]]
    lines += ["", "Commands, in the order they ran:", "", *(f"    {c}" for c in report["commands"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work_dir)
    modules = {"container": container, "proml": proml}
    configs = {m: asdict(modules[m].BENCHMARK_CONFIG) for m in args.methods}
    settings = {
        "encoder": args.encoder,
        "seed": args.seed,
        "configs": configs,
        "source": "OntoNotes 5.0 train (the 20,000-sentence copy) without the targets' test sentences, capped as "
        "in each method's config",
        "query": f"{args.query_size} random test sentences per target (query_seed {args.query_seed}), minus any "
        "sentence of the unit's support set",
        "methods": args.methods,
        "targets": args.targets,
        "shots": args.shots,
    }
    report = {"settings": settings, "units": [], "source": {}}
    if (out / "results.json").is_file():
        previous = json.loads((out / "results.json").read_text(encoding="utf-8"))
        same = ("encoder", "seed", "source", "query")
        if any(previous["settings"][k] != settings[k] for k in same) or any(
            previous["settings"]["configs"].get(m, c) != c for m, c in configs.items()
        ):
            raise SystemExit(f"{out / 'results.json'} was made with other settings: pass another --out")
        for key in ("methods", "targets", "shots"):  # a second run adds to what the first covered
            settings[key] = list(dict.fromkeys(previous["settings"][key] + settings[key]))
        settings["configs"] = {**previous["settings"]["configs"], **configs}
        report.update(units=previous["units"], source=previous["source"])
        report["commands"] = previous.get("commands", [])
    done = {(u["method"], u["target"], u["shot"], u["set"]) for u in report["units"]}
    command = "CLLMFS_DATA_DIR=../shared/data nice -n 10 python " + " ".join(
        ["experiments/domain_transfer_check.py", *(argv if argv is not None else sys.argv[1:])]
    )
    report["commands"] = [*report.get("commands", []), command]  # every run that added units, in order
    report["published_note"] = (
        "not verified: the paper's table could not be read where this check ran, so no published figure is quoted"
    )

    # The source never sees a test sentence of any of the three targets, whichever are run now.
    tests = {t: get_dataset(t).load("test", args.data_dir).sentences for t in TARGETS}
    excluded = {tuple(w.lower() for w in s.tokens) for sentences in tests.values() for s in sentences}
    source = get_dataset(INTER_SOURCE)
    pool = [
        s for s in source.load("train", args.data_dir).sentences if tuple(w.lower() for w in s.tokens) not in excluded
    ]
    for method in args.methods:
        module = modules[method]
        make = module.ContainerNER if method == "container" else module.ProMLNER
        config = module.BENCHMARK_CONFIG
        folder = work / method / f"seed{args.seed}"
        fingerprint = {"method": method, "encoder": args.encoder, "seed": args.seed, "config": asdict(config)}
        fingerprint["excluded"] = "test splits of " + ",".join(TARGETS)
        ner = make(args.encoder, config, seed=args.seed)
        labels = [t.label for t in source.types] if method == "container" else source.types

        def train(ner=ner, labels=labels) -> dict:
            cpu = time.process_time()
            stats = ner.train_source(pool, labels)
            return {**stats, "source_cpu_seconds": round(time.process_time() - cpu, 1)}

        stats = cached_source_training(ner, folder, fingerprint, train)
        priors = stats.pop("priors", None)
        report["source"][method] = {k: v for k, v in stats.items() if k != "source_cached"}
        for shot in args.shots:
            for target in args.targets:
                dataset = get_dataset(target)
                for index in args.sets:
                    if (method, target, shot, index) in done:
                        continue
                    start, cpu = time.perf_counter(), time.process_time()
                    path = Path(args.data_dir) / target / SET_FOLDERS[method] / f"{shot}shot" / f"{index}.txt"
                    support = load_set(path, target, method)
                    seen = {tuple(w.lower() for w in s.tokens) for s in support}
                    subset = query_subset(tests[target], args.query_size, args.query_seed)
                    query = [s for s in subset if tuple(w.lower() for w in s.tokens) not in seen]
                    ner = make(args.encoder, config, seed=args.seed)
                    ner.load_weights(folder)
                    if method == "container":
                        ner.priors = priors
                        ner.fit(support, [t.label for t in dataset.types])
                    else:
                        ner.fit(support, dataset.types)
                    scores = score_unit(query, ner.predict(query))
                    unit = {"method": method, "target": target, "shot": shot, "set": index}
                    unit.update(support_sentences=len(support), query_size=len(query))
                    unit.update(removed_from_query=len(subset) - len(query), finetune_steps=ner.finetune_steps)
                    unit.update(span=scores["span"], errors=scores["errors"])
                    unit.update(seconds=round(time.perf_counter() - start, 1))
                    unit["cpu_seconds"] = round(time.process_time() - cpu, 1)
                    report["units"].append(unit)
                    report["summary"] = summarise(report["units"])
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
                    (out / "results.md").write_text(markdown(report), encoding="utf-8")
                    f1, seconds = scores["span"]["f1"], unit["seconds"]
                    print(f"{method} {shot}-shot {target} set {index}: F1 {f1:.4f}, {seconds} s", flush=True)
    return report


if __name__ == "__main__":
    main()
