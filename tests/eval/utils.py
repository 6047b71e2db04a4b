"""Shared pieces of the evaluation tests: synthetic prompt files and images, a scripted judge, run comparisons."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trl_srum.shapes.pretrained import SHAPES_SAMPLING


# The evaluation of the shipped shapes model most tests share: 12 held-out prompts, 2 images each, 6 sampler steps.
SETTINGS = {
    "protocol": "shapes",
    "prompts_per_category": 2,
    "num_images": 2,
    "image_width": 64,
    "image_height": 64,
    "generation_kwargs": {**SHAPES_SAMPLING, "num_timesteps": 6},
    "generation_batch_size": 5,
    "judge_batch_size": 7,
    "grid_prompts": 2,
    "grid_thumbnail": 64,
}

# T2I-CompBench's format ([{"Question", "Category", "Question_id"}]), made up: the release's files are not used.
COMPBENCH_PROMPTS = [
    {"Question": "a red book and a yellow vase", "Category": "color", "Question_id": 11},
    {"Question": "a round clock and a square table", "Category": "shape", "Question_id": 12},
    {"Question": "a cat on the left of a dog", "Category": "spatial", "Question_id": 13},
    {"Question": "a man riding a blue bicycle past a tall tree", "Category": "complex", "Question_id": 14},
    {"Question": "a girl is feeding two ducks by a pond", "Category": "complex_action", "Question_id": 15},
]


def write_compbench_prompts(path: Path) -> list[dict[str, Any]]:
    path.write_text(json.dumps(COMPBENCH_PROMPTS, indent=1))
    return COMPBENCH_PROMPTS


def random_images(
    folder: Path, prompt_ids: Sequence[str], per_prompt: int, seed: int, size: tuple[int, int] = (40, 48)
) -> Path:
    """Noise images in the layout `trl-srum eval` reads (`<prompt_id>/0000.png`), from a seeded generator."""
    rng = np.random.default_rng(seed)
    for prompt_id in prompt_ids:
        (folder / prompt_id).mkdir(parents=True, exist_ok=True)
        for index in range(per_prompt):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / prompt_id / f"{index:04d}.png")
    return folder


class ScriptedJudge:
    """A judge that answers from a script: the n-th time a prompt is asked about, its n-th answer (then the last).

    Every call is recorded as (number of images, sampled, temperature when sampled, seed).
    """

    name = "scripted-judge"

    def __init__(self, script: Mapping[str, Sequence[str]]):
        self.script = script
        self.asked: dict[str, int] = {}
        self.calls: list[tuple[int, bool, float | None, int | None]] = []

    def answer(self, images, questions, *, do_sample=False, temperature=1.0, seed=None) -> list[str]:
        self.calls.append((len(images), do_sample, temperature if do_sample else None, seed))
        answers = []
        for question in questions:
            prompt = re.search(r'Prompt: "(.*)"', question).group(1)
            attempt = self.asked.get(prompt, 0)
            self.asked[prompt] = attempt + 1
            script = self.script[prompt]
            answers.append(script[min(attempt, len(script) - 1)])
        return answers


def without_paths(summary: Mapping[str, Any]) -> dict[str, Any]:
    """results.json without the entries that name the run's own folders."""
    summary = json.loads(json.dumps(summary))
    summary["settings"].pop("eval_dir")
    summary["images"].pop("images_dir")
    return summary
