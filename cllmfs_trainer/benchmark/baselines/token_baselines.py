"""ProtoBERT and NNShot: few-shot NER by token-level nearest neighbours in a frozen encoder's embedding space.

These are the metric-learning baselines of Few-NERD (Ding et al., ACL 2021) and Yang & Katiyar (EMNLP 2020), used
here without any training on the source domain (the encoder stays frozen):

- every word gets a label: the type of the gold span covering it, or `O` (spans of types outside the episode's N
  types are `O` too, as in N-way episodes);
- ProtoBERT: each label's prototype is the mean embedding of the support words with that label (`O` included); a
  query word takes the label of the nearest prototype;
- NNShot: a query word takes the label of the nearest single support word.

"Nearest" is by squared Euclidean distance, as in Few-NERD (`metric="euclidean"`); `metric="dot"` ranks by dot
product instead (Few-NERD's other option). Ties go to the earlier label / support word.

Word labels become spans by the IO scheme, as Few-NERD decodes: a maximal run of consecutive words with the same
non-`O` label is one span. Two adjacent entities of the same type therefore come out merged, a known limit of IO.

How words are embedded (first subword, chunking of long sentences) is described in `encoder.Encoder`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cllmfs_trainer.benchmark.baselines.encoder import Encoder
from cllmfs_trainer.data.io import Sentence, Span

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

OUTSIDE = "O"
METHODS = ("proto", "nnshot")
METRICS = ("euclidean", "dot")
# Query words scored against the support per block: bounds the (block x support words) score matrix.
_BLOCK = 4096


def token_labels(sentence: Sentence, types: Sequence[str]) -> list[str]:
    """One label per word: the type of the span covering it if that type is in `types`, else `O`.

    Args:
        sentence (`Sentence`):
            a sentence with gold spans.
        types (`Sequence[str]`):
            the entity types of the episode.

    Returns:
        `list[str]`: `len(sentence.tokens)` labels.
    """
    keep = set(types)
    labels = [OUTSIDE] * len(sentence.tokens)
    for start, end, etype in sentence.spans:
        if etype in keep:
            labels[start:end] = [etype] * (end - start)
    return labels


def labels_to_spans(labels: Sequence[str]) -> list[Span]:
    """Decode IO word labels: each maximal run of one non-`O` label is a span.

    Args:
        labels (`Sequence[str]`):
            one label per word, `O` or an entity type.

    Returns:
        `list[Span]`: sorted, non-overlapping spans (end exclusive).
    """
    spans, start = [], None
    for i, label in enumerate([*labels, OUTSIDE]):  # the sentinel closes a run that reaches the end
        if start is not None and label != labels[start]:
            spans.append(Span(start, i, labels[start]))
            start = None
        if start is None and label != OUTSIDE and i < len(labels):
            start = i
    return spans


def _scores(query: torch.Tensor, keys: torch.Tensor, metric: str) -> torch.Tensor:
    """`(len(query), len(keys))` similarities, higher is nearer: negative squared Euclidean distance or dot product."""
    import torch

    if metric == "dot":
        return query @ keys.T
    # Differences rather than the |x|^2 - 2xy + |y|^2 expansion: exact 0 for identical vectors, so a word that also
    # appears in the support (same sentence) is its own nearest neighbour rather than losing to rounding noise.
    return -torch.cdist(query, keys, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def classify_words(
    query: torch.Tensor,
    support: torch.Tensor,
    support_labels: Sequence[str],
    method: str = "proto",
    metric: str = "euclidean",
) -> list[str]:
    """Label query word embeddings from labelled support word embeddings.

    Args:
        query (`torch.Tensor`):
            `(n_query_words, hidden)`.
        support (`torch.Tensor`):
            `(n_support_words, hidden)`.
        support_labels (`Sequence[str]`):
            the label of each support row.
        method (`str`, *optional*, defaults to `"proto"`):
            `"proto"` (nearest class mean) or `"nnshot"` (nearest support word).
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"` (squared) or `"dot"`.

    Returns:
        `list[str]`: one label per query row.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if len(support) != len(support_labels):
        raise ValueError(f"{len(support)} support rows but {len(support_labels)} labels")
    if len(support) == 0:
        raise ValueError("the support set has no words")
    if method == "proto":
        classes = list(dict.fromkeys(support_labels))  # first-seen order: deterministic tie-breaking
        index = torch.tensor([classes.index(label) for label in support_labels])
        keys = torch.zeros(len(classes), support.shape[1], dtype=support.dtype)
        keys.index_add_(0, index, support)
        keys /= torch.bincount(index, minlength=len(classes)).unsqueeze(1).to(support.dtype)
        key_labels = classes
    else:
        keys, key_labels = support, list(support_labels)
    out: list[str] = []
    for start in range(0, len(query), _BLOCK):
        best = _scores(query[start : start + _BLOCK], keys, metric).argmax(dim=1)  # first maximum on ties
        out.extend(key_labels[i] for i in best.tolist())
    return out


class TokenPrototypeNER:
    """ProtoBERT (`method="proto"`) or NNShot (`method="nnshot"`) over a frozen `Encoder`; see the module doc.

    Args:
        encoder (`Encoder`):
            embeds words.
        types (`Sequence[str]`):
            the episode's entity types; support spans of other types count as `O`.
        method (`str`, *optional*, defaults to `"proto"`):
            `"proto"` or `"nnshot"`.
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"` (squared, as Few-NERD) or `"dot"`.

    Example:
        ```python
        ner = TokenPrototypeNER(load_encoder("minilm"), ["person", "location"]).fit(support_sentences)
        spans = ner.predict(query_sentences)  # list of list of Span
        ```
    """

    def __init__(self, encoder: Encoder, types: Sequence[str], method: str = "proto", metric: str = "euclidean"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.types = list(types)
        if OUTSIDE in self.types:
            raise ValueError(f"{OUTSIDE!r} is the outside label and cannot be an entity type")
        self.encoder, self.method, self.metric = encoder, method, metric
        self.support_embeddings: torch.Tensor | None = None
        self.support_labels: list[str] = []

    def fit(self, support: Sequence[Sentence]) -> TokenPrototypeNER:
        """Embed and label the support words (no training: the encoder is frozen).

        Args:
            support (`Sequence[Sentence]`):
                the labelled support sentences.

        Returns:
            `TokenPrototypeNER`: `self`.
        """
        import torch

        labels = [label for sentence in support for label in token_labels(sentence, self.types)]
        if not labels:
            raise ValueError("the support set has no words")
        missing = sorted(set(self.types) - set(labels))
        if missing:
            logger.warning("types %s have no support words and will never be predicted", missing)
        self.support_embeddings = torch.cat(self.encoder.embed([s.tokens for s in support]))
        self.support_labels = labels
        return self

    def predict_labels(self, query: Sequence[Sentence]) -> list[list[str]]:
        """One label (`O` or a type) per word of each query sentence; gold spans of `query` are ignored."""
        if self.support_embeddings is None:
            raise RuntimeError("call fit(support) before predicting")
        embedded = self.encoder.embed([s.tokens for s in query])
        if not any(len(e) for e in embedded):
            return [[] for _ in query]
        import torch

        flat = classify_words(
            torch.cat(embedded), self.support_embeddings, self.support_labels, self.method, self.metric
        )
        out, start = [], 0
        for e in embedded:
            out.append(flat[start : start + len(e)])
            start += len(e)
        return out

    def predict(self, query: Sequence[Sentence]) -> list[list[Span]]:
        """Predicted spans (IO-decoded) for each query sentence; gold spans of `query` are ignored.

        Args:
            query (`Sequence[Sentence]`):
                the sentences to label.

        Returns:
            `list[list[Span]]`: per sentence, sorted `Span(start, end, type)` over its word indices.
        """
        return [labels_to_spans(labels) for labels in self.predict_labels(query)]


def _predict(
    method: str,
    encoder: PreTrainedModel | Encoder,
    tokenizer: PreTrainedTokenizerBase | None,
    support: Sequence[Sentence],
    query: Sequence[Sentence],
    types: Sequence[str],
    metric: str,
    batch_size: int,
    progress: bool,
) -> list[list[Span]]:
    if isinstance(encoder, Encoder):
        if tokenizer is not None:
            raise ValueError("pass tokenizer=None with an Encoder: it already holds its tokenizer")
    else:
        if tokenizer is None:
            raise ValueError("a tokenizer is needed with a bare model")
        encoder = Encoder(encoder, tokenizer, batch_size=batch_size, progress=progress)
    return TokenPrototypeNER(encoder, types, method, metric).fit(support).predict(query)


def protobert_predict(
    encoder: PreTrainedModel | Encoder,
    tokenizer: PreTrainedTokenizerBase | None,
    support: Sequence[Sentence],
    query: Sequence[Sentence],
    types: Sequence[str],
    metric: str = "euclidean",
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[Span]]:
    """ProtoBERT: label each query word by its nearest class prototype (mean support embedding), decode IO spans.

    Args:
        encoder (`PreTrainedModel` or `Encoder`):
            a frozen encoder (e.g. `AutoModel`), or an `Encoder` wrapping one.
        tokenizer (`PreTrainedTokenizerBase` or `None`):
            the encoder's fast tokenizer; `None` with an `Encoder`.
        support (`Sequence[Sentence]`):
            labelled support sentences.
        query (`Sequence[Sentence]`):
            sentences to label (their spans are ignored).
        types (`Sequence[str]`):
            entity type labels of the episode.
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"` (squared) or `"dot"`.
        batch_size (`int`, *optional*, defaults to `32`):
            chunks per forward pass (bare model only).
        progress (`bool`, *optional*, defaults to `False`):
            progress bars while encoding (bare model only).

    Returns:
        `list[list[Span]]`: predicted spans per query sentence.
    """
    return _predict("proto", encoder, tokenizer, support, query, types, metric, batch_size, progress)


def nnshot_predict(
    encoder: PreTrainedModel | Encoder,
    tokenizer: PreTrainedTokenizerBase | None,
    support: Sequence[Sentence],
    query: Sequence[Sentence],
    types: Sequence[str],
    metric: str = "euclidean",
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[Span]]:
    """NNShot: label each query word by its nearest support word, decode IO spans.

    Args: as `protobert_predict`.

    Returns:
        `list[list[Span]]`: predicted spans per query sentence.
    """
    return _predict("nnshot", encoder, tokenizer, support, query, types, metric, batch_size, progress)
