"""Batched entity extraction: one prompt per (sentence, type), constrained greedy decoding, spans out.

Decoding is greedy by default. The paper samples at temperature 0.01 with top-p, which is greedy in all but ties;
greedy is deterministic, so runs are reproducible and the fast and naive paths can be compared exactly.
`do_sample=True` with a temperature is available for those who want the paper's setting to the letter.

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
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import LogitsProcessorList

from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.sft import (
    ANSWER_FORMAT,
    IM_END,
    PROMPT_FORMAT,
    build_prompt,
    check_answer_format,
    check_prompt_format,
)
from cllmfs_trainer.data.splitting import merge_chunk_spans, split_sentence
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.constraints import CompletionTemplate, EntityConstraintProcessor, build_automata
from cllmfs_trainer.inference.greedy import constrained_greedy, is_plain_greedy
from cllmfs_trainer.inference.parse import ParseStats, entities_to_spans, parse_output
from cllmfs_trainer.inference.prefix_cache import SharedPrefixes, shared_prefix_length
from cllmfs_trainer.models import load_model, load_tokenizer, precision
from cllmfs_trainer.models.loading import check_model_reference
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Predicted spans of one sentence, across all requested types (they may overlap: each type is asked alone)."""

    sentence: Sentence
    spans: list[Span] = field(default_factory=list)


def resolve_types(spans: Sequence[Span], scores: dict[Span, float]) -> list[Span]:
    """Keep one type per `(start, end)`: the span with the highest score (missing: -inf; ties: the first given).

    Args:
        spans (`Sequence[Span]`):
            One chunk's predicted spans, possibly the same boundaries under several types.
        scores (`dict[Span, float]`):
            A score per span, e.g. its type prompt's log-odds of naming it at the first answer token.
    """
    best: dict[tuple[int, int], Span] = {}
    for span in spans:
        kept = best.get((span.start, span.end))
        if kept is None or scores.get(span, float("-inf")) > scores.get(kept, float("-inf")):
            best[span.start, span.end] = span
    return [span for span in spans if best[span.start, span.end] is span]


class Job(NamedTuple):
    """One prompt to answer: its text, the words the constraint may copy, and the group sharing its prefix."""

    prompt: str
    words: list[str]
    group: Hashable


class EntityExtractor:
    """Extracts entities of given types from sentences with a fine-tuned causal LM.

    Args:
        model (`Any`):
            A causal LM (merge LoRA adapters first for speed; `from_run` does).
        tokenizer (`Any`):
            Its tokenizer (must have a pad token).
        types (`Sequence[EntityType]`):
            Types to extract, with names and descriptions.
        constrained (`bool`, *optional*, defaults to `True`):
            Restrict outputs to the template and to runs of the input's words.
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per `generate` call.
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Bound on generated tokens per prompt (the answer prefix included).
        max_sentence_words (`int`, *optional*, defaults to `128`):
            Longer sentences are split (never inside a gold span) and their predictions re-joined.
        reuse_prefix (`bool`, *optional*, defaults to `True`):
            Compute the shared prompt start (the type's instruction in format 1, the sentence in format 2) once and
            reuse its key/value states in every batch. Ignored with `num_beams` or `num_return_sequences` above 1, and
            for models whose cache is not a plain key/value cache (sliding windows, linear attention).
        prefill_answer (`bool`, *optional*, defaults to `True`):
            With `constrained`, feed the forced answer prefix with the prompt instead of generating it.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            The prompt format the model was trained with (`cllmfs_trainer.data.sft.PROMPT_FORMATS`).
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            The answer format the model was trained with: `marked` (` <<< X >>>`) or `pointer` (` X >>>`).
        type_descriptions (`bool`, *optional*, defaults to `True`):
            Whether the model was trained with each type's description in its instruction (the paper) or its name
            alone; the prompts are built the same way.
        compact_decoding (`bool`, *optional*, defaults to `True`):
            With `constrained` and plain greedy decoding, decode in our own loop, which drops finished rows from the
            batch and skips model calls for forced endings (same tokens as `generate`).
        end_penalty (`float`, *optional*, defaults to `0.0`):
            With `constrained`, subtracted from the score of ending the answer wherever another entity could start
            (nats; above 0 trades precision for recall). A decision threshold, to be chosen on dev data.
        one_type_per_span (`bool`, *optional*, defaults to `False`):
            Each type is asked alone, so one span can come back under several types. Keep only the type whose prompt
            gave the highest log-odds of naming the span rather than none at the answer's first token
            (`resolve_types`). Needs pointer answers and constrained greedy decoding in our own loop.
        generation_kwargs (`dict[str, Any]`, *optional*):
            Passed to `generate` (e.g. `do_sample=True, temperature=0.01, top_p=0.9`).
    """

    SENTENCES_PER_BLOCK = 128  # format 2: chunks whose prefixes are cached at once

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        types: Sequence[EntityType],
        constrained: bool = True,
        batch_size: int = 32,
        max_new_tokens: int = 64,
        max_sentence_words: int = 128,
        reuse_prefix: bool = True,
        prefill_answer: bool = True,
        prompt_format: int = PROMPT_FORMAT,
        answer_format: str = ANSWER_FORMAT,
        type_descriptions: bool = True,
        compact_decoding: bool = True,
        end_penalty: float = 0.0,
        one_type_per_span: bool = False,
        **generation_kwargs: Any,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (cllmfs_trainer.models.ensure_pad_token adds one)")
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
            if not isinstance(value, int) or value < 1:  # a batch of 0 or a budget of 0 silently predicts nothing
                raise UserError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(end_penalty, bool) or not isinstance(end_penalty, (int, float)) or not math.isfinite(end_penalty):
            raise UserError(f"end_penalty must be a finite number, got {end_penalty!r}")
        if end_penalty and not constrained:
            raise UserError("end_penalty needs constrained decoding: without it the ending has no fixed token")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.types = list(types)
        self.constrained = constrained
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_sentence_words = max_sentence_words
        self.reuse_prefix = reuse_prefix
        self.prefill_answer = prefill_answer
        self.prompt_format = check_prompt_format(prompt_format)
        self.answer_format = check_answer_format(answer_format)
        self.type_descriptions = type_descriptions
        self.compact_decoding = compact_decoding
        self.end_penalty = float(end_penalty)
        self.last_first_odds: list[dict[int, float]] = []  # per job of the last `generate` call, with one_type_per_span
        self.generation_kwargs = {"do_sample": False, **generation_kwargs}
        self.one_type_per_span = one_type_per_span
        if one_type_per_span and not (
            constrained
            and compact_decoding
            and answer_format == "pointer"
            and is_plain_greedy(self.generation_kwargs, model)
        ):
            raise UserError(
                "one_type_per_span needs pointer answers and constrained greedy decoding in our own loop "
                "(constrained, compact_decoding, no sampling or beams)"
            )
        self.stats = ParseStats()
        self._automata: dict = {}  # one constraint automaton per sentence, shared by its types' prompts
        self._template: CompletionTemplate | None = None

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        types: Sequence[EntityType] | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ):
        """Load a training run folder (`cllmfs_trainer.run_folder.RunFolder`), merging its LoRA weights.

        Args:
            run_dir (`str` or `Path`):
                The run folder the training script wrote.
            types (`Sequence[EntityType]`, *optional*):
                Types to extract (default: the run's test types).
            dtype (`str` or `torch.dtype`, *optional*):
                Cast the merged model to this dtype (e.g. `"bfloat16"` to halve its memory). The scores change slightly,
                so answers can differ from float32 ones. The LoRA weights are merged before the cast, in the precision
                the base model loads in. `"auto"` on a CPU takes whichever of bfloat16 and float32 a matmul probe finds
                faster there (`cllmfs_trainer.models.precision`); elsewhere it keeps the loaded precision. `None` keeps
                the loaded precision (float32 on a CPU).
            kwargs (`dict[str, Any]`, *optional*):
                `EntityExtractor` arguments; `prompt_format`, `answer_format`, `type_descriptions`, `end_penalty` and
                `one_type_per_span` default to the run's.
        """
        from peft import PeftModel

        run = RunFolder.load(run_dir)  # refuses a folder without its weights: never predict with an untrained model
        run.check_tokenizer()
        if run.weights == "adapter":
            check_model_reference(run.base_model, f"{run.run_file}: field 'base_model':", weights=True)
        tokenizer = load_tokenizer(run.path, padding_side="left")
        if run.weights == "adapter":
            model = PeftModel.from_pretrained(load_model(run.base_model), run.path).merge_and_unload()
        else:
            model = load_model(run.path)
        if dtype == "auto":
            dtype = None
            if next(model.parameters()).device.type == "cpu":
                dtype = precision.probe_cpu_dtype("predicting")
        if dtype is not None:
            cast = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
            if not isinstance(cast, torch.dtype):
                raise UserError(f"unknown dtype {dtype!r}: use e.g. 'float32' or 'bfloat16'")
            model = model.to(cast)
        if types is None:
            types = run.test_types
        kwargs.setdefault("prompt_format", run.prompt_format)
        kwargs.setdefault("answer_format", run.answer_format)
        kwargs.setdefault("type_descriptions", run.type_descriptions)
        # The run's threshold belongs to constrained decoding; unconstrained prediction has no ending choice to move.
        kwargs.setdefault("end_penalty", run.end_penalty if kwargs.get("constrained", True) else 0.0)
        kwargs.setdefault("one_type_per_span", run.one_type_per_span and kwargs.get("constrained", True))
        return cls(model, tokenizer, types, **kwargs)

    def predict(self, sentences: Sequence[Sentence], progress: bool = False) -> list[Prediction]:
        """Predict spans for every sentence and type. Order of the output follows the input."""
        self._automata = {}
        chunks = [split_sentence(s, self.max_sentence_words) for s in sentences]
        found: dict[tuple[int, int], list[Span]] = {}
        odds: dict[tuple[int, int], dict[Span, float]] = {}
        for places, texts, first_odds in self._answer_blocks(chunks, progress):
            self._collect(chunks, places, texts, found)
            if self.one_type_per_span:
                self._span_odds(chunks, places, first_odds, found, odds)
        if self.one_type_per_span:
            found = {key: resolve_types(spans, odds.get(key, {})) for key, spans in found.items()}
        return [
            Prediction(sentence, merge_chunk_spans(chunks[i], [found.get((i, j), []) for j in range(len(chunks[i]))]))
            for i, sentence in enumerate(sentences)
        ]

    def _answer_blocks(self, chunks: list[list[Any]], progress: bool):
        """Yield `(places, answers)`: one job per (chunk, type), answered together or in blocks of sentences.

        In format 1 the prompts of a type share its instruction, so the type is the prefix group and one `generate`
        call serves everything. In format 2 the prompts of a chunk share the chunk, so the chunk is the group; the
        chunks are taken in blocks of similar length, which bounds the cached prefixes held at once and the masked
        gap each row carries up to the block's longest prefix.
        """
        places = [
            (i, j, t)
            for i, sentence_chunks in enumerate(chunks)
            for j in range(len(sentence_chunks))
            for t in self.types
        ]
        if self.prompt_format == 1:
            jobs = [
                Job(
                    build_prompt(chunks[i][j].sentence.text, t, 1, self.type_descriptions),
                    chunks[i][j].sentence.tokens,
                    t.label,
                )
                for i, j, t in places
            ]
            yield places, self.generate(jobs, progress), self.last_first_odds
            return
        pieces = sorted({(i, j) for i, j, _ in places}, key=lambda ij: len(chunks[ij[0]][ij[1]].sentence.tokens))
        blocks = [pieces[k : k + self.SENTENCES_PER_BLOCK] for k in range(0, len(pieces), self.SENTENCES_PER_BLOCK)]
        if progress:
            from tqdm.auto import tqdm

            blocks = tqdm(blocks, desc="extracting", unit="block")
        for block in blocks:
            block_places = [(i, j, t) for i, j in block for t in self.types]
            jobs = [
                Job(
                    build_prompt(chunks[i][j].sentence.text, t, self.prompt_format, self.type_descriptions),
                    chunks[i][j].sentence.tokens,
                    (i, j),
                )
                for i, j, t in block_places
            ]
            yield block_places, self.generate(jobs), self.last_first_odds

    def _collect(self, chunks, places, texts, found: dict[tuple[int, int], list[Span]]) -> None:
        """Parse answers into spans of their chunks, counting malformed outputs in `self.stats`."""
        for (i, j, t), text in zip(places, texts):
            parsed = parse_output(text, self.answer_format)
            match = entities_to_spans(chunks[i][j].sentence.tokens, parsed.entities, t.label)
            self.stats.update(parsed, match)
            found.setdefault((i, j), []).extend(match.spans)

    def _span_odds(self, chunks, places, first_odds, found, odds) -> None:
        """Record, per chunk, the first-token log-odds of each span found under each type (for `resolve_types`)."""
        for (i, j, t), row_odds in zip(places, first_odds):
            words = chunks[i][j].sentence.tokens
            automaton = build_automata(self.tokenizer, [words], cache=self._automata, answer_format=self.answer_format)[
                0
            ]
            for span in found.get((i, j), []):
                if span.type != t.label or span in odds.setdefault((i, j), {}):
                    continue
                run = automaton.runs.get(" ".join(words[span.start : span.end]))
                odds[i, j][span] = row_odds.get(run[0], float("-inf")) if run else float("-inf")

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
        groups = [job.group for job in jobs]
        shared = self._shared_prefixes(encoded, groups)
        answer = list(self._answer_prefill())
        # What the model still has to read for each job: the prompt after its group's prefix, then the answer prefix.
        rests = [ids[shared.length(group) :] + answer for ids, group in zip(encoded, groups)]
        order = sorted(range(len(jobs)), key=lambda k: -len(rests[k]))
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="extracting", unit="batch")
        device = next(self.model.parameters()).device
        own_loop = self.compact_decoding and is_plain_greedy(self.generation_kwargs, self.model)
        outputs: list[str] = [""] * len(jobs)
        self.last_first_odds = [{} for _ in jobs]
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
                )
                for row, (k, tokens) in enumerate(zip(batch, answers)):
                    outputs[k] = tokenizer.decode(answer + tokens, skip_special_tokens=True)
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
        return outputs
