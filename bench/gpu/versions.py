"""Print the versions of the packages bench/gpu/gpu_check.sh relies on, and whether each imports.

A GPU image runs its own torch and transformers, not this project's pins: a version mismatch is the likeliest reason
for a part of the check to fail there, so the check records them first.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

PACKAGES = [
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "bitsandbytes",
    "pyarrow",
    "fsspec",
    "huggingface_hub",
    "tokenizers",
]


def main() -> None:
    print("python", sys.version.split()[0])
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - report and go on: the parts show what a failure breaks
            print(name, "FAILED:", type(error).__name__, str(error)[:300])
        else:
            print(name, version)


if __name__ == "__main__":
    main()
