"""Training: `ContrastiveSFTConfig`, `ContrastiveSFTTrainer`, the contrastive loss and the batch collator.

Importing this package loads torch and TRL; `import cllmfs_trainer` alone does not.
"""

from cllmfs_trainer.training.collator import ContrastiveDataCollator
from cllmfs_trainer.training.config import ContrastiveSFTConfig
from cllmfs_trainer.training.losses import ContrastiveOutput, add_noise, select_tokens, supervised_contrastive_loss
from cllmfs_trainer.training.trainer import ContrastiveSFTTrainer

__all__ = [
    "ContrastiveDataCollator",
    "ContrastiveOutput",
    "ContrastiveSFTConfig",
    "ContrastiveSFTTrainer",
    "add_noise",
    "select_tokens",
    "supervised_contrastive_loss",
]
