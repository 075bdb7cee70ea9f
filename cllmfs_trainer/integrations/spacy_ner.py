"""A spaCy pipeline component, `cllmfs_ner`: a trained run folder's entities as `doc.spans` and `doc.ents`.

    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("cllmfs_ner", config={"run": "runs/smollm2-wnut17-intra", "threshold": 0.5})
    doc = nlp("Andrew Little met the press in Auckland")
    [(span.text, span.label_, span._.cllmfs_score) for span in doc.spans["cllmfs"]]

The component asks `EntityExtractor.extract` for each doc's text (sentences split as `extract` does) and maps the
character offsets onto the doc's tokens (`Doc.char_span`, without punctuation at the edges, expanding to whole
tokens). Every entity goes into
`doc.spans[spans_key]`, overlapping ones included (each type is asked alone, so spans of two types may overlap); the
longest non-overlapping ones also go into `doc.ents` when `set_ents` is on (`spacy.util.filter_spans`). Each span
carries its score in `span._.cllmfs_score`. `nlp.pipe` sends the texts of a batch to the model together. Saved with
`nlp.to_disk`, the component copies its run folder into the pipeline's folder, so the saved pipeline loads on
another machine without the original run folder.

spaCy finds the factory through the `spacy_factories` entry point of this package (`pip install
'cllmfs-trainer[spacy]'`); importing this module registers it too.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans, minibatch

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.run_folder import RunFolder

SCORE_ATTRIBUTE = "cllmfs_score"
if not Span.has_extension(SCORE_ATTRIBUTE):
    Span.set_extension(SCORE_ATTRIBUTE, default=None)


class CllmfsNER:
    """The `cllmfs_ner` component (made by `make_cllmfs_ner`; see the module docstring).

    Args:
        nlp (`Language`):
            The pipeline.
        name (`str`):
            The component's name in it.
        run (`str`):
            The run folder.
        types (`list[str]`, *optional*):
            Labels to ask for (default: the run's types).
        threshold (`float`, *optional*):
            Drop entities scored below this probability.
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per batch of the model; `nlp.pipe(batch_size=...)` sets how many docs go together.
        spans_key (`str`, *optional*, defaults to `"cllmfs"`):
            The `doc.spans` group that receives every entity.
        set_ents (`bool`, *optional*, defaults to `True`):
            Also set `doc.ents` (non-overlapping entities; other components' entities are replaced).
        dtype (`str`, *optional*, defaults to `"auto"`):
            Precision of the merged model (see `EntityExtractor.from_run`).
    """

    def __init__(
        self,
        nlp: Language,
        name: str,
        run: str,
        types: list[str] | None = None,
        threshold: float | None = None,
        batch_size: int = 32,
        spans_key: str = "cllmfs",
        set_ents: bool = True,
        dtype: str = "auto",
    ) -> None:
        self.name = name
        self.options = {"types": types, "threshold": threshold, "batch_size": batch_size}
        self.options.update(spans_key=spans_key, set_ents=set_ents, dtype=dtype)
        self.run = Path(run)
        self._extractor = None
        # A wrong run fails when the pipe is added, in one line. `spacy.load` builds the component from the saved
        # config, whose path may not exist on this machine: `from_disk` then points it at the saved copy.
        if self.run.exists():
            RunFolder.load(self.run).check_tokenizer()

    @property
    def extractor(self) -> Any:
        """The run's `EntityExtractor`, loaded at the first doc (adding the pipe stays cheap)."""
        if self._extractor is None:
            self._extractor = EntityExtractor.from_run(
                self.run, batch_size=self.options["batch_size"], dtype=self.options["dtype"]
            )
        return self._extractor

    def __call__(self, doc: Doc) -> Doc:
        return next(iter(self.pipe([doc])))

    def pipe(self, docs: Iterable[Doc], batch_size: int = 64) -> Iterator[Doc]:
        """Annotate docs, `batch_size` docs per call of the model."""
        for batch in minibatch(docs, size=batch_size):
            found = self.extractor.extract(
                [doc.text for doc in batch], types=self.options["types"], threshold=self.options["threshold"]
            )
            for doc, entities in zip(batch, found):
                yield self._annotate(doc, entities)

    def _annotate(self, doc: Doc, entities: list[Any]) -> Doc:
        spans = []
        for entity in entities:
            start, end = _without_edge_punctuation(doc.text, entity.start, entity.end)
            span = doc.char_span(start, end, label=entity.type, alignment_mode="expand")
            if span is None:  # only whitespace or punctuation: nothing to point at
                continue
            span._.set(SCORE_ATTRIBUTE, entity.score)
            spans.append(span)
        doc.spans[self.options["spans_key"]] = spans
        if self.options["set_ents"]:
            doc.ents = filter_spans(spans)
        return doc

    # --- saving with the pipeline: the run folder travels with it -----------------------------------------------------

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        """Copy the run folder (and the options) into the pipeline's folder for this component."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (path / "run").exists():
            shutil.rmtree(path / "run")
        shutil.copytree(self.run, path / "run")
        (path / "options.json").write_text(json.dumps(self.options, indent=2) + "\n", encoding="utf-8")

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> CllmfsNER:
        """Use the run folder saved by `to_disk` (the original path may not exist here)."""
        path = Path(path)
        if not (path / "run").is_dir():
            raise UserError(f"{path}: no run folder saved for the cllmfs_ner component")
        self.run = path / "run"
        self.options.update(json.loads((path / "options.json").read_text(encoding="utf-8")))
        self._extractor = None
        RunFolder.load(self.run).check_tokenizer()
        return self


def _without_edge_punctuation(text: str, start: int, end: int) -> tuple[int, int]:
    """The offsets without punctuation at either edge: the model answers whole words, so "Auckland," can come back,
    and spaCy's token alignment would keep the comma (its own token) in every mode. Inner punctuation stays
    ("U.S."'s last dot is dropped here, and expanding to the token puts it back where spaCy keeps it in the token)."""
    while start < end and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return start, end


@Language.factory(
    "cllmfs_ner",
    default_config={
        "run": None,
        "types": None,
        "threshold": None,
        "batch_size": 32,
        "spans_key": "cllmfs",
        "set_ents": True,
        "dtype": "auto",
    },
)
def make_cllmfs_ner(
    nlp: Language,
    name: str,
    run: str | None,
    types: list[str] | None,
    threshold: float | None,
    batch_size: int,
    spans_key: str,
    set_ents: bool,
    dtype: str,
) -> CllmfsNER:
    """spaCy's factory of the `cllmfs_ner` component (`nlp.add_pipe("cllmfs_ner", config={"run": ...})`)."""
    if run is None:
        raise UserError('cllmfs_ner needs the run folder: nlp.add_pipe("cllmfs_ner", config={"run": "RUN_DIR"})')
    return CllmfsNER(nlp, name, run, types, threshold, batch_size, spans_key, set_ents, dtype)
