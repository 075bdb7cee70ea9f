"""`DecodingConfig`: how prediction decodes a run's answers unless told otherwise.

A run folder keeps it in `decoding_config.json` (written and read by `cllmfs_trainer.run_folder`), as transformers
keeps `generation_config.json` apart from the model's config; the training script parses it from the recipe keys of
the same names, next to its other argument classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cllmfs_trainer.errors import UsageError


@dataclass
class DecodingConfig:
    """How prediction decodes a run's answers unless told otherwise: `decoding_config.json` in the run folder, and the
    training script's recipe keys of the same names.

    Args:
        end_penalty (`float`, *optional*, defaults to `0.0`):
            Nats subtracted from the score of ending an answer where another entity could start
            (`EntityExtractor`'s `end_penalty`).
        one_type_per_span (`bool`, *optional*, defaults to `False`):
            Keep one type per span, the one surest of naming it (`EntityExtractor`'s `one_type_per_span`).
    """

    end_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Prediction threshold saved in the run folder: subtracted from the score of ending an answer where "
            "another entity could start (nats; above 0 trades precision for recall). `cllmfs predict`, `cllmfs "
            "evaluate` and the benchmark use it. Choose it on dev data (experiments/end_penalty.py)."
        },
    )
    one_type_per_span: bool = field(
        default=False,
        metadata={
            "help": "Prediction option saved in the run folder: where one span comes back under several types (each "
            "type is asked alone), keep the type whose prompt gave the highest log-odds of naming it at the first "
            "answer token. Needs answer_format pointer. Choose it on dev data (experiments/end_penalty.py)."
        },
    )

    def __post_init__(self) -> None:
        penalty = self.end_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty):
            raise UsageError(f"end_penalty must be a finite number, got {penalty!r}")
        if not isinstance(self.one_type_per_span, bool):
            raise UsageError(f"one_type_per_span must be true or false, got {self.one_type_per_span!r}")
        self.end_penalty = float(penalty)
