"""vLLM against our own loop on a GPU: prompts/s of each, and how often their entities agree. Needs CUDA and vLLM
(`pip install 'cllmfs-trainer[vllm]'`); it is not run in CI, nor on the CPU machines the project is tested on.

    python bench/gpu/vllm_check.py                                  # the default model + a random rank-16 adapter
    python bench/gpu/vllm_check.py --run runs/smollm2-wnut17-intra --sentences 500
    python bench/gpu/vllm_check.py --dummy-shape llama2-7b --sentences 2000   # speed only, no download

Agreement: a run folder (`--run`, or a random LoRA adapter of rank `--rank` on all seven projections of `--base`,
the shape training gives, with random weights in A and B so that it changes the answers) predicts the first
`--sentences` WNUT'17 test sentences x its types with both engines, from the same prompts and through the same
parser. Reported: prompts/s of each (model loading not counted), the share of sentences whose entity sets are equal,
and the span F1 of vLLM's entities against ours. Our loop runs without the end penalty and one type per span, which
vLLM cannot apply, so both solve the same constrained greedy problem; float rounding can still flip near ties.

`--dummy-shape`: vLLM alone, with random weights (`load_format="dummy"`) of a named shape (the folder that
`bench/gpu/make_random_model.py` writes gives the shapes) and a random adapter of that shape, to measure prompts/s at
a scale whose weights are not at hand; agreement is not measured there (the engines would hold other weights).
Writes JSON to `--out` (default bench/results/gpu/vllm_check.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter_run(base: str, rank: int, folder: Path, seed: int = 0) -> Path:
    """A run folder holding a random LoRA adapter of `rank` over `base`, asked WNUT'17's types."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.models import load_model, load_tokenizer
    from cllmfs_trainer.run_folder import RunFolder

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=PROJECTIONS, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(load_model(base), config).save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    types = get_dataset("wnut17").types
    RunFolder(folder, base, "adapter", 1, "intra", "wnut17", 5, types, types, answer_format="pointer").save()
    return folder


def timed_predict(extractor, sentences) -> tuple[list, float]:
    start = time.perf_counter()
    predictions = extractor.predict(sentences)
    return predictions, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run folder (default: a random adapter over --base)")
    parser.add_argument("--base", default="default", help="base model of the random adapter")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--sentences", type=int, default=200, help="the first N WNUT'17 test sentences")
    parser.add_argument("--dummy-shape", help="vLLM alone on random weights of this shape (make_random_model.py)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "bench" / "results" / "gpu" / "vllm_check.json")
    args = parser.parse_args()

    import torch

    from cllmfs_trainer.data import get_dataset
    from cllmfs_trainer.evaluation.metrics import span_scores
    from cllmfs_trainer.inference.generate import EntityExtractor
    from cllmfs_trainer.inference.vllm_engine import VLLMEntityExtractor, import_vllm

    if not torch.cuda.is_available():
        sys.exit("vllm_check.py: error: needs a CUDA GPU (vLLM does not run on a CPU)")
    vllm = import_vllm()
    work = Path(tempfile.mkdtemp(prefix="vllm_check_"))
    sentences = get_dataset("wnut17").load("test").sentences[: args.sentences]
    result: dict = {"command": "python bench/gpu/vllm_check.py " + " ".join(sys.argv[1:]), "sentences": len(sentences)}
    result["gpu"] = torch.cuda.get_device_name(0)
    if args.dummy_shape:
        model_dir = work / "model"
        # The random model's folder gives the adapter its shapes; vLLM makes its own random weights (dummy).
        shape = ["--shape", args.dummy_shape, "--out", str(model_dir)]
        subprocess.run([sys.executable, str(HERE / "make_random_model.py"), *shape], check=True)
        run = random_adapter_run(str(model_dir), args.rank, work / "run") if args.run is None else args.run
        llm = vllm.LLM(model=str(model_dir), load_format="dummy", enable_lora=True, max_lora_rank=args.rank)
        fast = VLLMEntityExtractor.from_run(run, dtype=args.dtype, llm=llm, end_penalty=0.0, one_type_per_span=False)
        _, seconds = timed_predict(fast, sentences)
        result.update(shape=args.dummy_shape, vllm_prompts_per_s=round(len(sentences) * len(fast.types) / seconds, 1))
    else:
        run = args.run or random_adapter_run(args.base, args.rank, work / "run")
        decoding = {"end_penalty": 0.0, "one_type_per_span": False}
        ours = EntityExtractor.from_run(run, dtype=args.dtype, **decoding)
        ours.model.to("cuda")
        theirs = VLLMEntityExtractor.from_run(run, dtype=args.dtype, **decoding)
        mine, our_seconds = timed_predict(ours, sentences)
        other, their_seconds = timed_predict(theirs, sentences)
        prompts = len(sentences) * len(ours.types)
        ours_spans, their_spans = [set(p.spans) for p in mine], [set(p.spans) for p in other]
        result.update(
            run=str(args.run) if args.run else f"random rank-{args.rank} adapter over {args.base}",
            prompts=prompts,
            ours_prompts_per_s=round(prompts / our_seconds, 1),
            vllm_prompts_per_s=round(prompts / their_seconds, 1),
            same_entities=round(sum(a == b for a, b in zip(ours_spans, their_spans)) / len(sentences), 4),
            vllm_f1_against_ours=round(
                span_scores([list(s) for s in ours_spans], [list(s) for s in their_spans])["f1"], 4
            ),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
