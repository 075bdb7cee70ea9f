"""Write a randomly initialised causal LM of a named shape as a model folder that `recipes/train.py` can load.

    python bench/gpu/make_random_model.py --shape llama2-7b --out /tmp/llama2-7b-random      # on a GPU machine
    python bench/gpu/make_random_model.py --shape tiny --out /tmp/tiny-random                # CPU plumbing checks

Speed and memory do not depend on the weight values, so a random LLaMA-2-7B shape measures what the real model
would cost, without the gated download. The tokenizer is copied from `--tokenizer` (default: the embedded
SmolLM2's, which needs no hub). Its vocabulary (49,152) sets the embedding size; LLaMA-2's has 32,000, so the random
model has 2% more parameters than LLaMA-2-7B (6.88B instead of 6.74B), all in the embedding and output matrices.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = {
    # LLaMA-2-7B (meta-llama/Llama-2-7b-hf config.json), apart from the vocabulary.
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    # Small enough to write and train on a CPU in seconds: checks the plumbing of bench/gpu/gpu_check.sh.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--out", required=True, help="folder to write (config, safetensors weights, tokenizer)")
    parser.add_argument("--tokenizer", default="default", help="model reference whose tokenizer to copy")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cllmfs_trainer.models import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[args.shape],
    )
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialising 7B parameters on the GPU takes seconds, on a CPU minutes
        model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    out = Path(args.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    parameters = sum(p.numel() for p in model.parameters())
    summary = {
        "shape": args.shape,
        "parameters": parameters,
        "dtype": args.dtype,
        "device": device,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "random_model.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
