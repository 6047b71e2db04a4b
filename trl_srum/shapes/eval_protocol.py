"""The evaluation protocol `shapes` (registered by the plug-in): the world's exact oracle, per category, as the main
job measures a model.

Prompts are the held-out prompts of `trl_srum.shapes.evaluation.evaluation_specs` (`prompts_per_category` per
category, the same sample for every run, so runs pair up in `--compare`), or any prompt file whose prompts the world's
grammar reads (`parse_prompt`; the category is the spec's own when the file gives none). An image scores 1 when the
oracle reads exactly the prompt's scene from it (`trl_srum.shapes.oracle`), else 0. The headline number is the
accuracy over all images (the main job's `overall`), i.e. categories weigh by their number of images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..eval.protocols import EvalImage, EvalProtocol, Judgement
from ..eval.sources import load_prompt_records
from ..rollout.prompts import PromptRecord
from .evaluation import evaluation_specs
from .oracle import evaluate
from .spec import describe, parse_prompt
from .splits import category_of


class ShapesProtocol(EvalProtocol):
    """The shapes world's oracle (see the module docstring); it has no model to load."""

    name = "shapes"
    scale = "accuracy"

    def load_prompts(self) -> list[PromptRecord]:
        config = self.config
        if not config.prompts:
            return [
                PromptRecord(f"heldout-{category}-{index}", describe(spec), category)
                for category, specs in evaluation_specs(config.prompts_per_category, split="heldout").items()
                for index, spec in enumerate(specs)
            ]
        records = []
        for record in load_prompt_records(config.prompts, config.prompts_split):
            try:
                spec = parse_prompt(record.prompt)
            except ValueError as error:
                raise ValueError(
                    f"{config.prompts}: prompt {record.prompt_id!r} is not a shapes-world prompt: {error}"
                ) from error
            records.append(PromptRecord(record.prompt_id, record.prompt, record.category or category_of(spec) or ""))
        return records

    def settings(self) -> dict[str, Any]:
        return {"judge": "shapes oracle (exact)"}

    def judge(self, images: Sequence[EvalImage], device: torch.device) -> list[Judgement]:
        judgements = []
        for image in images:
            verdict = evaluate(image.load(), parse_prompt(image.record.prompt))
            summary = {key: verdict[key] for key in ("correct", "background_ok", "objects", "extra", "relation")}
            judgements.append(Judgement(float(verdict["correct"]), json.dumps(summary)))
        return judgements

    def category_weights(self, image_counts: Mapping[str, int]) -> dict[str, float]:
        total = sum(image_counts.values())
        return {category: count / total for category, count in image_counts.items()}

    def overall_rule(self, categories: Sequence[str]) -> str:
        return "accuracy over all images (categories weigh by their number of images)"
