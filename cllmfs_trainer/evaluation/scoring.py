"""Scores of one benchmark unit: span micro-F1 (the headline), string-level F1 (always labelled) and error counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.readers import read_examples
from cllmfs_trainer.data.registry import get_dataset
from cllmfs_trainer.data.sampling import query_subset
from cllmfs_trainer.evaluation.metrics import error_breakdown, span_scores, string_scores
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.inference.parse import ParseStats
from cllmfs_trainer.run_folder import RunFolder


def score_unit(query: Sequence[Sentence], predicted: Sequence[Sequence[Span]]) -> dict[str, Any]:
    """`{"span": ..., "string": ..., "errors": ...}` for predictions over `query` (gold spans in the sentences).

    Args:
        query (`Sequence[Sentence]`):
            The query sentences with their gold spans.
        predicted (`Sequence[Sequence[Span]]`):
            Predicted spans per query sentence, in the same order.
    """
    gold = [sentence.spans for sentence in query]
    span = span_scores(gold, predicted)
    string = string_scores(query, predicted)
    return {
        "span": span,
        # Drop the prefix inside the block; the block's key says what it is.
        "string": {key.removeprefix("string_"): value for key, value in string.items()},
        "errors": error_breakdown(gold, predicted),
    }


def evaluate_run(
    run_dir: str | Path,
    datasets: Sequence[str],
    query_size: int | None = None,
    query_seed: int = 0,
    data_dir: str | None = None,
    batch_size: int = 32,
    split: str = "test",
    dtype: str | None = "auto",
    files: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Predict a split of each dataset with a trained run folder and score it; writes `metrics.json` there.

    The model is loaded (and an adapter merged) once; each dataset is asked with its own types (for an INTER run: the
    target's types, not the source's).

    Args:
        run_dir (`str` or `Path`):
            A training run folder (`cllmfs_trainer.run_folder`).
        datasets (`Sequence[str]`):
            Registry keys of the datasets whose split to predict.
        query_size (`int`, *optional*):
            Predict a fixed random subset of this many sentences per dataset; `None` for all.
        query_seed (`int`, *optional*, defaults to `0`):
            Seed of that subset.
        data_dir (`str`, *optional*):
            Folder of datasets that are not shipped.
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per generation batch.
        split (`str`, *optional*, defaults to `"test"`):
            `"test"` to report, `"dev"` to choose settings on (a dataset without a dev split raises).
        dtype (`str`, *optional*, defaults to `"auto"`):
            Precision of the merged model (`EntityExtractor.from_run`): `"auto"` probes the CPU, `None` keeps the
            loaded precision.
        files (`Sequence[str | Path]`, *optional*):
            Labelled files of the user's own (any format `read_examples` reads), scored whole with the run's types;
            keyed by their path in the result.

    Returns:
        `dict[str, Any]`: `{dataset: {"split", "query_size", "span", "string", "errors", "parse_stats"}}`, as written to
        `metrics.json`.
    """
    # Heavy (torch and transformers): scoring predictions that are already made needs neither.
    from cllmfs_trainer.inference.generate import EntityExtractor

    results: dict[str, Any] = {}
    extractor = EntityExtractor.from_run(run_dir, batch_size=batch_size, dtype=dtype)
    for name in datasets:
        dataset = get_dataset(name)
        query = query_subset(dataset.load(split, data_dir).sentences, query_size, query_seed)
        extractor.stats = ParseStats()  # each dataset's own counts
        predicted = [p.spans for p in extractor.predict(query, progress=True, types=dataset.types)]
        results[name] = {
            "split": split,
            "query_size": len(query),
            **score_unit(query, predicted),
            "parse_stats": extractor.stats.as_dict(),
        }
    for file in files:
        query = read_examples(file).sentences
        extractor.stats = ParseStats()
        predicted = [p.spans for p in extractor.predict(query, progress=True)]
        results[str(file)] = {"split": "file", "query_size": len(query), **score_unit(query, predicted)}
        results[str(file)]["parse_stats"] = extractor.stats.as_dict()
    path = RunFolder.load(run_dir).metrics_file
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    return results
