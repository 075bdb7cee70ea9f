"""Batched answers to extraction prompts: the decoding half of `EntityExtractor` (`AnswerBatcher`).

Speed levers used here, each of which leaves the generated tokens unchanged (up to floating-point noise, see below):

- LoRA weights merged into the base model (`EntityExtractor.from_run`).
- Prompts sorted by length, so a batch carries little padding; batches mix entity types.
- Prefix reuse (`reuse_prefix`): all prompts of a type begin with the same instruction, whose key/value states are
  computed once per `predict` call and copied into each batch's cache (`prefix_cache.SharedPrefixes`); the model only
  runs over the rest of each prompt.
- Answer prefill (`prefill_answer`, constrained decoding only): every answer starts with the same prefix
  (`<im_start> I can extract entities for you, the extracted entities are`), which the constraint forces token by
  token. We append its tokens to the prompt instead, so they cost one batched forward pass rather than one `generate`
  step each; the constraint still starts at the answer's first token and the budget `max_new_tokens` still counts
  them.
- Generation ends at EOS, which the constraint forces right after `<im_end>`.
- Constrained greedy decoding runs in our own loop (`greedy.constrained_greedy`, `compact_decoding`): a finished
  row leaves the batch at once instead of riding along until the batch's longest answer ends, and an answer that
  has started its forced ` <im_end>` ending is completed without the model. Sampling, beams and other
  `generate` options go through `generate`.

The computed values are the same as without these levers, but not bit for bit: a prefix computed alone, or answer
tokens computed in one pass, go through matrix products of other shapes, whose float sums may round differently. A
greedy choice between two tokens whose scores are that close can flip; `tests/test_generate.py` checks equality with
plain per-prompt `generate` on a random and on the real default model. `bench/inference.py` measures each lever
against the naive `generate` loop and checks that their answers agree.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import torch
from transformers import LogitsProcessorList

from cllmfs_trainer.data.format import IM_END, parse_output
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.automaton import build_automata
from cllmfs_trainer.inference.constraints import CompletionTemplate, EntityConstraintProcessor
from cllmfs_trainer.inference.data_parallel import gather_rows, my_share, process_group
from cllmfs_trainer.inference.greedy import constrained_greedy, is_plain_greedy
from cllmfs_trainer.inference.parse import entities_to_spans
from cllmfs_trainer.inference.prefix_cache import SharedPrefixes, shared_prefix_length
from cllmfs_trainer.inference.scores import group_scores

logger = logging.getLogger(__name__)


class Job(NamedTuple):
    """One prompt to answer: its text, the words the constraint may copy, and the group sharing its prefix."""

    prompt: str
    words: list[str]
    group: Hashable


class AnswerBatcher:
    """Answers prompts in batches with the speed levers above: `EntityExtractor`'s decoding half.

    It also parses the answers into spans with their scores (`_collect`) and first-token odds (`_span_odds`).
    It reads the decoding options `EntityExtractor.__init__` sets and documents (`model`, `tokenizer`, `constrained`,
    `batch_size`, `max_new_tokens`, `reuse_prefix`, `prefill_answer`, `answer_format`, `compact_decoding`,
    `end_penalty`, `one_type_per_span`, `generation_kwargs`), and fills `last_first_odds` and `last_answer_logprobs`
    for the jobs of the last `generate` call.
    """

    def _answer_prefill(self) -> tuple[int, ...]:
        """Token ids of the answer prefix to feed with the prompt; `()` when the answer is generated in full."""
        if not (self.constrained and self.prefill_answer):
            return ()
        if self._template is None:
            self._template = CompletionTemplate.from_tokenizer(self.tokenizer, self.answer_format)
        prefix = self._template.prefix
        # Keep at least one generated token: a budget that ends inside the prefix is left to plain generation.
        return prefix if len(prefix) < self.max_new_tokens else ()

    def _shared_prefixes(self, encoded: Sequence[list[int]], groups: Sequence[Hashable]) -> SharedPrefixes:
        """The groups' shared prefixes, computed by the model; all empty when prefix reuse is off or impossible."""
        members: dict[Hashable, list[list[int]]] = {}
        for ids, group in zip(encoded, groups):
            members.setdefault(group, []).append(ids)
        config = getattr(self.model, "generation_config", None)
        expands = (
            max(
                self.generation_kwargs.get(name, getattr(config, name, 1)) or 1
                for name in ("num_beams", "num_return_sequences")
            )
            > 1
        )
        if self.reuse_prefix and not expands:
            prefixes = {group: ids[0][: shared_prefix_length(ids)] for group, ids in members.items()}
            try:
                return SharedPrefixes(self.model, prefixes)
            except NotImplementedError as err:
                logger.warning("generating without prefix reuse: %s", err)
        return SharedPrefixes(self.model, dict.fromkeys(members, ()))

    def _check_context(self, encoded: Sequence[list[int]], jobs: Sequence[Job]) -> None:
        """Refuse a prompt that with its answer does not fit the model's context: the model would fail, or read
        positions it was never trained on, after a long wait."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        longest = max(range(len(encoded)), key=lambda k: len(encoded[k]))
        if isinstance(limit, int) and len(encoded[longest]) + self.max_new_tokens > limit:
            words = " ".join(jobs[longest].words)
            raise UserError(
                f"a prompt of {len(encoded[longest]):,} tokens plus {self.max_new_tokens} for the answer exceeds the "
                f"model's context of {limit:,} tokens (its text starts {words[:40]!r}); lower max_sentence_words "
                f"({self.max_sentence_words}) or max_word_chars ({self.max_word_chars})"
            )

    @torch.no_grad()
    def generate(self, jobs: Sequence[Job], progress: bool = False) -> list[str]:
        """Generate an answer for every job, in batches of similar length; returns decoded answers in job order.

        Args:
            jobs (`Sequence[Job]`):
                Prompts, with the words the constraint allows and the group whose prompts share a prefix.
            progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar over batches.

        Returns:
            `list[str]`: the decoded answers (special tokens skipped), answer prefix included.
        """
        if not jobs:
            return []
        tokenizer = self.tokenizer
        encoded = tokenizer([job.prompt for job in jobs])["input_ids"]  # one batched call, not one per prompt
        self._check_context(encoded, jobs)
        groups = [job.group for job in jobs]
        shared = self._shared_prefixes(encoded, groups)
        answer = list(self._answer_prefill())
        # What the model still has to read for each job: the prompt after its group's prefix, then the answer prefix.
        rests = [ids[shared.length(group) :] + answer for ids, group in zip(encoded, groups)]
        order = sorted(range(len(jobs)), key=lambda k: -len(rests[k]))
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        rank, world_size = process_group()  # under `accelerate launch`: this process's share of the batches
        batches = my_share(batches, rank, world_size)
        if progress and rank == 0:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="extracting", unit="batch")
        device = next(self.model.parameters()).device
        own_loop = self.compact_decoding and is_plain_greedy(self.generation_kwargs, self.model)
        outputs: list[str] = [""] * len(jobs)
        self.last_first_odds = [{} for _ in jobs]
        self.last_answer_logprobs = [None] * len(jobs)
        for batch in batches:
            # Row layout: [group prefix | masked gap up to shared.width | padding | rest]; the cache holds the first
            # shared.width columns and positions follow the mask, so each row reads as its unpadded prompt.
            width = shared.width + max(len(rests[k]) for k in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, k in enumerate(batch):
                length = shared.length(groups[k])
                ids[row, :length] = torch.tensor(encoded[k][:length], dtype=torch.long)
                ids[row, width - len(rests[k]) :] = torch.tensor(rests[k], dtype=torch.long)
                mask[row, :length] = 1
                mask[row, width - len(rests[k]) :] = 1
            answer_start = width - len(answer)  # the column of the answer's first token, fed or generated
            batch_groups = [groups[k] for k in batch]
            if self.constrained and own_loop:
                automata = build_automata(
                    tokenizer, [jobs[k].words for k in batch], cache=self._automata, answer_format=self.answer_format
                )
                first_odds: list[dict[int, float]] | None = [] if self.one_type_per_span else None
                logprobs: list[list[float]] = []
                answers = constrained_greedy(
                    self.model,
                    ids.to(device),
                    mask.to(device),
                    automata,
                    self.max_new_tokens - len(answer),
                    cache=shared.cache_for(batch_groups),
                    written=answer,
                    end_penalty=self.end_penalty,
                    first_odds=first_odds,
                    token_logprobs=logprobs,
                )
                for row, (k, tokens) in enumerate(zip(batch, answers)):
                    outputs[k] = tokenizer.decode(answer + tokens, skip_special_tokens=True)
                    # The prefilled prefix was forced: probability 1 under the constraint.
                    self.last_answer_logprobs[k] = (answer + tokens, [0.0] * len(answer) + logprobs[row])
                    if first_odds:
                        self.last_first_odds[k] = first_odds[row]
                continue
            extra: dict[str, Any] = shared.generate_kwargs(batch_groups)
            if self.constrained:
                processor = EntityConstraintProcessor(
                    tokenizer,
                    [jobs[k].words for k in batch],
                    prompt_length=answer_start,
                    cache=self._automata,
                    answer_format=self.answer_format,
                    end_penalty=self.end_penalty,
                )
                extra["logits_processor"] = LogitsProcessorList([processor])
            else:  # without the constraint, also stop at the marker in case the model skips EOS
                extra.update(stop_strings=[IM_END], tokenizer=tokenizer)
            generated = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=self.max_new_tokens - len(answer),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **self.generation_kwargs,
                **extra,
            )
            texts = tokenizer.batch_decode(generated[:, answer_start:], skip_special_tokens=True)
            for k, text in zip(batch, texts):
                outputs[k] = text
        if world_size > 1:  # every process continues with all the answers, in job order
            mine = {k: (outputs[k], self.last_first_odds[k], self.last_answer_logprobs[k]) for b in batches for k in b}
            for k, (text, odds, logprobs) in gather_rows(mine, world_size).items():
                outputs[k], self.last_first_odds[k], self.last_answer_logprobs[k] = text, odds, logprobs
        return outputs

    def _collect(self, chunks, places, texts, answers, found, scores) -> None:
        """Parse answers into spans of their chunks, with their scores; count malformed outputs in `self.stats`."""
        for (i, j, t), text, answer in zip(places, texts, answers):
            words = chunks[i][j].sentence.tokens
            parsed = parse_output(text, self.answer_format)
            match = entities_to_spans(words, parsed.entities, t.label)
            self.stats.update(parsed, match)
            found.setdefault((i, j), []).extend(match.spans)
            if answer is None or not parsed.entities:
                continue
            automaton = build_automata(self.tokenizer, [words], cache=self._automata, answer_format=self.answer_format)
            for span, score in zip(match.placed, group_scores(*answer, parsed.entities, automaton[0])):
                if span is not None and score is not None:
                    scores.setdefault((i, j), {})[span] = score

    def _span_odds(self, chunks, places, first_odds, found, odds) -> None:
        """Record, per chunk, the first-token log-odds of each span found under each type (for `resolve_types`)."""
        for (i, j, t), row_odds in zip(places, first_odds):
            words = chunks[i][j].sentence.tokens
            automaton = build_automata(self.tokenizer, [words], cache=self._automata, answer_format=self.answer_format)
            automaton = automaton[0]
            for span in found.get((i, j), []):
                if span.type != t.label or span in odds.setdefault((i, j), {}):
                    continue
                run = automaton.runs.get(" ".join(words[span.start : span.end]))
                odds[i, j][span] = row_odds.get(run[0], float("-inf")) if run else float("-inf")
