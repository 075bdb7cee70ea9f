"""Ship a trained NER prior: its adapter in bfloat16, its config naming the hub model, and its model card.

    python -m cllmfs_trainer.training.prior_export runs/smollm2-ner-prior \
        [--benchmark bench/results/benchmark-prior/results.json ...]

writes `cllmfs_trainer/priors/smollm2-135m-instruct/` (`init_adapter: prior` loads it). The card states the data
mix with each corpus' license, the budget and the measured figures: the run folder's (`metrics.json`), and those of
benchmark reports that score the prior (mean ± std over support seeds, per dataset and method).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cllmfs_trainer.data.registry import get_dataset
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.models.priors import PRIOR_BASES, SHIPPED_PRIOR
from cllmfs_trainer.run_folder import RunFolder

HUB_ID = PRIOR_BASES[-1]  # the default model on the hub


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


def prior_card(run: RunFolder, benchmarks: Sequence[str | os.PathLike] = ()) -> str:
    """The prior's model card (Hub metadata and text) from its run record, `train_results.json` and `metrics.json`.

    Args:
        run (`RunFolder`):
            The prior's run folder.
        benchmarks (`Sequence[str | os.PathLike]`, *optional*):
            `results.json` files of benchmark reports that score the prior (`recipes/smollm2/benchmark_prior.yaml`).
    """
    prior = run.extra.get("prior", {})
    train = _json(run.path / "train_results.json")
    metrics = _json(run.metrics_file)
    rows = []
    for key, counts in prior.get("corpora", {}).items():
        info = get_dataset(key)
        split = "INTER train split only" if key == "fewnerd" else ", ".join(info.splits)
        rows.append(f"| {info.title} | {split} | {counts['sentences']:,} | {counts['types']} | {info.license} |")
    scores = [
        f"| {name} | {m['split']} | {m['query_size']} | {m['span']['f1']:.3f} |" for name, m in sorted(metrics.items())
    ]
    share_alike = [k for k in prior.get("corpora", {}) if "BY-SA" in get_dataset(k).license]
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
        f"{prior.get('sentences', 0):,} sentences, {prior.get('samples', 0):,} per-type samples "
        f"({prior.get('samples_with_entities', 0):,} with entities; absent types drawn from each sentence's own "
        f"corpus at {prior.get('absent_ratio')} per present type). No CoNLL-2003, WNUT'17, OntoNotes or GUM text, and "
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
        f"{run.extra.get('train_steps', '?')} optimizer steps in {float(train.get('train_runtime', 0)) / 60:.0f} min "
        f"on a 2-core CPU; prompt format {run.prompt_format}, answer format {run.answer_format}, "
        f"type descriptions {'on' if run.type_descriptions else 'off'}. Retrain with",
        "`CLLMFS_DATA_DIR=<data> accelerate launch recipes/train.py recipes/smollm2/ner_prior.yaml`.",
        "",
        "## Measured",
        "",
        "Zero-shot (the prior asked each dataset's own types, no example of them), span micro-F1:",
        "",
        "| dataset | split | sentences | span F1 |",
        "|---|---|---|---|",
        *(scores or ["| (not measured) | | | |"]),
        "",
    ]
    if rows := benchmark_rows(benchmarks):
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
    run_dir: str | os.PathLike, dest: str | os.PathLike = SHIPPED_PRIOR, benchmarks: Sequence[str | os.PathLike] = ()
) -> Path:
    """Write a prior run's adapter as the shipped prior: bfloat16 safetensors, its config and a model card.

    The adapter config's `base_model_name_or_path` becomes the default model's hub id (PEFT writes the local folder
    it loaded), so that the config and the card name a model others can find.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run folder trained with `setting: prior` on the default model.
        dest (`str` or `os.PathLike`, *optional*, defaults to `SHIPPED_PRIOR`):
            Where to write it.
        benchmarks (`Sequence[str | os.PathLike]`, *optional*):
            Benchmark reports' `results.json` files whose prior figures the card gives.

    Raises:
        `UserError`: for a run folder that is not a prior run of the default model.
    """
    run = RunFolder.load(run_dir)
    if run.setting != "prior" or run.weights != "adapter" or run.base_model not in PRIOR_BASES:
        raise UsageError(f"{run.path}: not a NER-prior adapter run of the default model (setting: prior)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tensors = load_file(run.path / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, dest / "adapter_model.safetensors")
    config = json.loads((run.path / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = HUB_ID
    atomic_write_text(dest / "adapter_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(dest / "README.md", prior_card(run, benchmarks))
    return dest


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    """Export the prior run folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder trained with recipes/smollm2/ner_prior.yaml")
    parser.add_argument("--dest", default=str(SHIPPED_PRIOR), help="where to write the shipped prior")
    parser.add_argument(
        "--benchmark", action="append", default=[], help="a benchmark report's results.json to quote (repeatable)"
    )
    args = parser.parse_args(argv)
    for path in args.benchmark:
        if not Path(path).is_file():
            parser.error(f"--benchmark {path}: no such file")
    print(export_prior(args.run, args.dest, args.benchmark))


if __name__ == "__main__":
    main()
