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
# pytest-xdist workers: one per core, at most 4 (each loads its own copy of the default model). A test file runs
# whole on one worker, so its module fixtures are built once.
TEST_WORKERS ?= $(shell n=$(NPROC); echo $$(( n < 4 ? n : 4 )))

.PHONY: install demo prior test lint format clean

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
# shipped NER prior, started as dev chose (PRIOR_START in cllmfs_trainer/models/priors.py: merged into the base
# under a fresh LoRA without dropout, end penalty 1; docs/dev_experiments.md).
demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --num_cpu_threads_per_process $(NPROC) \
		recipes/train.py recipes/smollm2/wnut17_intra.yaml --init_adapter prior --init_adapter_merge true \
		--lora_dropout 0.0 --end_penalty 1.0 --overwrite true
	$(VENV)/bin/cllmfs evaluate --run runs/smollm2-wnut17-intra --dataset wnut17 --query-size 100
	$(VENV)/bin/cllmfs predict --run runs/smollm2-wnut17-intra --dataset wnut17 --split test --limit 20 \
		--output runs/smollm2-wnut17-intra-predictions_test20.jsonl
	@echo "predictions: runs/smollm2-wnut17-intra-predictions_test20.jsonl"

# Retrain the shipped NER prior: its two stages of recipes/smollm2/ner_prior.yaml (the second continues the first's
# adapter on another draw), then export it into the package. About 2-2.5 h on 2 cores; needs the corpora under
# CLLMFS_DATA_DIR. Rerun after an interruption: a finished stage is kept, a stopped one resumes from its checkpoint.
PRIOR_DATA ?= $(or $(CLLMFS_DATA_DIR),../shared/data)
TRAIN := CLLMFS_DATA_DIR=$(PRIOR_DATA) $(VENV)/bin/accelerate launch --num_processes 1 \
	--num_cpu_threads_per_process $(NPROC) recipes/train.py recipes/smollm2/ner_prior.yaml
resume = $(if $(wildcard $(1)/checkpoint-*),--resume_from_checkpoint true)

prior: runs/smollm2-ner-prior-2/cllmfs_run.json
	$(PY) -m cllmfs_trainer.training.prior_export runs/smollm2-ner-prior-2

runs/smollm2-ner-prior/cllmfs_run.json: | install
	$(TRAIN) $(call resume,runs/smollm2-ner-prior)

runs/smollm2-ner-prior-2/cllmfs_run.json: runs/smollm2-ner-prior/cllmfs_run.json
	$(TRAIN) --output_dir runs/smollm2-ner-prior-2 --init_adapter runs/smollm2-ner-prior --seed 1 \
		$(call resume,runs/smollm2-ner-prior-2)

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=20

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
