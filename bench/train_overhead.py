"""Step time and peak memory of ContrastiveSFTTrainer against plain SFTTrainer, on the same batches, in one run.

    python bench/train_overhead.py                                  # CPU: SmolLM2-135M on 5-shot WNUT'17 samples
    python bench/train_overhead.py --model llama2-7b-random --data synthetic --seq-len 256 --lora-r 8   # GPU

Each variant runs in its own subprocess (so a CPU process's peak RSS belongs to one variant), for `--rounds`
rounds in alternating order; the median step time per variant is compared with the SFT baseline of the same run.
Variants: `sft` (SFTTrainer), `hidden`, `embeddings` (no-grad positives, the default), `embeddings_grad`.
Prints a table of ratios and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "sft": None,
    "hidden": dict(cl_noise_site="hidden"),
    "embeddings": dict(cl_noise_site="embeddings", cl_positive_grad=False),
    "embeddings_grad": dict(cl_noise_site="embeddings", cl_positive_grad=True),
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(name: str, device: str, tokenizer_ref: str = "default"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cllmfs_trainer.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_ref)
    if name != "llama2-7b-random":
        return load_model(name, device_map=device), tokenizer
    # Throughput does not depend on weight values: a randomly initialised LLaMA-2-7B shape, in bf16.
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model, tokenizer


def build_batches(args, tokenizer, vocab_size: int):
    import torch

    from cllmfs_trainer.data import build_sft_dataset, get_dataset, sample_support_set
    from cllmfs_trainer.training.collator import ContrastiveDataCollator

    count = args.warmup + args.steps
    if args.data == "wnut17":
        wnut = get_dataset("wnut17")
        support = sample_support_set(wnut.load("train").sentences, 5, seed=0)
        rows = list(build_sft_dataset(support.sentences, wnut.types, tokenizer))
        collate = ContrastiveDataCollator(pad_token_id=tokenizer.pad_token_id)
        return [collate([rows[(i * args.batch + j) % len(rows)] for j in range(args.batch)]) for i in range(count)]
    # Synthetic rows shaped like ours: 30% instruction, 40% sentence (with entity runs of type 1), 30% answer.
    g = torch.Generator().manual_seed(0)
    n = args.seq_len
    batches = []
    for _ in range(count):
        ids = torch.randint(3, vocab_size, (args.batch, n), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, int(0.7 * n) :] = ids[:, int(0.7 * n) :]
        cl = torch.full_like(ids, -100)
        cl[:, int(0.3 * n) : int(0.7 * n)] = 0
        for start in range(int(0.3 * n), int(0.7 * n) - 3, 12):
            cl[:, start : start + 3] = 1
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "cl_labels": cl})
    return batches


def worker(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from cllmfs_trainer import ContrastiveSFTConfig, ContrastiveSFTTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, tokenizer = build_model(args.model, device, args.tokenizer)
    batches = build_batches(args, tokenizer, model.config.vocab_size)
    common = dict(
        output_dir="/tmp/cllmfs-bench",
        report_to=[],
        gradient_checkpointing=args.gradient_checkpointing,
        per_device_train_batch_size=args.batch,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        bf16=device == "cuda",
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    extra = VARIANTS[args.worker]
    unused = Dataset.from_list([{"input_ids": [1], "labels": [1]}])  # the trainers want one; we feed batches ourselves
    if extra is None:
        trainer = SFTTrainer(
            model, args=SFTConfig(**common), processing_class=tokenizer, peft_config=lora, train_dataset=unused
        )
    else:
        config = ContrastiveSFTConfig(**common, cl_layer=args.cl_layer, **extra)
        trainer = ContrastiveSFTTrainer(
            model, args=config, processing_class=tokenizer, peft_config=lora, train_dataset=unused
        )
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        if extra is None:
            batch.pop("cl_labels")
        num_items = (batch["labels"][:, 1:] != -100).sum()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.training_step(model, batch, num_items)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            tokens += int(batch["attention_mask"].sum())
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "variant": args.worker,
        "step_s": statistics.median(times),
        "tokens_per_s": tokens / sum(times),
        "peak_gib": peak,
        "peak_kind": "cuda max_memory_allocated" if device == "cuda" else "process max RSS",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (SmolLM2), 'llama2-7b-random', or a path/id")
    parser.add_argument(
        "--tokenizer",
        default="default",
        help="tokenizer reference (a GPU image without the GGUF package: a saved tokenizer folder)",
    )
    parser.add_argument("--data", default="wnut17", choices=["wnut17", "synthetic"])
    parser.add_argument("--seq-len", type=int, default=256, help="synthetic data only")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--cl-layer", type=float, default=0.8125)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    variants = args.variants.split(",")
    forwarded, skip = [], False
    for arg in sys.argv[1:]:  # everything but --out goes to the workers
        if skip or arg.startswith("--out="):
            skip = False
            continue
        skip = arg == "--out"
        if not skip:
            forwarded.append(arg)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]  # alternate to spread machine drift
        for variant in order:
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--worker", variant], capture_output=True, text=True, check=False
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"variant {variant} failed:\n{done.stderr[-4000:]}")
            results[variant].append(json.loads(line[7:]))
            print(f"round {round_index + 1} {variant:16s} {results[variant][-1]['step_s']:.3f} s/step", flush=True)

    base = statistics.median(r["step_s"] for r in results["sft"])
    base_peak = max(r["peak_gib"] for r in results["sft"])
    summary = []
    for variant in variants:
        step = statistics.median(r["step_s"] for r in results[variant])
        peak = max(r["peak_gib"] for r in results[variant])
        summary.append(
            {
                "variant": variant,
                "step_s": step,
                "step_ratio": step / base,
                "peak_gib": peak,
                "peak_ratio": peak / base_peak,
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results[variant]),
            }
        )
    first = results["sft"][0]
    print(f"\n{first['device']}, model {args.model}, batch {args.batch}, data {args.data}, peak = {first['peak_kind']}")
    print(f"{'variant':16s} {'s/step':>8s} {'vs SFT':>7s} {'peak GiB':>9s} {'vs SFT':>7s} {'tokens/s':>9s}")
    for row in summary:
        print(
            f"{row['variant']:16s} {row['step_s']:8.3f} {row['step_ratio']:6.2f}x {row['peak_gib']:9.2f} "
            f"{row['peak_ratio']:6.2f}x {row['tokens_per_s']:9.0f}"
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"train_overhead_{args.model.replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "bench/train_overhead.py", *sys.argv[1:]]),
                "settings": vars(args),
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
