"""cllmfs-trainer: few-shot NER with LLMs (CLLMFS: LoRA SFT plus a contrastive loss on one layer's hidden states).

The data path lives in `cllmfs_trainer.data`, model loading (including the embedded default model) in
`cllmfs_trainer.models`. `ContrastiveSFTTrainer`, `ContrastiveSFTConfig`, `EntityExtractor` and `Entity` are imported
lazily, so importing the package itself stays cheap (no torch, transformers or trl).
"""

from cllmfs_trainer import offline_imports as _offline_imports

_offline_imports.install()  # before anything imports peft: keeps bitsandbytes' import off the network

__version__ = "0.1.0.dev0"
__all__ = ["ContrastiveSFTConfig", "ContrastiveSFTTrainer", "Entity", "EntityExtractor"]

_LAZY = {
    "ContrastiveSFTConfig": "cllmfs_trainer.training.config",
    "ContrastiveSFTTrainer": "cllmfs_trainer.training.trainer",
    "Entity": "cllmfs_trainer.inference.extract",
    "EntityExtractor": "cllmfs_trainer.inference.generate",
}


def __getattr__(name: str):
    # `from cllmfs_trainer import ContrastiveSFTTrainer` works, but only that import pays for torch/trl.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cllmfs_trainer' has no attribute {name!r}")
