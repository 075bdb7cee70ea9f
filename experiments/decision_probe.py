"""Does the model decide "entities follow" correctly? Teacher-forced accuracy of the one token after the answer prefix.

    python experiments/decision_probe.py --steps 24 --lr 5e-4 [--mask-prefix]

After "... the extracted entities are" the model writes ` <<` (an entity group follows) or ` <` (of `<im_end>`, no
entity). Everything else in a completion is template or copying, so the averaged CE can be tiny while this decision
is wrong. Trains the default model on the 5-shot WNUT'17 support set (seed 0) and reports, separately for samples
with and without entities, how often the argmax at that position is the gold token. `--mask-prefix` leaves the
fixed answer prefix out of the loss. `--answer-format pointer` drops the opening ` <<<`, so that the first answer
token is the entity's own first word (copied from the sentence) or the start of ` <im_end>`: the decision and the
pointing become one choice. The decision is read as "does the model end the answer at its first token"; its mean
probability of not ending is `mean_p_entity`. Writes experiments/results/decision_probe.json (appending runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import torch
from peft import LoraConfig
from transformers import TrainerCallback

from cllmfs_trainer import ContrastiveSFTConfig, ContrastiveSFTTrainer
from cllmfs_trainer.data import build_samples, get_dataset, sample_support_set, tokenize_samples
from cllmfs_trainer.data.format import ANSWER_PREFIX, CLOSE, IM_END
from cllmfs_trainer.data.sft import IGNORE_INDEX
from cllmfs_trainer.models import load_model, load_tokenizer


def decision_positions(rows: list[dict], prefix_len: int) -> list[int]:
    """Position of the decision token in each row: right after the fixed answer prefix."""
    return [next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX) + prefix_len for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--cl-weight", type=float, default=0.001)
    parser.add_argument("--mask-prefix", action="store_true")
    parser.add_argument("--oversample", type=int, default=1, help="repeat samples with entities this many times")
    parser.add_argument("--dtype", default="float32", help="base weights dtype (bfloat16 uses AMX on recent CPUs)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--scheduler", default="constant", help="lr_scheduler_type, e.g. cosine")
    parser.add_argument("--warmup", type=int, default=0, help="warmup steps")
    parser.add_argument("--prompt-format", type=int, default=1, help="1: instruction first; 2: sentence first")
    parser.add_argument("--eval-every", type=int, default=0, help="also probe every N steps (a learning curve)")
    parser.add_argument("--support-seed", type=int, default=0, help="seed of the 5-shot WNUT'17 support set")
    parser.add_argument(
        "--answer-format",
        default="marked",
        choices=["marked", "pointer"],
        help="marked: the paper's ` <<< X >>>` groups, so the first answer token is a yes/no marker; pointer: "
        "` X >>>` without the opening marker, so the first answer token is the entity's own first token (a choice "
        "among the sentence's words) or the start of ` <im_end>`",
    )
    args = parser.parse_args()

    tokenizer = load_tokenizer("default")
    wnut = get_dataset("wnut17")
    support = sample_support_set(wnut.load("train").sentences, 5, seed=args.support_seed)
    samples = build_samples(support.sentences, wnut.types, args.prompt_format)
    if args.answer_format == "pointer":
        for sample in samples:
            entities = [sample.prompt[start:end] for start, end in sample.entity_chars]
            sample.completion = ANSWER_PREFIX + "".join(f" {e} {CLOSE}" for e in entities) + f" {IM_END}"
    rows, _ = tokenize_samples(samples, tokenizer)
    train_rows = [r for r, s in zip(rows, samples) for _ in range(args.oversample if s.entity_chars else 1)]
    prefix_len = len(tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    decisions = decision_positions(rows, prefix_len)
    # The first token of the empty answer (` <` of ` <im_end>`): every other choice at the decision means "an entity
    # follows", whichever answer format.
    end_token = next(row["input_ids"][d] for row, d, s in zip(rows, decisions, samples) if not s.entity_chars)
    for row, position in zip(rows, decisions):
        first = position - prefix_len
        if args.mask_prefix:
            row["labels"][first : first + prefix_len] = [IGNORE_INDEX] * prefix_len
    config = ContrastiveSFTConfig(
        output_dir="/tmp/cllmfs-decision-probe",
        max_steps=args.steps,
        per_device_train_batch_size=8,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        warmup_steps=args.warmup,
        gradient_checkpointing=False,
        cl_weight=args.cl_weight,
        cl_layer=0.8125,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    trainer = ContrastiveSFTTrainer(
        load_model("default", dtype=args.dtype),
        args=config,
        train_dataset=datasets.Dataset.from_list(train_rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    curve = []

    def probe(step: int) -> None:
        """Teacher-forced decision over all support samples, at the current weights: the mean probability of not
        ending the answer at its first token, with and without entities."""
        model = trainer.model
        was_training = model.training
        model.eval()
        counts = {"with_entities": [0, 0], "empty": [0, 0]}  # [correct, total]
        p_entity = {"with_entities": 0.0, "empty": 0.0}  # mean probability of the "an entity follows" token
        with torch.no_grad():
            for row, sample, position in zip(rows, samples, decisions):
                logits = model(input_ids=torch.tensor([row["input_ids"][:position]])).logits[0, -1]
                key = "with_entities" if sample.entity_chars else "empty"
                says_entity = logits.argmax().item() != end_token
                counts[key][0] += int(says_entity == bool(sample.entity_chars))
                p_entity[key] += 1.0 - logits.float().softmax(-1)[end_token].item()
                counts[key][1] += 1
        model.train(was_training)
        mean = {key: round(p_entity[key] / counts[key][1], 3) for key in counts}
        curve.append(
            {
                "step": step,
                "decision_correct": counts,
                "mean_p_entity": mean,
                "separation": round(mean["with_entities"] - mean["empty"], 3),
            }
        )
        print(json.dumps(curve[-1]), flush=True)

    class ProbeCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if args_ns.eval_every and state.global_step % args_ns.eval_every == 0 and state.global_step < args_ns.steps:
                probe(state.global_step)

    args_ns = args
    trainer.add_callback(ProbeCallback())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    probe(args.steps)
    result = {**vars(args), "train_s": round(seconds), **curve[-1], "curve": curve[:-1]}
    print(json.dumps(result))
    out = Path(__file__).parent / "results" / "decision_probe.json"
    runs = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([*runs, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
