"""From per-image scores to a table: category means, group scores and the headline number.

Rows are the per-image records the runner writes (`prompt_id`, `category`, `index`, `score`, ...). How a missing
judgement counts is the `aggregation`:

- ``"exclude_missing"``: it is left out of every mean and reported per category. A category with no judged image has
  no score, and then neither has the headline number.
- ``"official"``: it counts as -1, as the SRUM evaluation script (after T2I-CompBench's Qwen-judge protocol) wrote it
  into its means. Only for reproducing published numbers: -1 is not a score on a 0-100 scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocols import EvalProtocol


OFFICIAL_MISSING_SCORE = -1.0


@dataclass
class CategoryScore:
    """One category's line of the table."""

    prompts: int = field(metadata={"help": "Prompts of the category."})
    images: int = field(metadata={"help": "Images judged or attempted."})
    missing: int = field(metadata={"help": "Images whose judgement is missing."})
    score: float | None = field(metadata={"help": "Mean score; None when no image of the category was judged."})


@dataclass
class Aggregate:
    """A run's table."""

    categories: dict[str, CategoryScore]
    groups: dict[str, float | None] = field(metadata={"help": "Scores of category groups (e.g. Complex)."})
    overall: float | None = field(metadata={"help": "The headline number; None when a category has no score."})
    weights: dict[str, float] = field(metadata={"help": "Weight of each category's score in `overall`."})
    rule: str = field(metadata={"help": "How `overall` is computed, in words."})


def image_value(score: float | None, aggregation: str) -> float | None:
    """What one image contributes to a mean (None: nothing)."""
    if score is not None:
        return float(score)
    return OFFICIAL_MISSING_SCORE if aggregation == "official" else None


def aggregate(rows: Sequence[Mapping[str, Any]], protocol: EvalProtocol, aggregation: str) -> Aggregate:
    """The table of a run's rows under `protocol`'s rules (categories in the order they first appear)."""
    prompts: dict[str, set[str]] = {}
    values: dict[str, list[float]] = {}
    images: dict[str, int] = {}
    missing: dict[str, int] = {}
    for row in rows:
        category = row["category"]
        prompts.setdefault(category, set()).add(row["prompt_id"])
        images[category] = images.get(category, 0) + 1
        missing[category] = missing.get(category, 0) + (row["score"] is None)
        value = image_value(row["score"], aggregation)
        values.setdefault(category, [])
        if value is not None:
            values[category].append(value)
    categories = {
        category: CategoryScore(
            prompts=len(prompts[category]),
            images=images[category],
            missing=missing[category],
            score=sum(values[category]) / len(values[category]) if values[category] else None,
        )
        for category in images
    }
    weights = protocol.category_weights(images)
    scores = {category: line.score for category, line in categories.items()}
    overall = None if None in scores.values() else sum(weights[c] * scores[c] for c in scores)
    return Aggregate(categories, protocol.group_scores(scores), overall, weights, protocol.overall_rule(list(images)))
