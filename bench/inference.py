"""Prompts per second of entity extraction: the naive `generate` loop a user would write against `EntityExtractor`.

    python bench/inference.py                                   # random LoRA (r=16, 7 projections) on SmolLM2
    python bench/inference.py --run runs/smollm2-wnut17-intra   # a trained run folder
    python bench/inference.py --model /tmp/llama2-7b-random --device cuda --dtype bfloat16 --batch 256 \
        --max-new-tokens 24                                     # GPU (bench/gpu/gpu_check.sh writes that model)

The same prompts (the first `--sentences` WNUT'17 test sentences x the 6 types) go through every variant, in one
process, for `--rounds` rounds in alternating order (A B C ... C B A), so that drift of a shared machine hits all
variants alike; the median prompts/s of each variant is compared with the naive one's. `--naive-sentences` times
the naive path on the first sentences only (it is the slow one), so that the fast variants can get enough prompts
to fill large batches; answers are then compared on the prompts both variants saw. `--check` variants run in the first
round only (they are there for the agreement check). On a CPU shared with other jobs, use `--threads 1`: intra-op
threads that wait for a busy core make everything many times slower. Variants:

- `naive`: `model.generate` on the unmerged PEFT model, batches of 8 in dataset order, left padding, full prompts,
  unconstrained, `max_new_tokens=64`, `stop_strings=["<im_end>"]`.
- `sorted_b32`: `EntityExtractor` without any of the levers below: merged LoRA, length-sorted batches of 32,
  constrained decoding through `generate` (what the extractor did before prefix reuse).
- `prefix`: + the instruction's key/value cache computed once per type.
- `prefill`: + the forced answer prefix fed with the prompt.
- `full`: + our own greedy loop, which drops finished rows and writes forced endings without the model (every
  lever of the extractor, in `--dtype`).
- `default`: `full` in the precision `cllmfs predict` uses by default (`--dtype auto`): on a CPU the faster of
  bfloat16 and float32 by the matmul probe of `cllmfs_trainer.models.precision`, elsewhere `--dtype`. Its speedup is
  the default path's. Where that is bfloat16 its answers are compared with `full`'s, not required to equal them.
- `full_bf16` (opt-in: add it to `--variants`): `full` on a bfloat16 copy of the merged model (`cllmfs predict
  --dtype bfloat16`), compared with `full` like `default`.
- `full_unconstrained` (a `--check` variant): `full` without the constraint (so without answer prefill or our loop):
  the same decoding problem as `naive`, whose greedy outputs it should reproduce.

Forward hooks split each variant's first-round time into passes over prompts (several tokens per row) and one-token
decoding steps, and count the rows those steps computed (rows of finished answers included).

Agreement is checked on the parsed answers: `full_unconstrained` against `naive` (same decoding problem), `prefix`,
`prefill` and `full` against `sorted_b32` (same constrained problem, with and without the levers). Writes JSON
under bench/results/.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXTRACTOR_VARIANTS = {
    "sorted_b32": dict(constrained=True, reuse_prefix=False, prefill_answer=False, compact_decoding=False),
    "prefix": dict(constrained=True, reuse_prefix=True, prefill_answer=False, compact_decoding=False),
    "prefill": dict(constrained=True, reuse_prefix=True, prefill_answer=True, compact_decoding=False),
    "full": dict(constrained=True, reuse_prefix=True, prefill_answer=True, compact_decoding=True),
    "full_unconstrained": dict(constrained=False, reuse_prefix=True, prefill_answer=True),
}
AGREEMENT = [
    ("full_unconstrained", "naive"),
    ("prefix", "sorted_b32"),
    ("prefill", "sorted_b32"),
    ("full", "sorted_b32"),
    ("full", "naive"),
    ("full_bf16", "full"),
    ("default", "full"),
]


def load_models(run: str | None, seed: int, model_ref: str = "default", device: str = "cpu", dtype: str = "float32"):
    """The unmerged PEFT model (naive path) and a merged copy of the same weights (our path), and the tokenizer."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from cllmfs_trainer.models import load_model, load_tokenizer
    from cllmfs_trainer.run_folder import RunFolder

    if run is not None:
        meta = RunFolder.load(run)
        tokenizer = load_tokenizer(run, padding_side="left")
        peft = PeftModel.from_pretrained(load_model(meta.base_model, dtype=dtype), run).to(device).eval()
        merged = PeftModel.from_pretrained(load_model(meta.base_model, dtype=dtype), run).merge_and_unload()
        return peft, merged.to(device).eval(), tokenizer, meta.test_types
    tokenizer = load_tokenizer(model_ref, padding_side="left")
    # init_lora_weights=False: random A and B, so the adapter changes the outputs and merging has work to do.
    config = LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS, init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    peft = get_peft_model(load_model(model_ref, dtype=dtype), config).to(device).eval()
    merged = get_peft_model(load_model(model_ref, dtype=dtype), config).to(device)
    merged.load_state_dict(peft.state_dict())
    return peft, merged.merge_and_unload().eval(), tokenizer, None


def naive_generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """What a user writes: batches in the given order, left-padded full prompts, unconstrained, stop at the marker."""
    import torch

    from cllmfs_trainer.data.format import IM_END

    texts = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            inputs = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_strings=[IM_END],
                tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a run folder; default: SmolLM2 with a random LoRA adapter")
    parser.add_argument("--model", default="default", help="base model without --run (a random LoRA is added)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-format", type=int, default=1, choices=[1, 2])
    parser.add_argument("--sentences", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--naive-batch", type=int, default=8)
    parser.add_argument(
        "--naive-sentences",
        type=int,
        default=None,
        help="time the naive path on the first N sentences only (default: all of --sentences)",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--variants", default="naive,sorted_b32,prefix,prefill,full,default", help="timed in every round"
    )
    parser.add_argument("--check", default="full_unconstrained", help="timed in the first round only")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from cllmfs_trainer.data.format import ANSWER_FORMAT, IM_END, build_prompt, parse_output
    from cllmfs_trainer.data.registry import get_dataset
    from cllmfs_trainer.inference.generate import EntityExtractor, Job
    from cllmfs_trainer.models.precision import probe_cpu_dtype
    from cllmfs_trainer.run_folder import RunFolder

    if args.threads:
        torch.set_num_threads(args.threads)
    wnut = get_dataset("wnut17")
    peft, merged, tokenizer, types = load_models(args.run, args.seed, args.model, args.device, args.dtype)
    types = types or wnut.types
    # A trained run's answers are parsed in its answer format; a random adapter answers in none, the default will do.
    answer_format = RunFolder.load(args.run).answer_format if args.run else ANSWER_FORMAT
    sentences = wnut.load("test").sentences[: args.sentences]
    # Format 1 prompts share their type's instruction, format 2 prompts their sentence: that is the prefix group.
    jobs = [
        Job(build_prompt(s.text, t, args.prompt_format), s.tokens, t.label if args.prompt_format == 1 else n)
        for n, s in enumerate(sentences)
        for t in types
    ]
    extractors = {
        name: EntityExtractor(
            merged,
            tokenizer,
            types,
            batch_size=args.batch,
            max_new_tokens=args.max_new_tokens,
            prompt_format=args.prompt_format,
            answer_format=answer_format,
            **options,
        )
        for name, options in EXTRACTOR_VARIANTS.items()
    }
    models = [peft.get_base_model(), merged]  # the modules `generate` and the extractors call
    wanted = args.variants.split(",") + args.check.split(",")
    casts = {"full_bf16": "bfloat16"}
    if "default" in wanted:  # the precision `cllmfs predict` and `from_run(dtype="auto")` pick here
        casts["default"] = probe_cpu_dtype("predicting") if args.device == "cpu" else args.dtype
    for name, dtype in casts.items():
        if name not in wanted:
            continue
        model = merged if dtype == args.dtype else copy.deepcopy(merged).to(getattr(torch, dtype))
        if model is not merged:
            models.append(model)
        extractors[name] = EntityExtractor(
            model,
            tokenizer,
            types,
            batch_size=args.batch,
            max_new_tokens=args.max_new_tokens,
            prompt_format=args.prompt_format,
            answer_format=answer_format,
        )
    settings_dtypes = {name: casts[name] for name in casts if name in extractors}

    # Where the time goes, per variant (first round): forward passes over prompts vs one-token decoding steps.
    work = {"prompt_s": 0.0, "decode_s": 0.0, "decode_calls": 0, "decode_rows": 0}
    started: list[float] = []

    def before_forward(module, args, kwargs):
        started.append(time.perf_counter())

    def after_forward(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seconds = time.perf_counter() - started.pop()
        if ids is not None and ids.shape[1] == 1:
            work.update(
                decode_s=work["decode_s"] + seconds,
                decode_calls=work["decode_calls"] + 1,
                decode_rows=work["decode_rows"] + ids.shape[0],
            )
        else:
            work["prompt_s"] += seconds

    for model in models:
        model.register_forward_pre_hook(before_forward, with_kwargs=True)
        model.register_forward_hook(after_forward, with_kwargs=True)
    forward_work: dict[str, dict] = {}

    naive_jobs = jobs[: len(types) * args.naive_sentences] if args.naive_sentences else jobs

    def jobs_of(name: str) -> list[Job]:
        return naive_jobs if name == "naive" else jobs

    def run(name: str, some_jobs: list[Job]) -> list[str]:
        if name == "naive":
            return naive_generate(
                peft, tokenizer, [job.prompt for job in some_jobs], args.naive_batch, args.max_new_tokens
            )
        extractor = extractors[name]
        extractor._automata = {}  # as `predict` does: the constraint's automata are part of every call's cost
        return extractor.generate(some_jobs)

    variants, checks = args.variants.split(","), [name for name in args.check.split(",") if name]
    for name in variants + checks:  # warm-up on a few prompts: first-call costs (allocator, kernels) are not throughput
        run(name, jobs[:2])
    times: dict[str, list[float]] = {name: [] for name in variants + checks}
    texts: dict[str, list[str]] = {}
    for round_index in range(args.rounds):
        for name in variants + checks if round_index == 0 else variants if round_index % 2 == 0 else variants[::-1]:
            work.update(prompt_s=0.0, decode_s=0.0, decode_calls=0, decode_rows=0)
            start = time.perf_counter()
            outputs = run(name, jobs_of(name))
            [parse_output(text, answer_format) for text in outputs]
            times[name].append(time.perf_counter() - start)
            forward_work.setdefault(name, dict(work))
            if texts.setdefault(name, outputs) != outputs:
                print(f"warning: {name} gave other outputs in round {round_index + 1}", file=sys.stderr)
            print(f"round {round_index + 1} {name:20s} {times[name][-1]:7.1f} s", flush=True)

    def answer(text: str) -> str:  # what the answer says, up to its end marker
        return " ".join(text.split(IM_END)[0].split())

    agreement = []
    for left, right in AGREEMENT:
        if left in texts and right in texts:
            compared = min(len(texts[left]), len(texts[right]))  # zip stops at the shorter (naive) list
            same_text = sum(answer(a) == answer(b) for a, b in zip(texts[left], texts[right]))
            same_entities = sum(
                parse_output(a, answer_format).entities == parse_output(b, answer_format).entities
                for a, b in zip(texts[left], texts[right])
            )
            differ = [
                (job.prompt.split("Input: ")[1].split("\n")[0], job.group, answer(a), answer(b))
                for job, a, b in zip(jobs, texts[left], texts[right])
                if answer(a) != answer(b)
            ]
            agreement.append(
                {
                    "pair": [left, right],
                    "same_text": same_text,
                    "same_entities": same_entities,
                    "prompts": compared,
                    "differences": differ[:5],
                }
            )
    base = len(naive_jobs) / statistics.median(times["naive"]) if "naive" in times else None  # prompts/s
    summary = []
    for name in variants + checks:
        seconds = statistics.median(times[name])
        rate = len(jobs_of(name)) / seconds
        summary.append(
            {
                "variant": name,
                "prompts": len(jobs_of(name)),
                "seconds": seconds,
                "prompts_per_s": rate,
                "speedup_vs_naive": rate / base if base else None,
            }
        )
    stats = {name: [len(tokenizer(text)["input_ids"]) for text in outputs] for name, outputs in texts.items()}
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    )
    naive_note = f" (naive: the first {len(naive_jobs)})" if len(naive_jobs) < len(jobs) else ""
    print(
        f"\n{len(jobs)} prompts{naive_note} ({len(sentences)} sentences x {len(types)} types), {device}, "
        f"{torch.get_num_threads()} threads, {'run ' + args.run if args.run else 'random LoRA r=16'}"
    )
    print(
        f"{'variant':20s} {'s':>7s} {'prompts/s':>10s} {'vs naive':>9s} {'answer tokens':>14s} "
        f"{'prompt pass s':>14s} {'decode s':>9s} {'decode steps':>13s} {'decoded rows':>13s}"
    )
    for row in summary:
        ratio = f"{row['speedup_vs_naive']:8.2f}x" if row["speedup_vs_naive"] else ""
        spent = forward_work[row["variant"]]
        print(
            f"{row['variant']:20s} {row['seconds']:7.1f} {row['prompts_per_s']:10.2f} {ratio:>9s} "
            f"{statistics.mean(stats[row['variant']]):14.1f} {spent['prompt_s']:14.1f} {spent['decode_s']:9.1f} "
            f"{spent['decode_calls']:13d} {spent['decode_rows']:13d}"
        )
    for row in agreement:
        print(
            f"agreement {row['pair'][0]} vs {row['pair'][1]}: same answer text {row['same_text']}/{row['prompts']}, "
            f"same entities {row['same_entities']}/{row['prompts']}"
        )
    tag = Path(args.run).name if args.run else "random_lora"
    out = Path(args.out or Path(__file__).parent / "results" / f"inference_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "bench/inference.py", *sys.argv[1:]]),
                "settings": vars(args),
                "dtypes": {"naive": args.dtype, "full": args.dtype, **settings_dtypes},
                "device": device,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "prompts": len(jobs),
                "summary": summary,
                "agreement": agreement,
                "mean_answer_tokens": {k: statistics.mean(v) for k, v in stats.items()},
                "times_s": times,
                "forward_work_first_round": forward_work,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
