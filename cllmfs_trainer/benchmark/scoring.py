"""Scores of one benchmark unit: span micro-F1 (the headline), string-level F1 (always labelled) and error counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.metrics import error_breakdown, span_scores, string_scores


def score_unit(query: Sequence[Sentence], predicted: Sequence[Sequence[Span]]) -> dict[str, Any]:
    """`{"span": ..., "string": ..., "errors": ...}` for predictions over `query` (gold spans in the sentences).

    Args:
        query: The query sentences with their gold spans.
        predicted: Predicted spans per query sentence, in the same order.
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
