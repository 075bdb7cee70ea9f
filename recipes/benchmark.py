"""Run the few-shot benchmark:  python recipes/benchmark.py recipes/smollm2/benchmark.yaml [--key value ...]

The logic lives in `cllmfs_trainer.scripts.benchmark` (importable: `make_parser()`, `parse_args()`, `main()`).
"""

from cllmfs_trainer.scripts.benchmark import cli

if __name__ == "__main__":
    cli()
