"""Benchmark report: per-unit scores -> mean ± std tables in the paper's Table 1 layout, a PNG chart, error counts.

Everything written here is numbers and labels only (no dataset text), so a report may be committed whatever the
datasets' licenses.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cllmfs_trainer.benchmark.methods import METHODS, get_method, method_order, method_title
from cllmfs_trainer.benchmark.type_subsets import unseen_types_markdown

# Paper Table 1 (Zhang et al., ECAI 2024), CLLMFS with LLaMA-2-7B, micro-F1 averaged over five runs.
PAPER_TABLE1 = {
    "intra": {"wnut17": 0.5250, "gum": 0.3840, "i2b2_2014": 0.5800, "ontonotes5": 0.5765, "conll2003": 0.5750},
    "inter": {"wnut17": 0.4579, "gum": 0.2392, "i2b2_2014": 0.4413, "conll2003": 0.5128},
}
TABLE1_COLUMNS = ["wnut17", "gum", "i2b2_2014", "ontonotes5", "conll2003"]
COLUMN_TITLES = {
    "wnut17": "WNUT'17",
    "gum": "GUM",
    "i2b2_2014": "I2B2",
    "ontonotes5": "OntoNotes",
    "conll2003": "CoNLL'03",
}
ERROR_KINDS = ["correct", "boundary", "type", "boundary_type", "spurious", "missed"]


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    # Sample std (n - 1), as papers reporting "mean ± std over runs" use; a single run has no spread to report.
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every (setting, dataset, K, method), with summed error counts.

    Args:
        records (`Sequence[dict[str, Any]]`):
            Unit scores as written by `Benchmark.run_unit`.

    Returns:
        `list[dict[str, Any]]`: one summary per group, sorted by setting, dataset, K and method.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["setting"], record["dataset"], record["k"], record["method"])].append(record)
    summaries = []
    for (setting, dataset, k, method), group in sorted(groups.items()):
        summary: dict[str, Any] = {
            "setting": setting,
            "dataset": dataset,
            "k": k,
            "method": method,
            "seeds": sorted(r["seed"] for r in group),
            "query_size": group[0]["query_size"],
            "span_f1": _mean_std([r["span"]["f1"] for r in group]),
            "span_precision": _mean_std([r["span"]["precision"] for r in group]),
            "span_recall": _mean_std([r["span"]["recall"] for r in group]),
            "string_f1": _mean_std([r["string"]["f1"] for r in group]),
            "errors": {kind: sum(r["errors"][kind] for r in group) for kind in ERROR_KINDS},
        }
        fits = [r["support_fit"]["f1"] for r in group if r.get("support_fit")]
        if fits:
            summary["support_fit_f1"] = _mean_std(fits)
        summaries.append(summary)
    return summaries


def _find(rows: Sequence[dict[str, Any]], setting: str, dataset: str, method: str) -> dict[str, Any] | None:
    return next((s for s in rows if (s["setting"], s["dataset"], s["method"]) == (setting, dataset, method)), None)


def _cell(stat: dict[str, float] | None, full_n: int = 0) -> str:
    """`mean ± std`; with fewer runs than `full_n` (a table's other cells, e.g. a benchmark still running), says how
    many, so that an unfinished cell cannot pass for a finished one."""
    if stat is None:
        return "-"
    if stat["n"] == 1:  # one run has no spread; "± 0" would claim one
        return f"{stat['mean']:.4f} (1 seed)"
    count = f" ({stat['n']} seeds)" if stat["n"] < full_n else ""
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}{count}"


def table1_markdown(
    summaries: Sequence[dict[str, Any]], k: int, model: str, query_note: str, settings_note: str = ""
) -> str:
    """Markdown in the paper's Table 1 layout (settings x methods as rows, datasets as columns), span micro-F1.

    Args:
        summaries (`Sequence[dict[str, Any]]`):
            From `aggregate`.
        k (`int`):
            Which K to tabulate.
        model (`str`):
            The base model the figures come from, printed in the caption.
        query_note (`str`):
            How the query was drawn (e.g. "200 random test sentences"), printed in the caption.
        settings_note (`str`, *optional*, defaults to `""`):
            What the trained methods changed from their recipe (e.g. "prompt_format=2"), if anything.
    """
    rows = [s for s in summaries if s["k"] == k]
    columns = [c for c in TABLE1_COLUMNS if any(s["dataset"] == c for s in rows)]
    columns += sorted({s["dataset"] for s in rows} - set(columns))
    header = "| setting | method | " + " | ".join(COLUMN_TITLES.get(c, c) for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    full_n = max(len(s["seeds"]) for s in rows)
    for setting in ("intra", "inter"):
        methods = sorted({s["method"] for s in rows if s["setting"] == setting}, key=method_order)
        if not methods:
            continue
        for method in methods:
            cells = []
            for column in columns:
                match = _find(rows, setting, column, method)
                cells.append(_cell(match["span_f1"] if match else None, full_n))
            lines.append(f"| {setting.upper()} | {method_title(method)} | " + " | ".join(cells) + " |")
        paper = PAPER_TABLE1[setting]
        cells = [f"*{paper[c]:.4f}*" if c in paper else "-" for c in columns]
        lines.append(f"| {setting.upper()} | *paper: CLLMFS, LLaMA-2-7B* | " + " | ".join(cells) + " |")
    seeds = sorted({len(s["seeds"]) for s in rows})
    caption = (
        f"Span micro-F1, mean ± std over {'/'.join(map(str, seeds))} seed(s), {k}-shot, base model {model}, "
        f"query: {query_note}"
        + (f", recipe overrides: {settings_note}" if settings_note else "")
        + ". Rows in *italics* are the paper's figures (Zhang et al., ECAI 2024, Table 1; "
        "LLaMA-2-7B, five runs), not ours."
    )
    target_support = sorted(
        {
            s["method"]
            for s in rows
            if s["setting"] == "inter" and s["method"] in METHODS and get_method(s["method"]).uses_target_support
        },
        key=method_order,
    )
    if target_support:
        frozen = [method_title(m) for m in target_support if not get_method(m).trains_on_source]
        source = [method_title(m) for m in target_support if get_method(m).trains_on_source]
        caption += (
            f" {_names(frozen + source)} cannot label types they have no examples of, so in INTER they use the "
            "target's K-shot support set"
        )
        caption += "".join(
            [
                f"; {_names(frozen)} with their frozen encoder, which makes those rows equal to INTRA's"
                if frozen
                else "",
                f"; {_names(source)} after training their encoder on OntoNotes" if source else "",
            ]
        )
        caption += "."
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _names(titles: Sequence[str]) -> str:
    """ "A", "A and B", "A, B and C"."""
    return " and ".join(titles) if len(titles) < 3 else ", ".join(titles[:-1]) + " and " + titles[-1]


def details_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """Every group: span P/R/F1, string-level F1, support-set fit and the error breakdown."""
    columns = [
        "setting",
        "dataset",
        "K",
        "method",
        "seeds",
        "span P",
        "span R",
        "span F1",
        "string-level F1",
        "support fit F1",
        *ERROR_KINDS,
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in summaries:
        fit = _cell(s.get("support_fit_f1")) if s.get("support_fit_f1") else "-"
        lines.append(
            f"| {s['setting']} | {s['dataset']} | {s['k']} | {s['method']} | {len(s['seeds'])} | "
            f"{_cell(s['span_precision'])} | {_cell(s['span_recall'])} | {_cell(s['span_f1'])} | "
            f"{_cell(s['string_f1'])} | {fit} | " + " | ".join(str(s["errors"][kind]) for kind in ERROR_KINDS) + " |"
        )
    note = (
        "Error counts are summed over seeds. `boundary`: a prediction overlapping a gold span of its type without "
        "matching it; `type`: exact boundaries, wrong type; `boundary_type`: both wrong; `spurious`: overlaps no "
        "gold span; `missed`: gold spans no prediction overlaps (see "
        "`cllmfs_trainer.evaluation.metrics.error_breakdown`)."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def _boundary_rate(records: Sequence[dict[str, Any]]) -> str:
    # Boundary errors among the predictions that overlap a gold span: the paper's "boundary awareness", counted so
    # that a method making fewer predictions does not look better for it.
    errors = [r["errors"] for r in records]
    wrong = sum(e["boundary"] + e["boundary_type"] for e in errors)
    overlapping = wrong + sum(e["correct"] + e["type"] for e in errors)
    return f"{wrong}/{overlapping} ({wrong / overlapping:.2f})" if overlapping else "0/0"


def paired_markdown(records: Sequence[dict[str, Any]], reference: str = "cllmfs") -> str:
    """The reference method against every other method on the same support sets (seed by seed).

    Seeds vary the support set, and that spread is often larger than the gap between methods, so the table gives the
    paired difference of span F1 per seed (mean ± std), how many seeds the reference is ahead on, and each method's
    boundary errors among its predictions that overlap a gold span.

    Args:
        records (`Sequence[dict[str, Any]]`):
            Unit scores as written by `Benchmark.run_unit`.
        reference (`str`, *optional*, defaults to `"cllmfs"`):
            The method every other one is compared with.

    Returns:
        `str`: Markdown, or an empty string when no other method shares a seed with the reference.
    """
    units: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for record in records:
        units[(record["setting"], record["dataset"], record["k"])][record["method"]][record["seed"]] = record
    lines = []
    intra_first = sorted(units.items(), key=lambda item: (item[0][0] != "intra", *item[0][1:]))
    for (setting, dataset, k), by_method in intra_first:
        ours = by_method.get(reference, {})
        for method in sorted(set(by_method) - {reference}, key=method_order):
            seeds = sorted(set(ours) & set(by_method[method]))
            if not seeds:
                continue
            gaps = [ours[s]["span"]["f1"] - by_method[method][s]["span"]["f1"] for s in seeds]
            gap = f"{statistics.fmean(gaps):+.4f}" + (f" ± {statistics.stdev(gaps):.4f}" if len(gaps) > 1 else "")
            ahead = sum(g > 0 for g in gaps)
            lines.append(
                f"| {setting.upper()} | {COLUMN_TITLES.get(dataset, dataset)} | {k} | "
                f"{method_title(method)} | {len(seeds)} | {gap} | {ahead}/{len(seeds)} | "
                f"{_boundary_rate([ours[s] for s in seeds])} | "
                f"{_boundary_rate([by_method[method][s] for s in seeds])} |"
            )
    if not lines:
        return ""
    title = method_title(reference).split(" (")[0]  # "CLLMFS", not its long label
    header = (
        f"| setting | dataset | K | {title} vs | seeds | F1 difference | {title} ahead | boundary errors, "
        f"{title} | boundary errors, other |"
    )
    note = (
        f"F1 difference: {title}'s span F1 minus the other method's on the same support set, mean ± std over "
        "seeds. Boundary errors: predictions with wrong boundaries (`boundary` + `boundary_type`) among all "
        "predictions that overlap a gold span, summed over the paired seeds."
    )
    return note + "\n\n" + "\n".join([header, "|" + "---|" * 9, *lines]) + "\n"


def plot_f1(summaries: Sequence[dict[str, Any]], k: int, path: Path) -> None:
    """Grouped bar chart of span micro-F1 per (setting, dataset), one bar per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    rows = [s for s in summaries if s["k"] == k]
    groups = sorted({(s["setting"], s["dataset"]) for s in rows})
    methods = sorted({s["method"] for s in rows}, key=method_order)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 4.0))
    for m, method in enumerate(methods):
        means, stds = [], []
        for setting, dataset in groups:
            match = _find(rows, setting, dataset, method)
            means.append(match["span_f1"]["mean"] if match else 0.0)
            stds.append(match["span_f1"]["std"] if match else 0.0)
        positions = [g + (m - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(positions, means, width, yerr=stds, capsize=2, label=method_title(method))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{setting.upper()}\n{COLUMN_TITLES.get(d, d)}" for setting, d in groups])
    ax.set_ylabel("span micro-F1")
    ax.set_title(f"{k}-shot, mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def kshot_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """Span micro-F1 against K: one row per (setting, dataset, method), one column per K (the K-shot curve)."""
    ks = sorted({s["k"] for s in summaries})
    curves = sorted(
        {(s["setting"], s["dataset"], s["method"]) for s in summaries}, key=lambda c: (c[0], c[1], method_order(c[2]))
    )
    lines = ["| setting | dataset | method | " + " | ".join(f"K={k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 3)]
    full_n = max(len(s["seeds"]) for s in summaries)
    for setting, dataset, method in curves:
        cells = []
        for k in ks:
            match = _find([s for s in summaries if s["k"] == k], setting, dataset, method)
            cells.append(_cell(match["span_f1"] if match else None, full_n))
        lines.append(
            f"| {setting.upper()} | {COLUMN_TITLES.get(dataset, dataset)} | {method_title(method)} | "
            + " | ".join(cells)
            + " |"
        )
    return (
        "Span micro-F1 by shots per type (K), mean ± std over seeds; a cell with fewer seeds than the others says "
        "how many.\n\n" + "\n".join(lines) + "\n"
    )


def plot_f1_by_k(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Line chart of span micro-F1 against K, one line per (setting, dataset, method), std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for setting, dataset, method in sorted({(s["setting"], s["dataset"], s["method"]) for s in summaries}):
        points = sorted(
            (s["k"], s["span_f1"]["mean"], s["span_f1"]["std"])
            for s in summaries
            if (s["setting"], s["dataset"], s["method"]) == (setting, dataset, method)
        )
        ks, means, stds = zip(*points)
        ax.errorbar(
            ks,
            means,
            yerr=stds,
            marker="o",
            capsize=3,
            label=f"{setting.upper()} {COLUMN_TITLES.get(dataset, dataset)}: {method_title(method)}",
        )
    ax.set_xticks(sorted({s["k"] for s in summaries}))
    ax.set_xlabel("K (shots per type)")
    ax.set_ylabel("span micro-F1")
    ax.set_title("K-shot curve, mean ± std over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    model: str,
    query_note: str,
    settings_note: str = "",
    fingerprint: dict[str, Any] | None = None,
    reference: str = "cllmfs",
) -> Path:
    """Write results.json, table1.md (per K), details.md, paired.md (CLLMFS against each other method, seed by seed)
    and f1_k<K>.png into `out_dir`, and with several K the K-shot curve (kshot.md, f1_by_k.png); returns the folder.

    `fingerprint` (`BenchmarkConfig.fingerprint()`) goes into results.json, so that `Benchmark.restore_from` can
    check that a report belongs to the benchmark it restores into."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = aggregate(records)
    # Only numbers and ids: no sentence text, so the report can live in git.
    units = [{key: value for key, value in r.items()} for r in records]
    report = {
        "model": model,
        "query": query_note,
        "recipe_overrides": settings_note,
        "summary": summaries,
        "units": units,
    }
    if fingerprint is not None:
        report["fingerprint"] = fingerprint
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ks = sorted({s["k"] for s in summaries})
    tables = [f"## {k}-shot\n\n" + table1_markdown(summaries, k, model, query_note, settings_note) for k in ks]
    (out / "table1.md").write_text("\n".join(tables), encoding="utf-8")
    (out / "details.md").write_text(details_markdown(summaries), encoding="utf-8")
    paired = paired_markdown(records, reference)
    if paired:
        (out / "paired.md").write_text(paired, encoding="utf-8")
    unseen = unseen_types_markdown(records)
    if unseen:
        (out / "unseen_types.md").write_text(unseen, encoding="utf-8")
    for k in ks:
        plot_f1(summaries, k, out / f"f1_k{k}.png")
    if len(ks) > 1:
        (out / "kshot.md").write_text(kshot_markdown(summaries), encoding="utf-8")
        plot_f1_by_k(summaries, out / "f1_by_k.png")
    return out
