"""CONTaiNER (Das et al., ACL 2022): contrastive learning of Gaussian word embeddings, nearest-neighbour tagging.

The method, as its paper and public code (psunlpgroup/CONTaiNER) define it:

- Two heads on the encoder's last hidden state `h` give every word a diagonal Gaussian: mean `W_mu relu(h)` and
  variance `elu(W_sigma relu(h)) + 1` (always positive). A word is represented by its first subword piece, and words
  are labelled IO (the B- and I- tags of a type are one label).
- The loss pulls words of the same label together. For an anchor word `p` with `X_p` the other words of the batch
  sharing its label, it is `-log(mean_{q in X_p} exp(-d(p, q)) / sum_{q != p} exp(-d(p, q)))`, with `d` the symmetric
  KL divergence `(KL(p||q) + KL(q||p)) / 2`, averaged over the anchors that have a positive.
- INTER (domain transfer): trained on the source data (OntoNotes) first, in batches of sentences whose entity words
  are the anchors; then adapted to the target's support set, the whole set as one batch with `O` words as anchors too,
  step after step until the loss rises. INTRA: only the adaptation, from the pre-trained encoder.
- Prediction: each query word gets, per label, the score of its nearest support word (negative squared Euclidean
  distance between the L2-normalised last hidden states, i.e. before the heads, as in the published evaluation
  command), then the best label, or Viterbi decoding (the paper's "+ Viterbi") over StructShot's abstract transitions
  (O->O, O->entity, entity->O, same entity, other entity, and from the start), estimated from the source's tags (from
  the support set in INTRA) and flattened by a temperature (0.01 in the published command).

Where this differs from the public code:

- Source training is capped at `ContainerConfig.source_steps` batches of `batch_size` sentences (defaults: 100 x 16 =
  1,600 OntoNotes sentences, a few minutes on two CPU cores) instead of whole epochs, and the adaptation at
  `max_finetune_steps` steps. Both caps make the INTER figures an under-trained CONTaiNER, not the paper's.
- The loss uses the natural logarithm (the code uses log2: a constant factor).
- Sentences longer than the encoder window are cut between words into chunks (the code truncates them).
- A query word identical to a support word keeps its exact match (the code's per-label maximum drops scores of 0).

The Gaussian heads, the word encoding and the source cache are in `gaussian_metric`, shared with ProML
(`cllmfs_trainer.benchmark.baselines.proml`), which builds on CONTaiNER's Gaussian embeddings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.benchmark.baselines.context import BaselineContext
from cllmfs_trainer.benchmark.baselines.encoder import Encoder
from cllmfs_trainer.benchmark.baselines.gaussian_metric import (
    GaussianMetricNER,
    chunk_ranges,
    clean_words,
    encode_words,
    gaussian,
    label_ids,
    nearest_by_label,
    symmetric_kl,
)
from cllmfs_trainer.benchmark.baselines.gaussian_metric import (
    fit_predict as gaussian_fit_predict,
)
from cllmfs_trainer.benchmark.baselines.token_baselines import OUTSIDE, labels_to_spans, token_labels
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType

if TYPE_CHECKING:  # torch and transformers are imported lazily, as in the rest of the package
    import torch


# --- The loss ---------------------------------------------------------------------------------------------------------


def container_loss(
    mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, outside_anchors: bool = False
) -> torch.Tensor:
    """CONTaiNER's contrastive loss over the words of one batch (see the module docstring).

    Args:
        mu (`torch.Tensor`):
            `(n, dim)` Gaussian means.
        var (`torch.Tensor`):
            `(n, dim)` Gaussian variances.
        labels (`torch.Tensor`):
            `(n,)` label ids, 0 being `O`.
        outside_anchors (`bool`, *optional*, defaults to `False`):
            Whether `O` words are anchors too (the adaptation's setting; source training uses only entity words as
            anchors, while `O` words still count in every denominator).

    Returns:
        `torch.Tensor`: a scalar, the mean over anchors with at least one positive; 0 (still attached to the graph)
        without any.
    """
    import torch

    n = len(labels)
    scores = -symmetric_kl(mu, var, mu, var)
    others = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & others
    anchors = positives.any(1) if outside_anchors else positives.any(1) & (labels != 0)
    if not anchors.any():
        return scores.sum() * 0.0
    scores, positives, others = scores[anchors], positives[anchors], others[anchors]
    log_mean_pos = torch.logsumexp(scores.masked_fill(~positives, -math.inf), 1) - positives.sum(1).log()
    log_all = torch.logsumexp(scores.masked_fill(~others, -math.inf), 1)
    return (log_all - log_mean_pos).mean()


# --- Viterbi over abstract transitions --------------------------------------------------------------------------------

PRIOR_KEYS = ("start_o", "start_i", "o_o", "o_i", "i_o", "i_same", "i_other")


def transition_priors(tag_rows: Iterable[Sequence[str]]) -> dict[str, float]:
    """StructShot's abstract transition probabilities, counted on IO label sequences (`O` or a type per word).

    Returns:
        `dict[str, float]`: the priors over `PRIOR_KEYS`: from the start (to O, to an entity), from O (to O, to an
        entity), from an entity (to O, to the same type, to another type); each group sums to 1 (uniform where it was
        never seen).
    """
    counts = dict.fromkeys(PRIOR_KEYS, 0)
    for tags in tag_rows:
        if not tags:
            continue
        counts["start_o" if tags[0] == OUTSIDE else "start_i"] += 1
        for prev, cur in zip(tags, tags[1:]):
            if prev == OUTSIDE:
                counts["o_o" if cur == OUTSIDE else "o_i"] += 1
            else:
                counts["i_o" if cur == OUTSIDE else "i_same" if cur == prev else "i_other"] += 1
    priors = {}
    for group in (PRIOR_KEYS[:2], PRIOR_KEYS[2:4], PRIOR_KEYS[4:]):
        total = sum(counts[k] for k in group)
        for key in group:
            priors[key] = counts[key] / total if total else 1.0 / len(group)
    return priors


def transition_scores(
    priors: dict[str, float], n_types: int, temperature: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities `(start (C,), transitions (C, C))` over the labels `O, type 1, ..., type n` (C = n + 1).

    An abstract probability is shared evenly among the types it leads to, raised to `temperature` (which flattens
    the distribution when below 1), renormalised per row; impossible moves get probability 1e-6, as in the public code.
    """
    import torch

    c = n_types + 1
    start = torch.zeros(c)
    start[0], start[1:] = priors["start_o"], priors["start_i"] / n_types
    trans = torch.zeros(c, c)
    trans[0, 0], trans[0, 1:] = priors["o_o"], priors["o_i"] / n_types
    trans[1:, 0] = priors["i_o"]
    if n_types > 1:
        trans[1:, 1:] = priors["i_other"] / (n_types - 1)
    trans[1:, 1:].fill_diagonal_(priors["i_same"])
    rows = torch.cat([start.unsqueeze(0), trans]).pow(temperature)
    rows = rows / rows.sum(1, keepdim=True)
    rows = torch.where(rows > 0, rows, torch.full_like(rows, 1e-6)).log()
    return rows[0], rows[1:]


def viterbi(emissions: torch.Tensor, start: torch.Tensor, transitions: torch.Tensor) -> list[int]:
    """The label sequence maximising `start[y_0] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t]`."""
    score = start + emissions[0]
    back = []
    for t in range(1, len(emissions)):
        best, index = (score.unsqueeze(1) + transitions).max(0)
        score = best + emissions[t]
        back.append(index)
    path = [int(score.argmax())]
    for index in reversed(back):
        path.append(int(index[path[-1]]))
    return path[::-1]


# --- CONTaiNER --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerConfig:
    """CONTaiNER's settings: the published domain-transfer command's, except the CPU caps (see the module docstring).

    Args:
        embedding_dim (`int`, *optional*, defaults to `128`):
            Gaussian embedding size (128).
        max_length (`int`, *optional*, defaults to `128`):
            Encoder window in pieces (128).
        batch_size (`int`, *optional*, defaults to `16`):
            Source sentences per step (32 published; 16 here).
        source_steps (`int`, *optional*, defaults to `100`):
            Source training steps (the cap; the public code trains whole epochs).
        lr (`float`, *optional*, defaults to `5e-5`):
            Learning rate of source training (5e-5).
        finetune_lr (`float`, *optional*, defaults to `5e-5`):
            Learning rate of the adaptation (5e-5).
        max_finetune_steps (`int`, *optional*, defaults to `20`):
            Cap on adaptation steps; it also stops as soon as the loss rises.
        viterbi (`bool`, *optional*, defaults to `True`):
            Decode with the abstract transitions.
        temperature (`float`, *optional*, defaults to `0.01`):
            Exponent flattening the transition probabilities (0.01).
        max_grad_norm (`float`, *optional*, defaults to `1.0`):
            Gradient clipping (1.0).
    """

    embedding_dim: int = 128
    max_length: int = 128
    batch_size: int = 16
    source_steps: int = 100
    lr: float = 5e-5
    finetune_lr: float = 5e-5
    max_finetune_steps: int = 20
    viterbi: bool = True
    temperature: float = 0.01
    max_grad_norm: float = 1.0


class ContainerNER(GaussianMetricNER):
    """CONTaiNER over any HF encoder; see the module docstring.

    Args:
        encoder (`str`):
            Encoder reference (see `GaussianMetricNER`).
        config (`ContainerConfig`, *optional*):
            Settings.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the heads, dropout and data order.
        device (`str`, *optional*):
            Where to train.

    Example:
        ```python
        ner = ContainerNER("minilm", seed=0)
        ner.train_source(ontonotes_sentences, ontonotes_labels)  # INTER only
        spans = ner.fit(support, ["PER", "LOC"]).predict(query)
        ```
    """

    method_name = "container"

    def __init__(
        self, encoder: str, config: ContainerConfig | None = None, seed: int = 0, device: str | None = None
    ) -> None:
        self.config = config or ContainerConfig()
        super().__init__(encoder, seed, self.config.embedding_dim, 1.0, self.config.max_length, device)
        self.priors: dict[str, float] | None = None
        self.types: list[str] = []
        self.finetune_steps = 0

    def types_argument(self, types: Sequence[EntityType]) -> list[str]:
        """CONTaiNER knows types by their labels only."""
        return [t.label for t in types]

    def use_source_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Keep the source's tag-transition priors for Viterbi decoding; the rest are the facts to report."""
        stats = dict(stats)
        self.priors = stats.pop("priors")
        return stats

    def _chunks(self, sentences: Sequence[Sentence], types: Sequence[str]) -> list[tuple[list[str], list[int]]]:
        """`(words, label ids)` per chunk of each sentence that fits the window."""
        out = []
        for sentence in sentences:
            words, counts = clean_words(self.tokenizer, sentence.tokens)
            labels = label_ids(sentence, types)
            for start, end in chunk_ranges([counts], [self.budget]):
                out.append((words[start:end], labels[start:end]))
        return out

    def _loss(self, chunks: Sequence[tuple[list[str], list[int]]], outside_anchors: bool) -> torch.Tensor:
        import torch

        hidden = encode_words(
            self.model, self.tokenizer, [(w, list(range(len(w)))) for w, _ in chunks], self.window, layers=1
        )
        mu, var = gaussian(self.heads, torch.cat(hidden))
        labels = torch.tensor([x for _, ids in chunks for x in ids], device=mu.device)
        return container_loss(mu, var, labels, outside_anchors)

    def train_source(self, sentences: Sequence[Sentence], types: Sequence[str]) -> dict[str, Any]:
        """Contrastive training on the source data: `source_steps` batches in a seeded random order.

        Args:
            sentences (`Sequence[Sentence]`):
                The source sentences (e.g. OntoNotes train without the run's queries).
            types (`Sequence[str]`):
                The source's type labels.

        Returns:
            `dict`: steps, sentences used, seconds, last loss and the transition priors of the source's tags.
        """
        import random

        import torch

        cfg, start = self.config, time.perf_counter()
        order = list(range(len(sentences)))
        random.Random(self.seed).shuffle(order)
        used = [sentences[i] for i in order[: cfg.source_steps * cfg.batch_size]]
        chunks = self._chunks(used, types)
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=0.0, eps=1e-8)
        self.train_mode(True)
        loss = torch.tensor(0.0)
        with self.seeded(1):
            for step in range(0, len(chunks), cfg.batch_size):
                loss = self._loss(chunks[step : step + cfg.batch_size], outside_anchors=False)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.max_grad_norm)
                optimizer.step()
        self.train_mode(False)
        # As the public code, the transitions are counted on the whole source training file.
        self.priors = transition_priors(token_labels(s, types) for s in sentences)
        return {
            "source_steps": math.ceil(len(chunks) / cfg.batch_size),
            "source_sentences": len(used),
            "source_seconds": round(time.perf_counter() - start, 1),
            "source_last_loss": round(float(loss.detach()), 4),
            "priors": self.priors,
        }

    def fit(self, support: Sequence[Sentence], types: Sequence[str]) -> ContainerNER:
        """Adapt to the support set (one batch, `O` anchors included, until the loss rises) and store its words.

        Args:
            support (`Sequence[Sentence]`):
                The labelled support sentences.
            types (`Sequence[str]`):
                The episode's type labels; spans of other types count as `O`.
        """
        import torch
        from torch.nn import functional as F

        cfg, self.types = self.config, list(types)
        chunks = [c for c in self._chunks(support, self.types) if c[0]]
        if not chunks:
            raise ValueError("the support set has no words")
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.finetune_lr, weight_decay=0.0, eps=1e-8)
        self.train_mode(True)
        previous, self.finetune_steps = math.inf, 0
        with self.seeded(2):
            for _ in range(cfg.max_finetune_steps):
                loss = self._loss(chunks, outside_anchors=True)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.max_grad_norm)
                optimizer.step()
                self.finetune_steps += 1
                if float(loss.detach()) > previous:  # early stopping with a patience of one step, as the public code
                    break
                previous = float(loss.detach())
        self.train_mode(False)
        words = [s.tokens for s in support]
        self._support = F.normalize(torch.cat(self._encoder().embed(words)), dim=1)
        self._support_labels = torch.tensor([x for s in support for x in label_ids(s, self.types)])
        if self.priors is None:  # no source data: count the transitions on the support set
            self.priors = transition_priors(token_labels(s, self.types) for s in support)
        return self

    def _encoder(self) -> Encoder:
        return Encoder(self.model, self.tokenizer, batch_size=32, max_length=self.window)

    def predict_labels(self, query: Sequence[Sentence]) -> list[list[str]]:
        """One label (`O` or a type) per word of each query sentence; gold spans of `query` are ignored."""
        import torch
        from torch.nn import functional as F

        if not self.types:
            raise RuntimeError("call fit(support, types) before predicting")
        names = [OUTSIDE, *self.types]
        embedded = self._encoder().embed([s.tokens for s in query])
        if not any(len(e) for e in embedded):
            return [[] for _ in query]
        words = F.normalize(torch.cat(embedded), dim=1)
        scores = nearest_by_label(words, self._support, self._support_labels, len(names))
        start_scores, transitions = transition_scores(self.priors, len(self.types), self.config.temperature)
        out, offset = [], 0
        for e in embedded:
            rows = scores[offset : offset + len(e)]
            offset += len(e)
            if not len(e):
                out.append([])
            elif self.config.viterbi:
                out.append([names[i] for i in viterbi(rows.log_softmax(1), start_scores, transitions)])
            else:
                out.append([names[i] for i in rows.argmax(1).tolist()])
        return out

    def predict(self, query: Sequence[Sentence]) -> list[list[Span]]:
        """Predicted spans (IO-decoded) per query sentence."""
        return [labels_to_spans(labels) for labels in self.predict_labels(query)]


# Settings the benchmark uses (tests replace them with smaller caps).
BENCHMARK_CONFIG = ContainerConfig()


def fit_predict(
    context: BaselineContext, support: list[Sentence], query: list[Sentence], test_types: list[EntityType]
) -> tuple[list[list[Span]], dict[str, Any]]:
    """The benchmark's `container` method (see `gaussian_metric.fit_predict`)."""
    ner = ContainerNER(context.encoder, BENCHMARK_CONFIG, seed=context.seed)
    return gaussian_fit_predict(ner, BENCHMARK_CONFIG, context, support, query, test_types)
