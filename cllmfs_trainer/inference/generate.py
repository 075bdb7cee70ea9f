"""Batched entity extraction: one prompt per (sentence, type), constrained greedy decoding, spans out.

Decoding is greedy by default. The paper samples at temperature 0.01 with top-p, which is greedy in all but ties;
greedy is deterministic, so runs are reproducible and the fast and naive paths can be compared exactly.
`do_sample=True` with a temperature is available for those who want the paper's setting to the letter.

The batched decoding itself (prompts in, answers out) and its speed levers are in `answers.py`; the entity scores
in `scores.py`; raw texts to `Entity` objects in `extract.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import torch

from cllmfs_trainer.data.format import (
    ANSWER_FORMAT,
    PROMPT_FORMAT,
    build_prompt,
    check_answer_format,
    check_prompt_format,
)
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.splitting import merge_chunk_spans, shorten_long_words, split_sentence
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.answer_pieces import CompletionTemplate
from cllmfs_trainer.inference.answers import AnswerBatcher, Job  # noqa: F401 (Job: users import it here)
from cllmfs_trainer.inference.extract import Entity, TypesArgument, extract_entities
from cllmfs_trainer.inference.greedy import is_plain_greedy
from cllmfs_trainer.inference.hub import HubLoading
from cllmfs_trainer.inference.parse import ParseStats
from cllmfs_trainer.inference.scores import Prediction, resolve_types
from cllmfs_trainer.models import load_model, load_tokenizer, precision
from cllmfs_trainer.models.loading import check_model_reference
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger(__name__)


class EntityExtractor(AnswerBatcher, HubLoading):
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
        max_word_chars (`int`, *optional*, defaults to `256`):
            Longer words are cut to this length in the prompts (the spans keep their words). With
            `max_sentence_words`, it bounds a prompt; one past the model's context is refused with a `UserError`.
        reuse_prefix (`bool`, *optional*, defaults to `True`):
            Compute the shared prompt start (the type's instruction in format 1, the sentence in format 2) once and
            reuse its key/value states in every batch. Ignored with `num_beams` or `num_return_sequences` above 1, and
            for models whose cache is not a plain key/value cache (sliding windows, linear attention).
        prefill_answer (`bool`, *optional*, defaults to `True`):
            With `constrained`, feed the forced answer prefix with the prompt instead of generating it.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            The prompt format the model was trained with (`cllmfs_trainer.data.format.PROMPT_FORMATS`).
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
        max_word_chars: int = 256,
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
        bounds = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "max_word_chars": max_word_chars}
        for name, value in {**bounds, "max_sentence_words": max_sentence_words}.items():
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
        self.max_word_chars = max_word_chars
        self.reuse_prefix = reuse_prefix
        self.prefill_answer = prefill_answer
        self.prompt_format = check_prompt_format(prompt_format)
        self.answer_format = check_answer_format(answer_format)
        self.type_descriptions = type_descriptions
        self.compact_decoding = compact_decoding
        self.end_penalty = float(end_penalty)
        self.last_first_odds: list[dict[int, float]] = []  # per job of the last `generate` call, with one_type_per_span
        # Per job of the last `generate` call: the answer's ids and their log-probabilities (our loop only), for scores.
        self.last_answer_logprobs: list[tuple[list[int], list[float]] | None] = []
        self.run_types: list[EntityType] = []  # the run's types, which `extract` may ask for by label
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
        engine: str = "torch",
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
            engine (`str`, *optional*, defaults to `"torch"`):
                `"torch"`: our own loop on the merged model; `"vllm"`: vLLM serves the adapter (`vllm_engine`).
            kwargs (`dict[str, Any]`, *optional*):
                `EntityExtractor` arguments; `prompt_format`, `answer_format`, `type_descriptions`, `end_penalty` and
                `one_type_per_span` default to the run's.
        """
        from peft import PeftModel

        if engine != "torch":  # vllm_engine imports this module; its import is deferred
            from cllmfs_trainer.inference.vllm_engine import from_run_with_engine

            return from_run_with_engine(engine, run_dir, types, dtype, **kwargs)

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
        extractor = cls(model, tokenizer, types, **kwargs)
        extractor.run_types = [*run.test_types, *run.train_types]
        return extractor

    @property
    def gives_scores(self) -> bool:
        """Whether predictions carry a score per entity: constrained greedy decoding in our own loop."""
        return self.constrained and self.compact_decoding and is_plain_greedy(self.generation_kwargs, self.model)

    def known_types(self) -> list[EntityType]:
        """The extractor's types, then its run's others (first description wins): what `extract` knows by label."""
        known = {}
        for entity_type in [*self.types, *self.run_types]:
            known.setdefault(entity_type.label, entity_type)
        return list(known.values())

    @overload
    def extract(
        self, texts: str, types: TypesArgument = ..., threshold: float | None = ..., **kwargs: Any
    ) -> list[Entity]: ...

    @overload
    def extract(
        self, texts: Sequence[str], types: TypesArgument = ..., threshold: float | None = ..., **kwargs: Any
    ) -> list[list[Entity]]: ...

    def extract(
        self,
        texts: str | Sequence[str],
        types: TypesArgument = None,
        threshold: float | None = None,
        batch_size: int | None = None,
        split_sentences: bool = True,
        language: str = "en",
        progress: bool = False,
    ) -> list[Entity] | list[list[Entity]]:
        """Find entities in raw texts of any length, with character offsets and scores.

        Args:
            texts (`str` or `Sequence[str]`):
                One text, or a list of texts.
            types (`TypesArgument`, *optional*):
                The types to ask for in this call: labels of the extractor's or its run's types, `EntityType`s, or
                `{label: description}` (new types, or new descriptions). Default: the extractor's types.
            threshold (`float`, *optional*):
                Drop entities whose score is below this probability. Default: keep every entity decoding returns.
            batch_size (`int`, *optional*):
                Prompts per batch in this call (default: the extractor's `batch_size`).
            split_sentences (`bool`, *optional*, defaults to `True`):
                Split each text into sentences first (as the model was trained on sentences); False asks each text
                whole (still cut between words beyond `max_sentence_words`).
            language (`str`, *optional*, defaults to `"en"`):
                The language code for the sentence splitter (`sentencex`).
            progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar.

        Returns:
            `list[Entity] | list[list[Entity]]`: for one text its entities, for a list one list per text, in order;
            each list sorted by position. Cut sentences and answers are logged as warnings
            (`cllmfs_trainer.inference.extract`).
        """
        single = isinstance(texts, str)
        saved = self.batch_size
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
            self.batch_size = batch_size
        try:
            found = extract_entities(
                self, [texts] if single else list(texts), types, threshold, split_sentences, language, progress
            )
        finally:
            self.batch_size = saved
        return found[0] if single else found

    def predict(
        self, sentences: Sequence[Sentence], progress: bool = False, types: Sequence[EntityType] | None = None
    ) -> list[Prediction]:
        """Predict spans for every sentence and type, with their scores. Order of the output follows the input.

        Args:
            sentences (`Sequence[Sentence]`):
                The sentences (their spans are ignored).
            progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar.
            types (`Sequence[EntityType]`, *optional*):
                The types to ask for in this call (default: `self.types`).
        """
        self._automata = {}
        types = self.types if types is None else list(types)
        shown = shorten_long_words(sentences, self.max_word_chars)  # the same words, each at most max_word_chars
        chunks = [split_sentence(s, self.max_sentence_words) for s in shown]
        found: dict[tuple[int, int], list[Span]] = {}
        scores: dict[tuple[int, int], dict[Span, float]] = {}
        odds: dict[tuple[int, int], dict[Span, float]] = {}
        for places, texts, first_odds, answers in self._answer_blocks(chunks, progress, types):
            self._collect(chunks, places, texts, answers, found, scores)
            if self.one_type_per_span:
                self._span_odds(chunks, places, first_odds, found, odds)
        if self.one_type_per_span:
            found = {key: resolve_types(spans, odds.get(key, {})) for key, spans in found.items()}
        predictions = []
        for i, sentence in enumerate(sentences):
            pieces = range(len(chunks[i]))
            spans = merge_chunk_spans(chunks[i], [found.get((i, j), []) for j in pieces])
            # Shift each chunk's scores as merge_chunk_spans shifts its spans.
            shifted = {
                Span(span.start + chunks[i][j].offset, span.end + chunks[i][j].offset, span.type): score
                for j in pieces
                for span, score in scores.get((i, j), {}).items()
            }
            predictions.append(Prediction(sentence, spans, {span: shifted[span] for span in spans if span in shifted}))
        return predictions

    def _answer_blocks(self, chunks: list[list[Any]], progress: bool, types: Sequence[EntityType]):
        """Yield `(places, answers)`: one job per (chunk, type), answered together or in blocks of sentences.

        In format 1 the prompts of a type share its instruction, so the type is the prefix group and one `generate`
        call serves everything. In format 2 the prompts of a chunk share the chunk, so the chunk is the group; the
        chunks are taken in blocks of similar length, which bounds the cached prefixes held at once and the masked
        gap each row carries up to the block's longest prefix.
        """
        places = [
            (i, j, t) for i, sentence_chunks in enumerate(chunks) for j in range(len(sentence_chunks)) for t in types
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
            yield places, self.generate(jobs, progress), self.last_first_odds, self.last_answer_logprobs
            return
        pieces = sorted({(i, j) for i, j, _ in places}, key=lambda ij: len(chunks[ij[0]][ij[1]].sentence.tokens))
        blocks = [pieces[k : k + self.SENTENCES_PER_BLOCK] for k in range(0, len(pieces), self.SENTENCES_PER_BLOCK)]
        if progress:
            from tqdm.auto import tqdm

            blocks = tqdm(blocks, desc="extracting", unit="block")
        for block in blocks:
            block_places = [(i, j, t) for i, j in block for t in types]
            jobs = [
                Job(
                    build_prompt(chunks[i][j].sentence.text, t, self.prompt_format, self.type_descriptions),
                    chunks[i][j].sentence.tokens,
                    (i, j),
                )
                for i, j, t in block_places
            ]
            yield block_places, self.generate(jobs), self.last_first_odds, self.last_answer_logprobs
