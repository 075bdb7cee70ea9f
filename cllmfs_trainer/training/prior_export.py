"""Ship a trained NER prior: its adapter in bfloat16, its config naming the hub model, and its model card.

    python -m cllmfs_trainer.training.prior_export runs/smollm2-ner-prior

writes `cllmfs_trainer/priors/smollm2-135m-instruct/` (`init_adapter: prior` loads it). The card states the data
mix with each corpus' license, the budget and the measured figures of the run folder (`metrics.json`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cllmfs_trainer.data.registry import get_dataset
from cllmfs_trainer.errors import UsageError
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.models.priors import PRIOR_BASES, SHIPPED_PRIOR
from cllmfs_trainer.run_folder import RunFolder

HUB_ID = PRIOR_BASES[-1]  # the default model on the hub


def prior_card(run: RunFolder) -> str:
    """The prior's model card (Hub metadata and text) from its run record, `train_results.json` and `metrics.json`."""
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
    return "\n".join(lines)


def export_prior(run_dir: str | os.PathLike, dest: str | os.PathLike = SHIPPED_PRIOR) -> Path:
    """Write a prior run's adapter as the shipped prior: bfloat16 safetensors, its config and a model card.

    The adapter config's `base_model_name_or_path` becomes the default model's hub id (PEFT writes the local folder
    it loaded), so that the config and the card name a model others can find.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run folder trained with `setting: prior` on the default model.
        dest (`str` or `os.PathLike`, *optional*, defaults to `SHIPPED_PRIOR`):
            Where to write it.

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
    atomic_write_text(dest / "README.md", prior_card(run))
    return dest


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    """Export the prior run folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder trained with recipes/smollm2/ner_prior.yaml")
    parser.add_argument("--dest", default=str(SHIPPED_PRIOR), help="where to write the shipped prior")
    args = parser.parse_args(argv)
    print(export_prior(args.run, args.dest))


if __name__ == "__main__":
    main()
