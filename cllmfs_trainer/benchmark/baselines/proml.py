"""ProML (Chen, Zheng & Yang, Findings of ACL 2023): prompt-based metric learning for few-shot NER.

The method, as its paper and public code (AChen-qaq/ProML) define it:

- Every sentence is read through prompts that carry the labels' natural-language names (`EntityType.name`):
  - the *option prompt* prefixes the sentence with the episode's label names, `person , location : <sentence>`;
  - the *label-aware prompt* (support sentences only, since it needs their gold spans) writes each entity inline,
    `[ Barack Obama | person ] visited ...`.
  A word's vector is its first piece's hidden state averaged over the encoder's last four layers, read only at the
  sentence's own words. A support word's representation is the weighted average `mix_rate * option + (1 - mix_rate)
  * label-aware` (0.7, the published domain-transfer setting); a query word has only the option prompt.
- CONTaiNER's Gaussian heads (`gaussian_metric`) project these vectors; the distance is the sum
  of both KL directions. The loss is NCA: for a query word of label `y`, `-log(sum_{support s of label y} exp(-d) /
  sum_{all support s} exp(-d))`, averaged over query words whose label has support words.
- INTER: trained on N-way K-shot episodes sampled from the source data (OntoNotes), with warmup and linear decay; then,
  in INTER and INTRA alike, fine-tuned on the support set used as both sides of the loss (a word is never its own
  neighbour), until the loss grows by more than 5% or after 11 steps.
- Prediction: a query word takes the label of its nearest support word (top-1), by squared Euclidean distance in the
  averaged space (before the projection). Labels are IO; no Viterbi.

Where this differs from the public code (simplifications for our INTRA / INTER protocols and a CPU budget):

- Source training is capped at `ProMLConfig.source_steps` episodes (default 100 episodes of 5-way 1-shot with 1
  query per type; the code runs 10,000 steps of 4 episodes), and the same source model (5-way 1-shot episodes) serves
  every K, cached per (method, seed); the code trains one per K.
- The option prompt lists all the episode's type names, in a fixed order; the public code lists the names up to the
  largest label id present in each sentence, which at test time depends on the query's gold labels.
- Label names are this package's registry names (e.g. `geopolitical entity` for OntoNotes `GPE`), not ProML's own
  wording; the mix rate is fixed at 0.7 (the code's evaluation swept it, 0.1 to 0.9).
- Words are handled whole: the label-aware prompt brackets whole words, and the loss sees only first pieces (the
  code brackets subword pieces and counts continuation pieces in the loss's denominator).
- The loss is computed with log-sum-exp; the code takes `-log` of sums of `exp(-d)` and replaces the non-finite
  results (all positives underflowing to 0) by 0, which silences the hardest words. Query words without any positive
  are left out of the mean (the code counts them as 0).
- Fine-tuning encodes the support set once per step and uses the option-prompt vectors as the query side (the code
  runs a second forward pass, with its own dropout).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.benchmark.baselines.context import BaselineContext
from cllmfs_trainer.benchmark.baselines.gaussian_metric import (
    GaussianMetricNER,
    chunk_ranges,
    clean_words,
    encode_words,
    gaussian,
    label_ids,
    nearest_by_label,
    piece_counts,
)
from cllmfs_trainer.benchmark.baselines.gaussian_metric import (
    fit_predict as gaussian_fit_predict,
)
from cllmfs_trainer.benchmark.baselines.proml_parts import label_aware_prompt, option_prompt, proml_loss
from cllmfs_trainer.benchmark.baselines.token_baselines import OUTSIDE, labels_to_spans
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.data.sampling import sample_support_set

if TYPE_CHECKING:
    import torch


# (encoder words, positions of the sentence's words among them) for one chunk of one sentence
Inputs = list[tuple[list[str], list[int]]]


@dataclass(frozen=True)
class ProMLConfig:
    """ProML's settings: the published domain-transfer ones, except the CPU caps (see the module docstring).

    Args:
        projection_dim (`int`, *optional*, defaults to `128`):
            Gaussian embedding size (128).
        mix_rate (`float`, *optional*, defaults to `0.7`):
            Weight of the option prompt in a support word's representation (0.7).
        layers (`int`, *optional*, defaults to `4`):
            Top encoder layers averaged (4).
        max_length (`int`, *optional*, defaults to `128`):
            Encoder window in pieces (the code cuts sentences to 64 or 32 pieces; we allow 128).
        source_steps (`int`, *optional*, defaults to `100`):
            Source training steps (10,000 in the code).
        episode_ways (`int`, *optional*, defaults to `5`):
            Source episodes are N-way K-shot with Q query mentions per type; this is N (5 in the code's 1-shot run).
        episode_shots (`int`, *optional*, defaults to `1`):
            K, the shots per type of a source episode (1 in the code's 1-shot run).
        episode_queries (`int`, *optional*, defaults to `1`):
            Q, the query mentions per type of a source episode (1 in the code's 1-shot run).
        episodes_per_step (`int`, *optional*, defaults to `1`):
            Episodes per optimizer step (4 in the code's 1-shot run).
        lr (`float`, *optional*, defaults to `3e-5`):
            Learning rate (3e-5), with linear warmup over `warmup_ratio` of the steps (1,000 of 10,000) then decay.
        weight_decay (`float`, *optional*, defaults to `0.01`):
            AdamW weight decay except on biases and LayerNorm (0.01).
        finetune_lr (`float`, *optional*, defaults to `3e-5`):
            Learning rate of the fine-tuning on the support set (3e-5).
        max_finetune_steps (`int`, *optional*, defaults to `11`):
            Fine-tuning steps at most (11).
        finetune_tolerance (`float`, *optional*, defaults to `1.05`):
            Fine-tuning stops once a loss exceeds the previous one by this factor (1.05).
        topk (`int`, *optional*, defaults to `1`):
            Support words per label averaged at prediction (1).
    """

    projection_dim: int = 128
    mix_rate: float = 0.7
    layers: int = 4
    max_length: int = 128
    source_steps: int = 100
    episode_ways: int = 5
    episode_shots: int = 1
    episode_queries: int = 1
    episodes_per_step: int = 1
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    finetune_lr: float = 3e-5
    max_finetune_steps: int = 11
    finetune_tolerance: float = 1.05
    topk: int = 1


class ProMLNER(GaussianMetricNER):
    """ProML over any HF encoder; see the module docstring.

    Args:
        encoder (`str`):
            Encoder reference (see `GaussianMetricNER`).
        config (`ProMLConfig`, *optional*):
            Settings.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the heads, dropout, episodes and data order.
        device (`str`, *optional*):
            Where to train.

    Example:
        ```python
        ner = ProMLNER("minilm", seed=0)
        ner.train_source(ontonotes_sentences, get_dataset("ontonotes5").types)  # INTER only
        spans = ner.fit(support, get_dataset("wnut17").types).predict(query)
        ```
    """

    method_name = "proml"

    def __init__(self, encoder: str, config: ProMLConfig | None = None, seed: int = 0, device: str | None = None):
        self.config = config or ProMLConfig()
        scale = (self.config.projection_dim / 32) ** 0.5  # the code's initial scaling of the projections
        super().__init__(encoder, seed, self.config.projection_dim, scale, self.config.max_length, device)
        self.types: list[EntityType] = []
        self.finetune_steps = 0

    # --- prompts ------------------------------------------------------------------------------------------------------

    def _inputs(self, sentences: Sequence[Sentence], types: Sequence[EntityType], label_aware: bool):
        """Chunked prompts: `(option inputs, label-aware inputs or None, label ids per chunk)`.

        A chunk keeps every prompt of it within the window; the label-aware budget keeps room for the brackets of a
        span cut by a chunk boundary.
        """
        names = {t.label: t.name for t in types}
        prefix = option_prompt([t.name for t in types])
        budget = self.budget - sum(piece_counts(self.tokenizer, prefix))
        if budget < 1:
            raise ValueError(f"the option prompt of {len(types)} types leaves no room in a {self.window}-piece window")
        open_cost = piece_counts(self.tokenizer, ["["])[0]
        close_cost = {k: sum(piece_counts(self.tokenizer, ["|", *v.split(), "]"])) for k, v in names.items()}
        reserve = open_cost + max(close_cost.values())
        option: Inputs = []
        aware: Inputs = []
        labels: list[list[int]] = []
        for sentence in sentences:
            words, counts = clean_words(self.tokenizer, sentence.tokens)
            ids = label_ids(sentence, [t.label for t in types])
            spans = [s for s in sentence.spans if s.type in names]
            costs = [counts]
            budgets = [budget]
            if label_aware:
                extra = [0] * len(words)
                for s in spans:
                    extra[s.start] += open_cost
                    extra[s.end - 1] += close_cost[s.type]
                costs.append([c + e for c, e in zip(counts, extra)])
                budgets.append(self.budget - reserve)
            for start, end in chunk_ranges(costs, budgets):
                option.append(([*prefix, *words[start:end]], list(range(len(prefix), len(prefix) + end - start))))
                labels.append(ids[start:end])
                if label_aware:
                    clipped = [
                        Span(max(s.start, start) - start, min(s.end, end) - start, s.type)
                        for s in spans
                        if s.start < end and s.end > start
                    ]
                    aware.append(label_aware_prompt(words[start:end], clipped, names))
        return option, (aware if label_aware else None), labels

    def _encode(self, inputs: Inputs, batch_size: int | None = None) -> list[torch.Tensor]:
        """Vectors per input; one batch with gradients, or no-grad batches of similar lengths."""
        import torch

        if batch_size is None:
            return encode_words(self.model, self.tokenizer, inputs, self.window, self.config.layers)
        out: list[torch.Tensor | None] = [None] * len(inputs)
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][0]))
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                for i, v in zip(batch, self._encode([inputs[i] for i in batch])):
                    out[i] = v
        return out

    def _support_vectors(self, sentences, types, batch_size=None):
        """`(mixed vectors, option vectors, label ids)` of the support words, concatenated."""
        import torch

        option, aware, labels = self._inputs(sentences, types, label_aware=True)
        e_option = torch.cat(self._encode(option, batch_size))
        e_aware = torch.cat(self._encode(aware, batch_size))
        mixed = self.config.mix_rate * e_option + (1 - self.config.mix_rate) * e_aware
        return mixed, e_option, torch.tensor([x for ids in labels for x in ids], device=mixed.device)

    # --- training -----------------------------------------------------------------------------------------------------

    def _optimizer(self, lr: float):
        import torch

        decay, no_decay = [], []
        for module in (self.model, self.heads):
            for name, p in module.named_parameters():
                (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": no_decay, "weight_decay": 0}]
        return torch.optim.AdamW(groups, lr=lr)

    def _episode(self, pool: Sequence[Sentence], types: Sequence[EntityType], rng: random.Random):
        """An N-way K-shot support set and a disjoint query set from the source pool, and the episode's types."""
        cfg = self.config
        for _ in range(20):  # a draw whose types cannot all reach K in the pool is drawn again
            chosen = rng.sample(list(types), min(cfg.episode_ways, len(types)))
            labels = [t.label for t in chosen]
            try:
                support = sample_support_set(pool, cfg.episode_shots, labels, rng.randrange(2**31)).sentences
                query = sample_support_set(
                    pool, cfg.episode_queries, labels, rng.randrange(2**31), exclude=support
                ).sentences
            except ValueError:
                continue
            return support, query, chosen
        raise ValueError("could not sample a source episode: too few mentions per type in the pool")

    def train_source(self, sentences: Sequence[Sentence], types: Sequence[EntityType]) -> dict[str, Any]:
        """Episodic training on the source data: `source_steps` optimizer steps.

        Args:
            sentences (`Sequence[Sentence]`):
                The source sentences (e.g. OntoNotes train without the run's queries).
            types (`Sequence[EntityType]`):
                The source's entity types (their names go into the prompts).

        Returns:
            `dict`: steps, episodes, seconds and the last loss.
        """
        import torch
        from transformers import get_linear_schedule_with_warmup

        cfg, start = self.config, time.perf_counter()
        pool = [s for s in sentences if s.spans]
        rng = random.Random(self.seed)
        optimizer = self._optimizer(cfg.lr)
        schedule = get_linear_schedule_with_warmup(
            optimizer, math.ceil(cfg.warmup_ratio * cfg.source_steps), cfg.source_steps
        )
        self.train_mode(True)
        loss = torch.tensor(0.0)
        with self.seeded(1):
            for _ in range(cfg.source_steps):
                losses = []
                for _ in range(cfg.episodes_per_step):
                    support, query, chosen = self._episode(pool, types, rng)
                    s_mixed, _, s_labels = self._support_vectors(support, chosen)
                    option, _, q_ids = self._inputs(query, chosen, label_aware=False)
                    q_vectors = torch.cat(self._encode(option))
                    q_labels = torch.tensor([x for ids in q_ids for x in ids], device=q_vectors.device)
                    losses.append(
                        proml_loss(*gaussian(self.heads, q_vectors), q_labels, *gaussian(self.heads, s_mixed), s_labels)
                    )
                loss = torch.stack(losses).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        self.train_mode(False)
        return {
            "source_steps": cfg.source_steps,
            "source_episodes": cfg.source_steps * cfg.episodes_per_step,
            "source_seconds": round(time.perf_counter() - start, 1),
            "source_last_loss": round(float(loss.detach()), 4),
        }

    def fit(self, support: Sequence[Sentence], types: Sequence[EntityType]) -> ProMLNER:
        """Fine-tune on the support set (both sides of the loss) and store its words' representations.

        Args:
            support (`Sequence[Sentence]`):
                The labelled support sentences.
            types (`Sequence[EntityType]`):
                The episode's entity types, in the order the option prompt lists them.
        """
        cfg, self.types = self.config, list(types)
        if not any(s.tokens for s in support):
            raise ValueError("the support set has no words")
        optimizer = self._optimizer(cfg.finetune_lr)
        self.train_mode(True)
        previous, current, self.finetune_steps = math.inf, math.inf, 0
        with self.seeded(2):
            # The code's rule: go on while each loss stays within 5% of the previous one, at most 11 steps.
            while self.finetune_steps < cfg.max_finetune_steps and (
                self.finetune_steps < 2 or 0 < previous and current <= cfg.finetune_tolerance * previous
            ):
                mixed, option, labels = self._support_vectors(support, self.types)
                mu_s, var_s = gaussian(self.heads, mixed)
                mu_q, var_q = gaussian(self.heads, option)
                loss = proml_loss(mu_q, var_q, labels, mu_s, var_s, labels, exclude_self=True)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                self.finetune_steps += 1
                previous, current = current, float(loss.detach())
        self.train_mode(False)
        self._support, _, self._support_labels = self._support_vectors(support, self.types, batch_size=32)
        return self

    # --- prediction ---------------------------------------------------------------------------------------------------

    def predict_labels(self, query: Sequence[Sentence]) -> list[list[str]]:
        """One label (`O` or a type) per word of each query sentence; gold spans of `query` are ignored."""
        import torch

        if not self.types:
            raise RuntimeError("call fit(support, types) before predicting")
        names = [OUTSIDE, *(t.label for t in self.types)]
        unlabelled = [Sentence(list(s.tokens), [], s.id) for s in query]  # gold spans never reach the prompts
        option, _, labels = self._inputs(unlabelled, self.types, label_aware=False)
        vectors = self._encode(option, batch_size=32)
        if not option:
            return [[] for _ in query]
        scores = nearest_by_label(torch.cat(vectors), self._support, self._support_labels, len(names), self.config.topk)
        flat = [names[i] for i in scores.argmax(1).tolist()]
        out, offset = [], 0
        for sentence in query:
            out.append(flat[offset : offset + len(sentence.tokens)])
            offset += len(sentence.tokens)
        return out

    def predict(self, query: Sequence[Sentence]) -> list[list[Span]]:
        """Predicted spans (IO-decoded) per query sentence."""
        return [labels_to_spans(labels) for labels in self.predict_labels(query)]


# Settings the benchmark uses (tests replace them with smaller caps).
BENCHMARK_CONFIG = ProMLConfig()


def fit_predict(
    context: BaselineContext, support: list[Sentence], query: list[Sentence], test_types: list[EntityType]
) -> tuple[list[list[Span]], dict[str, Any]]:
    """The benchmark's `proml` method (see `gaussian_metric.fit_predict`)."""
    ner = ProMLNER(context.encoder, BENCHMARK_CONFIG, seed=context.seed)
    return gaussian_fit_predict(ner, BENCHMARK_CONFIG, context, support, query, test_types)
