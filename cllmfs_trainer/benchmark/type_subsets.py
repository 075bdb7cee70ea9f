"""Span scores over a subset of a dataset's types, from each unit's per-type counts.

Few-NERD's 17 INTER test types (`fewnerd_unseen`) are the benchmark's test of types the NER prior never saw. Four of
them are labelled, under names of their own, by other corpora of the prior's mix (docs/training.md, "Unseen types"),
so the report gives the figure over all 17 types and over the 13 that no prior corpus labels (`unseen_types.md`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

# Types of a target that some corpus of the NER prior labels under a type of its own (by name).
PRIOR_LABELLED = {
    "fewnerd_unseen": ("organization-politicalparty", "event-election", "art-music", "art-writtenart"),
}


def subset_f1(record: dict[str, Any], exclude: Sequence[str]) -> float:
    """Micro span F1 of one unit over its types other than `exclude` (from `span.per_type`'s tp, fp and fn)."""
    kept = [counts for label, counts in record["span"]["per_type"].items() if label not in exclude]
    tp, fp, fn = (sum(c[key] for c in kept) for key in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _cell(values: Sequence[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else " (1 seed)"
    return f"{statistics.fmean(values):.4f}{spread}"


def unseen_types_markdown(records: Sequence[dict[str, Any]]) -> str:
    """A table per dataset of `PRIOR_LABELLED` that the records hold: F1 over all types and without those types."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["dataset"] in PRIOR_LABELLED and "per_type" in record["span"]:
            groups[(record["dataset"], record["setting"], record["k"], record["method"])].append(record)
    if not groups:
        return ""
    lines = []
    for dataset in sorted({key[0] for key in groups}):
        excluded = PRIOR_LABELLED[dataset]
        lines += [
            f"## {dataset}: all {dataset} types, and without the {len(excluded)} that a prior corpus labels",
            "",
            f"Left out in the last column: {', '.join(f'`{label}`' for label in excluded)}. Span micro-F1, mean ± std "
            "over seeds, from each unit's per-type counts.",
            "",
            "| setting | K | method | seeds | span F1, all types | span F1, types no prior corpus labels |",
            "|---|---|---|---|---|---|",
        ]
        for (name, setting, k, method), group in sorted(groups.items()):
            if name == dataset:
                every = [r["span"]["f1"] for r in group]
                unseen = [subset_f1(r, excluded) for r in group]
                lines.append(f"| {setting} | {k} | {method} | {len(group)} | {_cell(every)} | {_cell(unseen)} |")
        lines.append("")
    return "\n".join(lines)
