"""Per-(sentence, entity type) SFT samples and their tokenisation with `cl_labels`.

The text of each sample, its prompt and its completion, is written by `cllmfs_trainer.data.format` (`PromptFormat`);
see [method.md](../../docs/method.md) for the samples and `cl_labels`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cllmfs_trainer.data.format import (
    ANSWER_FORMAT,
    PROMPT_FORMAT,
    build_completion,
    check_answer_format,
    prompt_parts,
)
from cllmfs_trainer.data.io import Sentence
from cllmfs_trainer.data.registry import EntityType

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class SFTSample:
    """One prompt/completion pair, with what `cl_labels` needs.

    Args:
        prompt (`str`):
            Instruction, input sentence and the output cue.
        completion (`str`):
            The target output.
        type_label (`str`):
            Label of the queried type.
        type_id (`int`):
            1 + the index of the queried type in the task's type list (0 marks "outside" in `cl_labels`).
        sentence_id (`str`, *optional*, defaults to `""`):
            Id of the source sentence.
        sentence_chars (`tuple[int, int]`, *optional*, defaults to `(0, 0)`):
            `(start, end)` of the input sentence inside `prompt`.
        entity_chars (`list[tuple[int, int]]`, *optional*, defaults to `[]`):
            `(start, end)` inside `prompt` of each gold entity of the queried type.
        gold_chars (`list[tuple[int, int, int]]`, *optional*, defaults to `[]`):
            `(start, end, type_id)` inside `prompt` of every gold entity of the task's types, for the `gold` contrastive
            labels (each sentence token's own type, whatever the queried type).
    """

    prompt: str
    completion: str
    type_label: str
    type_id: int
    sentence_id: str = ""
    sentence_chars: tuple[int, int] = (0, 0)
    entity_chars: list[tuple[int, int]] = field(default_factory=list)
    gold_chars: list[tuple[int, int, int]] = field(default_factory=list)


def build_samples(
    sentences: Sequence[Sentence],
    types: Sequence[EntityType],
    prompt_format: int = PROMPT_FORMAT,
    answer_format: str = ANSWER_FORMAT,
    type_descriptions: bool = True,
) -> list[SFTSample]:
    """One sample per (sentence, type), types absent from the sentence included (they teach the empty output).

    Args:
        sentences (`Sequence[Sentence]`):
            Support sentences with gold spans.
        types (`Sequence[EntityType]`):
            The task's types; their order defines the type ids.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            1 (instruction first) or 2 (sentence first).
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            `marked` or `pointer` (see `build_completion`).
        type_descriptions (`bool`, *optional*, defaults to `True`):
            Whether each instruction gives the type's description (the paper) or its name alone.
    """
    check_answer_format(answer_format)
    samples = []
    type_ids = {t.label: i for i, t in enumerate(types, start=1)}
    for sentence in sentences:
        text = sentence.text
        word_chars = sentence.token_char_offsets()
        # Every gold span of the task's types, as character offsets in the sentence (the prompt adds `start`).
        gold = [
            (word_chars[s.start][0], word_chars[s.end - 1][1], type_ids[s.type])
            for s in sentence.spans
            if s.type in type_ids
        ]
        for type_id, entity_type in enumerate(types, start=1):
            before, after = prompt_parts(entity_type, prompt_format, type_descriptions)
            prompt, start = before + text + after, len(before)
            spans = [s for s in sentence.spans if s.type == entity_type.label]
            samples.append(
                SFTSample(
                    prompt=prompt,
                    completion=build_completion([sentence.span_text(s) for s in spans], answer_format),
                    type_label=entity_type.label,
                    type_id=type_id,
                    sentence_id=sentence.id,
                    sentence_chars=(start, start + len(text)),
                    entity_chars=[(start + word_chars[s.start][0], start + word_chars[s.end - 1][1]) for s in spans],
                    gold_chars=[(start + a, start + b, gold_type) for a, b, gold_type in gold],
                )
            )
    return samples


def _cl_labels(prompt: str, offsets: Sequence[tuple[int, int]], sample: SFTSample, mode: str = "query") -> list[int]:
    """Per prompt token, -100 outside the sentence; inside it, with `mode="query"` the queried type's id inside one of
    its gold spans and 0 elsewhere, with `mode="gold"` the id of the gold span's own type (0 outside any span)."""
    entities = [(a, b, sample.type_id) for a, b in sample.entity_chars] if mode == "query" else sample.gold_chars
    labels = []
    sent_start, sent_end = sample.sentence_chars
    for start, end in offsets:
        # Byte-level BPE and SentencePiece report leading spaces differently; judge a token by its visible chars.
        while start < end and prompt[start].isspace():
            start += 1
        while end > start and prompt[end - 1].isspace():
            end -= 1
        if start == end or end <= sent_start or start >= sent_end:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(next((t for e_start, e_end, t in entities if start < e_end and end > e_start), 0))
    return labels


@dataclass
class TokenizeStats:
    """What `tokenize_samples` did that the user should know about."""

    samples: int = 0
    truncated: int = 0
    dropped: int = 0  # truncated so far that no completion token was left
    max_length_seen: int = 0


def tokenize_sample(sample: SFTSample, tokenizer: Any, add_eos: bool = True) -> dict[str, list[int]]:
    """Tokenise one sample into `input_ids`, `attention_mask`, `labels` and `cl_labels` (untruncated).

    The prompt and the completion are tokenised separately and concatenated, which is exactly what the model sees at
    inference (prompt ids, then generated ids). `labels` are -100 on the prompt; the completion and the EOS are learned.
    `cl_labels` label sentence tokens by the queried type, `cl_gold_labels` by their own gold type (the trainer's
    `cl_label_mode` picks one); `type_id` and `has_entity` describe the sample for the sampler.
    """
    prompt = tokenizer(sample.prompt, add_special_tokens=True, return_offsets_mapping=True)
    completion_ids = tokenizer(sample.completion, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    prompt_ids = list(prompt["input_ids"])
    input_ids = prompt_ids + completion_ids
    after = [IGNORE_INDEX] * len(completion_ids)
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        "cl_labels": _cl_labels(sample.prompt, prompt["offset_mapping"], sample, "query") + after,
        "cl_gold_labels": _cl_labels(sample.prompt, prompt["offset_mapping"], sample, "gold") + after,
        # Per-sample facts for the sampler (`training.sampler`); the collator ignores them.
        "type_id": sample.type_id,
        "has_entity": int(bool(sample.entity_chars)),
    }


def tokenize_samples(
    samples: Sequence[SFTSample], tokenizer: Any, max_length: int | None = None, add_eos: bool = True
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Tokenise samples; rows longer than `max_length` are cut, all per-token columns together.

    A row cut so far that no completion token is left cannot teach anything and is dropped. Both cases are counted in
    the returned stats and logged; split long sentences first (`split_sentence`) to avoid them.
    """
    rows, stats = [], TokenizeStats()
    for sample in samples:
        row = tokenize_sample(sample, tokenizer, add_eos)
        stats.samples += 1
        stats.max_length_seen = max(stats.max_length_seen, len(row["input_ids"]))
        if max_length is not None and len(row["input_ids"]) > max_length:
            stats.truncated += 1
            row = {key: values[:max_length] if isinstance(values, list) else values for key, values in row.items()}
            if all(label == IGNORE_INDEX for label in row["labels"]):
                stats.dropped += 1
                continue
        rows.append(row)
    if stats.truncated:
        logger.warning(
            "%d of %d samples exceed max_length=%d (longest %d tokens) and were truncated; %d lost their whole "
            "completion and were dropped. Split long sentences with split_sentence() to avoid this.",
            stats.truncated,
            stats.samples,
            max_length,
            stats.max_length_seen,
            stats.dropped,
        )
    return rows, stats


def build_sft_dataset(
    sentences: Sequence[Sentence],
    types: Sequence[EntityType],
    tokenizer: Any,
    max_length: int | None = None,
    keep_text: bool = False,
    repeat_entity_samples: int = 1,
    prompt_format: int = PROMPT_FORMAT,
    answer_format: str = ANSWER_FORMAT,
    type_descriptions: bool = True,
) -> Any:
    """Build a tokenised `datasets.Dataset` for `ContrastiveSFTTrainer` (pass it with `skip_prepare_dataset`).

    Args:
        sentences (`Sequence[Sentence]`):
            Support sentences.
        types (`Sequence[EntityType]`):
            The task's types (their order defines the `cl_labels` ids).
        tokenizer (`Any`):
            A fast tokenizer (offset mappings are needed).
        max_length (`int`, *optional*):
            Cut longer rows (see `tokenize_samples`).
        keep_text (`bool`, *optional*, defaults to `False`):
            Also keep `prompt`, `completion` and `type` columns, for inspection.
        repeat_entity_samples (`int`, *optional*, defaults to `1`):
            Put every sample that has entities this many times in the dataset (1: as the paper). Most (sentence, type)
            pairs have no entity (74% for 5-shot WNUT'17, more with 18 OntoNotes types), and a small model then learns
            to answer "none" to everything; repeating the others rebalances that decision.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            1 (instruction first) or 2 (sentence first); prediction must use the same one.
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            `marked` or `pointer` (see `build_completion`); prediction must use the same one.
        type_descriptions (`bool`, *optional*, defaults to `True`):
            Whether each instruction gives the type's description (the paper) or its name alone; prediction must use
            the same choice.
    """
    if repeat_entity_samples < 1:
        raise ValueError(f"repeat_entity_samples must be >= 1, got {repeat_entity_samples}")
    samples = [
        sample
        for sample in build_samples(sentences, types, prompt_format, answer_format, type_descriptions)
        for _ in range(repeat_entity_samples if sample.entity_chars else 1)
    ]
    return samples_to_dataset(samples, tokenizer, max_length, keep_text, prompt_format)


def samples_to_dataset(
    samples: Sequence[SFTSample],
    tokenizer: Any,
    max_length: int | None = None,
    keep_text: bool = False,
    prompt_format: int = PROMPT_FORMAT,
) -> Any:
    """Tokenise built samples into the `datasets.Dataset` that `ContrastiveSFTTrainer` takes.

    Args:
        samples (`Sequence[SFTSample]`):
            From `build_samples` (or the NER prior's `build_prior_samples`).
        tokenizer (`Any`):
            A fast tokenizer.
        max_length (`int`, *optional*):
            Cut longer rows (see `tokenize_samples`).
        keep_text (`bool`, *optional*, defaults to `False`):
            Also keep `prompt`, `completion` and `type` columns.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            The samples' prompt format, recorded per row for the trainer's `cl_label_mode="auto"`.
    """
    import datasets  # deferred: importing datasets costs about a second

    rows, _ = tokenize_samples(samples, tokenizer, max_length)
    for row in rows:  # the trainer's `cl_label_mode="auto"` reads it
        row["prompt_format"] = prompt_format
    if keep_text and len(rows) == len(samples):
        for row, sample in zip(rows, samples):
            row.update(prompt=sample.prompt, completion=sample.completion, type=sample.type_label)
    return datasets.Dataset.from_list(rows)
