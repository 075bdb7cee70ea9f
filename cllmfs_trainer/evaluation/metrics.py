"""NER evaluation: span-level exact P/R/F1, string-level P/R/F1 and an error breakdown.

All functions compare a gold and a predicted corpus sentence by sentence. Each side is a sequence with one entry per
sentence, either a `Sentence` (its `spans` are used) or a plain sequence of `Span`/`(start, end, type)` tuples over
token indices, end exclusive. The two sides must have the same number of sentences.

Conventions shared by every score here:

- Set semantics: within one sentence a predicted span listed twice counts once (a model that repeats an entity is
  neither rewarded nor punished twice). The same holds for gold.
- 0/0: a precision with no predictions and a recall with no gold spans are `zero_division` (default 0.0, as in
  seqeval and scikit-learn); F1 is then computed from them as usual, and is 0.0 when both are 0. So an empty gold with
  an empty prediction scores 0.0 everywhere, not 1.0; pass `zero_division=1.0` to score that case as perfect.

On well-formed BIO (as produced by `Sentence.to_bio`), `span_scores` equals seqeval's micro precision, recall and F1
in both its default mode and `mode="strict", scheme=IOB2` (tested on real data to 1e-12). On raw BIO with `I-` tags
that continue no entity, decode with `tags_to_spans` (which reads such a tag as a start, like seqeval's default mode)
and the scores still equal seqeval's default mode; strict mode drops those entities instead, so it can differ.

`evaluation/span_f1/span_f1.py` wraps `span_scores` as a local Hugging Face `evaluate` metric; this module does
not import `evaluate`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.tags import tags_to_spans

SpanLike = Span | tuple[int, int, str]
SentenceSpans = Sentence | Sequence[SpanLike]

# Category names of `error_breakdown`, in the precedence order a predicted span is assigned by, then the gold-only one.
ERROR_CATEGORIES = ("correct", "type", "boundary", "boundary_type", "spurious", "missed")


def _span_sets(spans: Sequence[SentenceSpans], side: str) -> list[set[Span]]:
    """One set of validated `Span`s per sentence (sets: duplicates count once)."""
    out = []
    for index, item in enumerate(spans):
        raw: Iterable[Any] = item.spans if isinstance(item, Sentence) else item
        sentence_spans = set()
        for span in raw:
            if len(span) != 3:
                raise ValueError(f"{side} sentence {index}: {span!r} is not a (start, end, type) span")
            start, end, etype = span
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
                raise ValueError(f"{side} sentence {index}: span {tuple(span)!r} needs integer 0 <= start < end")
            sentence_spans.add(Span(start, end, str(etype)))
        out.append(sentence_spans)
    return out


def _check_lengths(gold: Sequence[Any], pred: Sequence[Any]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}; they must align one to one")


def _prf(tp: int, fp: int, fn: int, zero_division: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else zero_division
    recall = tp / (tp + fn) if tp + fn else zero_division
    # Same operation order as seqeval's F1, so the two agree to the last bit, not just to rounding.
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _scores(tp: Counter, fp: Counter, fn: Counter, zero_division: float, prefix: str = "") -> dict[str, Any]:
    """Micro scores over all types plus per-type scores, from per-type tp/fp/fn counts."""
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    precision, recall, f1 = _prf(total_tp, total_fp, total_fn, zero_division)
    per_type = {}
    for etype in sorted(set(tp) | set(fp) | set(fn)):
        p, r, f = _prf(tp[etype], fp[etype], fn[etype], zero_division)
        per_type[etype] = {
            f"{prefix}precision": p,
            f"{prefix}recall": r,
            f"{prefix}f1": f,
            f"{prefix}tp": tp[etype],
            f"{prefix}fp": fp[etype],
            f"{prefix}fn": fn[etype],
            f"{prefix}support": tp[etype] + fn[etype],
        }
    return {
        f"{prefix}precision": precision,
        f"{prefix}recall": recall,
        f"{prefix}f1": f1,
        f"{prefix}tp": total_tp,
        f"{prefix}fp": total_fp,
        f"{prefix}fn": total_fn,
        f"{prefix}support": total_tp + total_fn,
        f"{prefix}per_type": per_type,
    }


def span_scores(
    gold: Sequence[SentenceSpans], pred: Sequence[SentenceSpans], zero_division: float = 0.0
) -> dict[str, Any]:
    """Span-level exact-match micro precision, recall and F1, plus the same per entity type.

    A predicted span is a true positive when the same sentence has a gold span with the same start, end and type,
    i.e. the compared items are `(sentence index, start, end, type)`. Duplicated spans in one sentence count once.

    Args:
        gold (`Sequence[SentenceSpans]`):
            Per sentence, a `Sentence` or a sequence of `Span`/`(start, end, type)`.
        pred (`Sequence[SentenceSpans]`):
            The predictions, aligned with `gold` and in the same form.
        zero_division (`float`, *optional*, defaults to `0.0`):
            The value of a score whose denominator is 0 (see the module docstring).

    Returns:
        `dict[str, Any]`: `{"precision", "recall", "f1", "tp", "fp", "fn", "support", "per_type"}`, where `support` is
        the number of distinct gold spans and `per_type` maps each type seen in gold or pred (sorted) to a dict with the
        same keys except `per_type`.

    Raises:
        `ValueError`: if `gold` and `pred` differ in length (naming both lengths) or a span is malformed.
    """
    _check_lengths(gold, pred)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for gold_spans, pred_spans in zip(_span_sets(gold, "gold"), _span_sets(pred, "pred")):
        tp.update(s.type for s in gold_spans & pred_spans)
        fp.update(s.type for s in pred_spans - gold_spans)
        fn.update(s.type for s in gold_spans - pred_spans)
    return _scores(tp, fp, fn, zero_division)


def normalize_entity_string(text: str) -> str:
    """Lowercase and collapse runs of whitespace to one space (the form `string_scores` compares)."""
    return " ".join(text.lower().split())


def _string_counts(item: Any, tokens: list[str], side: str, index: int) -> Counter:
    """Multiset of `(type, normalised text)` for one sentence; spans are deduplicated first, strings are not."""
    if isinstance(item, Sentence):
        tokens, item = item.tokens, item.spans
    counts: Counter = Counter()
    spans = []
    for entry in item:
        if len(entry) == 2:  # (text, type), e.g. parsed straight from an LLM's answer
            text, etype = entry
            counts[(str(etype), normalize_entity_string(str(text)))] += 1
        else:
            spans.append(entry)
    for span in _span_sets([spans], side)[0]:
        if span.end > len(tokens):
            raise ValueError(f"{side} sentence {index}: span {tuple(span)!r} ends past its {len(tokens)} tokens")
        counts[(span.type, normalize_entity_string(" ".join(tokens[span.start : span.end])))] += 1
    return counts


def string_scores(
    gold: Sequence[Sentence],
    pred: Sequence[Sentence | Sequence[SpanLike | tuple[str, str]]],
    zero_division: float = 0.0,
) -> dict[str, Any]:
    """String-level micro precision, recall and F1, as some LLM-NER papers report them.

    Each entity becomes `(type, string)`, the string lowercased with whitespace collapsed (`normalize_entity_string`).
    Strings are compared per sentence and type as multisets: if gold has "Paris" twice as a location in one sentence
    and the prediction once, that is 1 true positive and 1 false negative; positions are ignored, so a prediction of
    the other "Paris" still counts. Predicted spans are deduplicated first (as in `span_scores`), so only distinct
    positions, or strings listed several times, add to the multiset.

    Args:
        gold (`Sequence[Sentence]`):
            The gold sentences; their tokens give the strings of spans on both sides.
        pred (`Sequence[Sentence | Sequence[SpanLike | tuple[str, str]]]`):
            Per sentence, a `Sentence` (its own tokens are used), or a sequence whose items are spans over the gold
            sentence's tokens (`Span`/`(start, end, type)`) or `(text, type)` pairs such as an LLM's raw answer.
        zero_division (`float`, *optional*, defaults to `0.0`):
            The value of a score whose denominator is 0 (see the module docstring).

    Returns:
        `dict[str, Any]`: `{"string_precision", "string_recall", "string_f1", "string_tp", "string_fp", "string_fn",
        "string_support", "string_per_type"}`; `string_per_type` maps each type to the same keys (but the last).

    Raises:
        `ValueError`: if `gold` and `pred` differ in length, or a span is malformed or reaches past the tokens.
    """
    _check_lengths(gold, pred)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for index, (gold_sentence, pred_item) in enumerate(zip(gold, pred)):
        if not isinstance(gold_sentence, Sentence):
            raise ValueError(f"gold sentence {index}: string_scores needs Sentence objects (their tokens)")
        gold_counts = _string_counts(gold_sentence, gold_sentence.tokens, "gold", index)
        pred_counts = _string_counts(pred_item, gold_sentence.tokens, "pred", index)
        for key in gold_counts | pred_counts:
            matched = min(gold_counts[key], pred_counts[key])
            tp[key[0]] += matched
            fp[key[0]] += pred_counts[key] - matched
            fn[key[0]] += gold_counts[key] - matched
    return _scores(tp, fp, fn, zero_division, prefix="string_")


def _overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def error_breakdown(gold: Sequence[SentenceSpans], pred: Sequence[SentenceSpans]) -> dict[str, int]:
    """Count prediction errors by kind, every predicted and every missed gold span in exactly one category.

    After deduplication (set semantics, as in `span_scores`), each predicted span `p` in a sentence is put in the
    first category that applies, in this order:

    1. `correct`: a gold span has the same start, end and type.
    2. `type`: a gold span has the same start and end but another type.
    3. `boundary`: `p` overlaps (shares at least one token with) a gold span of the same type, not exactly.
    4. `boundary_type` (the "boundary+type" error): `p` overlaps a gold span, none of them of its type.
    5. `spurious`: `p` overlaps no gold span.

    Each gold span is `missed` when no predicted span overlaps it. A gold span overlapped only by wrong predictions
    is not counted again here: its error is the prediction's category. Hence `correct` equals `span_scores`'s `tp`,
    the five prediction categories sum to `n_pred`, and `missed <= fn`.

    Args:
        gold (`Sequence[SentenceSpans]`):
            Per sentence, a `Sentence` or a sequence of `Span`/`(start, end, type)`.
        pred (`Sequence[SentenceSpans]`):
            The predictions, aligned with `gold` and in the same form.

    Returns:
        `dict[str, int]`: `{"correct", "type", "boundary", "boundary_type", "spurious", "missed", "n_pred", "n_gold"}`,
        all ints; `n_pred` and `n_gold` are the numbers of distinct predicted and gold spans.

    Raises:
        `ValueError`: if `gold` and `pred` differ in length (naming both lengths) or a span is malformed.
    """
    _check_lengths(gold, pred)
    counts = dict.fromkeys(ERROR_CATEGORIES, 0)
    counts.update(n_pred=0, n_gold=0)
    for gold_spans, pred_spans in zip(_span_sets(gold, "gold"), _span_sets(pred, "pred")):
        counts["n_gold"] += len(gold_spans)
        counts["n_pred"] += len(pred_spans)
        for p in pred_spans:
            overlapping = [g for g in gold_spans if _overlaps(p, g)]
            if p in gold_spans:
                category = "correct"
            elif any((g.start, g.end) == (p.start, p.end) for g in overlapping):
                category = "type"
            elif any(g.type == p.type for g in overlapping):
                category = "boundary"
            elif overlapping:
                category = "boundary_type"
            else:
                category = "spurious"
            counts[category] += 1
        counts["missed"] += sum(1 for g in gold_spans if not any(_overlaps(g, p) for p in pred_spans))
    return counts


def bio_span_scores(
    references: Sequence[Sequence[str]],
    predictions: Sequence[Sequence[str]],
    scheme: str = "bio",
    zero_division: float = 0.0,
) -> dict[str, Any]:
    """`span_scores` on tag sequences: decode each sentence's tags with `tags_to_spans`, then score the spans.

    Args:
        references (`Sequence[Sequence[str]]`):
            Gold tags, one sequence per sentence (e.g. `["B-PER", "I-PER", "O"]`).
        predictions (`Sequence[Sequence[str]]`):
            Predicted tags, aligned with `references` sentence by sentence and token by token.
        scheme (`str`, *optional*, defaults to `"bio"`):
            `bio`, `iob1` or `bioes`. In BIO an `I-X` that continues no `X` entity starts one (seqeval's default).
        zero_division (`float`, *optional*, defaults to `0.0`):
            As in `span_scores`.

    Returns:
        `dict[str, Any]`: the `span_scores` dict.

    Raises:
        `ValueError`: on different numbers of sentences or of tags in one sentence, or a tag that is not `O`/`P-TYPE`.
    """
    _check_lengths(references, predictions)
    gold, pred = [], []
    for index, (ref_tags, pred_tags) in enumerate(zip(references, predictions)):
        if len(ref_tags) != len(pred_tags):
            raise ValueError(f"sentence {index}: {len(ref_tags)} reference tags but {len(pred_tags)} predicted tags")
        gold.append(tags_to_spans(list(ref_tags), scheme)[0])
        pred.append(tags_to_spans(list(pred_tags), scheme)[0])
    return span_scores(gold, pred, zero_division=zero_division)
