"""Training cost of the default SmolLM2 recipe against the landed baseline, side by side on this machine.

    python bench/train_speed.py                      # speed: 2 alternating rounds of 6 timed steps per variant
    python bench/train_speed.py --levers             # also one lever at a time
    python bench/train_speed.py --fit                # also time each variant's full training until its fit stop
    python bench/train_speed.py --profile            # also profile two steps of the default variant
    python bench/train_speed.py --variants default default+sdpa_attention --out X.json   # chosen variants only

Variants, each run in its own process on the same 5-shot WNUT'17 support set (seed 0):
- `baseline`: bench/configs/smollm2_wnut17_intra_landed.yaml, the recipe as it was before the training-cost levers
  (TRL's LM head over every position, random batches, bfloat16 fixed);
- `default`: recipes/smollm2/wnut17_intra.yaml as shipped (completion-only LM head, length-bucketed batches,
  precision from the probe, LoRA matmuls in that precision);
- with `--levers`, one lever at a time: `baseline+compact_head`, `default+torch_dropout` (LoRA dropout masks from
  torch's `bernoulli_` instead of NumPy's generator), `default+no_dropout` (LoRA dropout 0, a setting of the dev
  sweep), `default+float32`, `default+float32_lora` (PEFT's float32 LoRA matmuls, `lora_compute_dtype: float32`),
  `default+eager_attention` and `default+sdpa_attention` (the attention kernel fixed instead of probed),
  `default+torch_compile` (TorchInductor on the model; the compile time falls in the warm-up step).

Speed rounds alternate the order (A B, B A, ...) so that drift of a shared machine hits both alike. Per variant:
`s_per_step` (median over timed steps, after one warm-up step), `tokens_per_s` (non-padding tokens),
`padding_fraction` (padded positions among all positions), `flops_per_step` (the matmul FLOPs of one training step,
counted by `torch.utils.flop_counter`: forward, backward, the noised pass and the LM head) and `model_gflops_per_s`.
`cores_busy` is the median over steps of the process's CPU seconds per wall second (2.0: both cores of this machine
busy all the time). `peak_gflops` is the float32 and bfloat16 matmul throughput of this CPU on the model's shapes,
measured in the same run. With `--fit`, `seconds_to_fit` is the wall time of a whole training that stops at the
support-fit threshold (`fit_stop`, the same for both; the baseline keeps its 240-step cap), and `fit` the fit it
reached. With `--profile`, `profile_default` lists the ops that take the time of two profiled steps and the share of
the matmuls. Writes bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANDED = ROOT / "bench" / "configs" / "smollm2_wnut17_intra_landed.yaml"
RECIPE = ROOT / "recipes" / "smollm2" / "wnut17_intra.yaml"
# name -> (recipe, overrides). `baseline` and `default` are compared; the others show one lever each.
VARIANTS = {
    "baseline": (LANDED, []),
    "default": (RECIPE, []),
    "baseline+compact_head": (LANDED, ["--compact_lm_head", "true"]),
    "default+torch_dropout": (RECIPE, ["--lora_dropout_rng", "torch"]),
    "default+no_dropout": (RECIPE, ["--lora_dropout", "0.0"]),
    "default+float32": (RECIPE, ["--dtype", "float32"]),
    "default+float32_lora": (RECIPE, ["--lora_compute_dtype", "float32"]),
    "default+eager_attention": (RECIPE, ["--attn_implementation", "eager"]),
    "default+sdpa_attention": (RECIPE, ["--attn_implementation", "sdpa"]),
    "default+torch_compile": (RECIPE, ["--torch_compile", "true"]),
}
PROFILE_WARMUP, PROFILE_STEPS = 2, 2  # profile steps 3-4 of the default variant
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
MATMUL_OPS |= {
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
}
SHAPES = [(1024, 576, 1536), (1024, 1536, 576), (1024, 576, 576)]  # tokens x hidden @ hidden x out: MLP and attention


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternating speed rounds")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per speed run (after one warm-up step)")
    parser.add_argument("--fit", action="store_true", help="also time whole trainings until the fit stop")
    parser.add_argument("--levers", action="store_true", help="also time the one-lever variants")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="time these variants only (default: baseline, default)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile two steps of the default variant")
    # 0.5: about where the marked-answer recipe's fit stands after its 240 steps (experiments/results/fit_budget.json,
    # steps_240: 0.52 of the samples with an entity, 0.85 of the empty ones), so both variants can reach it.
    parser.add_argument("--fit-stop", type=float, default=0.5, help="support-fit threshold of the --fit runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.json")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["speed", "fit", "profile"], default="speed", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def cpu_model() -> str:
    """The CPU's model name (figures hold only against others measured on the same one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_gflops() -> dict[str, float]:
    """Best matmul GFLOP/s on the model's shapes, per precision."""
    import torch

    from cllmfs_trainer.models.precision import seconds_per_matmul

    peaks = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rates = [2 * t * h * o / seconds_per_matmul(dtype, (t, h, o), repeats=10) / 1e9 for t, h, o in SHAPES]
        peaks[name] = round(max(rates), 1)
    return peaks


def top_ops(profiler, top: int = 12) -> dict:
    """The ops that take a profiled step's time (self time on the main thread, which waits for an op's intra-op
    threads), as shares of the total, and the share of the matmul ops."""
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    return {
        "matmul_share": round(matmul / total, 3),
        "top_ops": [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3)} for e in events[:top]],
    }


def limits(report: dict) -> str:
    """What keeps the default variant's model GFLOP/s below the peak, in words, from its profile."""
    profile = report.get("profile_default")
    default = report["variants"]["default"]
    if not profile:
        return "not profiled (run with --profile)"
    matmul = profile["matmul_share"]
    # The matmuls' own rate: the step's FLOPs over the part of the step they take.
    matmul_rate = default["model_gflops_per_s"] / matmul
    others = [
        f"{op['op'].removeprefix('aten::')} {op['share']:.0%}"
        for op in profile["top_ops"]
        if op["op"] not in MATMUL_OPS
    ]
    return (
        f"matmuls (attention included) take {matmul:.0%} of a profiled step and run at about {matmul_rate:.0f} "
        f"GFLOP/s ({matmul_rate / report['peak_gflops'][default['dtype']]:.0%} of the {default['dtype']} peak, "
        "small LoRA and attention matmuls included); the rest is elementwise work that runs far below the matmul "
        "peak (LoRA dropout, norms, activations, residual adds): " + ", ".join(others[:6])
    )


def worker(variant: str, mode: str, steps: int, fit_stop: float, result: Path) -> None:
    """One training in this process; writes its measurements to `result`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import TrainerCallback

    from cllmfs_trainer.scripts import train

    out = tempfile.mkdtemp(prefix=f"train_speed_{variant}_")
    recipe, overrides = VARIANTS[variant]
    argv = [
        str(recipe),
        *overrides,
        "--output_dir",
        out,
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1000",
    ]
    if mode == "speed":
        argv += ["--max_steps", str(steps + 1)]  # the first step warms up and counts FLOPs
    elif mode == "profile":
        argv += ["--max_steps", str(PROFILE_WARMUP + PROFILE_STEPS)]
    script_args, decoding_args, training_args, model_args = train.parse_args(argv)
    training_args.fit_stop = None if mode == "speed" else fit_stop
    positions = {"real": 0, "all": 0}
    times: list[float] = []
    cpu_times: list[float] = []  # CPU seconds of all this process's threads per step: how many cores were busy
    flops = {}
    profile = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if mode == "profile" and state.global_step == PROFILE_WARMUP:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.__enter__()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu_start)
            if mode == "profile" and state.global_step == PROFILE_WARMUP + PROFILE_STEPS:
                self.profiler.__exit__(None, None, None)
                profile.update(top_ops(self.profiler))

    original_init = train.ContrastiveSFTTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Clock())
        collate = self.data_collator

        def counting(examples):
            batch = collate(examples)
            positions["real"] += int(batch["attention_mask"].sum())
            positions["all"] += batch["attention_mask"].numel()
            return batch

        self.data_collator = counting
        if mode == "speed":  # count the FLOPs of one step, outside the timed ones
            step = self.training_step

            def counted_step(model, inputs, *rest, **kw):
                if flops:
                    return step(model, inputs, *rest, **kw)
                with FlopCounterMode(display=False) as counter:
                    loss = step(model, inputs, *rest, **kw)
                flops["per_step"] = counter.get_total_flops()
                return loss

            self.training_step = counted_step

    train.ContrastiveSFTTrainer.__init__ = init
    start = time.perf_counter()
    trainer = train.main(script_args, decoding_args, training_args, model_args)
    wall = time.perf_counter() - start
    history = trainer.support_fit_callback.history
    record = {
        "variant": variant,
        "mode": mode,
        "dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
        "steps": trainer.state.global_step,
        "step_seconds": [round(t, 3) for t in times],
        "step_cpu_seconds": [round(t, 3) for t in cpu_times],
        "real_positions": positions["real"],
        "all_positions": positions["all"],
        "flops_per_step": flops.get("per_step"),
        "wall_seconds": round(wall, 1),
        "train_runtime": trainer.state.log_history[-1].get("train_runtime") if trainer.state.log_history else None,
        "support_fit": history,
        "threads": torch.get_num_threads(),
    }
    if profile:
        record["profile"] = profile
    result.write_text(json.dumps(record) + "\n")


def run_worker(variant: str, mode: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result = Path(handle.name)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--mode",
        mode,
        "--steps",
        str(args.steps),
        "--fit-stop",
        str(args.fit_stop),
        "--result",
        str(result),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record = json.loads(result.read_text())
    result.unlink()
    print(f"  {variant} {mode}: {record['steps']} steps, {record['wall_seconds']} s", flush=True)
    return record


def summarise(runs: list[dict], peaks: dict[str, float]) -> dict:
    """Per variant: median step time over all timed steps (the first step of each run is warm-up)."""
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        timed = [t for r in mine for t in r["step_seconds"][1:]]  # the first step warmed up and counted FLOPs
        s_per_step = statistics.median(timed)
        busy = statistics.median(c / t for r in mine for c, t in zip(r["step_cpu_seconds"][1:], r["step_seconds"][1:]))
        real = sum(r["real_positions"] for r in mine) / sum(r["steps"] for r in mine)
        padded = 1 - sum(r["real_positions"] for r in mine) / sum(r["all_positions"] for r in mine)
        flops = statistics.median(r["flops_per_step"] for r in mine)
        dtype = mine[0]["dtype"]
        gflops = flops / s_per_step / 1e9
        summary[variant] = {
            "dtype": dtype,
            "s_per_step": round(s_per_step, 3),
            "tokens_per_s": round(real / s_per_step, 1),
            "padding_fraction": round(padded, 4),
            "flops_per_step": flops,
            "model_gflops_per_s": round(gflops, 1),
            "fraction_of_peak": round(gflops / peaks[dtype], 3),
            "cores_busy": round(busy, 2),
        }
    return summary


def main(args: argparse.Namespace) -> dict:
    """Run the side-by-side measurement and write the JSON report."""
    if args.worker:
        worker(args.worker, args.mode, args.steps, args.fit_stop, args.result)
        return {}
    peaks = peak_gflops()
    print(f"matmul peak on the model's shapes: {peaks} GFLOP/s")
    runs = []
    variants = args.variants or (list(VARIANTS) if args.levers else ["baseline", "default"])
    for r in range(args.rounds):
        for variant in variants if r % 2 == 0 else reversed(variants):
            runs.append(run_worker(variant, "speed", args))
    # Measured again after the rounds: on a shared machine the best of the two is the closer to the CPU's limit.
    peaks = {dtype: max(value, peak) for (dtype, value), peak in zip(peak_gflops().items(), peaks.values())}
    summary = summarise(runs, peaks)
    report = {
        "command": " ".join(["python", "bench/train_speed.py", *sys.argv[1:]]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "peak_gflops": peaks,
        "variants": summary,
        "ratio_tokens_per_s": (
            round(summary["default"]["tokens_per_s"] / summary["baseline"]["tokens_per_s"], 2)
            if {"default", "baseline"} <= summary.keys()
            else None
        ),
        "runs": runs,
    }
    if args.profile:
        report["profile_default"] = run_worker("default", "profile", args)["profile"]
        report["limits"] = limits(report)
    if args.fit:
        fits = {v: run_worker(v, "fit", args) for v in ("default", "baseline")}
        for variant, record in fits.items():
            last = record["support_fit"][-1] if record["support_fit"] else {}
            summary[variant]["seconds_to_fit"] = record["wall_seconds"]
            summary[variant]["steps_to_fit"] = record["steps"]
            summary[variant]["fit"] = {k: round(v, 3) for k, v in last.items() if k.startswith("support_fit")}
            summary[variant]["fit_reached"] = bool(last) and min(summary[variant]["fit"].values()) >= args.fit_stop
        ratio = fits["baseline"]["wall_seconds"] / fits["default"]["wall_seconds"]
        report["ratio_seconds_to_fit"] = round(ratio, 2) if summary["default"]["fit_reached"] else None
        if not summary["default"]["fit_reached"]:
            report["ratio_note"] = "the default did not reach the fit threshold within its budget: no ratio"
        elif not summary["baseline"]["fit_reached"]:
            report["ratio_note"] = (
                "the baseline did not reach the fit threshold within its budget: its seconds_to_fit is its whole "
                "training, so ratio_seconds_to_fit is a lower bound"
            )
        report["fit_stop"] = args.fit_stop
        report["fit_runs"] = list(fits.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "fit_runs")}, indent=2))
    return report


if __name__ == "__main__":
    main(make_parser().parse_args())
