"""Shared pieces of the stage-1 tests: small configs, scripted judges and a row-by-row dataset comparison."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.tiny import build_word_level_tokenizer, tiny_bagel_config
from trl_srum.rollout import PromptRecord, RolloutConfig


PROMPTS = (
    PromptRecord("p0", "a red circle", "color"),
    PromptRecord("p1", "two blue squares", "numeracy"),
    PromptRecord("p2", "a green triangle above a yellow circle", "spatial"),
    PromptRecord("p3", "an orange square", "color"),
)


def rollout_config(rollout_dir: str | Path, **overrides: Any) -> RolloutConfig:
    """Settings a tiny BAGEL runs in a fraction of a second per image."""
    settings: dict[str, Any] = {
        "rollout_dir": str(rollout_dir),
        "image_width": 16,
        "image_height": 16,
        "generation_kwargs": {"num_timesteps": 2},
        "proposer": "none",
        "judge_mode": "prob",
        "judge_style": "concise",
        "judge_max_new_tokens": 8,
        "judge_retries": 1,
        "rollout_batch_size": 2,
        "gallery_size": 4,
        "relevance_threshold": 0.0,
    }
    settings.update(overrides)
    return RolloutConfig(**settings)


class ScriptedJudgeBagel(BagelModel):
    """A tiny BAGEL whose written answers follow the concise judge format (a random one writes unparsable text).

    Only `answer_questions` is replaced; generation, `score_answers` and `ground` (which asks `answer_questions`) are
    the real ones. Scores depend on the image, so rows differ: the global score is +0.5 for a bright image and -0.5
    for a dark one, region `i` scores +1 when `i` is odd and -0.5 when it is even; a grounding question is answered
    with the left or right half of the image.
    """

    brightness_threshold = 128.0

    def answer_questions(self, images, questions, **kwargs) -> list[str]:
        answers = []
        for image, question in zip(images, questions, strict=True):
            words = question.split()
            if question.startswith("layout score"):
                bright = np.asarray(image.convert("L"), dtype=np.float64).mean() > self.brightness_threshold
                answers.append(f"score {0.5 if bright else -0.5}")
            elif question.startswith("region score"):
                count = len(re.findall(r"\bregion \d+ box\b", question))
                answers.append(" ".join(f"region {i} score {1 if i % 2 else -0.5}" for i in range(1, count + 1)))
            elif question.startswith("find size"):
                width, height = int(words[2]), int(words[3])
                left = len(question) % 2 == 0
                box = (0, 0, width // 2, height) if left else (width // 2, 0, width, height)
                answers.append("box " + " ".join(map(str, box)))
            else:
                answers.append("none")
        return answers


def tiny_bagel_of(cls: type[BagelModel], seed: int = 0, **config_overrides: Any) -> BagelModel:
    """`tiny_bagel_model(seed)` as an instance of `cls` (a subclass): the same weights, one method replaced."""
    tokenizer = build_word_level_tokenizer()
    config = tiny_bagel_config(tokenizer, **config_overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config).eval()
    model.tokenizer = tokenizer
    return model


def scripted_bagel(seed: int = 0, **config_overrides: Any) -> ScriptedJudgeBagel:
    return tiny_bagel_of(ScriptedJudgeBagel, seed, **config_overrides)


def pixels(image: Image.Image | None) -> np.ndarray | None:
    return None if image is None else np.asarray(image.convert("RGB"))


def assert_same_rows(actual: Dataset, expected: Dataset) -> None:
    """Every column of every row equal: images pixel for pixel, latents and scores exactly."""
    assert actual.features == expected.features
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.keys() == want.keys()
        for column in want:
            where = f"row {index} ({want['row_id']}), column {column}"
            if column == "image":
                a, b = pixels(got[column]), pixels(want[column])
                assert (a is None) == (b is None), where
                assert a is None or (a.shape == b.shape and np.array_equal(a, b)), where
            elif column == "latents":
                a, b = got[column], want[column]
                assert (a is None) == (b is None), where
                assert a is None or np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)), where
            else:
                assert got[column] == want[column], where


def statuses(dataset: Dataset) -> dict[str, str]:
    return dict(zip(dataset["row_id"], dataset["status"], strict=True))


def errors(dataset: Dataset) -> dict[str, str]:
    return dict(zip(dataset["row_id"], dataset["error"], strict=True))


def by_row_id(dataset: Dataset) -> dict[str, dict[str, Any]]:
    return {row["row_id"]: row for row in dataset}


def all_boxes_inside(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> bool:
    width, height = size
    return all(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height for x1, y1, x2, y2 in boxes)
