"""One sentence's allowed answers as a regular expression, for engines that constrain decoding by a regex (vLLM's
structured outputs) rather than by our token automaton (`cllmfs_trainer.inference.automaton`).

The language is the automaton's, written on text instead of tokens: the answer prefix, then any number of entity
groups (` <<< RUN >>>`, or ` RUN >>>` in the `pointer` answer format) whose RUN is 1 to `max_entity_words` consecutive
words of the sentence joined by single spaces, then ` <im_end>`. One optional space may lead, as a SentencePiece
tokenizer decodes the answer's first token with one.

Size: the runs are written as a trie of words, each trie node once, so a word appears at most `max_entity_words`
times (once per run length that reaches it), not once per n-gram that holds it. The regex grows linearly with the
sentence for a fixed `max_entity_words`; an alternation of every n-gram would grow by another factor of the mean run
length. Branches of a trie node start with different words, so the regex is unambiguous, which keeps the engines'
regex-to-automaton compilation small.

Escaping covers exactly the characters with a meaning in regex syntax (`\\.^$|?*+()[]{}`), so that the pattern reads the
same in Python's `re`, in ECMAScript-style engines and in the grammar compilers vLLM uses (xgrammar, llguidance),
which reject some of the extra escapes `re.escape` writes (`\\#`, `\\~`, `\\ `). Groups are plain capturing groups for
the same reason; they do not change the language.
"""

from __future__ import annotations

from collections.abc import Sequence

from cllmfs_trainer.data.format import ANSWER_FORMAT, ANSWER_PREFIX, CLOSE, IM_END, open_marker
from cllmfs_trainer.inference.answer_pieces import DEFAULT_MAX_ENTITY_WORDS

REGEX_SYNTAX = frozenset("\\.^$|?*+()[]{}")

# A trie of word runs: each key is a word, its value the runs' continuations after it.
_Trie = dict[str, "_Trie"]


def escape_literal(text: str) -> str:
    """`text` as a regex that matches exactly it: each regex syntax character preceded by a backslash."""
    return "".join(f"\\{char}" if char in REGEX_SYNTAX else char for char in text)


def _runs_trie(words: Sequence[str], max_entity_words: int) -> _Trie:
    trie: _Trie = {}
    for start in range(len(words)):
        node = trie
        for word in words[start : start + max_entity_words]:
            node = node.setdefault(word, {})
    return trie


def _trie_regex(trie: _Trie) -> str:
    """An alternation over the trie's first words, each followed by an optional ` ` and one of its continuations."""
    branches = []
    for word, rest in trie.items():
        branches.append(escape_literal(word) + (f"( {_trie_regex(rest)})?" if rest else ""))
    return branches[0] if len(branches) == 1 else "(" + "|".join(branches) + ")"


def run_regex(words: Sequence[str], max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS) -> str:
    """A regex matching exactly the runs of 1 to `max_entity_words` consecutive `words`, joined by single spaces.

    Args:
        words (`Sequence[str]`):
            The sentence's words (no whitespace inside a word), at least one.
        max_entity_words (`int`, *optional*, defaults to `DEFAULT_MAX_ENTITY_WORDS`):
            The longest run, in words (the constraint's bound).
    """
    if not words:
        raise ValueError("a sentence needs at least one word")
    if max_entity_words < 1:
        raise ValueError(f"max_entity_words must be at least 1, got {max_entity_words}")
    if any(not word or any(char.isspace() for char in word) for word in words):
        raise ValueError(f"words must be non-empty and hold no whitespace: {list(words)!r}")
    return _trie_regex(_runs_trie(words, max_entity_words))


def answer_regex(
    words: Sequence[str], answer_format: str = ANSWER_FORMAT, max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS
) -> str:
    """A regex matching exactly the answers the constraint allows for one sentence, for every type alike.

    Args:
        words (`Sequence[str]`):
            The sentence's words, as the prompt writes them (joined by single spaces).
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            `marked` (` <<< X >>>` groups) or `pointer` (` X >>>`): the run's answer format.
        max_entity_words (`int`, *optional*, defaults to `DEFAULT_MAX_ENTITY_WORDS`):
            The longest entity, in words.

    Returns:
        `str`: the pattern, to be matched against the whole generated text (`re.fullmatch`; vLLM matches whole
        outputs).

    Example:
        ```python
        pattern = answer_regex(["Bo", "met", "Ann"], "pointer")
        re.fullmatch(pattern, "<im_start> I can extract entities for you, the extracted entities are Bo >>> <im_end>")
        ```
    """
    opening = f" {escape_literal(open_marker(answer_format))}" if open_marker(answer_format) else ""
    group = f"{opening} {run_regex(words, max_entity_words)} {escape_literal(CLOSE)}"
    return f"( )?{escape_literal(ANSWER_PREFIX)}({group})* {escape_literal(IM_END)}"
