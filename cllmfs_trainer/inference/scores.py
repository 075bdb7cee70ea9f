"""A score per predicted entity, from the constrained greedy decoding that found it.

An answer is the prefix, then one group per entity (` <<< RUN >>>` in the `marked` format, ` RUN >>>` in the
`pointer` one), then ` <im_end>`. A group's score is the probability, under the constraint, of every token of the
group given the answer before it: the choice to name another entity rather than end, the entity's words, and its
closing marker (the choice to stop the run there rather than take in the next word). The constraint renormalises the
model's distribution over the tokens it allows, so a token it forces has probability 1 and only real choices count.

The log-probabilities come from the logits the greedy loop computes anyway (`greedy.constrained_greedy`,
`token_logprobs`), so scoring costs no model call, and it never changes which tokens greedy decoding chooses.

`Prediction` carries a sentence's spans with their scores; `resolve_types` keeps one type per span by a score (the
first-token log-odds of `one_type_per_span`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.inference.automaton import EntityAutomaton


def group_scores(
    answer_ids: Sequence[int], logprobs: Sequence[float], entities: Sequence[str], automaton: EntityAutomaton
) -> list[float | None]:
    """The score of each entity of a parsed answer, in answer order.

    Args:
        answer_ids (`Sequence[int]`):
            The answer's token ids, from the first token of the answer prefix on.
        logprobs (`Sequence[float]`):
            One log-probability per id of `answer_ids` under the constraint.
        entities (`Sequence[str]`):
            The entity strings `parse_output` read from the same answer, in order.
        automaton (`EntityAutomaton`):
            The constraint the answer was decoded under (its template and the sentence's runs).

    Returns:
        `list[float | None]`: one probability in `(0, 1]` per entity; `None` from the first entity whose group is not
        where the answer's tokens say it is (an answer the constraint did not produce).
    """
    template = automaton.template
    position = len(template.prefix)
    if tuple(answer_ids[:position]) != template.prefix:
        return [None] * len(entities)
    scores: list[float | None] = []
    for entity in entities:
        run = automaton.runs.get(entity)
        group = None if run is None else template.open + run + template.close
        if group is None or tuple(answer_ids[position : position + len(group)]) != group:
            break
        scores.append(math.exp(sum(logprobs[position : position + len(group)])))
        position += len(group)
    return scores + [None] * (len(entities) - len(scores))


@dataclass
class Prediction:
    """Predicted spans of one sentence, across all requested types (they may overlap: each type is asked alone).

    Args:
        sentence (`Sentence`):
            The sentence as given.
        spans (`list[Span]`, *optional*, defaults to `[]`):
            The predicted spans over its words, sorted.
        scores (`dict[Span, float]`, *optional*, defaults to `{}`):
            Each span's score (`cllmfs_trainer.inference.scores`), where decoding gives one: constrained greedy
            decoding in our own loop does, `generate` does not.
    """

    sentence: Sentence
    spans: list[Span] = field(default_factory=list)
    scores: dict[Span, float] = field(default_factory=dict)


def resolve_types(spans: Sequence[Span], scores: dict[Span, float]) -> list[Span]:
    """Keep one type per `(start, end)`: the span with the highest score (missing: -inf; ties: the first given).

    Args:
        spans (`Sequence[Span]`):
            One chunk's predicted spans, possibly the same boundaries under several types.
        scores (`dict[Span, float]`):
            A score per span, e.g. its type prompt's log-odds of naming it at the first answer token.
    """
    best: dict[tuple[int, int], Span] = {}
    for span in spans:
        kept = best.get((span.start, span.end))
        if kept is None or scores.get(span, float("-inf")) > scores.get(kept, float("-inf")):
            best[span.start, span.end] = span
    return [span for span in spans if best[span.start, span.end] is span]
