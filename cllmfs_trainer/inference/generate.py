"""Batched entity extraction: one prompt per (sentence, type), constrained greedy decoding, spans out.

Decoding is greedy by default. The paper samples at temperature 0.01 with top-p, which is greedy in all but ties;
greedy is deterministic, so runs are reproducible and the fast and naive paths can be compared exactly.
`do_sample=True` with a temperature is available for those who want the paper's setting to the letter.

Speed levers used here: LoRA weights merged into the base model (`EntityExtractor.from_run`), prompts sorted by
length so a batch carries little padding, left padding so every row's generation starts at the same position, and
generation that ends at EOS, which the constraint forces right after `<im_end>`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList

from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.sft import IM_END, build_prompt
from cllmfs_trainer.data.splitting import merge_chunk_spans, split_sentence
from cllmfs_trainer.inference.constraints import EntityConstraintProcessor
from cllmfs_trainer.inference.parse import ParseStats, entities_to_spans, parse_output

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Predicted spans of one sentence, across all requested types (they may overlap: each type is asked alone)."""

    sentence: Sentence
    spans: list[Span] = field(default_factory=list)


class EntityExtractor:
    """Extracts entities of given types from sentences with a fine-tuned causal LM.

    Args:
        model: A causal LM (merge LoRA adapters first for speed; `from_run` does).
        tokenizer: Its tokenizer (must have a pad token).
        types: Types to extract, with names and descriptions.
        constrained: Restrict outputs to the template and to runs of the input's words.
        batch_size: Prompts per `generate` call.
        max_new_tokens: Bound on generated tokens per prompt.
        max_sentence_words: Longer sentences are split (never inside a gold span) and their predictions re-joined.
        generation_kwargs: Passed to `generate` (e.g. `do_sample=True, temperature=0.01, top_p=0.9`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        types: Sequence[EntityType],
        constrained: bool = True,
        batch_size: int = 32,
        max_new_tokens: int = 64,
        max_sentence_words: int = 128,
        **generation_kwargs: Any,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (cllmfs_trainer.modeling.ensure_pad_token adds one)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.types = list(types)
        self.constrained = constrained
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_sentence_words = max_sentence_words
        self.generation_kwargs = {"do_sample": False, **generation_kwargs}
        self.stats = ParseStats()
        self._automata: dict = {}  # one constraint automaton per sentence, shared by its types' prompts

    @classmethod
    def from_run(cls, run_dir: str | Path, types: Sequence[EntityType] | None = None, **kwargs: Any):
        """Load a training run folder (adapter + tokenizer + `cllmfs_run.json`), merging the LoRA weights."""
        from peft import PeftModel

        from cllmfs_trainer.modeling import load_model, load_tokenizer

        run_dir = Path(run_dir)
        meta_path = run_dir / "cllmfs_run.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a cllmfs run folder: {meta_path.name} is missing")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tokenizer = load_tokenizer(run_dir, padding_side="left")
        model = load_model(meta["base_model"])
        if (run_dir / "adapter_config.json").is_file():
            model = PeftModel.from_pretrained(model, run_dir).merge_and_unload()
        if types is None:
            types = [EntityType(**t) for t in meta["test_types"]]
        return cls(model, tokenizer, types, **kwargs)

    def predict(self, sentences: Sequence[Sentence], progress: bool = False) -> list[Prediction]:
        """Predict spans for every sentence and type. Order of the output follows the input."""
        self._automata = {}
        chunks = [split_sentence(s, self.max_sentence_words) for s in sentences]
        # One job per (chunk, type): prompt text, the chunk's words, and where the answer goes.
        jobs = [(build_prompt(c.sentence.text, t), c.sentence.tokens, (i, j, t.label))
                for i, sentence_chunks in enumerate(chunks) for j, c in enumerate(sentence_chunks) for t in self.types]
        found: dict[tuple[int, int], list[Span]] = {}
        outputs = self._generate([(prompt, words) for prompt, words, _ in jobs], progress)
        for (i, j, label), text in zip((job[2] for job in jobs), outputs):
            parsed = parse_output(text)
            match = entities_to_spans(chunks[i][j].sentence.tokens, parsed.entities, label)
            self.stats.update(parsed, match)
            found.setdefault((i, j), []).extend(match.spans)
        return [
            Prediction(sentence, merge_chunk_spans(chunks[i], [found.get((i, j), []) for j in range(len(chunks[i]))]))
            for i, sentence in enumerate(sentences)
        ]

    @torch.no_grad()
    def _generate(self, jobs: Sequence[tuple[str, list[str]]], progress: bool) -> list[str]:
        """Generate for (prompt, words) jobs, longest prompts first; returns decoded outputs in job order."""
        tokenizer = self.tokenizer
        encoded = tokenizer([prompt for prompt, _ in jobs])["input_ids"]  # one batched call, not one per prompt
        order = sorted(range(len(jobs)), key=lambda k: -len(encoded[k]))
        outputs: list[str] = [""] * len(jobs)
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="extracting", unit="batch")
        device = next(self.model.parameters()).device
        for batch in batches:
            width = max(len(encoded[k]) for k in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, k in enumerate(batch):  # left padding: every row's answer starts at `width`
                ids[row, width - len(encoded[k]) :] = torch.tensor(encoded[k])
                mask[row, width - len(encoded[k]) :] = 1
            extra: dict[str, Any] = {}
            if self.constrained:
                processor = EntityConstraintProcessor(tokenizer, [jobs[k][1] for k in batch], prompt_length=width,
                                                      cache=self._automata)
                extra["logits_processor"] = LogitsProcessorList([processor])
            else:  # without the constraint, also stop at the marker in case the model skips EOS
                extra.update(stop_strings=[IM_END], tokenizer=tokenizer)
            generated = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **self.generation_kwargs, **extra,
            )
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for k, text in zip(batch, texts):
                outputs[k] = text
        return outputs
