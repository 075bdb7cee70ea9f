"""Does the contrastive term move? Eval CE and CL on a fixed set before and after a short run, per cl_weight.

    python experiments/cl_effect.py --weights 0.001 1.0 --steps 12

Trains the default model (SmolLM2-135M) on the 5-shot WNUT'17 support set (seed 0), evaluating on the support
samples that contain entities, with the same noise draw before and after. Writes experiments/results/cl_effect.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import LoraConfig

from cllmfs_trainer import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.data import build_sft_dataset, get_dataset, sample_support_set
from cllmfs_trainer.models import load_model, load_tokenizer

KEYS = ["eval_ce_loss", "eval_cl_loss", "eval_cl_pos_sim", "eval_cl_neg_sim"]


def run(weight: float, args: argparse.Namespace) -> dict:
    tokenizer = load_tokenizer(args.model)
    wnut = get_dataset("wnut17")
    support = sample_support_set(wnut.load("train").sentences, args.k, seed=0)
    train = build_sft_dataset(support.sentences, wnut.types, tokenizer)
    evaluation = train.filter(lambda row: any(c > 0 for c in row["cl_labels"]))
    config = ContrastiveSFTConfig(
        output_dir="/tmp/cllmfs-cl-effect",
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        cl_weight=weight,
        cl_layer=args.cl_layer,
        cl_noise_site=args.site,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    trainer = ContrastiveSFTTrainer(
        load_model(args.model),
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora,
    )
    torch.manual_seed(1)
    before = trainer.evaluate()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    torch.manual_seed(1)
    after = trainer.evaluate()
    return {
        "cl_weight": weight,
        "s_per_step": seconds / args.steps,
        "before": {k: before[k] for k in KEYS},
        "after": {k: after[k] for k in KEYS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.001, 1.0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--cl-layer", type=float, default=0.8125)
    parser.add_argument("--site", default="embeddings")
    args = parser.parse_args()
    results = [run(weight, args) for weight in args.weights]
    for r in results:
        b, a = r["before"], r["after"]
        print(
            f"cl_weight {r['cl_weight']:g}: CE {b['eval_ce_loss']:.2f} -> {a['eval_ce_loss']:.2f}, "
            f"CL {b['eval_cl_loss']:.2f} -> {a['eval_cl_loss']:.2f}, pos-neg sim "
            f"{b['eval_cl_pos_sim'] - b['eval_cl_neg_sim']:.3f} -> {a['eval_cl_pos_sim'] - a['eval_cl_neg_sim']:.3f}"
            f" ({r['s_per_step']:.1f} s/step)"
        )
    out = Path(__file__).parent / "results" / "cl_effect.json"
    flags = " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
    )
    record = {"command": f"python experiments/cl_effect.py {flags}", "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
