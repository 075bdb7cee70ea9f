"""Span-level exact-match P/R/F1 for NER as a local Hugging Face `evaluate` metric.

Load it by path, offline, e.g.:

    evaluate.load(str(Path(cllmfs_trainer.__file__).parent / "evaluation" / "span_f1"))

It decodes each sentence's tags into spans and returns `cllmfs_trainer.evaluation.metrics.span_scores`, so the
numbers are the library's own (equal to seqeval's on well-formed BIO). Needs the `evaluate` extra and
`cllmfs_trainer` installed.
"""

import datasets
import evaluate

from cllmfs_trainer.evaluation.metrics import bio_span_scores

_CITATION = """\
@inproceedings{ramshaw-marcus-1995-text,
    title = "Text Chunking using Transformation-Based Learning",
    author = "Ramshaw, Lance and Marcus, Mitch",
    booktitle = "Third Workshop on Very Large Corpora",
    year = "1995",
}
"""

_DESCRIPTION = """\
Span-level exact-match micro precision, recall and F1 (plus per-type scores and tp/fp/fn/support counts) over entities
decoded from per-token tags. A predicted entity counts only when sentence, start, end and type all match a gold one.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`):
        Predicted tags, one list per sentence, e.g. `["B-PER", "I-PER", "O"]`.
    references (`list[list[str]]`):
        Gold tags, aligned with `predictions` sentence by sentence and token by token.
    scheme (`str`, *optional*, defaults to `"bio"`):
        `"bio"` (default), `"iob1"` or `"bioes"`. In BIO an `I-X` that continues no `X` entity starts one, as in
        seqeval's default mode.
    zero_division (`float`, *optional*, defaults to `0.0`):
        Value of a precision or recall whose denominator is 0 (default 0.0).

Returns:
    `dict`: `precision`, `recall`, `f1`, `tp`, `fp`, `fn`, `support` and `per_type` (type -> the same keys but
    `per_type`).

Examples:
    >>> metric = evaluate.load("path/to/cllmfs_trainer/evaluation/span_f1")
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])["f1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SpanF1(evaluate.Metric):
    """Span-level exact-match P/R/F1 over BIO (or IOB1/BIOES) tag sequences."""

    def _info(self) -> evaluate.MetricInfo:
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": tags, "references": tags}),
        )

    def _compute(self, predictions, references, scheme: str = "bio", zero_division: float = 0.0) -> dict:
        return bio_span_scores(references, predictions, scheme=scheme, zero_division=zero_division)
