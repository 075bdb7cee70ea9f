"""The NER format: the prompt asked for one (sentence, type) pair, the answer the model is trained to write, and how a
generated answer is read back. `PromptFormat` is the one value that chooses among the variants; a run folder stores
it, and training and prediction build and read their text with it.

Prompt format 1 (the default; the paper fixes the instruction and the output, not the glue between them)::

    Please extract the entity of person in the input sentence given below, the entity of person refers to ...
    Input: Andrew Little met the press .
    Output:

Prompt format 2 puts the sentence first, so that all types' prompts of a sentence share it as a prefix (inference
computes it once), and the queried type sits right before the answer::

    Input: Andrew Little met the press .
    Please extract the entity of person in the input sentence given above, the entity of person refers to ...
    Output:

The format is a training choice: a run folder records it and prediction builds its prompts the same way. So is
`type_descriptions=False`, which asks for a type by its name alone ("Please extract the entity of person in the input
sentence given below."): the description is most of the prompt's tokens, and so of the time of every sample and
every prediction.

The completion (the paper's output format, entities in sentence order)::

    <im_start> I can extract entities for you, the extracted entities are <<< Andrew Little >>> <im_end>

A sentence without entities of the queried type gets the same sentence with no `<<< >>>` group::

    <im_start> I can extract entities for you, the extracted entities are <im_end>

Answer format `pointer` (ours, not the paper's) drops the opening `<<<`::

    <im_start> I can extract entities for you, the extracted entities are Andrew Little >>> <im_end>

With `<<<` first, the model must decide "an entity follows" before it points at one, and a small model learns that
yes/no token last (`experiments/decision_probe.py`). Without it, the first answer token is the entity's own first
word, copied from the sentence, or the start of `<im_end>`: deciding and pointing are one choice.

Markers `<im_start>`, `<im_end>`, `<<<`, `>>>` are plain text, not added special tokens: nothing in the vocabulary or
the embedding matrix changes, so a LoRA adapter stays small and works on any tokenizer (SmolLM2's byte-level BPE and
LLaMA-2's SentencePiece alike). Generation stops at the EOS token that follows `<im_end>` in every training sample,
and `<im_end>` itself can serve as a stop string.

Reading a generated answer back (`parse_output`, `PromptFormat.parse`)::

    <im_start> I can extract entities for you, the extracted entities are <<< Andrew Little >>> <<< Bo >>> <im_end>

At prediction time the answer is decoded with `skip_special_tokens=True`, so it may start with whitespace, may be cut
before `<im_end>` by `max_new_tokens`, and an unconstrained or badly trained model may write anything.
`parse_output` never raises; it returns what it could read plus the kinds of problems it met, so that a run can
report how often the model strays.

Parsing policy:

- Everything after the first `<im_end>` is ignored. A missing `<im_end>` is the problem `no_end`; complete groups
  before the cut still count.
- The answer prefix is matched with any whitespace between its words. Missing, it is the problem `no_prefix`, and
  the whole answer is still read for groups. Text before a prefix found later in the answer is
  `text_outside_markers`.
- A complete `<<< X >>>` group yields X with its whitespace normalised (split, joined by single spaces). An empty X
  yields nothing and is the problem `empty_entity`.
- A `<<<` without a matching `>>>` yields nothing and is the problem `unbalanced`; so is a `>>>` that closes no group.
  A second `<<<` before the first is closed abandons the first group (the `>>>` belongs to the nearer `<<<`).
- Any other non-whitespace text outside the groups is `text_outside_markers`; the groups still count.
- When the answer was cut (no `<im_end>`), a trailing fragment of a marker (`<im_`, `<<`, or a prefix cut mid-way)
  is what the cut left behind, not extra text: it adds nothing beyond `no_end` (and `no_prefix` for a cut prefix).

In the `pointer` answer format (` X >>>`, no opening marker) every stretch of text that a `>>>` closes is an entity;
text left before `<im_end>` without its `>>>` yields nothing and is `unbalanced` (when the answer was cut, a trailing
fragment of `<im_end>` adds nothing beyond `no_end`, and an unclosed entity is `unbalanced` as above).

Markers are found as substrings, so `<<<Bo>>>` without spaces still reads as `Bo`. The price: an entity whose own text
contains `<<<`, `>>>` or `<im_end>` cannot be read back (no such token occurs in the shipped WNUT'17 data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cllmfs_trainer.data.registry import EntityType

PROMPT_FORMAT = 1  # the default format
IM_START, IM_END, OPEN, CLOSE = "<im_start>", "<im_end>", "<<<", ">>>"
ANSWER_FORMAT = "marked"  # the paper's ` <<< X >>>` groups
ANSWER_FORMATS = ("marked", "pointer")  # pointer: ` X >>>`, no opening marker
INSTRUCTION = (
    "Please extract the entity of {name} in the input sentence given {where}, "
    "the entity of {name} refers to {description}."
)
INSTRUCTION_BY_NAME = "Please extract the entity of {name} in the input sentence given {where}."
# format -> (prompt template, where the instruction says the sentence is)
PROMPT_FORMATS = {
    1: ("{instruction}\nInput: {sentence}\nOutput:\n", "below"),
    2: ("Input: {sentence}\n{instruction}\nOutput:\n", "above"),
}
ANSWER_PREFIX = f"{IM_START} I can extract entities for you, the extracted entities are"


def check_prompt_format(prompt_format: int) -> int:
    """Return `prompt_format` if it is a known format, else raise a `ValueError` listing the known ones."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"unknown prompt_format {prompt_format!r}; known: {sorted(PROMPT_FORMATS)} "
            "(1: instruction first, 2: sentence first)"
        )
    return prompt_format


def check_answer_format(answer_format: str) -> str:
    """Return `answer_format` if it is a known format, else raise a `ValueError` listing the known ones."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(
            f"unknown answer_format {answer_format!r}; known: {list(ANSWER_FORMATS)} "
            "(marked: ' <<< X >>>' groups, as the paper; pointer: ' X >>>', no opening marker)"
        )
    return answer_format


def open_marker(answer_format: str = ANSWER_FORMAT) -> str:
    """The text that opens an entity group: `<<<`, or nothing in the `pointer` format."""
    return OPEN if check_answer_format(answer_format) == "marked" else ""


def instruction(entity_type: EntityType, prompt_format: int = PROMPT_FORMAT, type_descriptions: bool = True) -> str:
    """The paper's Appendix A instruction for one type ("given above" when the sentence comes first); without its
    description clause if `type_descriptions` is false."""
    where = PROMPT_FORMATS[check_prompt_format(prompt_format)][1]
    template = INSTRUCTION if type_descriptions else INSTRUCTION_BY_NAME
    return template.format(name=entity_type.name, description=entity_type.description, where=where)


def prompt_parts(entity_type: EntityType, prompt_format: int, type_descriptions: bool = True) -> tuple[str, str]:
    """The prompt text before and after the sentence."""
    template = PROMPT_FORMATS[check_prompt_format(prompt_format)][0]
    before, after = template.split("{sentence}")
    text = instruction(entity_type, prompt_format, type_descriptions)
    return before.format(instruction=text), after.format(instruction=text)


def build_prompt(
    sentence_text: str, entity_type: EntityType, prompt_format: int = PROMPT_FORMAT, type_descriptions: bool = True
) -> str:
    """Prompt for one (sentence, type) pair; the sentence is the tokens joined by single spaces.

    Args:
        sentence_text (`str`):
            The sentence.
        entity_type (`EntityType`):
            The queried type.
        prompt_format (`int`, *optional*, defaults to `PROMPT_FORMAT`):
            1 (instruction first) or 2 (sentence first); see the module docstring.
        type_descriptions (`bool`, *optional*, defaults to `True`):
            Whether the instruction gives the type's description (the paper) or its name alone.
    """
    before, after = prompt_parts(entity_type, prompt_format, type_descriptions)
    return before + sentence_text + after


def build_completion(entities: Sequence[str], answer_format: str = ANSWER_FORMAT) -> str:
    """The target output for the given entity strings (in sentence order); no entities gives the empty form.

    Args:
        entities (`Sequence[str]`):
            The entity strings.
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            `marked` (` <<< X >>>` groups) or `pointer` (` X >>>`); see the module docstring.
    """
    opening = f" {OPEN}" if open_marker(answer_format) else ""
    groups = "".join(f"{opening} {entity} {CLOSE}" for entity in entities)
    return f"{ANSWER_PREFIX}{groups} {IM_END}"


# Problem kinds, in the order `ParsedOutput.problems` lists them.
NO_PREFIX, NO_END, UNBALANCED, EMPTY_ENTITY, TEXT_OUTSIDE = (
    "no_prefix",
    "no_end",
    "unbalanced",
    "empty_entity",
    "text_outside_markers",
)
PROBLEM_KINDS = (NO_PREFIX, NO_END, UNBALANCED, EMPTY_ENTITY, TEXT_OUTSIDE)

# Tokenizers may decode the prefix with other whitespace (a newline, two spaces); its words are what matter.
_PREFIX_RE = re.compile(r"\s+".join(re.escape(word) for word in ANSWER_PREFIX.split()))
_MARKER_RE = re.compile(f"({re.escape(OPEN)}|{re.escape(CLOSE)})")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _is_cut_marker(fragment: str, marker: str) -> bool:
    """Whether `fragment` is a non-empty proper beginning of `marker` (up to whitespace): a marker cut by the limit."""
    fragment, marker = _normalise(fragment), _normalise(marker)
    return bool(fragment) and fragment != marker and marker.startswith(fragment)


@dataclass
class ParsedOutput:
    """What `parse_output` read from one generated answer.

    Args:
        entities (`list[str]`, *optional*, defaults to `[]`):
            Entity strings in output order, whitespace-normalised, repeats kept.
        problems (`list[str]`, *optional*, defaults to `[]`):
            Problem kinds found (each at most once, in the order of `PROBLEM_KINDS`); `[]` for a clean answer.
    """

    entities: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_output(text: str, answer_format: str = ANSWER_FORMAT) -> ParsedOutput:
    """Read the entity strings out of one generated answer; never raises on the text (see the module docstring for the
    policy).

    Args:
        text (`str`):
            The decoded generation (prompt excluded).
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            `marked` (` <<< X >>>` groups) or `pointer` (` X >>>`): the format the model was trained on.

    Returns:
        `ParsedOutput`: the entities and the kinds of problems met.
    """
    found: set[str] = set()
    end = text.find(IM_END)
    cut = end < 0
    if cut:
        found.add(NO_END)
    else:
        text = text[:end]

    prefix = _PREFIX_RE.search(text)
    if prefix is None:
        found.add(NO_PREFIX)
        body = text
        if cut and _is_cut_marker(body, ANSWER_PREFIX):
            body = ""
    else:
        if text[: prefix.start()].strip():
            found.add(TEXT_OUTSIDE)
        body = text[prefix.end() :]

    if check_answer_format(answer_format) == "pointer":
        return _parse_pointer(body, cut, found)
    entities: list[str] = []
    pieces = _MARKER_RE.split(body)  # text, marker, text, marker, ..., text
    open_group: str | None = None  # the text of the group being read, once a `<<<` has been seen
    for index, piece in enumerate(pieces):
        if piece == OPEN:
            if open_group is not None:
                found.add(UNBALANCED)
            open_group = ""
        elif piece == CLOSE:
            if open_group is None:
                found.add(UNBALANCED)
            elif _normalise(open_group):
                entities.append(_normalise(open_group))
            else:
                found.add(EMPTY_ENTITY)
            open_group = None
        elif open_group is not None:
            open_group = piece
        elif piece.strip():
            is_last = index == len(pieces) - 1
            if not (cut and is_last and (_is_cut_marker(piece, IM_END) or _is_cut_marker(piece, OPEN))):
                found.add(TEXT_OUTSIDE)
    if open_group is not None:
        found.add(UNBALANCED)
    return ParsedOutput(entities, [kind for kind in PROBLEM_KINDS if kind in found])


def _parse_pointer(body: str, cut: bool, found: set[str]) -> ParsedOutput:
    """The `pointer` format's groups: every stretch of `body` that a `>>>` closes."""
    *groups, tail = body.split(CLOSE)
    entities = []
    for group in groups:
        if _normalise(group):
            entities.append(_normalise(group))
        else:
            found.add(EMPTY_ENTITY)
    if tail.strip() and not (cut and _is_cut_marker(tail, IM_END)):
        found.add(UNBALANCED)
    return ParsedOutput(entities, [kind for kind in PROBLEM_KINDS if kind in found])


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are written and answers read: one value, stored in the run folder (`cllmfs_run.json`'s `format`).

    Args:
        prompt_format (`int`, *optional*, defaults to `1`):
            1 (instruction first, the paper's order) or 2 (sentence first); see the module docstring.
        answer_format (`str`, *optional*, defaults to `"marked"`):
            `marked` (` <<< X >>>` groups, the paper's) or `pointer` (` X >>>`, no opening marker).
        type_descriptions (`bool`, *optional*, defaults to `True`):
            Whether each instruction gives the type's description (the paper) or its name alone.

    Example:
        ```python
        fmt = PromptFormat(answer_format="pointer")
        fmt.completion(["Andrew Little"])  # '<im_start> I can ... are Andrew Little >>> <im_end>'
        fmt.parse(" <im_start> I can extract entities for you, the extracted entities are Bo >>> <im_end>").entities
        ```
    """

    prompt_format: int = PROMPT_FORMAT
    answer_format: str = ANSWER_FORMAT
    type_descriptions: bool = True

    def __post_init__(self) -> None:
        check_prompt_format(self.prompt_format)
        check_answer_format(self.answer_format)
        if not isinstance(self.type_descriptions, bool):
            raise ValueError(f"type_descriptions must be true or false, got {self.type_descriptions!r}")

    def prompt(self, sentence_text: str, entity_type: EntityType) -> str:
        """The prompt for one (sentence, type) pair (see `build_prompt`)."""
        return build_prompt(sentence_text, entity_type, self.prompt_format, self.type_descriptions)

    def prompt_parts(self, entity_type: EntityType) -> tuple[str, str]:
        """The prompt text before and after the sentence, for one type."""
        return prompt_parts(entity_type, self.prompt_format, self.type_descriptions)

    def completion(self, entities: Sequence[str]) -> str:
        """The answer for the given entity strings, in sentence order (see `build_completion`)."""
        return build_completion(entities, self.answer_format)

    def parse(self, text: str) -> ParsedOutput:
        """The entity strings of one generated answer, and the problems met (see `parse_output`)."""
        return parse_output(text, self.answer_format)

    @property
    def open_marker(self) -> str:
        """The text that opens an entity group: `<<<`, or nothing in the `pointer` answer format."""
        return open_marker(self.answer_format)

    def to_dict(self) -> dict[str, Any]:
        """The value as `cllmfs_run.json` stores it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PromptFormat:
        """The value `to_dict` wrote; missing keys take their defaults (records older than a key)."""
        return cls(
            **{key: record[key] for key in ("prompt_format", "answer_format", "type_descriptions") if key in record}
        )
