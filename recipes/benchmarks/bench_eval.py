"""Benchmark `trl-srum eval`'s VLM judge: images judged per second batched vs one at a time, and where an
evaluation's time goes (drawing the images vs judging them).

    python recipes/benchmarks/bench_eval.py          # --num_images 32 --judge_batch_size 16 --judge_max_new_tokens 512

The images are drawn by the shipped shapes-world BAGEL (64x64 px, its sampler settings) through the same code as
`trl-srum eval` (`draw_images`); the `compbench-vlm` protocol judges them with a tiny random Qwen2.5-VL
(`trl_srum.models.tiny_judges.tiny_vlm_judge`) loaded from a folder by `TransformersVLM`, as a real judge is. A
random judge never ends its answer early and never writes a parsable score, so every answer takes the whole token
budget and retries are off: the figures time the judge's decoding, which is what batching speeds up. Timings are
process CPU time (other jobs on the machine do not count), medians over `--rounds`, one torch thread unless
`--threads` says otherwise; the two judging modes alternate within each round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trl_srum.eval import EvalConfig
from trl_srum.eval.compbench import CompBenchProtocol
from trl_srum.eval.images import draw_images, find_images
from trl_srum.models import load_unified_model
from trl_srum.models.tiny_judges import save_tiny, tiny_vlm_judge
from trl_srum.rollout.runner import rollout_state
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR, SHAPES_IMAGE_SIZE, SHAPES_SAMPLING


def timed(function) -> float:
    started = time.process_time()
    function()
    return time.process_time() - started


def judge_all(protocol: CompBenchProtocol, images, batch_size: int) -> None:
    for start in range(0, len(images), batch_size):
        protocol.judge(images[start : start + batch_size], torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=32, help="images drawn and judged")
    parser.add_argument("--judge_batch_size", type=int, default=16, help="images per batched judge call")
    parser.add_argument("--judge_max_new_tokens", type=int, default=512, help="the judge's token budget (the paper's)")
    parser.add_argument("--generation_batch_size", type=int, default=16, help="images drawn together")
    parser.add_argument("--rounds", type=int, default=3, help="timed repetitions of each judging mode")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives stable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    judge_dir = save_tiny(workdir / "judge", *tiny_vlm_judge(seed=0))
    prompts_file = workdir / "prompts.txt"
    prompts_file.write_text("".join(f"a red circle and {n} blue squares\n" for n in range(args.num_images)))
    config = EvalConfig(
        eval_dir=str(workdir / "eval"),
        prompts=str(prompts_file),
        num_images=1,
        image_width=SHAPES_IMAGE_SIZE,
        image_height=SHAPES_IMAGE_SIZE,
        generation_kwargs=SHAPES_SAMPLING,
        generation_batch_size=args.generation_batch_size,
        judge_model=str(judge_dir),
        judge_max_new_tokens=args.judge_max_new_tokens,
        judge_retries=0,
    )
    model = load_unified_model(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()
    protocol = CompBenchProtocol(config)
    prompts = protocol.load_prompts()
    images_dir = workdir / "eval" / "images"
    with torch.no_grad():
        drawing = timed(lambda: draw_images(model, prompts, config, images_dir, rollout_state()))
    images = find_images(images_dir, prompts)

    judge_all(protocol, images[:2], 2)  # loads the judge and warms it up
    batched, single = [], []
    for _ in range(args.rounds):
        batched.append(timed(lambda: judge_all(protocol, images, args.judge_batch_size)))
        single.append(timed(lambda: judge_all(protocol, images, 1)))
    batched_s, single_s = statistics.median(batched), statistics.median(single)
    ratios = [s / b for s, b in zip(single, batched, strict=True)]

    n = len(images)
    print(
        f"judge: tiny random VLM (`tiny_vlm_judge`: hidden 64, 2 layers), {n} images of {SHAPES_IMAGE_SIZE}x"
        f"{SHAPES_IMAGE_SIZE} px, {args.judge_max_new_tokens} new tokens per answer, no retries; "
        f"torch {torch.__version__}, {args.threads} CPU thread(s), median of {args.rounds} rounds (process CPU time)"
    )
    print("| judging | images/s | s/image | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| one at a time | {n / single_s:.2f} | {single_s / n:.4f} | 1.0 |")
    print(
        f"| batched ({args.judge_batch_size}) | {n / batched_s:.2f} | {batched_s / n:.4f} | "
        f"**{single_s / batched_s:.2f}** (per round: {', '.join(f'{r:.2f}' for r in ratios)}) |"
    )
    total = drawing + batched_s
    print(
        f"\none evaluation of {n} images: drawing with the shipped shapes-world model "
        f"({SHAPES_SAMPLING['num_timesteps']} steps, batches of {args.generation_batch_size}), judging batched"
    )
    print("| phase | seconds | s/image | share |")
    print("|---|---:|---:|---:|")
    for phase, seconds in (("drawing", drawing), ("judging", batched_s)):
        print(f"| {phase} | {seconds:.2f} | {seconds / n:.4f} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
