"""Train CLLMFS from a recipe:  accelerate launch recipes/train.py recipes/<setting>.yaml [--key value ...]

The logic lives in `cllmfs_trainer.scripts.train` (importable: `make_parser()`, `parse_args()`, `main()`).
"""

from cllmfs_trainer.scripts.train import cli

if __name__ == "__main__":
    cli()
