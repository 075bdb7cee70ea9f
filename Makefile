# Set-up and everyday commands. A fresh machine needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Where no GPU is present we install the CPU build of torch first, so nothing pulls a multi-GB CUDA build.
# On these machines torch==2.13.0 is a CPU wheel on local disk; elsewhere set
# TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_INSTALL ?= torch==2.13.0
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
# accelerate launch gives a CPU process one thread unless told otherwise: 2-3x slower here.
NPROC := $(shell nproc 2>/dev/null || echo 1)

.PHONY: install demo test lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ -z "$(HAS_GPU)" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "no GPU found: installing the CPU build of torch ($(TORCH_INSTALL))"; \
		$(PY) -m pip install --quiet $(TORCH_INSTALL); \
	fi
	$(PY) -m pip install --quiet -e ".[dev,spacy,serve]"  # the optional extras are tested too
	# DeepSpeed ships as an sdist: build it against the torch above (an isolated build would fetch another torch).
	$(PY) -m pip install --quiet --no-build-isolation "deepspeed>=0.16" "bitsandbytes>=0.45"
	touch $@

# The main job on the embedded default: SmolLM2-135M-Instruct on the shipped WNUT'17 data, on CPU, 5-shot from the
# shipped NER prior (on dev it beat the plain base on every support seed: docs/dev_experiments.md).
demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --num_cpu_threads_per_process $(NPROC) \
		recipes/train.py recipes/smollm2/wnut17_intra.yaml --init_adapter prior --overwrite true
	$(VENV)/bin/cllmfs evaluate --run runs/smollm2-wnut17-intra --dataset wnut17 --query-size 100
	$(VENV)/bin/cllmfs predict --run runs/smollm2-wnut17-intra --dataset wnut17 --split test --limit 20 \
		--output runs/smollm2-wnut17-intra-predictions_test20.jsonl
	@echo "predictions: runs/smollm2-wnut17-intra-predictions_test20.jsonl"

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
