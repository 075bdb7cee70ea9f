"""Reusing the key/value cache of a prompt prefix that many prompts share.

Evaluation asks one prompt per (sentence, entity type), and every prompt of a type starts with the same instruction.
`SharedPrefixes` runs each distinct prefix through the model once and, per batch, assembles a `DynamicCache` holding
every row's prefix, so that `generate` only computes the rest of each prompt.

A batch is laid out as::

    [ prefix of the row's group | gap | padding | rest of the prompt ][ generated ... ]
    <---------- cached (width W) ---->

The prefixes of different groups may differ in length: each is followed by a gap up to the longest one, and the
padding that makes the rows equally long sits between the cached part and the rest of the prompt, not before the
prefix. Gap and padding have attention mask 0. Transformers 5 derives position ids from the attention mask's
cumulative sum, so a row's positions run on from its prefix across the masked columns exactly as in its unpadded
prompt.

The prefix is found on token ids, not text (`shared_prefix_length`): a BPE merge across the instruction's end would
make the instruction's own tokenisation differ from its tokens inside the prompt, so we take the longest run of
leading tokens common to all the group's prompts as the tokenizer wrote them. The prompts' tokens are thus unchanged.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

logger = logging.getLogger(__name__)


def shared_prefix_length(sequences: Sequence[Sequence[int]], keep: int = 1) -> int:
    """Number of leading tokens common to all `sequences`, leaving at least `keep` tokens of the shortest one.

    `keep` guarantees that every prompt still has a token for `generate` to run on (it needs the last prompt
    token's logits).

    Args:
        sequences (`Sequence[Sequence[int]]`):
            Token ids of the prompts of one group (at least one).
        keep (`int`, *optional*, defaults to `1`):
            Tokens of each sequence to leave out of the prefix.
    """
    if not sequences:
        raise ValueError("no sequences given")
    first, limit = sequences[0], min(len(s) for s in sequences) - keep
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return max(length, 0)


def forward_parameters(model: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of `model`'s forward (of the base model for a PEFT model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's forward is *args
    return inspect.signature(base.forward).parameters


def last_logits_only(model: Any) -> dict[str, Any]:
    """Forward kwargs that score only the last position, where the model allows it (`{}` where it does not).

    The position is given as a tensor index, not as `logits_to_keep=1`: an int slices the hidden states into a strided
    view, which `torch.matmul` multiplies by the LM head through a batched product on a per-row copy of the whole
    vocabulary matrix (0.4 s per batch in float32 and 7 s in bfloat16 for SmolLM2 on a 2-core CPU). A tensor index
    gathers a contiguous copy of the last states, which goes through a plain matrix product.
    """
    if "logits_to_keep" not in forward_parameters(model):
        return {}
    return {"logits_to_keep": torch.tensor([-1], device=next(model.parameters()).device)}


def cache_argument(model: Any) -> str:
    """The keyword under which `model`'s forward takes a cache: `cache` in recent transformers 5 releases, or the
    older `past_key_values` (which `generate` still accepts, deprecated)."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


class SharedPrefixes:
    """Key/value states of the shared prompt prefix of each group, assembled per batch into a fresh `DynamicCache`.

    Args:
        model (`Any`):
            The causal LM (eval mode).
        prefixes (`Mapping[Hashable, Sequence[int]]`):
            Group key -> token ids of its prefix (may be empty: nothing is cached for that group).

    Raises:
        `NotImplementedError`: the model's cache layers are not plain growing key/value layers (sliding windows, linear
            attention): use the extractor without prefix reuse.
    """

    def __init__(self, model: Any, prefixes: Mapping[Hashable, Sequence[int]]) -> None:
        self.model = model
        self.keys = list(prefixes)
        self.lengths = [len(prefixes[key]) for key in self.keys]
        self.width = max(self.lengths, default=0)  # every batch's cache has this many columns
        self._index = {key: i for i, key in enumerate(self.keys)}
        self._argument = cache_argument(model)
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: (groups, heads, width, dim) each
        if self.width:
            self._compute({key: list(ids) for key, ids in prefixes.items()})

    @torch.no_grad()
    def _compute(self, prefixes: dict[Hashable, list[int]]) -> None:
        cache_layers = DynamicCache(config=self.model.config).layers
        if not cache_layers or any(type(layer) is not DynamicLayer for layer in cache_layers):
            raise NotImplementedError(
                f"prefix reuse needs plain key/value cache layers, {type(self.model).__name__} has "
                f"{sorted({type(layer).__name__ for layer in cache_layers})}"
            )
        device = next(self.model.parameters()).device
        # All prefixes in one forward pass, right-padded: causal attention keeps padding out of the real tokens.
        ids = torch.zeros((len(self.keys), self.width), dtype=torch.long)  # any id does for padding: it is masked
        mask = torch.zeros_like(ids)
        for row, key in enumerate(self.keys):
            ids[row, : self.lengths[row]] = torch.tensor(prefixes[key], dtype=torch.long)
            mask[row, : self.lengths[row]] = 1
        cache = DynamicCache(config=self.model.config)
        # Only the cache is wanted: skip the vocabulary-wide logits of every prefix token where the model allows.
        extra = last_logits_only(self.model)
        self.model(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, **{self._argument: cache}, **extra
        )
        # Zeros after a shorter prefix (`where`, not a product: a group without prefix is a fully masked row, which
        # attention may fill with NaN). Those columns stay masked in every batch.
        keep = mask.to(device)[:, None, :, None].bool()
        self._layers = [
            (torch.where(keep, layer.keys, 0.0), torch.where(keep, layer.values, 0.0)) for layer in cache.layers
        ]

    def length(self, key: Hashable) -> int:
        """Prefix length of a group."""
        return self.lengths[self._index[key]]

    def cache_for(self, keys: Sequence[Hashable]) -> DynamicCache | None:
        """A new cache whose row `r` holds the prefix of group `keys[r]` (then zeros up to `width`); `None` when no
        group has a prefix. `generate` extends the cache in place, so each batch needs its own."""
        if not self.width:
            return None
        rows = torch.tensor([self._index[key] for key in keys], device=self._layers[0][0].device)
        # index_select copies: the stacked prefixes are never touched by generation.
        data = [(keys_.index_select(0, rows), values.index_select(0, rows)) for keys_, values in self._layers]
        return DynamicCache(ddp_cache_data=data, config=self.model.config)

    def generate_kwargs(self, keys: Sequence[Hashable]) -> dict[str, Any]:
        """`{cache_argument: cache}` for `generate`, or `{}` when nothing is cached."""
        cache = self.cache_for(keys)
        return {} if cache is None else {self._argument: cache}
