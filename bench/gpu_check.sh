#!/usr/bin/env bash
# One prepared check for a GPU machine: a few training steps of the LLaMA-2-7B WNUT'17 recipe through
# recipes/train.py on a randomly initialised LLaMA-2-7B shape (speed and memory do not depend on weight values),
# as single-GPU LoRA, QLoRA (4-bit), DeepSpeed ZeRO-2 and ZeRO-3 (one process each), then prompts/s of entity
# extraction (bench/inference.py). Records steps/s, samples/s and peak GPU memory per variant.
#
#   bash bench/gpu_wheels.sh                       # here, once: wheels + tokenizer into .whl/
#   device run: bash bench/gpu_check.sh            # carry [".whl"]; results land in $OUT (or bench/results/gpu_check)
#
# Knobs (environment): SHAPE (llama2-7b | tiny), STEPS (default 8), PARTS (default "lora qlora zero2 zero3 infer"),
# LIMIT (seconds per part, default 150), DEVICE (default cuda), WHEELS (1: install .whl/ if present),
# INFER_SENTENCES (default 50). `fsdp` (ds_configs/fsdp.yaml, one process) is an extra part, not in the default list.
# A CPU plumbing check:
#   SHAPE=tiny PARTS="lora zero2 zero3 infer" DEVICE=cpu WHEELS=0 INFER_SENTENCES=5 bash bench/gpu_check.sh
# Each part runs under `timeout`, so one failure costs at most LIMIT and the others still run; a part's log is kept
# in the output folder. Budget: about 2 min to write the random model, about 1 min per training part, 2 min for
# inference: within one 10-minute call.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-bench/results/gpu_check}
mkdir -p "$RESULTS"
SHAPE=${SHAPE:-llama2-7b}
STEPS=${STEPS:-8}
PARTS=${PARTS:-lora qlora zero2 zero3 infer}
LIMIT=${LIMIT:-150}
DEVICE=${DEVICE:-cuda}
WHEELS=${WHEELS:-1}
INFER_SENTENCES=${INFER_SENTENCES:-50}  # x 6 WNUT'17 types = prompts
WORK=${WORK:-/tmp/gpu_check}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ "$WHEELS" = 1 ] && [ -d .whl ]; then  # the GPU image lacks trl, datasets, deepspeed, bitsandbytes: install the carried wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
TOKENIZER=default
[ -d .whl/tokenizer ] && TOKENIZER=.whl/tokenizer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RESULTS/gpu.txt" 2>&1

MODEL=$WORK/$SHAPE-random
[ -f "$MODEL/random_model.json" ] || python3 bench/make_random_model.py --shape "$SHAPE" --out "$MODEL" \
    --tokenizer "$TOKENIZER" > "$RESULTS/make_model.log" 2>&1 || { tail -20 "$RESULTS/make_model.log"; exit 1; }

COMMON=(recipes/wnut17_intra.yaml --model_name_or_path "$MODEL" --max_steps "$STEPS" --logging_steps 1
        --save_strategy no --report_to none --disable_tqdm true)
[ "$SHAPE" = llama2-7b ] || COMMON+=(--cl_layer 0.8125)  # the recipe's layer 26 of 32, at the same depth
run_part() {  # name, then the launcher and its arguments
    local name=$1; shift
    local start=$SECONDS
    timeout "$LIMIT" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s"
    echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - start))}" > "$WORK/$name.status.json"
}
for part in $PARTS; do
    case $part in
        lora)  run_part lora python3 recipes/train.py "${COMMON[@]}" --output_dir "$WORK/lora" ;;
        qlora) run_part qlora python3 recipes/train.py "${COMMON[@]}" --output_dir "$WORK/qlora" \
                   --load_in_4bit true --bnb_4bit_quant_type nf4 --use_bnb_nested_quant true ;;
        zero2) run_part zero2 accelerate launch --config_file ds_configs/deepspeed_zero2.yaml --num_processes 1 \
                   recipes/train.py "${COMMON[@]}" --output_dir "$WORK/zero2" ;;
        zero3) run_part zero3 accelerate launch --config_file ds_configs/deepspeed_zero3.yaml --num_processes 1 \
                   recipes/train.py "${COMMON[@]}" --output_dir "$WORK/zero3" ;;
        fsdp)  run_part fsdp accelerate launch --config_file ds_configs/fsdp.yaml --num_processes 1 \
                   recipes/train.py "${COMMON[@]}" --output_dir "$WORK/fsdp" ;;  # opt-in: PARTS="fsdp ..."
        infer) run_part infer python3 bench/inference.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 \
                   --sentences "$INFER_SENTENCES" --rounds 1 --batch 256 --naive-batch 8 --max-new-tokens 24 \
                   --variants naive,sorted_b32,prefill,full --check "" --out "$RESULTS/inference.json" ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
done

# One table: steps/s, samples/s and peak memory per training part (from each run folder's train_results.json).
python3 - "$WORK" "$RESULTS" "$SHAPE" "$STEPS" <<'EOF'
import json, sys
from pathlib import Path

work, results, shape, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rows = []
for status in sorted(work.glob("*.status.json")):
    row = json.loads(status.read_text())
    metrics = work / row["part"] / "train_results.json"
    run = work / row["part"] / "cllmfs_run.json"
    if run.is_file():  # did the launcher really shard (DEEPSPEED, FSDP) or fall back?
        row["distributed_type"] = json.loads(run.read_text()).get("distributed_type")
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        row.update(train_s=m.get("train_runtime"), steps_per_s=m.get("train_steps_per_second"),
                   samples_per_s=m.get("train_samples_per_second"), peak_gpu_memory_gib=m.get("peak_gpu_memory_gib"))
    rows.append(row)
summary = {"shape": shape, "steps": steps, "gpu": (results / "gpu.txt").read_text().strip(), "parts": rows}
(results / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"{'part':8s} {'rc':>3s} {'wall s':>7s} {'train s':>8s} {'steps/s':>8s} {'samples/s':>8s} {'peak GiB':>8s}"
      "  launcher")
for r in rows:
    cells = [r.get(k) for k in ("train_s", "steps_per_s", "samples_per_s", "peak_gpu_memory_gib")]
    text = " ".join(f"{c:>8}" if c is not None else f"{'-':>8}" for c in cells)
    print(f"{r['part']:8s} {r['rc']:>3} {r['wall_s']:>7} {text}  {r.get('distributed_type') or '-'}")
EOF
