"""N-way K-shot support sets and the INTRA / INTER few-shot settings.

Sampling is the greedy algorithm of Yang & Katiyar (EMNLP 2020): visit the N types from rarest to most frequent and
add random sentences holding the current type until it has at least K mentions. Mentions of the other chosen types
in those sentences count too, so frequent types usually end up with more than K. Few-NERD's variant (`max_2k=True`)
additionally refuses a sentence that would push any type above 2K mentions. Types outside the N are relabelled O.

Support sets are saved as plain BIO files, comparable with published ones, plus a JSON sidecar with how they were made.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cllmfs_trainer.data.io import DataFormatError, Sentence, read_conll, write_bio
from cllmfs_trainer.data.registry import DatasetInfo, EntityType, get_dataset
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import atomic_write_text, check_input_file

INTER_SOURCE = "ontonotes5"


@dataclass
class SupportSet:
    """A few-shot support set.

    Args:
        sentences (`list[Sentence]`):
            The support sentences, spans restricted to `types`.
        types (`list[str]`):
            The N type labels the set was sampled for.
        k (`int`):
            Minimum mentions per type.
        seed (`int`, *optional*):
            Sampling seed (None for a set loaded from elsewhere).
        source (`str`, *optional*, defaults to `""`):
            Where the sentences came from (a file or `dataset/split`).
        max_2k (`bool`, *optional*, defaults to `False`):
            Whether Few-NERD's at-most-2K rule was applied.
    """

    sentences: list[Sentence]
    types: list[str]
    k: int
    seed: int | None = None
    source: str = ""
    max_2k: bool = False

    def mention_counts(self) -> dict[str, int]:
        counts = Counter(span.type for sentence in self.sentences for span in sentence.spans)
        return {t: counts.get(t, 0) for t in self.types}

    def save(self, path: str | Path) -> None:
        """Write `path` (BIO) and `path` + `.json` (seed, N, K, types, source, counts)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bio(path, self.sentences)
        meta = {
            "n": len(self.types),
            "k": self.k,
            "seed": self.seed,
            "types": self.types,
            "source": self.source,
            "max_2k": self.max_2k,
            "sentences": len(self.sentences),
            "mentions": self.mention_counts(),
            "sentence_ids": [s.id for s in self.sentences],
        }
        atomic_write_text(f"{path}.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path, k: int | None = None, types: Sequence[str] | None = None) -> SupportSet:
        """Read a support set BIO file (ours or a published one); the sidecar JSON is used when present.

        Args:
            path (`str` or `Path`):
                The BIO file.
            k (`int`, *optional*):
                Shots per type (`make_task` checks that every type has that many mentions). Default: the sidecar's `k`,
                else the smallest count of mentions of a type.
            types (`Sequence[str]`, *optional*):
                The N types (default: the sidecar's, else those in the file).

        Raises:
            `DataFormatError`: naming the file for a set without sentences or entities, or a corrupt sidecar.
        """
        path = check_input_file(path, "support set")
        corpus = read_conll(path, allow_empty=False)  # nothing to train on
        meta_path = Path(f"{path}.json")
        meta = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DataFormatError(f"{meta_path}: corrupt support-set sidecar ({err}); fix or delete it") from None
            if not isinstance(meta, dict):
                raise DataFormatError(f"{meta_path}: expected a JSON object; fix or delete it")
        found_types = list(types or meta.get("types") or corpus.types())
        counts = Counter(span.type for sentence in corpus for span in sentence.spans)
        if not found_types or not any(counts[t] for t in found_types):
            of_types = f" of the types {found_types}" if found_types else " (every tag is O)"
            raise DataFormatError(f"{path}: the support set has no entities{of_types}; there is nothing to learn from")
        k = k if k is not None else meta.get("k", min((counts[t] for t in found_types), default=0))
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"k must be an integer >= 1, got {k!r}")
        return cls(
            corpus.sentences, found_types, k, meta.get("seed"), meta.get("source", str(path)), meta.get("max_2k", False)
        )


def sample_support_set(
    sentences: Sequence[Sentence],
    k: int,
    types: Sequence[str] | None = None,
    seed: int = 0,
    max_2k: bool = False,
    exclude: Iterable[Sentence] = (),
    source: str = "",
) -> SupportSet:
    """Greedy N-way K-shot sampling (see the module docstring); deterministic for a given seed and input order.

    Args:
        sentences (`Sequence[Sentence]`):
            The pool, e.g. a train split.
        k (`int`):
            Mentions wanted per type.
        types (`Sequence[str]`, *optional*):
            The N types; all types in the pool by default.
        seed (`int`, *optional*, defaults to `0`):
            Random seed.
        max_2k (`bool`, *optional*, defaults to `False`):
            Apply Few-NERD's rule that no type gets more than 2K mentions.
        exclude (`Iterable[Sentence]`, *optional*, defaults to `()`):
            Sentences that must not be picked (e.g. the query set); matched by their tokens.
        source (`str`, *optional*, defaults to `""`):
            Recorded in the support set.

    Raises:
        `ValueError`: if some type cannot reach K mentions from the pool.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UserError(f"k must be an integer >= 1, got {k!r}")
    types = sorted({s.type for sentence in sentences for s in sentence.spans}) if types is None else list(types)
    if not types:
        raise UserError(f"the pool {source or ''} has no entities to sample from".replace("  ", " "))
    excluded = {tuple(s.tokens) for s in exclude}
    pool = [s.restrict_types(types) for s in sentences if tuple(s.tokens) not in excluded]
    pool = [s for s in pool if s.spans]
    frequency = Counter(span.type for s in pool for span in s.spans)
    order = sorted(types, key=lambda t: (frequency[t], t))  # rarest first
    candidates = list(range(len(pool)))
    random.Random(seed).shuffle(candidates)

    counts = Counter()
    chosen: list[int] = []
    taken: set[int] = set()
    for etype in order:
        for index in candidates:
            if counts[etype] >= k:
                break
            sentence_counts = Counter(span.type for span in pool[index].spans)
            if index in taken or etype not in sentence_counts:
                continue
            if max_2k and any(counts[t] + c > 2 * k for t, c in sentence_counts.items()):
                continue
            chosen.append(index)
            taken.add(index)
            counts.update(sentence_counts)
        if counts[etype] < k:
            rule = " under the at-most-2K rule" if max_2k else ""
            raise UserError(
                f"type {etype!r} reaches only {counts[etype]} of {k} mentions{rule} "
                f"({frequency[etype]} in the pool of {len(pool)} sentences{f' from {source}' if source else ''}); "
                "use a smaller k or fewer types"
            )
    return SupportSet([pool[i] for i in chosen], list(types), k, seed, source, max_2k)


@dataclass
class FewShotTask:
    """One few-shot episode: what to train on and what to predict.

    Args:
        setting (`str`):
            `intra` (support and query from one dataset) or `inter` (support from OntoNotes, query elsewhere).
        support (`SupportSet`):
            The support set.
        query (`list[Sentence]`):
            Sentences to predict, with gold spans.
        train_types (`list[EntityType]`):
            Types of the support set, with names and descriptions.
        test_types (`list[EntityType]`):
            Types to extract from the query.
    """

    setting: str
    support: SupportSet
    query: list[Sentence]
    train_types: list[EntityType]
    test_types: list[EntityType]
    notes: dict[str, object] = field(default_factory=dict)


def query_subset(sentences: Sequence[Sentence], size: int | None, seed: int = 0) -> list[Sentence]:
    """A fixed random subset of `size` sentences, in their original order.

    Every caller (`cllmfs evaluate --query-size`, `make_task`, the benchmark) draws the subset here, with its own
    `query_seed`: the subset never depends on the support-set seed, so all seeds and methods meet the same query.

    Args:
        sentences (`Sequence[Sentence]`):
            The full split.
        size (`int` or `None`):
            How many to keep; `None`, or a size at least the split's, keeps them all.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the draw.

    Returns:
        `list[Sentence]`: the subset.
    """
    if size is None or size >= len(sentences):
        return list(sentences)
    if size < 0:
        raise ValueError(f"query size must be >= 0 or None, got {size}")
    keep = sorted(random.Random(seed).sample(range(len(sentences)), size))
    return [sentences[i] for i in keep]


def make_task(
    setting: str,
    dataset: str | DatasetInfo,
    k: int = 5,
    seed: int = 0,
    n_types: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    query_split: str = "test",
    query_size: int | None = None,
    max_2k: bool = False,
    support_set: str | Path | None = None,
    query_seed: int = 0,
) -> FewShotTask:
    """Build an INTRA or INTER episode.

    INTRA: the support set is sampled from `dataset`'s train split; the query is its test split. INTER: the support
    set is sampled from OntoNotes 5.0 train (all 18 types); the query is `dataset`'s test split with its own types.
    In both cases no query sentence can be in the support set.

    Args:
        setting (`str`):
            `intra` or `inter`.
        dataset (`str` or `DatasetInfo`):
            Registry key or `DatasetInfo` of the (target) dataset.
        k (`int`, *optional*, defaults to `5`):
            Shots per type.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the support-set sample.
        n_types (`Sequence[str]`, *optional*):
            Restrict the support set to these type labels (N-way); all types by default.
        data_dir (`str` or `Path`, *optional*):
            Data folder for datasets that are not shipped (see `DatasetInfo.split_path`).
        query_split (`str`, *optional*, defaults to `"test"`):
            Split to predict.
        query_size (`int`, *optional*):
            Predict a random subset of this many query sentences (the size is recorded in `notes`), drawn by
            `query_subset`, the same function the benchmark uses.
        max_2k (`bool`, *optional*, defaults to `False`):
            Few-NERD's at-most-2K sampling rule.
        support_set (`str` or `Path`, *optional*):
            Use this BIO file (ours or a published one) instead of sampling; its types become the N.
        query_seed (`int`, *optional*, defaults to `0`):
            Seed of the query subset; it does not depend on `seed`, so every support seed meets one query.
    """
    if not isinstance(setting, str) or setting.lower() not in ("intra", "inter"):
        raise UserError(f"setting must be 'intra' or 'inter', got {setting!r}")
    setting = setting.lower()
    target = get_dataset(dataset) if isinstance(dataset, str) else dataset
    if target.prior_only:  # the NER prior has seen its sentences and types: no few-shot claim can be made on it
        raise UserError(f"{target.title} is NER-prior data only, never a few-shot evaluation target")
    source = target if setting == "intra" else get_dataset(INTER_SOURCE)
    full_query = target.load(query_split, data_dir, allow_empty=False).sentences  # nothing to predict
    query = query_subset(full_query, query_size, query_seed)
    types = list(n_types) if n_types else [t.label for t in source.types]
    if support_set is not None:
        support = SupportSet.load(support_set, k=k, types=n_types)
        unknown = sorted(set(support.types) - set(types))
        if unknown:
            raise DataFormatError(
                f"{support_set}: types {unknown} are not among the {source.key!r} types {types}; "
                "extend them with a types file or pass n_types"
            )
        types = [t for t in types if t in support.types]
        counts = support.mention_counts()
        if any(counts[t] < k for t in types):
            # The run records k; a set with fewer mentions would be recorded as a K-shot run it is not.
            raise DataFormatError(
                f"{support_set}: k={k} but the support set has fewer mentions of some types ({counts}); pass "
                f"k <= {min(counts[t] for t in types)} or another support set"
            )
    else:
        pool = source.load("train", data_dir, allow_empty=False)
        support = sample_support_set(pool.sentences, k, types, seed, max_2k, exclude=full_query, source=pool.source)
    train_types = [source.type(t) for t in types]
    test_types = train_types if setting == "intra" else list(target.types)
    notes = {"query_size": len(query), "query_split_size": len(full_query)}
    return FewShotTask(setting, support, query, train_types, test_types, notes)
