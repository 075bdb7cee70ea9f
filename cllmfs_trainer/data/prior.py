"""The NER prior's training data: general-NER corpora asked one type at a time, before any 5-shot stage.

A small model that has first learnt "find the entities of type T" on a broad mix learns a user's five examples per
type far better than one that starts from the plain base (the idea behind NuNER, GLiNER and Cuckoo). The mix uses
only corpora whose licenses allow shipping a model trained on them (`PRIOR_MIX`, licenses in
`cllmfs_trainer/data/registry.py`): Few-NERD's INTER *train* split and the general-NER corpora marked `prior_only`
in the registry. Never CoNLL-2003, WNUT'17 or OntoNotes: they are evaluation targets.

How a sentence becomes samples (the same prompts and answers as the 5-shot stage, `cllmfs_trainer.data.sft`):

- one sample per type present in the sentence, with its entities as the answer;
- about `absent_ratio` samples per present type for types of the sentence's *own* corpus that it does not hold,
  with the empty answer. Each corpus labels only its own types (Few-NERD's train split labels 36 fine types; BTC
  labels persons, places and organisations only), so asking a corpus' sentence for another corpus' type would teach
  a wrong "none" whenever that type is present but unlabelled there;
- fine-grained types keep their own names and descriptions; nothing is collapsed to coarse types.

Few-NERD's INTER test types (17 fine types, none in its train split) never enter the prior: 5-shot on them is the
benchmark's test of types the prior has not seen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cllmfs_trainer.data.format import ANSWER_FORMAT, PROMPT_FORMAT
from cllmfs_trainer.data.io import Sentence
from cllmfs_trainer.data.registry import DatasetInfo, EntityType, get_dataset
from cllmfs_trainer.data.sft import SFTSample, build_samples
from cllmfs_trainer.errors import UserError

# Few-NERD first: the largest corpus with the most fine types; then the corpora marked `prior_only` in the registry.
PRIOR_MIX = (
    "fewnerd",
    "wikigold",
    "btc",
    "crossner_politics",
    "crossner_science",
    "crossner_music",
    "crossner_literature",
    "crossner_ai",
    "sec_filings",
    "ncbi_disease",
    "anem",
    "uner_en_ewt",
    "uner_en_pud",
)
# Few-NERD may enter the prior only through its INTER train split: its test split holds the unseen types.
PRIOR_SPLITS = {"fewnerd": ("train",)}
# Datasets that are evaluation targets of the benchmark and may never be prior data.
EVALUATION_TARGETS = ("conll2003", "wnut17", "ontonotes5", "gum", "i2b2_2014", "fewnerd_unseen")


@dataclass
class PriorCorpus:
    """One corpus of the mix: its sentences (all prior splits) and the types it labels.

    Args:
        key (`str`):
            Registry key.
        sentences (`list[Sentence]`):
            Every sentence of its prior splits.
        types (`list[EntityType]`):
            The types that occur in those sentences, in registry order; absent types are drawn from these only.
    """

    key: str
    sentences: list[Sentence]
    types: list[EntityType]


def prior_splits(info: DatasetInfo) -> tuple[str, ...]:
    """The splits of `info` that may enter the prior.

    Raises:
        `UserError`: for a dataset that is an evaluation target rather than prior data.
    """
    if info.key in PRIOR_SPLITS:
        return PRIOR_SPLITS[info.key]
    if not info.prior_only:
        raise UserError(
            f"prior_corpora: {info.key!r} is an evaluation target, never NER-prior data; the prior corpora are "
            f"{', '.join(PRIOR_MIX)}"
        )
    return info.splits  # pre-training folders: every split may be used


def load_prior_corpora(keys: Sequence[str] = PRIOR_MIX, data_dir: str | Path | None = None) -> list[PriorCorpus]:
    """Read the mix's corpora from the data folder (`$CLLMFS_DATA_DIR` by default).

    Args:
        keys (`Sequence[str]`, *optional*, defaults to `PRIOR_MIX`):
            Registry keys of the corpora.
        data_dir (`str` or `Path`, *optional*):
            The data folder.

    Raises:
        `UserError`: for an unknown or evaluation dataset, a repeated key, or a missing file.
    """
    if len(set(keys)) != len(keys):
        raise UserError(f"prior_corpora: a corpus is listed twice in {list(keys)}")
    corpora = []
    for key in keys:
        info = get_dataset(key)
        sentences: list[Sentence] = []
        for split in prior_splits(info):
            try:
                sentences.extend(info.load(split, data_dir, allow_empty=False).sentences)
            except FileNotFoundError as err:
                raise UserError(f"prior_corpora: {err}") from None
        present = {span.type for sentence in sentences for span in sentence.spans}
        corpora.append(PriorCorpus(info.key, sentences, [t for t in info.types if t.label in present]))
    return corpora


def corpus_budgets(sizes: Sequence[int], total: int, temperature: float = 0.5) -> list[int]:
    """Sentences to draw from each corpus: `total` shared in proportion to size ** temperature, capped at the size.

    With temperature 0.5 Few-NERD (24,722 sentences) gets about 9x the share of a 300-sentence CrossNER domain instead
    of 80x, so small domains with many fine types are not drowned. What a capped corpus cannot give is shared out
    among the others.
    """
    if total < 1:
        raise ValueError(f"the sentence budget must be >= 1, got {total}")
    budgets = [0] * len(sizes)
    open_ = [i for i, size in enumerate(sizes) if size > 0]
    left = min(total, sum(sizes))
    while left > 0 and open_:
        weights = [sizes[i] ** temperature for i in open_]
        shares = [max(1, math.floor(left * w / sum(weights))) for w in weights]
        for i, share in zip(open_, shares):
            take = min(share, sizes[i] - budgets[i], left)
            budgets[i] += take
            left -= take
        open_ = [i for i in open_ if budgets[i] < sizes[i]]
    return budgets


@dataclass
class PriorDraw:
    """One drawn sentence and the types it is asked for (present ones first, then the absent ones)."""

    corpus: str
    sentence: Sentence
    types: list[EntityType]


def draw_prior(
    corpora: Sequence[PriorCorpus],
    sentences: int,
    absent_ratio: float = 1.0,
    seed: int = 0,
    temperature: float = 0.5,
) -> list[PriorDraw]:
    """Draw the prior's sentences and, per sentence, the types to ask (see the module docstring).

    Args:
        corpora (`Sequence[PriorCorpus]`):
            The mix (`load_prior_corpora`).
        sentences (`int`):
            Sentences in all (shared by `corpus_budgets`).
        absent_ratio (`float`, *optional*, defaults to `1.0`):
            Absent types asked per present type, drawn from the sentence's own corpus; a sentence with no entity is
            asked `ceil(absent_ratio)` absent types (so with a ratio of 0 it is left out).
        seed (`int`, *optional*, defaults to `0`):
            Seed of every draw.
        temperature (`float`, *optional*, defaults to `0.5`):
            Size exponent of the corpus shares.
    """
    if absent_ratio < 0 or not math.isfinite(absent_ratio):
        raise ValueError(f"absent_ratio must be a finite number >= 0, got {absent_ratio}")
    rng = random.Random(seed)
    budgets = corpus_budgets([len(c.sentences) for c in corpora], sentences, temperature)
    draws = []
    for corpus, budget in zip(corpora, budgets):
        by_label = {t.label: t for t in corpus.types}
        for index in sorted(rng.sample(range(len(corpus.sentences)), budget)):
            sentence = corpus.sentences[index]
            present = [by_label[label] for label in sorted({s.type for s in sentence.spans}) if label in by_label]
            absent = [t for t in corpus.types if t not in present]
            wanted = round(absent_ratio * len(present)) if present else math.ceil(absent_ratio)
            asked = present + rng.sample(absent, min(wanted, len(absent)))
            if asked:
                draws.append(PriorDraw(corpus.key, sentence, asked))
    rng.shuffle(draws)
    return draws


def prior_type_ids(corpora: Sequence[PriorCorpus]) -> dict[tuple[str, str], int]:
    """One id per (corpus, label), from 1: the contrastive labels of two corpora's same label stay apart."""
    pairs = [(corpus.key, t.label) for corpus in corpora for t in corpus.types]
    return {pair: index for index, pair in enumerate(pairs, start=1)}


def build_prior_samples(
    draws: Sequence[PriorDraw],
    type_ids: dict[tuple[str, str], int],
    prompt_format: int = PROMPT_FORMAT,
    answer_format: str = ANSWER_FORMAT,
    type_descriptions: bool = True,
) -> list[SFTSample]:
    """The SFT samples of the drawn sentences, with type ids over the whole mix (`prior_type_ids`).

    Args:
        draws (`Sequence[PriorDraw]`):
            From `draw_prior`.
        type_ids (`dict[tuple[str, str], int]`):
            From `prior_type_ids`.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            As for the 5-shot stage, which must use the same one.
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            As for the 5-shot stage.
        type_descriptions (`bool`, *optional*, defaults to `True`):
            As for the 5-shot stage.
    """
    samples = []
    for draw in draws:
        local_to_global = {i: type_ids[(draw.corpus, t.label)] for i, t in enumerate(draw.types, start=1)}
        for sample in build_samples([draw.sentence], draw.types, prompt_format, answer_format, type_descriptions):
            samples.append(
                replace(
                    sample,
                    type_id=local_to_global[sample.type_id],
                    gold_chars=[(a, b, local_to_global[t]) for a, b, t in sample.gold_chars],
                )
            )
    return samples


def prior_types(corpora: Sequence[PriorCorpus]) -> list[EntityType]:
    """Every type of the mix once per corpus, for the run record (a label may mean different things per corpus)."""
    return [replace(t, label=f"{corpus.key}:{t.label}") for corpus in corpora for t in corpus.types]
