"""cllmfs-trainer: few-shot NER with LLMs (CLLMFS: LoRA SFT plus a contrastive loss on one layer's hidden states).

The data path lives in `cllmfs_trainer.data`, model loading (including the embedded default model) in
`cllmfs_trainer.modeling`. Importing the package itself stays cheap: no torch, transformers or datasets import.
"""

__version__ = "0.1.0.dev0"
