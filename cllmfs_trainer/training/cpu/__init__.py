"""CPU levers of training and the probes that choose them; on an accelerator each lever steps aside.

- `dropout.py`: LoRA dropout masks drawn by NumPy where torch's CPU generator is a serial loop (`lora_dropout_rng`).
- `lm_head.py`: the LM head scores only labelled positions on the CPU, as TRL does on CUDA (`fused_lm_head`).
- `lora_precision.py`: LoRA matmuls in the model's half precision with float32 master weights (`lora_compute_dtype`).
- `attention_probe.py`: SDPA or plain matmuls, whichever a timing probe finds faster (`attn_implementation: auto`).
- `auto_choices.py`: settles every `auto` of a recipe once per training, and again the same way on resume.

The precision probe (`cllmfs_trainer.models.precision`) lives with model loading, which also resolves `dtype="auto"`.
"""
