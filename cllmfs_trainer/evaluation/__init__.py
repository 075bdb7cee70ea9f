"""Evaluation: span and string metrics, the error breakdown and scoring of trained run folders.

`cllmfs_trainer/evaluation/span_f1/` is the same span metric as a local `evaluate` module, loadable offline by path.
"""

from cllmfs_trainer.evaluation.metrics import bio_span_scores, error_breakdown, span_scores, string_scores
from cllmfs_trainer.evaluation.scoring import evaluate_run, score_unit

__all__ = [
    "bio_span_scores",
    "error_breakdown",
    "evaluate_run",
    "score_unit",
    "span_scores",
    "string_scores",
]
