#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what bench/gpu/gpu_check.sh needs on a GPU machine that cannot reach a package index:
# the wheels its image lacks (trl, datasets, deepspeed, bitsandbytes and their own missing needs, peft pinned to
# ours) and the embedded model's tokenizer. Run here, where pip works:
#   bash bench/gpu/gpu_wheels.sh
# Versions are this project's (.venv); wheels are for the GPU image's Python 3.12 on x86-64. About 50 MB, to stay
# small enough to copy along with the working tree, so transformers is NOT included (the image has 5.17).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# Pure-python or manylinux wheels the image lacks (pydantic and friends: deepspeed needs them).
for name in trl datasets dill multiprocess hjson pydantic pydantic_core annotated-types typing-inspection \
            bitsandbytes peft; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$name==$(version "$name")"
done
# DeepSpeed publishes only a source archive; its wheel is pure Python (ops compile on first use), built here.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
# The tokenizer of the embedded model (the GPU machine has no GGUF package to materialise it from).
"$PY" - <<'EOF'
from cllmfs_trainer.models import load_tokenizer

load_tokenizer("default").save_pretrained(".whl/tokenizer")
EOF
du -sh .whl
