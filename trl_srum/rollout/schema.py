"""The rollout dataset: one row per generated image, written by stage 1 and read by `SRUMTrainer`.

Columns (see docs/rollout_dataset.md for the full description):

| column | type | meaning |
|---|---|---|
| `row_id` | string | unique id, `"<prompt_id>:<candidate_index>"` |
| `prompt_id`, `prompt`, `category` | string | the prompt and where it came from |
| `candidate_index` | int32 | which of the prompt's candidates this image is |
| `seed` | int64 | the seed the image was drawn from (-1 when unknown) |
| `image` | Image | the generated image |
| `latents` | list of lists of float32, nullable | the generator's own latent tokens (rows * cols, latent_dim) |
| `latent_grid` | list of int32, nullable | (rows, cols) of `latents` |
| `reasoning` | string, nullable | think-mode planning text |
| `global_score` | float32, nullable | the layout score in [-1, 1]; null when the judge gave none |
| `regions` | list of {bbox, label, score, relevance, source} | judged regions, boxes in the image's pixels |
| `global_judge_output`, `region_judge_output` | string | the judge's raw text answers ("" in `prob` mode) |
| `status` | string | one of `ROLLOUT_STATUSES` |
| `error` | string | what went wrong or was repaired, "" when nothing |
"""

import math
from collections.abc import Mapping
from typing import Any

from datasets import Features, Image, List, Value


STATUS_OK = "ok"
ROLLOUT_STATUSES: tuple[str, ...] = (STATUS_OK, "judge_failed", "generation_failed", "invalid_prompt")

REGION_FEATURE = {
    "bbox": List(Value("float32"), length=4),
    "label": Value("string"),
    "score": Value("float32"),
    "relevance": Value("float32"),
    "source": Value("string"),
}

ROLLOUT_FEATURES = Features(
    {
        "row_id": Value("string"),
        "prompt_id": Value("string"),
        "prompt": Value("string"),
        "category": Value("string"),
        "candidate_index": Value("int32"),
        "seed": Value("int64"),
        "image": Image(),
        "latents": List(List(Value("float32"))),
        "latent_grid": List(Value("int32")),
        "reasoning": Value("string"),
        "global_score": Value("float32"),
        "regions": List(REGION_FEATURE),
        "global_judge_output": Value("string"),
        "region_judge_output": Value("string"),
        "status": Value("string"),
        "error": Value("string"),
    }
)


def make_row_id(prompt_id: str, candidate_index: int) -> str:
    return f"{prompt_id}:{candidate_index}"


def check_scores_finite(row: Mapping[str, Any]) -> None:
    """Raise a `ValueError` naming the row when any judge score is NaN or infinite (never train on them silently)."""
    scores = [("global_score", row.get("global_score"))]
    scores += [(f"regions[{i}].score", region.get("score")) for i, region in enumerate(row.get("regions") or [])]
    for name, value in scores:
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"rollout row {row.get('row_id')!r}: {name} is {value}")
