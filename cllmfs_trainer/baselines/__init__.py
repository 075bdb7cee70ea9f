"""Few-shot NER baselines: ProtoBERT and NNShot over a frozen encoder (Few-NERD / Yang & Katiyar 2020)."""

from cllmfs_trainer.baselines.encoder import (
    MINILM_WHEEL,
    Encoder,
    load_encoder,
    materialize_minilm,
    resolve_encoder,
)
from cllmfs_trainer.baselines.token_baselines import (
    TokenPrototypeNER,
    classify_words,
    labels_to_spans,
    nnshot_predict,
    protobert_predict,
    token_labels,
)

__all__ = [
    "MINILM_WHEEL",
    "Encoder",
    "TokenPrototypeNER",
    "classify_words",
    "labels_to_spans",
    "load_encoder",
    "materialize_minilm",
    "nnshot_predict",
    "protobert_predict",
    "resolve_encoder",
    "token_labels",
]
