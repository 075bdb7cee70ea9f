"""What CONTaiNER and ProML share: words to encoder inputs, Gaussian word embeddings, a trainable encoder, the cache.

- Words to encoder inputs: a word is represented by its first subword piece; a word the tokenizer turns into no piece
  becomes the unknown token; a sentence too long for the encoder window is cut between words into chunks.
- Gaussian embeddings (Das et al., ACL 2022): a mean head and a variance head on the encoder's vectors, and the
  symmetric KL divergence between two such Gaussians.
- `GaussianMetricNER`: a copy of any HF encoder plus the heads, seeded, saved and loaded as one folder.
- The source cache: INTER trains on OntoNotes (without the run's queries) once per (method, seed), under the
  benchmark's `output_dir`, so that every INTER target of that seed adapts the same source model; `fit_predict`
  runs a unit of either method.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.benchmark.baselines.context import BaselineContext
from cllmfs_trainer.benchmark.baselines.encoder import resolve_encoder
from cllmfs_trainer.benchmark.baselines.token_baselines import token_labels
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.files import atomic_write_text, replace_folder

if TYPE_CHECKING:  # torch and transformers are imported lazily, as in the rest of the package
    import torch


logger = logging.getLogger(__name__)


# --- Words to encoder inputs ------------------------------------------------------------------------------------------


def piece_counts(tokenizer, words: Sequence[str]) -> list[int]:
    """How many pieces the tokenizer makes of each word (in context, as `is_split_into_words` encodes them)."""
    counts = [0] * len(words)
    if words:
        encoding = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False, verbose=False)
        for word_id in encoding.word_ids():
            if word_id is not None:
                counts[word_id] += 1
    return counts


def clean_words(tokenizer, words: Sequence[str]) -> tuple[list[str], list[int]]:
    """The words with any that make no piece (e.g. a lone zero-width space) replaced by the unknown token, and the
    piece count of each, so that every word has a first piece to represent it."""
    counts = piece_counts(tokenizer, words)
    if all(counts):
        return list(words), counts
    if tokenizer.unk_token is None:
        raise ValueError(f"{type(tokenizer).__name__} encodes some word of {list(words)} as nothing and has no unk")
    words = [w if c else tokenizer.unk_token for w, c in zip(words, counts)]
    return words, [max(c, 1) for c in counts]


def chunk_ranges(costs: Sequence[Sequence[int]], budgets: Sequence[int]) -> list[tuple[int, int]]:
    """Cut a sentence into consecutive word ranges `[start, end)`, as long as each stays within every budget.

    Args:
        costs (`Sequence[Sequence[int]]`):
            One list per prompt form, the pieces each word costs in it.
        budgets (`Sequence[int]`):
            The pieces each form may spend per chunk; a single word always forms a chunk, even over budget.
    """
    n = len(costs[0])
    ranges, start, used = [], 0, [0] * len(costs)
    for i in range(n):
        if i > start and any(u + c[i] > b for u, c, b in zip(used, costs, budgets)):
            ranges.append((start, i))
            start, used = i, [0] * len(costs)
        used = [u + c[i] for u, c in zip(used, costs)]
    if n:
        ranges.append((start, n))
    return ranges


def window(tokenizer, model, max_length: int) -> int:
    """The window in pieces, special tokens included: `max_length`, or less where the model or tokenizer allow less."""
    limits = [max_length, tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
    return min(x for x in limits if isinstance(x, int) and x > 0)


def encode_words(
    model, tokenizer, inputs: Sequence[tuple[list[str], list[int]]], max_length: int, layers: int = 1
) -> list[torch.Tensor]:
    """One forward pass over a batch of word lists; per input, the vectors of the words at the kept positions.

    A word's vector is its first piece's hidden state, averaged over the last `layers` layers. Gradients flow unless
    the caller disabled them.

    Args:
        model (`PreTrainedModel`):
            The encoder (`AutoModel`).
        tokenizer (`PreTrainedTokenizerBase`):
            Its fast tokenizer.
        inputs (`Sequence[tuple[list[str], list[int]]]`):
            `(words, kept positions)` per input; the words must fit `max_length` (see `chunk_ranges`).
        max_length (`int`):
            Window in pieces, special tokens included.
        layers (`int`, *optional*, defaults to `1`):
            How many top layers to average (1 = the last hidden state).

    Returns:
        `list[torch.Tensor]`: per input, `(len(kept), hidden)`.
    """
    import torch

    enc = tokenizer(
        [words for words, _ in inputs],
        is_split_into_words=True,
        padding=True,
        truncation=True,  # only bites on a single word longer than the window; its first piece stays
        max_length=max_length,
        return_tensors="pt",
    )
    accepted = set(inspect.signature(model.forward).parameters)
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in enc.items() if k in accepted}, output_hidden_states=layers > 1)
    hidden = out.last_hidden_state if layers == 1 else torch.stack(out.hidden_states[-layers:]).mean(0)
    vectors = []
    for row, (_, kept) in enumerate(inputs):
        first: dict[int, int] = {}
        for position, word_id in enumerate(enc.word_ids(row)):
            if word_id is not None and word_id not in first:
                first[word_id] = position
        missing = [w for w in kept if w not in first]
        if missing:
            raise RuntimeError(f"words {missing} of input {row} fell outside the {max_length}-piece window")
        vectors.append(hidden[row, torch.tensor([first[w] for w in kept], device=device)])
    return vectors


def gaussian_heads(hidden_size: int, dim: int, scale: float = 1.0, dropout: float = 0.1) -> torch.nn.ModuleDict:
    """The mean and variance heads of CONTaiNER, randomly initialised from the current torch seed.

    Args:
        hidden_size (`int`):
            The encoder's width.
        dim (`int`):
            The Gaussian embedding size.
        scale (`float`, *optional*, defaults to `1.0`):
            Divide the initial weights and biases by this (ProML scales them by `sqrt(dim / 32)`).
        dropout (`float`, *optional*, defaults to `0.1`):
            Dropout on the hidden states before the heads, in training mode.
    """
    import torch
    from torch import nn

    heads = nn.ModuleDict(
        {"dropout": nn.Dropout(dropout), "mu": nn.Linear(hidden_size, dim), "sigma": nn.Linear(hidden_size, dim)}
    )
    if scale != 1.0:
        with torch.no_grad():
            for name in ("mu", "sigma"):
                heads[name].weight.div_(scale)
                heads[name].bias.div_(scale)
    return heads


def gaussian(heads: torch.nn.ModuleDict, hidden: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean, variance)` of each row of `hidden`: `W_mu relu(h)` and `elu(W_sigma relu(h)) + 1 + eps`."""
    from torch.nn import functional as F

    h = F.relu(heads["dropout"](hidden))
    return heads["mu"](h), F.elu(heads["sigma"](h)) + 1 + eps


# --- Distance ---------------------------------------------------------------------------------------------------------


def symmetric_kl(mu_a: torch.Tensor, var_a: torch.Tensor, mu_b: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    """`(n, m)` symmetric KL divergences `(KL(a_i || b_j) + KL(b_j || a_i)) / 2` between diagonal Gaussians.

    The log-determinant terms of the two directions cancel, leaving
    `sum_k (va/vb + vb/va + (ma - mb)^2 (1/va + 1/vb) - 2) / 4`; it is expanded into matrix products so that no
    `(n, m, dim)` tensor is built.
    """
    inv_a, inv_b = 1.0 / var_a, 1.0 / var_b
    trace = var_a @ inv_b.T + inv_a @ var_b.T
    sq_a, sq_b = mu_a.pow(2), mu_b.pow(2)
    mahalanobis = (
        (sq_a * inv_a).sum(1, keepdim=True)
        + sq_a @ inv_b.T
        + inv_a @ sq_b.T
        + (sq_b * inv_b).sum(1).unsqueeze(0)
        - 2 * ((mu_a * inv_a) @ mu_b.T + mu_a @ (mu_b * inv_b).T)
    )
    # The expansion can round a zero distance to a tiny negative one.
    return (0.25 * (trace + mahalanobis - 2 * mu_a.shape[1])).clamp_min(0.0)


# --- A trainable encoder with Gaussian heads --------------------------------------------------------------------------


class GaussianMetricNER:
    """A trainable encoder with Gaussian heads; the common part of `ContainerNER` and `ProMLNER`.

    Args:
        encoder (`str`):
            Encoder reference (`minilm`, a folder or a hub id; see `resolve_encoder`). It is copied, never changed on
            disk.
        seed (`int`, *optional*, defaults to `0`):
            Seeds the heads, dropout and data order; every training stage reseeds from it, so a source model loaded from
            the cache gives the same result as one trained in the same process.
        dim (`int`, *optional*, defaults to `128`):
            Gaussian embedding size.
        head_scale (`float`, *optional*, defaults to `1.0`):
            See `gaussian_heads`.
        max_length (`int`, *optional*, defaults to `128`):
            Window in pieces (less if the encoder allows less).
        device (`str`, *optional*):
            Where to train; CUDA if available by default.
    """

    method_name = "gaussian"  # the benchmark's name of the method, in the source cache's fingerprint

    def __init__(
        self,
        encoder: str,
        seed: int = 0,
        dim: int = 128,
        head_scale: float = 1.0,
        max_length: int = 128,
        device: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder(encoder)
        self.seed = seed
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{type(self.tokenizer).__name__} is not a fast tokenizer: word_ids() is needed")
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(self.device)
        with self.seeded():
            dropout = getattr(self.model.config, "hidden_dropout_prob", 0.1)
            self.heads = gaussian_heads(self.model.config.hidden_size, dim, head_scale, dropout).to(self.device)
        self.window = window(self.tokenizer, self.model, max_length)
        self.budget = self.window - self.tokenizer.num_special_tokens_to_add(pair=False)

    def seeded(self, offset: int = 0):
        """A context where torch's RNG is seeded from `seed + offset` and restored afterwards."""
        import contextlib

        import torch

        devices = [torch.cuda.current_device()] if str(self.device).startswith("cuda") else []

        @contextlib.contextmanager
        def scope():
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed + offset)
                yield

        return scope()

    def types_argument(self, types: Sequence[EntityType]) -> Sequence[Any]:
        """The types as `train_source` and `fit` take them: the `EntityType`s themselves (ProML reads their names)."""
        return types

    def use_source_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Take what the source training needs kept from its facts; returns the facts to report."""
        return stats

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.model.parameters(), *self.heads.parameters()]

    def train_mode(self, on: bool) -> None:
        self.model.train(on)
        self.heads.train(on)

    def save(self, folder: str | Path) -> None:
        """Write the encoder, its tokenizer and the heads to `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        self.model.save_pretrained(folder / "encoder")
        self.tokenizer.save_pretrained(folder / "encoder")
        save_file({k: v.contiguous() for k, v in self.heads.state_dict().items()}, str(folder / "heads.safetensors"))

    def load_weights(self, folder: str | Path) -> None:
        """Replace the encoder and heads by those `save` wrote (the tokenizer is the same)."""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel

        folder = Path(folder)
        self.model = AutoModel.from_pretrained(folder / "encoder", dtype=torch.float32).to(self.device)
        self.heads.load_state_dict(load_file(str(folder / "heads.safetensors"), device=str(self.device)))


def label_ids(sentence: Sentence, types: Sequence[str]) -> list[int]:
    """IO label ids of the words: 0 for `O`, `1 + index` of the type otherwise (types outside `types` are `O`)."""
    index = {t: i + 1 for i, t in enumerate(types)}
    return [index.get(label, 0) for label in token_labels(sentence, types)]


def nearest_by_label(
    query: torch.Tensor, support: torch.Tensor, labels: torch.Tensor, n_labels: int, topk: int = 1
) -> torch.Tensor:
    """`(n_query, n_labels)` on the CPU: per label, the mean of the `topk` highest negative squared Euclidean
    distances to the support rows of that label (`-inf` for a label without support rows). Exact matches score 0."""
    import torch

    query, support, labels = query.detach().cpu(), support.detach().cpu(), labels.cpu()
    out = torch.full((len(query), n_labels), -math.inf)
    for start in range(0, len(query), 4096):  # bounds the (block x support) distance matrix
        block = -torch.cdist(query[start : start + 4096], support, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        for label in range(n_labels):
            mine = block[:, labels == label]
            if mine.shape[1]:
                out[start : start + 4096, label] = mine.topk(min(topk, mine.shape[1]), dim=1).values.mean(1)
    return out


def cached_source_training(
    ner: GaussianMetricNER, folder: Path, fingerprint: dict[str, Any], train: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Load the source-trained weights from `folder` if they were trained with `fingerprint`, else train and save.

    Several INTER targets of one (method, seed) then share one source training. A folder with another fingerprint
    (other caps, encoder or excluded queries) is retrained. Writes go to a `.partial` folder renamed when complete.

    Returns:
        `dict[str, Any]`: what `train` returned when the folder was written (e.g. steps, seconds), with `source_cached`.
    """
    meta_path = folder / "source.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("fingerprint") == fingerprint:
            ner.load_weights(folder)
            return {**meta["stats"], "source_cached": True}
        logger.info("%s was trained with other settings: training again", folder)
    stats = train()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ner.save(partial)
    record = {"fingerprint": fingerprint, "stats": stats}
    atomic_write_text(partial / "source.json", json.dumps(record, indent=2) + "\n")
    replace_folder(partial, folder)
    return {**stats, "source_cached": False}


def fit_predict(
    ner: GaussianMetricNER,
    config: Any,
    context: BaselineContext,
    support: list[Sentence],
    query: list[Sentence],
    test_types: list[EntityType],
) -> tuple[list[list[Span]], dict[str, Any]]:
    """The benchmark's CONTaiNER and ProML: in INTER a source training (cached per method and seed), then adaptation
    to the support set, then prediction.

    Args:
        ner (`GaussianMetricNER`):
            A fresh `ContainerNER` or `ProMLNER`, seeded with the unit's seed.
        config (`Any`):
            Its dataclass config, part of the source cache's fingerprint.
        context (`BaselineContext`):
            The unit.
        support (`list[Sentence]`):
            The support set it adapts to.
        query (`list[Sentence]`):
            The sentences it predicts.
        test_types (`list[EntityType]`):
            The types of the query.

    Returns:
        `tuple[list[list[Span]], dict[str, Any]]`: the predicted spans per query sentence, and the training's facts
        (source steps and whether the source training was cached, fine-tuning steps and seconds).
    """
    extra: dict[str, Any] = {}
    if context.setting == "inter":

        def train() -> dict[str, Any]:
            pool, source_types = context.source_sentences()
            return ner.train_source(pool, ner.types_argument(source_types))

        fingerprint = {"method": ner.method_name, "encoder": context.encoder, "seed": context.seed}
        fingerprint.update(config=asdict(config), excluded_queries=context.source_digest)
        extra.update(ner.use_source_stats(cached_source_training(ner, context.cache_dir, fingerprint, train)))
    start = time.perf_counter()
    ner.fit(support, ner.types_argument(test_types))
    extra.update(finetune_steps=ner.finetune_steps, finetune_seconds=round(time.perf_counter() - start, 1))
    return ner.predict(query), extra
