"""Benchmark the two self-judge modes of stage 1 on the same model, images and regions.

- `text`: the model writes its judgement (one global answer and one answer for all regions, up to
  `--judge_max_new_tokens` tokens each, greedy, no retries), which `trl_srum.judge.parsing` reads.
- `prob`: the expected score under the model's yes/no answer probabilities, one forward per image that scores the
  global and every region question on one shared image prefix.

It reports images judged per second by each mode, their ratio, and how often the two modes agree on the sign of a
score, for the global score and per region (only where the text answer parsed).

By default the model is the tiny random BAGEL (`trl_srum.models.bagel.tiny`): speeds are representative of the two
code paths, but a random model's written answers do not parse, so the agreement needs a trained model, e.g.
`--model_name_or_path path/to/model --judge_style concise` for the shapes-world model.

Run: `python recipes/benchmarks/bench_judge.py` (options: `--num_images`, `--judge_max_new_tokens`, `--threads`, ...).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from trl_srum.judge.scoring import SelfJudge
from trl_srum.shapes import CATEGORIES, describe, sample_specs


def load_model(name_or_path: str | None):
    if name_or_path is None:
        from trl_srum.models.bagel.tiny import tiny_bagel_model

        return tiny_bagel_model(seed=0), "tiny random BAGEL (random weights)"
    from trl_srum.models import load_unified_model

    return load_unified_model(name_or_path, dtype=torch.float32).eval(), name_or_path


def region_grid(size: tuple[int, int], count: int) -> list[tuple[float, float, float, float]]:
    """`count` boxes on a regular grid over the image (the same regions for both judges)."""
    width, height = size
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    boxes = []
    for index in range(count):
        r, c = divmod(index, columns)
        boxes.append((c * width / columns, r * height / rows, (c + 1) * width / columns, (r + 1) * height / rows))
    return [tuple(float(round(v)) for v in box) for box in boxes]


def timed(judge: SelfJudge, images, prompts, boxes) -> tuple[float, list]:
    judge.judge(images[0], prompts[0], boxes)  # warm-up
    start = time.perf_counter()
    results = [judge.judge(image, prompt, boxes) for image, prompt in zip(images, prompts, strict=True)]
    return time.perf_counter() - start, results


def sign_agreement(pairs: list[tuple[float | None, float | None]]) -> tuple[int, int]:
    """(agreeing, compared) over the pairs where both judges gave a score; 0 counts as its own sign."""
    compared = [(a, b) for a, b in pairs if a is not None and b is not None]
    return sum(np.sign(a) == np.sign(b) for a, b in compared), len(compared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model_name_or_path", default=None, help="a saved unified model (default: tiny random BAGEL)"
    )
    parser.add_argument("--num_images", type=int, default=12, help="images judged by each mode")
    parser.add_argument("--num_regions", type=int, default=4, help="regions judged per image")
    parser.add_argument("--image_size", type=int, default=32, help="side of the generated images in pixels")
    parser.add_argument("--judge_style", default="detailed", choices=["detailed", "concise"])
    parser.add_argument(
        "--judge_max_new_tokens",
        type=int,
        default=256,
        help="token budget of each written judgement (the released judge: 1024 global, 4096 regions)",
    )
    parser.add_argument("--generation_kwargs", default='{"num_timesteps": 10}', help="sampler settings, JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives stable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, description = load_model(args.model_name_or_path)
    prompts = [describe(spec) for category in CATEGORIES for spec in sample_specs(category, args.num_images, 0)]
    prompts = prompts[:: max(1, len(prompts) // args.num_images)][: args.num_images]
    size = (args.image_size, args.image_size)
    with torch.no_grad():
        images = [
            generated.image
            for generated in model.generate_images(
                prompts,
                generators=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
                image_size=size,
                **json.loads(args.generation_kwargs),
            )
        ]
    boxes = region_grid(size, args.num_regions)
    settings = {"style": args.judge_style, "max_new_tokens": args.judge_max_new_tokens, "retries": 0}
    with torch.no_grad():
        text_seconds, text = timed(SelfJudge(model, mode="text", **settings), images, prompts, boxes)
        prob_seconds, prob = timed(SelfJudge(model, mode="prob", **settings), images, prompts, boxes)

    tokenizer = getattr(model, "tokenizer", None)
    written = (
        [sum(len(tokenizer(answer)["input_ids"]) for answer in (j.global_output, j.region_output)) for j in text]
        if tokenizer
        else []
    )
    text_rate, prob_rate = len(images) / text_seconds, len(images) / prob_seconds
    global_agree, global_compared = sign_agreement([(t.global_score, p.global_score) for t, p in zip(text, prob)])
    region_agree, region_compared = sign_agreement(
        [pair for t, p in zip(text, prob) for pair in zip(t.region_scores, p.region_scores, strict=True)]
    )
    parsed_global = sum(j.global_score is not None for j in text)
    parsed_regions = sum(s is not None for j in text for s in j.region_scores)

    print(
        f"model: {description}; {len(images)} images of {size[0]}x{size[1]} px, {len(boxes)} regions each; "
        f"judge_style={args.judge_style}, judge_max_new_tokens={args.judge_max_new_tokens}, no retries; "
        f"torch {torch.__version__}, {args.threads} CPU thread(s)"
    )
    print("| judge | images/s | s/image | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| text | {text_rate:.3f} | {text_seconds / len(images):.3f} | 1.0 |")
    print(f"| prob | {prob_rate:.3f} | {prob_seconds / len(images):.4f} | {prob_rate / text_rate:.1f} |")
    if written:
        print(f"text judge wrote {np.mean(written):.0f} tokens per image on average (global + regions answers)")
    total_regions = len(images) * len(boxes)
    print(f"text answers parsed: global {parsed_global}/{len(images)}, regions {parsed_regions}/{total_regions}")
    for name, agree, compared in (
        ("global", global_agree, global_compared),
        ("region", region_agree, region_compared),
    ):
        share = f"{agree}/{compared} = {agree / compared:.0%}" if compared else "n/a (no parsed text score)"
        print(f"sign agreement text vs prob, {name}: {share}")


if __name__ == "__main__":
    main()
