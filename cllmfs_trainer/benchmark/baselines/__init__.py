"""Few-shot NER baselines: ProtoBERT and NNShot over a frozen encoder (Few-NERD / Yang & Katiyar 2020), and the
metric-learning methods CONTaiNER (Das et al., ACL 2022) and ProML (Chen et al., Findings of ACL 2023), which train
the encoder."""

from cllmfs_trainer.benchmark.baselines.container import (
    ContainerConfig,
    ContainerNER,
    container_loss,
    transition_priors,
    transition_scores,
    viterbi,
)
from cllmfs_trainer.benchmark.baselines.encoder import (
    MINILM_WHEEL,
    Encoder,
    load_encoder,
    materialize_minilm,
    resolve_encoder,
)
from cllmfs_trainer.benchmark.baselines.gaussian_metric import GaussianMetricNER, symmetric_kl
from cllmfs_trainer.benchmark.baselines.proml import (
    ProMLConfig,
    ProMLNER,
    label_aware_prompt,
    option_prompt,
    proml_loss,
)
from cllmfs_trainer.benchmark.baselines.token_baselines import (
    TokenPrototypeNER,
    classify_words,
    labels_to_spans,
    nnshot_predict,
    protobert_predict,
    token_labels,
)

__all__ = [
    "MINILM_WHEEL",
    "ContainerConfig",
    "ContainerNER",
    "Encoder",
    "GaussianMetricNER",
    "ProMLConfig",
    "ProMLNER",
    "TokenPrototypeNER",
    "classify_words",
    "container_loss",
    "label_aware_prompt",
    "labels_to_spans",
    "load_encoder",
    "materialize_minilm",
    "nnshot_predict",
    "option_prompt",
    "proml_loss",
    "protobert_predict",
    "resolve_encoder",
    "symmetric_kl",
    "token_labels",
    "transition_priors",
    "transition_scores",
    "viterbi",
]
