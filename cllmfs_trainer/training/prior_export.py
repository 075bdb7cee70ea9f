"""Ship a trained NER prior: its adapter in bfloat16, its config naming the hub model, and its model card.

    python -m cllmfs_trainer.training.prior_export runs/smollm2-ner-prior-2 \
        [--previous runs/smollm2-ner-prior] [--benchmark bench/results/benchmark-prior/results.json ...]

writes `cllmfs_trainer/priors/smollm2-135m-instruct/` (`init_adapter: prior` loads it). The card states the data
mix with each corpus' license, the budget and the measured figures: the run folder's (`metrics.json`), and those of
benchmark reports that score this very adapter (mean ± std over support seeds, per dataset and method).

A prior may be trained in stages, each continuing the adapter of the one before (`--init_adapter`): the card and
`prior_stages.json` describe every stage. An earlier stage is found through the run record's `init_adapter`
(a run folder, or a shipped prior's `prior_stages.json`), or given with `--previous` where that folder now holds
other weights; the sha256 of the weights each stage started from must match.

    python -m cllmfs_trainer.training.prior_export --benchmark bench/results/benchmark-prior-2/results.json

(no run folder) rewrites the shipped prior's card alone from its `prior_stages.json`, on a clone without the runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from cllmfs_trainer.data.registry import get_dataset
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.models.priors import PRIOR_BASES, SHIPPED_PRIOR, adapter_sha256
from cllmfs_trainer.run_folder import RunFolder

HUB_ID = PRIOR_BASES[-1]  # the default model on the hub
STAGES_FILE = "prior_stages.json"  # beside a shipped prior: the data and budget of each stage that trained it
RECIPE = "recipes/smollm2/ner_prior.yaml"


# The benchmark methods a card reports: those that use the prior, and the plain base they are compared with.
CARD_METHODS = {
    "prior_zero_shot": "the prior alone, zero-shot",
    "cllmfs_prior": "5-shot from the prior (CLLMFS)",
    "lora_prior": "5-shot from the prior, LoRA only",
    "lora": "5-shot from the plain base, LoRA only",
}


def benchmark_rows(results: Sequence[str | os.PathLike]) -> list[str]:
    """Markdown rows (dataset, method, split, sentences, seeds, span F1 mean ± std) of the `CARD_METHODS` INTRA units
    in benchmark reports' `results.json` files."""
    groups: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for path in results:
        report = _json(Path(path))
        split = report.get("fingerprint", {}).get("query_split", "test")  # kept only where it is not the default
        for unit in report.get("units", []):
            # A zero-shot unit of another seed reuses one prediction (`reused_from`): it is counted once.
            if unit["method"] in CARD_METHODS and unit["setting"] == "intra" and "reused_from" not in unit:
                groups[(unit["dataset"], unit["method"], split, unit["query_size"])].append(unit["span"]["f1"])
    order = list(CARD_METHODS)
    rows = []
    for (dataset, method, split, size), f1 in sorted(
        groups.items(), key=lambda g: (g[0][0], g[0][2], order.index(g[0][1]))
    ):
        score = f"{statistics.fmean(f1):.3f}" + (f" ± {statistics.stdev(f1):.3f}" if len(f1) > 1 else "")
        rows.append(f"| {dataset} | {CARD_METHODS[method]} | {split} | {size:,} | {len(f1)} | {score} |")
    return rows


def adapter_bytes(run: RunFolder) -> bytes:
    """A run folder's adapter weights as the shipped prior stores them: bfloat16 safetensors (deterministic bytes, so
    their sha256 names the shipped adapter before it is written)."""
    tensors = load_file(run.path / "adapter_model.safetensors")
    return save({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()})


def prior_stages(run: RunFolder, previous: str | os.PathLike | None = None) -> list[dict]:
    """The training stages that made a prior run's adapter, oldest first: each stage's draw, budget and seed.

    Args:
        run (`RunFolder`):
            The last stage's run folder (`setting: prior`).
        previous (`str` or `os.PathLike`, *optional*):
            The run folder of the stage before, where the folder `run` started from now holds other weights (a
            shipped prior since replaced). Its bfloat16 weights must be those `run` started from.

    Raises:
        `UserError`: for a stage that is not a prior run, or a starting adapter whose stages cannot be found.
    """
    if run.setting != "prior" or "prior" not in run.extra:
        raise UsageError(f"{run.path}: not a NER-prior run (setting: prior)")
    train = _json(run.path / "train_results.json")
    draw = run.extra["prior"]
    stage = {
        **{k: draw.get(k) for k in ("sentences", "samples", "samples_with_entities", "absent_ratio", "corpora")},
        "seed": draw.get("seed", _training_seed(run)),
        "train_steps": run.extra.get("train_steps"),
        "train_minutes": round(float(train.get("train_runtime", 0)) / 60, 1),
        "start": None,
    }
    start = run.extra.get("init_adapter")
    if not start:
        return [stage]
    stage["start"] = start.get("mode", "continue")
    source = Path(start["path"])
    if adapter_sha256(source) == start["sha256"]:  # the folder still holds the weights this stage started from
        if (source / STAGES_FILE).is_file():
            return [*_json(source / STAGES_FILE)["stages"], stage]
        if (source / "cllmfs_run.json").is_file():
            return [*prior_stages(RunFolder.load(source)), stage]
    if previous is not None:
        earlier = RunFolder.load(previous)
        if start["sha256"] not in (adapter_sha256(earlier.path), _sha256(adapter_bytes(earlier))):
            raise UsageError(f"--previous {previous}: not the adapter {run.path} started from ({source})")
        return [*prior_stages(earlier), stage]
    raise UsageError(
        f"{run.path} started from {source}, which no longer holds those weights or does not record their data; "
        "pass --previous <the run folder that trained them>"
    )


def _training_seed(run: RunFolder) -> int | None:
    """The seed of a run recorded before prior records named it: from the Trainer's saved arguments."""
    path = run.path / "training_args.bin"
    return torch.load(path, weights_only=False).seed if path.is_file() else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage_commands(stages: Sequence[dict]) -> list[str]:
    """One `accelerate launch` per stage that retrains the prior, each continuing the run folder of the one before."""
    commands = []
    for i, stage in enumerate(stages):
        out = "runs/smollm2-ner-prior" + (f"-{i + 1}" if i else "")
        args = [f"--output_dir {out}"] if i else []
        if i:
            previous = "runs/smollm2-ner-prior" + (f"-{i}" if i > 1 else "")
            args.append(f"--init_adapter {previous}")
            if stage["start"] == "merge":
                args.append("--init_adapter_merge true")
        if stage.get("seed"):
            args.append(f"--seed {stage['seed']}")
        if stage.get("sentences") != 1600:  # the recipe's prior_sentences
            args.append(f"--prior_sentences {stage['sentences']}")
        commands.append(" ".join(["CLLMFS_DATA_DIR=<data> accelerate launch recipes/train.py", RECIPE, *args]))
    return commands


def prior_record(run: RunFolder, previous: str | os.PathLike | None = None) -> dict:
    """What the card is built from, kept beside the shipped adapter (`prior_stages.json`): the stages, the prompt
    settings and the run folder's zero-shot scores (`metrics.json`), so that a card can be rewritten without the run.

    Args:
        run (`RunFolder`):
            The prior's run folder (its last stage).
        previous (`str` or `os.PathLike`, *optional*):
            The run folder of the stage before, where `prior_stages` cannot find it.
    """
    return {
        "stages": prior_stages(run, previous),
        "format": {
            "prompt_format": run.prompt_format,
            "answer_format": run.answer_format,
            "type_descriptions": run.type_descriptions,
        },
        "metrics": _json(run.metrics_file),
    }


def prior_card(record: dict, benchmarks: Sequence[str | os.PathLike] = ()) -> str:
    """The prior's model card (Hub metadata and text).

    Args:
        record (`dict`):
            `prior_record`'s stages, prompt settings and zero-shot scores.
        benchmarks (`Sequence[str | os.PathLike]`, *optional*):
            `results.json` files of benchmark reports that score the prior (`recipes/smollm2/benchmark_prior.yaml`).
    """
    stages, fmt, metrics = record["stages"], record["format"], record.get("metrics", {})
    corpora: dict[str, dict] = {}
    for stage in stages:
        for key, counts in stage["corpora"].items():
            total = corpora.setdefault(key, {"sentences": 0, "types": counts["types"]})
            total["sentences"] += counts["sentences"]
    prior = {k: sum(stage[k] for stage in stages) for k in ("sentences", "samples", "samples_with_entities")}
    prior["absent_ratio"] = stages[-1]["absent_ratio"]
    rows = []
    for key, counts in corpora.items():
        info = get_dataset(key)
        split = "INTER train split only" if key == "fewnerd" else ", ".join(info.splits)
        rows.append(f"| {info.title} | {split} | {counts['sentences']:,} | {counts['types']} | {info.license} |")
    scores = [
        f"| {name} | {m['split']} | {m['query_size']} | {m['span']['f1']:.3f} |" for name, m in sorted(metrics.items())
    ]
    drawn = (
        f"drawn in {len(stages)} stages with seeds {', '.join(str(st['seed']) for st in stages)} (a sentence may be "
        "drawn by more than one)"
        if len(stages) > 1
        else "drawn once"
    )
    budget = [
        f"{i}. {st['sentences']:,} sentences, {st['train_steps']} optimizer steps in {st['train_minutes']:.0f} min"
        + (
            f", {'continuing' if st['start'] == 'continue' else 'merged into the base under'} stage {i - 1}'s adapter"
            if st["start"]
            else ""
        )  # fmt: skip
        for i, st in enumerate(stages, 1)
    ]
    share_alike = [k for k in corpora if "BY-SA" in get_dataset(k).license]
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {HUB_ID}",
        "base_model_relation: adapter",
        "pipeline_tag: token-classification",
        "license: cc-by-sa-4.0",
        "tags: [cllmfs-trainer, ner, lora, few-shot]",
        "---",
        "",
        "# NER prior for SmolLM2-135M-Instruct (cllmfs-trainer)",
        "",
        "A LoRA adapter that teaches the default model of cllmfs-trainer to find the entities of a named type in a",
        "sentence, trained on general-NER corpora before any 5-shot stage. Start a recipe from it with",
        "`init_adapter: prior`. It is a NER-pretrained starting point, not the CLLMFS paper's protocol.",
        "",
        "## Data",
        "",
        f"{prior['sentences']:,} sentences {drawn}, {prior['samples']:,} per-type samples "
        f"({prior['samples_with_entities']:,} with entities; absent types drawn from each sentence's own "
        f"corpus at {prior['absent_ratio']} per present type). No CoNLL-2003, WNUT'17, OntoNotes or GUM text, and "
        "none of Few-NERD's 17 INTER test types.",
        "",
        "| corpus | splits | sentences | types | license |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## License and attribution",
        "",
        f"Share-alike (BY-SA) data in the mix: {', '.join(share_alike) or 'none'}. This adapter is therefore shared "
        "under CC BY-SA 4.0, with attribution to each corpus above (their sources and citations are listed in the "
        "cllmfs-trainer documentation, docs/training.md). CrossNER's MIT license requires keeping its copyright "
        "notice.",
        "",
        "## Training",
        "",
        f"On a 2-core CPU; prompt format {fmt['prompt_format']}, answer format {fmt['answer_format']}, type "
        f"descriptions {'on' if fmt['type_descriptions'] else 'off'}, one pass over each stage's samples:",
        "",
        *budget,
        "",
        "Retrain with" + (" (one stage after the other)" if len(stages) > 1 else ""),
        "",
        "```bash",
        *stage_commands(stages),
        "```",
        "",
        "## Measured",
        "",
    ]
    if scores:
        lines += [
            "Zero-shot (the prior asked each dataset's own types, no example of them), span micro-F1:",
            "",
            "| dataset | split | sentences | span F1 |",
            "|---|---|---|---|",
            *scores,
            "",
        ]
    rows = benchmark_rows(benchmarks)
    if not scores and not rows:
        lines += ["Nothing yet: the export quotes the benchmark reports that scored these weights (`--benchmark`).", ""]
    if rows:
        lines += [
            "Few-shot benchmark of cllmfs-trainer (a NER-pretrained setting; the same support sets and test sentences "
            "for every method), span micro-F1, mean ± std over support seeds:",
            "",
            "| dataset | method | split | sentences | seeds | span F1 |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    return "\n".join(lines)


def export_prior(
    run_dir: str | os.PathLike,
    dest: str | os.PathLike = SHIPPED_PRIOR,
    benchmarks: Sequence[str | os.PathLike] = (),
    previous: str | os.PathLike | None = None,
) -> Path:
    """Write a prior run's adapter as the shipped prior: bfloat16 safetensors, its config, its stages and a model card.

    The adapter config's `base_model_name_or_path` becomes the default model's hub id (PEFT writes the local folder
    it loaded), so that the config and the card name a model others can find.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run folder trained with `setting: prior` on the default model (the last stage).
        dest (`str` or `os.PathLike`, *optional*, defaults to `SHIPPED_PRIOR`):
            Where to write it.
        benchmarks (`Sequence[str | os.PathLike]`, *optional*):
            Benchmark reports' `results.json` files whose prior figures the card gives; each must have started
            from these very weights (its fingerprint's `init_adapters`).
        previous (`str` or `os.PathLike`, *optional*):
            The run folder of the stage before, where the run record's `init_adapter` no longer holds it.

    Raises:
        `UserError`: for a run folder that is not a prior run of the default model, or a report of other weights.
    """
    run = RunFolder.load(run_dir)
    if run.setting != "prior" or run.weights != "adapter" or run.base_model not in PRIOR_BASES:
        raise UsageError(f"{run.path}: not a NER-prior adapter run of the default model (setting: prior)")
    weights = adapter_bytes(run)
    _check_reports(benchmarks, _sha256(weights), str(run.path))
    record = prior_record(run, previous)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "adapter_model.safetensors").write_bytes(weights)
    config = json.loads((run.path / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = HUB_ID
    if isinstance(config.get("target_modules"), list):  # PEFT writes a set in arbitrary order: keep diffs stable
        config["target_modules"] = sorted(config["target_modules"])
    atomic_write_text(dest / "adapter_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(dest / STAGES_FILE, json.dumps(record, indent=1) + "\n")
    atomic_write_text(dest / "README.md", prior_card(record, benchmarks))
    return dest


def rewrite_card(dest: str | os.PathLike = SHIPPED_PRIOR, benchmarks: Sequence[str | os.PathLike] = ()) -> Path:
    """Rewrite a shipped prior's card from its own `prior_stages.json`, quoting `benchmarks` (no run folder needed).

    Args:
        dest (`str` or `os.PathLike`, *optional*, defaults to `SHIPPED_PRIOR`):
            The shipped prior's folder.
        benchmarks (`Sequence[str | os.PathLike]`, *optional*):
            Benchmark reports' `results.json` files whose prior figures the card gives.

    Raises:
        `UserError`: for a folder without `prior_stages.json`, or a report of other weights.
    """
    dest = Path(dest)
    if not (dest / STAGES_FILE).is_file():
        raise UsageError(f"{dest}: no {STAGES_FILE}; export the prior from its run folder instead")
    _check_reports(benchmarks, adapter_sha256(dest), str(dest))
    atomic_write_text(dest / "README.md", prior_card(_json(dest / STAGES_FILE), benchmarks))
    return dest


def _check_reports(benchmarks: Sequence[str | os.PathLike], sha: str | None, what: str) -> None:
    """A card quotes only the figures of the adapter it describes: each report's prior must be these weights."""
    for path in benchmarks:
        scored = _json(Path(path)).get("fingerprint", {}).get("init_adapters", {}).get("prior")
        if scored != sha:
            raise UsageError(f"{path}: its prior units started from other weights (sha256 {scored}), not {what}")


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    """Export the prior run folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run folder trained with recipes/smollm2/ner_prior.yaml")
    parser.add_argument("--dest", default=str(SHIPPED_PRIOR), help="where to write the shipped prior")
    parser.add_argument(
        "--previous", help="the run folder of the stage before, where the run's init_adapter now holds other weights"
    )
    parser.add_argument(
        "--benchmark", action="append", default=[], help="a benchmark report's results.json to quote (repeatable)"
    )
    args = parser.parse_args(argv)
    for path in args.benchmark:
        if not Path(path).is_file():
            parser.error(f"--benchmark {path}: no such file")
    if args.run is None:  # the shipped prior's card alone, from its prior_stages.json
        print(rewrite_card(args.dest, args.benchmark))
    else:
        print(export_prior(args.run, args.dest, args.benchmark, args.previous))


if __name__ == "__main__":
    main()
