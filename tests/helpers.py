"""Shared builders for tests: tiny rollout datasets drawn by a tiny model, as stage 1 would write them."""

import torch
from datasets import Dataset

from trl_srum.models.bagel import BagelModel
from trl_srum.rollout import ROLLOUT_FEATURES, STATUS_OK, make_row_id


PROMPTS = ("a red circle", "two blue squares", "a green triangle above a yellow circle", "an orange square")


def tiny_rollout_rows(model: BagelModel, num_rows: int = 8, image_size: tuple[int, int] = (16, 16), seed: int = 0):
    """Rows of the rollout schema with images and latents drawn by `model` and made-up judgements."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(num_rows)]
    with torch.no_grad():
        generated = model.generate_images(
            prompts,
            generators=[torch.Generator().manual_seed(seed + i) for i in range(num_rows)],
            image_size=image_size,
            num_timesteps=3,
        )
    width, height = image_size
    rows = []
    for index, (prompt, image) in enumerate(zip(prompts, generated, strict=True)):
        rows.append(
            {
                "row_id": make_row_id(f"p{index}", 0),
                "prompt_id": f"p{index}",
                "prompt": prompt,
                "category": "",
                "candidate_index": 0,
                "seed": seed + index,
                "image": image.image,
                "latents": image.latents.numpy(),
                "latent_grid": list(image.grid),
                "reasoning": None,
                "global_score": [0.8, -0.4, 0.2, 1.0][index % 4],
                "regions": [
                    {
                        "bbox": [0.0, 0.0, width / 2, height / 2],
                        "label": "object",
                        "score": [0.9, -0.6][index % 2],
                        "relevance": None,
                        "source": "test",
                    }
                ],
                "global_judge_output": "",
                "region_judge_output": "",
                "status": STATUS_OK,
                "error": "",
            }
        )
    return rows


def tiny_rollout_dataset(model: BagelModel, num_rows: int = 8, **kwargs) -> Dataset:
    return Dataset.from_list(tiny_rollout_rows(model, num_rows, **kwargs), features=ROLLOUT_FEATURES)
