"""The pieces of the shapes-world experiments (`recipes/shapes/experiments.py`): rollout sets derived from the
model's own (oracle scores, oracle-selected rows, clean renders of the prompts) and the measurement of a model.

Upper bounds and controls, not self-rewarding: the main job never calls the oracle in stage 1 or 2.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from ..eval import EvalConfig, evaluate_model
from ..protocol import UnifiedModel
from .evaluation import evaluation_specs, understanding_accuracy
from .oracle import evaluate
from .render import render
from .spec import parse_prompt
from .tasks import oracle_judgement


def rescored_by_oracle(rollouts: Dataset) -> Dataset:
    """The same images and regions, with the judge's scores replaced by the oracle's (`oracle_judgement`)."""

    def rescore(row: dict[str, Any]) -> dict[str, Any]:
        boxes = [region["bbox"] for region in row["regions"]]
        global_score, region_scores = oracle_judgement(row["image"], parse_prompt(row["prompt"]), boxes)
        regions = [dict(region, score=score) for region, score in zip(row["regions"], region_scores, strict=True)]
        return {"global_score": global_score, "regions": regions}

    return rollouts.map(rescore, desc="oracle scores")


def oracle_correct(rollouts: Dataset) -> Dataset:
    """Only the rows whose image the oracle judges right for its prompt."""
    return rollouts.filter(lambda row: evaluate(row["image"], parse_prompt(row["prompt"]))["correct"], desc="oracle")


def replaced_by_renders(rollouts: Dataset, model: UnifiedModel) -> Dataset:
    """The same rows with each image and its latents replaced by a clean render of the row's prompt."""

    def rerender(row: dict[str, Any]) -> dict[str, Any]:
        image = render(parse_prompt(row["prompt"]), size=row["image"].width, seed=row["seed"])
        return {"image": image, "latents": model.encode_images([image])[0].tolist()}

    return rollouts.map(rerender, desc="clean renders")


@torch.no_grad()
def measure(
    model: UnifiedModel, eval_dir: str | Path, *, per_category: int, num_images: int, seed: int, **drawing: Any
) -> dict[str, Any]:
    """Held-out accuracy by the oracle (`overall` and per category, through `trl_srum.eval`'s `shapes` protocol) and
    the judge's understanding accuracy on degraded renders of the same scenes.

    `drawing` are `EvalConfig`'s image settings (`image_width`, `image_height`, `generation_kwargs`); `seed` picks the
    sampling seeds, so two models measured with the same seed are paired image by image.
    """
    config = EvalConfig(
        eval_dir=str(eval_dir),
        protocol="shapes",
        prompts_per_category=per_category,
        num_images=num_images,
        eval_seed=seed,
        grid_prompts=4,
        **drawing,
    )
    results = evaluate_model(model, config)
    scenes = [spec for specs in evaluation_specs(per_category, split="heldout").values() for spec in specs]
    understanding = understanding_accuracy(model, scenes, style="concise", image_size=config.image_width)
    # the oracle reads every image, so "missing" is always 0 here
    accuracy = {name: value for name, value in results.scalars().items() if name != "missing"}
    return {"accuracy": accuracy, "understanding": understanding}


def accuracy_change(after: Mapping[str, Any], before: Mapping[str, Any]) -> float:
    """Paired change of overall accuracy in points."""
    return 100 * (after["accuracy"]["overall"] - before["accuracy"]["overall"])
