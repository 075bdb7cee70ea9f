#!/usr/bin/env bash
# One prepared check for a GPU machine: a few training steps of the LLaMA-2-7B WNUT'17 recipe through
# recipes/train.py on a randomly initialised LLaMA-2-7B shape (speed and memory do not depend on weight values),
# as single-GPU LoRA, QLoRA (4-bit), DeepSpeed ZeRO-2 and ZeRO-3 (one process each), then prompts/s of entity
# extraction (bench/inference.py). Records steps/s, samples/s and peak GPU memory per variant.
#
#   bash bench/gpu/gpu_wheels.sh     # where pip works, once: wheels + tokenizer into .whl/
#   bash bench/gpu/gpu_check.sh      # on the GPU machine, with .whl/ beside it; results in $OUT (or bench/results/gpu_check)
#
# Knobs (environment): SHAPE (llama2-7b | tiny), STEPS (default 8), PARTS (default "lora infer qlora zero2 zero3",
# most wanted first), LIMIT (seconds per training part, default 110), INFER_LIMIT (default 240), DEADLINE (seconds
# after which no part starts and running ones are cut, default 560, for a 10-minute slot), DEVICE (default
# cuda), WHEELS (1: install .whl/ if present), INFER_SENTENCES (default 200; x 6 WNUT'17 types = prompts for our
# path, enough to fill batches of 256), NAIVE_SENTENCES (default 40: the naive path, the slow one, is timed on these).
# Opt-in parts, not in the default list: `fsdp` (ds_configs/fsdp.yaml, one process) and `overhead`
# (bench/train_overhead.py: CLLMFS step time vs SFTTrainer on the 7B shape, each variant in its own process).
# A CPU plumbing check:
#   SHAPE=tiny PARTS="lora zero2 zero3 infer" DEVICE=cpu WHEELS=0 INFER_SENTENCES=5 NAIVE_SENTENCES=3 \
#       bash bench/gpu/gpu_check.sh
# Each part runs under `timeout`, so one failure costs at most its limit and the others still run. After every part
# the summary (gpu_check.json) and all logs (gpu_check_logs.tgz) are rewritten into the output folder, so a run cut
# off at its limit still leaves what had finished, in three files.
# Budget: about 1 min to write the random model, about 1 min per training part, 3 min for inference.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTPUT=${OUT:-bench/results/gpu_check}
RESULTS=${RESULTS:-/tmp/gpu_check_results}  # every log; packed into $OUTPUT after each part
mkdir -p "$OUTPUT" "$RESULTS"
SHAPE=${SHAPE:-llama2-7b}
STEPS=${STEPS:-8}
PARTS=${PARTS:-lora infer qlora zero2 zero3}
LIMIT=${LIMIT:-110}
INFER_LIMIT=${INFER_LIMIT:-240}
DEADLINE=${DEADLINE:-560}
DEVICE=${DEVICE:-cuda}
WHEELS=${WHEELS:-1}
INFER_SENTENCES=${INFER_SENTENCES:-200}
NAIVE_SENTENCES=${NAIVE_SENTENCES:-40}
WORK=${WORK:-/tmp/gpu_check}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ "$WHEELS" = 1 ] && [ -d .whl ]; then  # the GPU image lacks trl, datasets, deepspeed, bitsandbytes: install the carried wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # keep a caller's path (e.g. other package versions)
fi
TOKENIZER=default
[ -d .whl/tokenizer ] && TOKENIZER=.whl/tokenizer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RESULTS/gpu.txt" 2>&1
# What the image really has: a version mismatch is the likeliest reason for a part to fail there.
python3 bench/gpu/versions.py > "$RESULTS/versions.txt" 2>&1
cat "$RESULTS/gpu.txt" "$RESULTS/versions.txt"

MODEL=$WORK/$SHAPE-random
[ -f "$MODEL/random_model.json" ] || python3 bench/gpu/make_random_model.py --shape "$SHAPE" --out "$MODEL" \
    --tokenizer "$TOKENIZER" > "$RESULTS/make_model.log" 2>&1 || { tail -20 "$RESULTS/make_model.log"; exit 1; }
echo "random model ready at ${SECONDS}s"

COMMON=(recipes/wnut17_intra.yaml --model_name_or_path "$MODEL" --max_steps "$STEPS" --logging_steps 1
        --save_strategy no --report_to none --disable_tqdm true)
[ "$SHAPE" = llama2-7b ] || COMMON+=(--cl_layer 0.8125)  # the recipe's layer 26 of 32, at the same depth

run_part() {  # name, limit in seconds, then the launcher and its arguments
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 30 ]; then echo "$name skipped: ${left}s left before the deadline"; return; fi
    local start=$SECONDS
    timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s (limit ${limit}s)"
    [ "$rc" = 0 ] || tail -15 "$RESULTS/$name.log"
    echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - start))}" > "$WORK/$name.status.json"
}

summarise() {  # one table: steps/s, samples/s and peak memory per training part; then pack the logs
    python3 bench/gpu/gpu_summary.py "$WORK" "$RESULTS" "$SHAPE" "$STEPS" "$OUTPUT/gpu_check.json"
    [ -f "$RESULTS/inference.json" ] && cp "$RESULTS/inference.json" "$OUTPUT/inference.json"
    tar czf "$OUTPUT/gpu_check_logs.tgz" -C "$RESULTS" .
}

for part in $PARTS; do
    case $part in
        lora)  run_part lora "$LIMIT" python3 recipes/train.py "${COMMON[@]}" --output_dir "$WORK/lora" ;;
        qlora) run_part qlora "$LIMIT" python3 recipes/train.py "${COMMON[@]}" --output_dir "$WORK/qlora" \
                   --load_in_4bit true --bnb_4bit_quant_type nf4 --use_bnb_nested_quant true ;;
        zero2) run_part zero2 "$LIMIT" accelerate launch --config_file ds_configs/deepspeed_zero2.yaml \
                   --num_processes 1 recipes/train.py "${COMMON[@]}" --output_dir "$WORK/zero2" ;;
        zero3) run_part zero3 "$LIMIT" accelerate launch --config_file ds_configs/deepspeed_zero3.yaml \
                   --num_processes 1 recipes/train.py "${COMMON[@]}" --output_dir "$WORK/zero3" ;;
        fsdp)  run_part fsdp "$LIMIT" accelerate launch --config_file ds_configs/fsdp.yaml --num_processes 1 \
                   recipes/train.py "${COMMON[@]}" --output_dir "$WORK/fsdp" ;;  # opt-in: PARTS="fsdp ..."
        overhead) run_part overhead "$INFER_LIMIT" python3 bench/train_overhead.py --model llama2-7b-random \
                   --tokenizer "$TOKENIZER" --data synthetic --seq-len 256 --lora-r 8 --rounds 1 \
                   --out "$RESULTS/train_overhead.json" ;;
        infer) run_part infer "$INFER_LIMIT" python3 bench/inference.py --model "$MODEL" --device "$DEVICE" \
                   --dtype bfloat16 --sentences "$INFER_SENTENCES" --naive-sentences "$NAIVE_SENTENCES" \
                   --rounds 1 --batch 256 --naive-batch 8 --max-new-tokens 24 \
                   --variants naive,sorted_b32,prefill,full --check "" --out "$RESULTS/inference.json"
               grep -A4 "^variant" "$RESULTS/infer.log"; grep "^agreement" "$RESULTS/infer.log" ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
    summarise
done
