"""Peak GPU memory of SRUM training on a BAGEL-7B-MoT-shaped model, measured / estimated by `bagel.memory`.

    python recipes/benchmarks/bench_memory.py                            # one CUDA GPU with ~40 GB free
    python recipes/benchmarks/bench_memory.py --cases 4-bit:32:1024     # precision:lora_rank|full:resolution

Nothing is downloaded: the model has BAGEL-7B-MoT's config (`BagelConfig()`, loaded for generation training: no ViT,
no text head) and random weights, written once to a folder and loaded back through `load_unified_model` exactly as a
checkpoint is, quantization included. Each case then runs a few SRUM steps (one image per step, activation
checkpointing, bf16) in a process of its own and reports the peak memory PyTorch allocated during training, the
calculator's estimate for the same case (`python -m trl_srum.models.bagel.memory`) and their ratio. `--tiny` does
the same with a tiny random config (a smoke run; on a CPU no memory is measured).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import BitsAndBytesConfig
from trl import ModelConfig, get_peft_config

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.models import load_unified_model
from trl_srum.models.bagel import BagelConfig, BagelModel
from trl_srum.models.bagel.conversion import special_token_ids_from_tokenizer
from trl_srum.models.bagel.memory import PRECISIONS, training_memory
from trl_srum.models.bagel.tiny import build_word_level_tokenizer, tiny_bagel_config
from trl_srum.rollout.schema import ROLLOUT_FEATURES, STATUS_OK, make_row_id


DEFAULT_CASES = ("4-bit:32:1024", "8-bit:32:1024", "bf16:32:1024")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="precision:lora_rank|full:resolution")
    parser.add_argument("--steps", type=int, default=3, help="SRUM steps per case")
    parser.add_argument("--tiny", action="store_true", help="a tiny random config instead of the 7B one")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--checkpoint", default=None, help="reuse a folder written by an earlier run")
    parser.add_argument("--run_case", default=None, help=argparse.SUPPRESS)  # one case, in a child process
    return parser.parse_args()


def model_config(tiny: bool) -> BagelConfig:
    tokenizer = build_word_level_tokenizer()
    if tiny:
        return tiny_bagel_config(tokenizer, visual_und=False, use_lm_head=False)
    return BagelConfig(visual_und=False, use_lm_head=False, **special_token_ids_from_tokenizer(tokenizer))


def write_checkpoint(folder: Path, tiny: bool, device: str) -> None:
    """A random-weight model of the benchmark's config, saved like a trained one (bf16 weights, fp32 VAE)."""
    config = model_config(tiny)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = BagelModel(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.vae.float()
    model.tokenizer = build_word_level_tokenizer()
    model.save_pretrained(folder)


def rollout_dataset(model: BagelModel, resolution: int, rows: int = 2) -> Dataset:
    """Rows of the rollout schema with random latents of a `resolution`-pixel image and made-up judgements."""
    grid = model.latent_grid((resolution, resolution))
    rng = np.random.default_rng(0)
    return Dataset.from_list(
        [
            {
                "row_id": make_row_id(f"p{i}", 0),
                "prompt_id": f"p{i}",
                "prompt": "a red circle",
                "category": "",
                "candidate_index": 0,
                "seed": i,
                "image": Image.new("RGB", (resolution, resolution)),
                "latents": rng.standard_normal((grid[0] * grid[1], model.config.latent_dim), dtype=np.float32),
                "latent_grid": list(grid),
                "reasoning": None,
                "global_score": 0.5,
                "regions": [
                    {
                        "bbox": [0.0, 0.0, resolution / 2, resolution / 2],
                        "label": "circle",
                        "score": 0.8,
                        "relevance": None,
                        "source": "bench",
                    }
                ],
                "global_judge_output": "",
                "region_judge_output": "",
                "status": STATUS_OK,
                "error": "",
            }
            for i in range(rows)
        ],
        features=ROLLOUT_FEATURES,
    )


def parse_case(case: str) -> tuple[str, int | None, int]:
    """`"4-bit:32:1024"` -> ("4-bit", 32, 1024); `"bf16:full:512"` -> ("bf16", None, 512)."""
    parts = case.split(":")
    if len(parts) != 3 or parts[0] not in PRECISIONS or not (parts[1] == "full" or parts[1].isdigit()):
        raise ValueError(f"case {case!r}: expected precision:lora_rank|full:resolution with precision in {PRECISIONS}")
    if parts[1] == "full" and parts[0] != "bf16":
        raise ValueError(f"case {case!r}: quantized weights are frozen, so only a bf16 base trains in full")
    return parts[0], None if parts[1] == "full" else int(parts[1]), int(parts[2])


def run_case(case: str, folder: Path, steps: int, tiny: bool, device: str) -> dict:
    precision, lora_rank, resolution = parse_case(case)
    quantization = {
        "bf16": None,
        "8-bit": BitsAndBytesConfig(load_in_8bit=True),
        "4-bit": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
    }[precision]
    on_gpu = device.startswith("cuda")
    started = time.perf_counter()
    model = load_unified_model(folder, device, dtype=torch.bfloat16, quantization_config=quantization)
    loaded = time.perf_counter() - started
    weights = torch.cuda.memory_allocated() / 1e9 if on_gpu else None
    dataset = rollout_dataset(model, resolution)
    args = SRUMConfig(
        output_dir=tempfile.mkdtemp(prefix="srum-memory-"),
        use_cpu=not on_gpu,
        bf16=on_gpu,
        per_device_train_batch_size=1,
        max_steps=steps,
        learning_rate=2e-5,
        activation_checkpointing=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
    )
    peft_config = None
    if lora_rank is not None:
        peft_config = get_peft_config(ModelConfig(use_peft=True, lora_r=lora_rank, lora_alpha=2 * lora_rank))
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = SRUMTrainer(model, args, train_dataset=dataset, peft_config=peft_config)
    started = time.perf_counter()
    trainer.train()
    seconds_per_step = (time.perf_counter() - started) / steps
    estimate = training_memory(model_config(tiny), precision, lora_rank, resolution)
    measured = torch.cuda.max_memory_allocated() / 1e9 if on_gpu else None
    return {
        "case": case,
        "load_seconds": round(loaded, 1),
        "seconds_per_step": round(seconds_per_step, 2),
        "loaded_gb": None if weights is None else round(weights, 2),
        "estimate_weights_gb": round(estimate.weights, 4),
        "peak_allocated_gb": None if measured is None else round(measured, 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2) if on_gpu else None,
        "estimate_gb": round(estimate.total, 4),
        "measured_over_estimate": None if measured is None else round(measured / estimate.total, 3),
        "loss": trainer.state.log_history[-2].get("loss"),
    }


def main() -> None:
    args = parse_args()
    for case in args.cases:
        parse_case(case)  # fail before minutes of writing a checkpoint
    if args.run_case:
        result = run_case(args.run_case, Path(args.checkpoint), args.steps, args.tiny, args.device)
        print("RESULT " + json.dumps(result))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "bench_memory.py measures GPU memory: no CUDA device here (use --tiny --device cpu to smoke-run)"
        )
    folder = Path(args.checkpoint or tempfile.mkdtemp(prefix="bagel-random-"))
    if not (folder / "config.json").is_file():
        started = time.perf_counter()
        write_checkpoint(folder, args.tiny, args.device)
        print(
            f"wrote a random {'tiny' if args.tiny else '7B'} BAGEL to {folder} in {time.perf_counter() - started:.0f}s"
        )
    results, failed = [], []
    for case in args.cases:
        # A process per case: peak-memory counters and the allocator's cache start from zero.
        command = [
            sys.executable,
            __file__,
            "--run_case",
            case,
            "--checkpoint",
            str(folder),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ] + (["--tiny"] if args.tiny else [])
        finished = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
        if finished.returncode or not lines:
            print(f"case {case} failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
            failed.append(case)
            continue
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'case':<16}{'load s':>8}{'s/step':>8}{'peak GB':>9}{'estimate GB':>13}{'measured/estimate':>19}")
    for r in results:
        peak = "n/a" if r["peak_allocated_gb"] is None else f"{r['peak_allocated_gb']:.2f}"
        ratio = "n/a" if r["measured_over_estimate"] is None else f"{r['measured_over_estimate']:.2f}"
        print(
            f"{r['case']:<16}{r['load_seconds']:>8.1f}{r['seconds_per_step']:>8.2f}{peak:>9}{r['estimate_gb']:>13.2f}{ratio:>19}"
        )
    if failed:
        raise SystemExit(f"failed cases: {', '.join(failed)}")


if __name__ == "__main__":
    main()
